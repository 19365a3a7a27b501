"""How much one fit of the simulator decides: the behavior model fitted with several training seeds.

A run's behavior model is fitted once per configuration (``behavior.training.seed``, 0 by
default, not the run's ``seed``), so the spread a ``recrl sweep seed=...`` reports is that of
the RL seeds on *one* fitted simulator. This script fits the configured model once per training
seed (``--seeds``; each fit cached like a run's) and scores every fit on the synthetic world:

- held-out fit: the validation click and leave log-loss of the fit (what early stopping reads;
  no ground truth involved, so a choice between configurations may rest on it);
- fidelity: the Pearson correlation of its click and leave probabilities with the true ones on
  random slates and on the slates of ``algo=planner`` (512 users x 10 steps,
  :func:`~recrl.behavior.fidelity.true_model_agreement`);
- what it is worth to a policy: the ground-truth return of ``algo=planner`` on it (the
  survival-aware rule on the fitted model, which trains nothing, so the fit is all that varies;
  it is also what the default learners' demonstrations come from), on the run's evaluation users.

With ``--against "<overrides>"`` a second configuration (the same overrides plus these) is fitted
with the same training seeds and compared pair by pair (B minus A, mean and 95% CI over the
seeds). Prints the tables and writes JSON.

    python scripts/simulator_fits.py --seeds 0 1 2 3 4
    python scripts/simulator_fits.py --seeds 0 1 2 3 4 --against "behavior.click_profile=true"
    python scripts/simulator_fits.py --seeds 0 1 2 -- behavior.item_ids=true
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from recrl.algos.planner import SurvivalPlanner
from recrl.behavior.fidelity import true_model_agreement
from recrl.evaluate import run_episodes
from recrl.logs import console_logging
from recrl.metrics.stats import mean_ci
from recrl.report import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_policies import synthetic_run

#: what each fit is scored by, in table order: (key, column title, whether higher is better;
#: ``None``: neither, e.g. the simulated return, which a simulator can inflate)
MEASURES = (("valid_click_logloss", "click log-loss", False),
            ("valid_leave_logloss", "leave log-loss", False),
            ("click_random", "click r · random", True),
            ("leave_random", "leave r · random", True),
            ("click_planner", "click r · planner", True),
            ("leave_planner", "leave r · planner", True),
            ("planner_return", "planner · truth", True),
            ("planner_sim_return", "planner · simulator", None),
            ("sim_over_truth", "sim / truth", None))


def score_fit(overrides: Sequence[str], training_seed: int, users: int | None,
              caution: float = 2.0) -> dict[str, float]:
    """Fit (or load from the cache) the behavior model of ``overrides`` with ``training_seed`` and
    score it (:data:`MEASURES`, plus the fit's epochs and seconds); the planner plans with
    ``caution`` (``algo.caution``) on ``users`` evaluation users (``eval.episodes`` when ``None``)."""
    cfg, stages, _, env = synthetic_run([*overrides, f"behavior.training.seed={training_seed}"],
                                        "simulator fits")
    report, model = stages.behavior_report, stages.behavior
    planner = SurvivalPlanner(stages.ctx, caution=caution)
    random_slates = true_model_agreement(model, env)
    planner_slates = true_model_agreement(model, env, policy=planner)
    returns = {where: run_episodes(planner, world_env, users or cfg.eval.episodes, seed=cfg.eval.seed,
                                   batch_size=cfg.eval.batch_size).summary()["return"]["mean"]
               for where, world_env in (("truth", env), ("simulator", stages.make_env(model)))}
    return {"valid_click_logloss": float(report["valid_click_logloss"]),
            "valid_leave_logloss": float(report["valid_leave_logloss"]),
            "click_random": random_slates["click_prob_pearson"],
            "leave_random": random_slates["leave_prob_pearson"],
            "click_planner": planner_slates["click_prob_pearson"],
            "leave_planner": planner_slates["leave_prob_pearson"],
            "planner_return": float(returns["truth"]),
            "planner_sim_return": float(returns["simulator"]),
            "sim_over_truth": float(returns["simulator"] / returns["truth"]),
            "epochs": float(report.get("epochs", float("nan"))),
            "fit_seconds": float(report.get("seconds", float("nan")))}


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95% CI half width (Student t over the fits)."""
    mean, half = mean_ci(list(values))
    return {"mean": mean, "ci95": half}


def fits_table(title: str, seeds: Sequence[int], fits: dict[int, dict[str, float]]) -> Table:
    """One row per training seed and a mean ± CI row."""
    table = Table(title=title, caption="log-loss: validation; r: Pearson correlation with the true "
                  "probabilities; planner: its return")
    table.add_column("training seed", justify="right")
    for _, column, _ in MEASURES:
        table.add_column(column, justify="right")
    keys = [key for key, _, _ in MEASURES]
    for seed in seeds:
        table.add_row(str(seed), *(f"{fits[seed][key]:.{_digits(key)}f}" for key in keys))
    table.add_row("mean ± 95% CI", *(_pm(summarise([fits[s][key] for s in seeds]), key) for key in keys))
    return table


def paired(seeds: Sequence[int], a: dict[int, dict[str, float]],
           b: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """B minus A per measure: mean, CI half width and how many seeds B is better on."""
    out = {}
    for key, _, higher in MEASURES:
        diffs = [b[s][key] - a[s][key] for s in seeds]
        better = None if higher is None else sum((d > 0) if higher else (d < 0) for d in diffs)
        out[key] = {**summarise(diffs), "b_better_on": better, "seeds": len(seeds)}
    return out


def paired_table(differences: dict[str, dict[str, float]]) -> Table:
    """The :func:`paired` differences, one row per measure."""
    table = Table(title="B minus A, paired by training seed")
    for column in ("measure", "mean ± 95% CI", "B better on"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for key, column, _ in MEASURES:
        d = differences[key]
        better = "–" if d["b_better_on"] is None else f"{d['b_better_on']} of {d['seeds']}"
        table.add_row(column, _pm(d, key, signed=True), better)
    return table


def _digits(key: str) -> int:
    """Decimals a measure is shown with (log-losses differ in the fourth)."""
    return 4 if "logloss" in key else 3


def _pm(summary: dict[str, float], key: str, signed: bool = False) -> str:
    digits, sign = _digits(key), "+" if signed else ""
    return f"{summary['mean']:{sign}.{digits}f} ± {summary['ci95']:.{digits}f}"


def main() -> None:
    """Fit, score, print the tables and write the JSON."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="behavior.training.seed values, one fit each")
    parser.add_argument("--against", default=None,
                        help='overrides of a second configuration B, quoted: "behavior.recency=false"')
    parser.add_argument("--users", type=int, default=None, help="planner evaluation users (eval.episodes)")
    parser.add_argument("--caution", type=float, default=2.0,
                        help="the planner's algo.caution (2: its default and the demonstrations')")
    parser.add_argument("--out", type=Path, default=Path("simulator_fits.json"))
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --, for both configs")
    args = parser.parse_args()
    configs = {"A": list(args.overrides)}
    if args.against is not None:
        configs["B"] = [*args.overrides, *shlex.split(args.against)]
    start = time.perf_counter()
    fits = {name: {seed: score_fit(overrides, seed, args.users, args.caution) for seed in args.seeds}
            for name, overrides in configs.items()}
    console = Console(width=200)
    for name, overrides in configs.items():
        console.print(fits_table(f"{name}: {' '.join(overrides) or 'defaults'}", args.seeds, fits[name]))
    result: dict[str, Any] = {
        "configs": configs, "seeds": args.seeds,
        "fits": {name: {str(s): row for s, row in by_seed.items()} for name, by_seed in fits.items()},
        "summary": {name: {key: summarise([by_seed[s][key] for s in args.seeds]) for key, _, _ in MEASURES}
                    for name, by_seed in fits.items()}}
    if "B" in fits:
        result["b_minus_a"] = paired(args.seeds, fits["A"], fits["B"])
        console.print(paired_table(result["b_minus_a"]))
    result["facts"] = {"torch": torch.__version__, "python": platform.python_version(),
                       "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "seconds": time.perf_counter() - start}
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
