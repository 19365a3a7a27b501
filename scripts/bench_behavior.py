"""Benchmark behavior models: training rows/s and full-catalogue scoring users/s.

Runs every model config on the same generated positive-only sequences (no files needed),
prints a table and writes JSON. On a machine with CUDA, add ``--device cuda``.

    python scripts/bench_behavior.py --items 10000 --users 4096 --out bench_behavior.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from recrl.behavior.fit import sequence_loss, session_tensors
from recrl.benchmark import add_malloc_option, apply_malloc_option
from recrl.config import CONF_DIR, without_ensemble
from recrl.fileio import write_text_atomic
from recrl.types import LOG_COLUMNS, Obs

MODELS = ("gru", "sasrec", "sasrec_large", "mf", "deepfm")


def generated_log(users: int, length: int, items: int, seed: int = 0) -> pd.DataFrame:
    """``users`` sequences of ``length`` positive events over ``items`` (Zipf-like popularity)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1)
    item = rng.choice(items, size=users * length, p=popularity / popularity.sum())
    frame = pd.DataFrame({"user": np.repeat(np.arange(users), length), "item": item,
                          "time": np.tile(np.arange(length), users), "click": 1.0})
    frame["conversion"] = 0.0
    for column in LOG_COLUMNS:  # rating, leave, propensity and every user signal's column: unknown
        if column not in frame:
            frame[column] = np.nan
    return frame[list(LOG_COLUMNS)]


def build(name: str, items: int, users: int, device: str) -> torch.nn.Module:
    """A model from ``conf/behavior/<name>.yaml`` (static models such as MF need ``users``)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # the model as its config file has it, without a dataset's adjustments (the synthetic
        # world's GRU knows items by content, which this generated log has none of)
        cfg = compose("train", overrides=[f"behavior={name}", "~dataset_behavior"])
    return instantiate(without_ensemble(cfg.behavior))(n_items=items, n_users=users, device=device)


def sync(device: str) -> None:
    """Wait for queued GPU work so timings are honest."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_training(model: torch.nn.Module, log: pd.DataFrame, items: int, batch: int, steps: int,
                   device: str) -> float:
    """Training rows per second (forward + backward + Adam) over ``steps`` batches."""
    data = session_tensors(log, items, max_len=50, negatives=True).to(torch.device(device))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch, device=device) % data.item.shape[0]
        rows = data.rows(idx)
        loss = sequence_loss(model.sequence_logits(rows), rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(0)  # warm-up
    sync(device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    sync(device)
    return steps * batch * data.item.shape[1] / (time.perf_counter() - start)


@torch.no_grad()
def bench_scoring(model: torch.nn.Module, items: int, users: int, history: int, device: str) -> float:
    """Users per second: encode a ``history``-step observation, then score every item."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    obs = Obs(items=torch.randint(0, items, (users, history, 1), generator=g),
              clicks=torch.ones(users, history, 1), step=torch.full((users,), history)).to(device)
    model.score_all(model.encode(obs.index(torch.arange(8)))).click_prob.sum()  # warm-up
    sync(device)
    start = time.perf_counter()
    scores = model.score_all(model.encode(obs)).click_prob
    scores.topk(10, dim=1)
    sync(device)
    return users / (time.perf_counter() - start)


def main() -> None:
    """Run, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=2048)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    add_malloc_option(parser)
    parser.add_argument("--out", type=Path, default=Path("bench_behavior.json"))
    args = parser.parse_args()
    kept_memory = apply_malloc_option(args)
    log = generated_log(args.users, args.length, args.items)
    results = []
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, args.items, args.users, args.device)
        params = sum(p.numel() for p in model.parameters())
        train = bench_training(model, log, args.items, args.batch, args.steps, args.device)
        score = bench_scoring(model, args.items, args.users, args.history, args.device)
        results.append({"model": name, "params": params, "train_rows_per_s": train,
                        "score_users_per_s": score})
    title = (f"behavior models on {args.device}: {args.items:,} items, sequences of {args.length}, "
             f"batch {args.batch}; scoring {args.users:,} users, history {args.history}")
    table = Table(title=title)
    for col in ("model", "parameters", "training rows/s", "full-ranking users/s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["model"], f"{r['params']:,}", f"{r['train_rows_per_s']:,.0f}",
                      f"{r['score_users_per_s']:,.0f}")
    Console().print(table)
    meta = {"device": args.device, "torch": torch.__version__, "cpus": os.cpu_count(),
            "keep_freed_memory": kept_memory,
            "python": sys.version.split()[0], **{k: v for k, v in vars(args).items() if k != "out"}}
    write_text_atomic(args.out, json.dumps({"results": results, "settings": meta}, indent=2, default=str))
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
