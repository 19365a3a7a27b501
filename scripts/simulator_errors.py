"""Where a trained policy's simulator is wrong: the items it serves, as the logs, the simulator
and the ground truth see them.

Replays a run's policy (a run folder or checkpoint) in the ground-truth environment on the
evaluation users (``eval.seed``; ``--users``), and for every step asks the run's simulator what
it predicts for the same slate given the same observed history. Two tables:

- per served item (most served first): how often it was served, how often the *logs* showed it
  and its logged click rate, the simulator's mean predicted click probability and the true
  one. A simulator that learned lucky click rates of rarely logged items by heart (the
  winner's curse: the policy picks exactly the items whose estimate is too high) shows few
  logged impressions, a high logged and predicted rate, and a lower true one;
- per step of a session: the true click rate and the simulator's prediction on the same
  trajectory, and the click rate of the same policy inside the simulator.

Synthetic world and runs with a ground truth only. Prints both tables and writes JSON.

    python scripts/simulator_errors.py outputs/train/<run>
    python scripts/simulator_errors.py outputs/train/<run>/checkpoints/best.pt --items 20 --out errors.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from recrl.evaluate import restore_run
from recrl.logs import console_logging
from recrl.report import cpu_model, write_text_atomic
from recrl.stages import Stages
from recrl.types import RecrlError


def rebuild(checkpoint: str) -> tuple[Stages, Any]:
    """The run's stages (data, simulator, ground truth) and its policy, on the CPU."""
    stages, algo, _, _ = restore_run(checkpoint, device="cpu")
    if getattr(stages, "ground_truth", None) is None:
        raise RecrlError(f"{checkpoint}: the run's dataset has no ground truth to compare with")
    return stages, algo


@torch.no_grad()
def replay(stages: Stages, algo: Any, users: int, seed: int) -> dict[str, Any]:
    """Per-item and per-step figures of the policy in the ground truth (and the simulator).
    Everything accumulates on the device; the per-step figures come to the host once."""
    envs = stages.eval_envs()
    truth, simulator = envs["ground_truth"], envs["simulator"]
    n_items = stages.ctx.n_items
    served, predicted, true = (torch.zeros(n_items, dtype=torch.float64) for _ in range(3))
    per_step = []  # [users alive, shown, true clicks, predicted clicks, simulator's own clicks and shown]
    obs, sim_obs = truth.reset(users, seed=seed), simulator.reset(users, seed=seed)
    for _ in range(truth.horizon):
        alive, sim_alive = truth.alive.clone(), simulator.alive.clone()
        slates = algo.act(obs, explore=False)
        prediction = torch.sigmoid(stages.behavior.predict(stages.behavior.encode(obs), slates).click_logit)
        obs, _, _, info = truth.step(slates)
        weight = alive[:, None].expand_as(slates).double()
        shown_true, shown_predicted = info.response.click_prob.double() * weight, prediction.double() * weight
        served.index_add_(0, slates.flatten(), weight.flatten())
        predicted.index_add_(0, slates.flatten(), shown_predicted.flatten())
        true.index_add_(0, slates.flatten(), shown_true.flatten())
        sim_obs, _, _, sim_info = simulator.step(algo.act(sim_obs, explore=False))
        sim_weight = sim_alive[:, None].expand_as(sim_info.response.click_prob).double()
        sim_clicks = (sim_info.response.click_prob.double() * sim_weight).sum()
        per_step.append(torch.stack([alive.sum().double(), weight.sum(), shown_true.sum(),
                                     shown_predicted.sum(), sim_clicks, sim_weight.sum()]))
    steps = [{"users": int(n), "true_ctr": float(t / shown), "predicted_ctr": float(q / shown),
              "simulator_ctr": float(c / max(float(sim_shown), 1.0))}
             for n, shown, t, q, c, sim_shown in torch.stack(per_step).tolist() if n > 0]
    return {"served": served, "predicted": predicted, "true": true, "steps": steps}


def logged_impressions(stages: Stages) -> tuple[np.ndarray, np.ndarray]:
    """Rows and clicks per item in the training logs (each ``[n_items]``)."""
    log = stages.splits.interactions.train
    items = log["item"].to_numpy()
    n_items = stages.ctx.n_items
    return (np.bincount(items, minlength=n_items),
            np.bincount(items, weights=log["click"].to_numpy(), minlength=n_items))


def item_rows(figures: dict[str, Any], impressions: np.ndarray, clicks: np.ndarray,
              top: int) -> list[dict[str, Any]]:
    """The ``top`` most served items with their logged, predicted and true click rates."""
    served = figures["served"]
    rows = []
    for item in torch.argsort(served, descending=True)[:top].tolist():
        n = float(served[item])
        if n == 0:
            break
        rows.append({"item": item, "served": int(n), "logged_impressions": int(impressions[item]),
                     "logged_ctr": float(clicks[item] / impressions[item]) if impressions[item] else None,
                     "simulator_click_prob": float(figures["predicted"][item]) / n,
                     "true_click_prob": float(figures["true"][item]) / n})
    return rows


def print_tables(rows: Sequence[dict[str, Any]], steps: Sequence[dict[str, float]], median: float) -> None:
    """The per-item and per-step tables."""
    console = Console()
    items = Table(title=f"Most served items (median logged impressions per item: {median:g})")
    for name in ("item", "served", "logged impressions", "logged ctr", "simulator p(click)", "true p(click)"):
        items.add_column(name, justify="right")
    for r in rows:
        logged = "–" if r["logged_ctr"] is None else f"{r['logged_ctr']:.3f}"
        items.add_row(str(r["item"]), str(r["served"]), str(r["logged_impressions"]), logged,
                      f"{r['simulator_click_prob']:.3f}", f"{r['true_click_prob']:.3f}")
    console.print(items)
    per_step = Table(title="Click rate per step of a session")
    for name in ("step", "users", "true (ground truth)", "simulator on that trajectory", "in the simulator"):
        per_step.add_column(name, justify="right")
    for t, s in enumerate(steps):
        per_step.add_row(str(t), str(s["users"]), f"{s['true_ctr']:.3f}", f"{s['predicted_ctr']:.3f}",
                         f"{s['simulator_ctr']:.3f}")
    console.print(per_step)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a run folder (its checkpoints/last.pt) or a .pt file")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=15, help="rows of the served-items table")
    parser.add_argument("--out", type=Path, default=Path("simulator_errors.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    args = parse(argv)
    try:
        stages, algo = rebuild(args.checkpoint)
    except RecrlError as err:
        print(f"simulator_errors: {err}", file=sys.stderr)
        return 2
    seed = int(stages.cfg.eval.seed)
    figures = replay(stages, algo, args.users, seed)
    impressions, clicks = logged_impressions(stages)
    rows = item_rows(figures, impressions, clicks, args.items)
    median = float(np.median(impressions))
    print_tables(rows, figures["steps"], median)
    result = {"facts": {"checkpoint": str(args.checkpoint), "users": args.users, "seed": seed,
                        "torch": torch.__version__, "cpu": cpu_model(),
                        "median_logged_impressions": median},
              "items": rows, "steps": figures["steps"]}
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
