"""Fit time and calibration of the logging-policy model, against the true or logged propensities.

Fits :func:`recrl.ope.propensity.fit_logging_policy` on the synthetic world (``--users`` users
each, default 3000 and 10000; its logger is context-free, so every row's true propensity is
known) for each ``--history`` length (default 0 and 10), and measures on the test rows: the
log-loss of the logged items next to that of the true propensities, the ECE, and the agreement
with the true propensities (Pearson correlation of the log propensities, median and mean
|log ratio|). Then on Coat (``split=given``): the model is fitted with the propensities hidden
and compared on the validation rows with Schnabel et al.'s (2016) normalised propensities, whose
own log-loss on those rows is printed next to the uniform one. Coat is read from
``--coat-root`` (default ``$RECRL_SHARED_DATA/coat``, else ``../shared/data/coat`` beside the
repository) and skipped with a message when absent. One untimed warm-up fit comes first, so the
first timed fit does not carry torch's start-up cost.

    OMP_NUM_THREADS=1 python scripts/propensity_calibration.py --out propensity_calibration.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from recrl.data.coat import Coat
from recrl.data.preprocess import Preprocessing
from recrl.data.synthetic import SyntheticWorld
from recrl.fileio import write_text_atomic
from recrl.ope.propensity import calibration, fill_propensities, fit_logging_policy
from recrl.report import cpu_model
from recrl.types import Interactions

ROOT = Path(__file__).resolve().parents[1]


def default_coat_root() -> Path:
    """``$RECRL_SHARED_DATA/coat``, else ``../shared/data/coat`` beside the repository (as the tests)."""
    return Path(os.environ.get("RECRL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "coat"


def logged_log_loss(log: pd.DataFrame) -> float:
    """Mean ``-log p`` of the rows' logged propensities (NaN rows left out)."""
    p = log["propensity"].to_numpy(dtype=np.float64)
    p = p[np.isfinite(p) & (p > 0)]
    return float(-np.log(p).mean()) if len(p) else float("nan")


def measure(interactions: Interactions, held_out: pd.DataFrame, history_len: int, seed: int,
            context: pd.DataFrame | None = None) -> dict[str, Any]:
    """Fit on ``interactions`` and calibrate on ``held_out``: fit info, calibration and seconds of each."""
    start = time.perf_counter()
    model = fit_logging_policy(interactions, history_len=history_len, seed=seed)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = calibration(model, held_out, context=context)
    calibration_seconds = time.perf_counter() - start
    return {"history_len": history_len, "fit_seconds": fit_seconds,
            "calibration_seconds": calibration_seconds, "fit_info": model.fit_info,
            "calibration": report, "model": model}


def synthetic_records(users: list[int], histories: list[int], seed: int) -> list[dict[str, Any]]:
    """One record per (users, history length) on ``SyntheticWorld(seed, n_users)``'s test rows."""
    records = []
    for n_users in users:
        splits = SyntheticWorld(seed=seed, n_users=n_users).load()
        inter = splits.interactions
        for history_len in histories:
            rec = measure(inter, splits.test, history_len, seed)
            rec.pop("model")
            records.append({"log": f"SyntheticWorld(seed={seed}, n_users={n_users})", "n_users": n_users,
                            "n_items": inter.n_items, "train_rows": len(inter.train),
                            "valid_rows": len(inter.valid), "test_rows": len(splits.test),
                            "true_log_loss": logged_log_loss(splits.test), **rec})
    return records


def coat_section(root: Path, histories: list[int], seed: int) -> dict[str, Any]:
    """The model fitted on Coat with its propensities hidden, against the authors' on the validation
    rows; ``{"skipped": reason}`` when the data or its ``propensities.ascii`` is absent."""
    if not (root / "train.ascii").is_file():
        return {"skipped": f"Coat not found under {root} (set RECRL_SHARED_DATA or --coat-root)"}
    if not (root / "propensities.ascii").is_file():
        return {"skipped": f"{root / 'propensities.ascii'} not found: no authors' propensities to compare"}
    splits = Coat(root=str(root), preprocess=Preprocessing(split="given", implicit_threshold=4)).load()
    inter = splits.interactions
    hidden = Interactions(train=inter.train.assign(propensity=np.nan),
                          valid=inter.valid.assign(propensity=np.nan), items=inter.items,
                          n_users=inter.n_users, n_items=inter.n_items)
    records, model = [], None
    for history_len in histories:
        rec = measure(hidden, inter.valid, history_len, seed, context=inter.train)
        model = rec.pop("model")
        records.append(rec)
    filled = fill_propensities(hidden.valid, model, context=inter.train)
    return {"root": str(root), "meta_propensity": splits.meta.get("propensity"), "n_items": inter.n_items,
            "train_rows": len(inter.train), "valid_rows": len(inter.valid),
            "authors_log_loss": logged_log_loss(inter.valid), "uniform_log_loss": math.log(inter.n_items),
            "fill_counts_hidden": filled.counts, "records": records}


def ratios(agreement: dict[str, Any]) -> str:
    """``median / mean |log ratio|`` of an agreement dict."""
    if not agreement.get("rows"):
        return "-"
    return f"{agreement['median_abs_log_ratio']:.3f} / {agreement['mean_abs_log_ratio']:.3f}"


def print_synthetic(records: list[dict[str, Any]], console: Console, cpu: str) -> None:
    """The synthetic records as the README's table."""
    table = Table(title=f"Logging-policy model on the synthetic world ({cpu}, "
                        f"{torch.get_num_threads()} thread(s))", title_justify="left")
    for col in ("log", "train rows", "fit", "epochs (best)", "test log-loss (true p's)", "ECE",
                "Pearson log p vs true", "median / mean |log ratio|"):
        table.add_column(col, justify="left" if col == "log" else "right")
    for r in records:
        cal, info = r["calibration"], r["fit_info"]
        table.add_row(f"{r['log']}, history {r['history_len']}",
                      f"{r['train_rows']:,} x {r['n_items']} items", f"{r['fit_seconds']:.2f} s",
                      f"{info['epochs']} ({info['best_epoch']})",
                      f"{cal['log_loss']:.3f} ({r['true_log_loss']:.3f})", f"{cal['ece']:.1e}",
                      f"{cal['logged'].get('pearson_log', float('nan')):.3f}", ratios(cal["logged"]))
    console.print(table)
    console.print("epochs (best): epochs run (the best one's; 0 = the frequency model kept); "
                  f"uniform log-loss = log {records[0]['n_items']} = {math.log(records[0]['n_items']):.3f}"
                  if records else "no synthetic logs")


def print_coat(coat: dict[str, Any], console: Console) -> None:
    """The Coat records (or why they were skipped)."""
    if "skipped" in coat:
        console.print(f"Coat skipped: {coat['skipped']}")
        return
    table = Table(title=f"Coat, propensities hidden, vs Schnabel et al.'s on the {coat['valid_rows']} "
                        "validation rows", title_justify="left")
    for col in ("history", "fit", "epochs (best)", "log-loss", "ECE", "Pearson", "median / mean |log ratio|"):
        table.add_column(col, justify="right")
    for r in coat["records"]:
        cal, info = r["calibration"], r["fit_info"]
        table.add_row(str(r["history_len"]), f"{r['fit_seconds']:.2f} s",
                      f"{info['epochs']} ({info['best_epoch']})", f"{cal['log_loss']:.3f}",
                      f"{cal['ece']:.1e}",
                      f"{cal['logged'].get('pearson_log', float('nan')):.2f}", ratios(cal["logged"]))
    console.print(table)
    console.print(f"authors' propensities' log-loss on the same rows: {coat['authors_log_loss']:.3f}; "
                  f"uniform: log {coat['n_items']} = {coat['uniform_log_loss']:.3f}")


def warm_up(seed: int) -> None:
    """One untimed short fit and calibration, so torch's start-up cost is not in the first figure."""
    splits = SyntheticWorld(seed=seed, n_users=300).load()
    model = fit_logging_policy(splits.interactions, history_len=10, seed=seed, max_epochs=1)
    calibration(model, splits.test)


def main() -> None:
    """Parse arguments, fit and calibrate, print the tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[3000, 10000],
                        help="synthetic worlds' n_users")
    parser.add_argument("--history", type=int, nargs="+", default=[0, 10], help="history_len values")
    parser.add_argument("--seed", type=int, default=0, help="world and fitting seed")
    parser.add_argument("--coat-root", type=Path, default=None,
                        help="Coat folder (default $RECRL_SHARED_DATA/coat, else ../shared/data/coat)")
    parser.add_argument("--no-coat", action="store_true", help="leave Coat out")
    parser.add_argument("--out", type=Path, default=Path("propensity_calibration.json"))
    args = parser.parse_args()
    console = Console(width=200)
    cpu = cpu_model()
    warm_up(args.seed)
    synthetic = synthetic_records(args.users, args.history, args.seed)
    coat = ({"skipped": "--no-coat"} if args.no_coat
            else coat_section(args.coat_root or default_coat_root(), args.history, args.seed))
    print_synthetic(synthetic, console, cpu)
    print_coat(coat, console)
    settings = {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
                "numpy": np.__version__, "python": sys.version.split()[0],
                **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}}
    result = {"synthetic": synthetic, "coat": coat, "settings": settings}
    write_text_atomic(args.out, json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
