"""How far is each off-policy estimate from the ground truth? Bias and RMSE over independent logs.

Reads trained runs on the synthetic world (any number of run or sweep folders; typically one run
per ``dataset.seed`` and algorithm, each seed a fresh world and a fresh log), re-estimates every
policy of each run (the run's algorithm and its baselines) from its test split with the given
``ope`` settings, and compares each estimate with the policy's ground-truth return in the run's
report. A baseline shared by several runs of the same world is counted once. Prints one table
(policy x estimator: mean estimate, mean truth, bias, relative bias, RMSE, mean ESS) and writes
JSON::

    recrl sweep algo=dqn,ppo dataset.seed=0,1,2,3,4,5,6,7,8,9 eval.oracle=false ope.enabled=false
    python scripts/ope_table.py outputs/train/multirun/<ts> --out ope_table.json

``--view step`` compares the per-step estimators (expected reward of one recommendation at the
logged states) with the ground truth's reward per step instead (data without sessions, e.g. Coat's
ratings); ``--split valid`` reads the validation rows (Coat: the self-selected ones).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from recrl.config import build_algo_by_name
from recrl.evaluate import restore_run
from recrl.fileio import write_text_atomic
from recrl.logs import console_logging
from recrl.ope.evaluation import PER_SESSION, PER_STEP, OffPolicyEvaluation, off_policy
from recrl.report import cpu_model

logger = logging.getLogger("recrl.scripts.ope_table")


def run_folders(paths: list[Path]) -> list[Path]:
    """Every run folder (with a report and a last checkpoint) under ``paths``, sorted."""
    found = {p.parent for path in paths for p in Path(path).rglob("report.json")
             if (p.parent / "checkpoints" / "last.pt").is_file()}
    return sorted(found)


def estimates_of_run(run: Path, ope: OffPolicyEvaluation,
                     done: dict[str, set[str]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{policy: (log key, {"truth": return, estimator: Estimate dict})}`` of one run's trained
    policy and of the baselines not yet estimated on the same data (``done``: policies per data).

    The log key names the data (``dataset.seed`` where the dataset has one) and, for the run's own
    algorithm, the run's seed too: a baseline is one sample per log, a learner one per training."""
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    truth = report["evaluation"]["ground_truth"]
    stages, algo, payload, _ = restore_run(run, "cpu")
    data = f"data {stages.cfg.dataset.get('seed', 0)}"
    seen = done.setdefault(data, set())
    policies = {payload["algo_name"]: algo}
    for name in truth:
        if name not in policies and name != "oracle" and name not in seen:
            policies[name] = build_algo_by_name(name, ctx=stages.ctx)
    seen.update(name for name in policies if name != payload["algo_name"])
    section, _ = off_policy(ope, stages, policies)
    own = f"{data}, seed {stages.cfg.seed}"
    return {name: (own if name == payload["algo_name"] else data,
                   {"truth": float(truth[name]["return"]["mean"]), "truth_per_step": per_step(truth[name]),
                    **section["policies"][name]})
            for name in policies}


def per_step(stats: dict[str, Any]) -> float:
    """The mean reward per recommendation in an evaluation: mean return / mean episode length."""
    return float(stats["return"]["mean"]) / float(stats["episode_length"]["mean"])


def collect(runs: list[Path], ope: OffPolicyEvaluation) -> dict[str, dict[str, dict[str, Any]]]:
    """``{policy: {log key: row}}`` over all runs (see :func:`estimates_of_run`)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    done: dict[str, set[str]] = {}
    for run in runs:
        logger.info("estimating %s", run)
        for policy, (key, row) in estimates_of_run(run, ope, done).items():
            table.setdefault(policy, {}).setdefault(key, row)
    return table


def summarize(table: dict[str, dict[str, dict[str, Any]]], estimators: list[str],
              truth_key: str = "truth") -> list[dict[str, Any]]:
    """One record per (policy, estimator): mean estimate and truth (``truth_key``: the return, or
    ``truth_per_step``), bias, RMSE, mean ESS."""
    records = []
    for policy, by_seed in table.items():
        truth = np.array([row[truth_key] for row in by_seed.values()])
        for name in estimators:
            est = np.array([row.get(name, {}).get("value", np.nan) for row in by_seed.values()])
            ess = np.array([row.get(name, {}).get("ess", np.nan) for row in by_seed.values()])
            error = est - truth
            finite = np.isfinite(error)
            nan = float("nan")
            bias = float(error[finite].mean()) if finite.any() else nan
            rmse = float(np.sqrt(np.mean(error[finite] ** 2))) if finite.any() else nan
            records.append({
                "policy": policy, "estimator": name, "logs": len(truth), "undefined": int((~finite).sum()),
                "estimate": float(np.mean(est[finite])) if finite.any() else nan,
                "truth": float(truth.mean()), "bias": bias, "relative_bias": bias / truth.mean(),
                "rmse": rmse, "relative_rmse": rmse / truth.mean(),
                "mean_ess": float(np.nanmean(ess)) if np.isfinite(ess).any() else nan,
            })
    return records


def print_table(records: list[dict[str, Any]], console: Console, view: str = "session") -> None:
    """The records as one table, grouped by policy."""
    what = "per-session return" if view == "session" else "reward per step"
    table = Table(title=f"Off-policy estimates vs the ground truth ({what})", title_justify="left")
    for column in ("policy", "estimator", "logs", "estimate", "truth", "bias", "rel. bias", "RMSE",
                   "rel. RMSE", "mean ESS"):
        table.add_column(column, justify="left" if column in ("policy", "estimator") else "right")
    for r in records:
        undefined = f" ({r['undefined']} undefined)" if r["undefined"] else ""
        table.add_row(r["policy"], r["estimator"], f"{r['logs']}{undefined}", f"{r['estimate']:.3f}",
                      f"{r['truth']:.3f}", f"{r['bias']:+.3f}", f"{r['relative_bias']:+.1%}",
                      f"{r['rmse']:.3f}", f"{r['relative_rmse']:.1%}", f"{r['mean_ess']:.1f}")
    console.print(table)


def main() -> None:
    """Parse arguments, estimate, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument("--view", choices=["session", "step"], default="session",
                        help="per-session estimators against the return, or per-step ones against the "
                             "ground truth's reward per step (return / episode length)")
    parser.add_argument("--estimators", nargs="+", choices=[*PER_SESSION, *PER_STEP],
                        help="default: every estimator of the view")
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--max-sessions", type=int, default=2000)
    parser.add_argument("--split", choices=["test", "valid"], default="test", help="the held-out logs read")
    parser.add_argument("--out", type=Path, default=Path("ope_table.json"))
    args = parser.parse_args()
    console_logging()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    view_estimators = list(PER_SESSION if args.view == "session" else PER_STEP)
    args.estimators = args.estimators or view_estimators
    sessions_read = [name for name in args.estimators if name in PER_SESSION] or ["model"]
    ope = OffPolicyEvaluation(estimators=args.estimators, column=sessions_read[-1], rollouts=args.rollouts,
                              n_boot=args.n_boot, max_sessions=args.max_sessions, split=args.split)
    runs = run_folders(args.folders)
    if not runs:
        raise SystemExit(f"no run folders with report.json and checkpoints/last.pt under {args.folders}")
    table = collect(runs, ope)
    records = summarize(table, args.estimators, "truth" if args.view == "session" else "truth_per_step")
    print_table(records, Console(width=160), args.view)
    settings = {**vars(args), "folders": [str(f) for f in args.folders], "out": str(args.out)}
    result = {"runs": [str(r) for r in runs], "settings": settings, "cpu": cpu_model(), "records": records,
              "per_log": table}
    write_text_atomic(args.out, json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
