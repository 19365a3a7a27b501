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
  it is also what the default learners' demonstrations come from), on the run's evaluation users,
  and its return in the fitted simulator itself (how much this fit flatters or underrates it);
- how it responds to item content: the slope of its click logit per standard deviation of each
  numeric column of the item table, on the logged training rows, next to the slope the logs
  themselves show (a logistic regression of the logged clicks on the same columns, the
  categorical ones and the step), :func:`attribute_slopes`.

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
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor

from recrl.algos.planner import SurvivalPlanner
from recrl.behavior.features import side_features
from recrl.behavior.fidelity import true_model_agreement
from recrl.behavior.fit import training_tensors
from recrl.logs import console_logging
from recrl.metrics.online import run_episodes
from recrl.metrics.stats import summarize
from recrl.report import cpu_model, write_text_atomic

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


def attribute_slopes(stages: Any) -> dict[str, dict[str, float]]:
    """For each numeric column of the item table, the click logit's slope per standard deviation
    of it on the logged training rows: ``logs``, from a logistic regression of the logged clicks,
    and ``model``, from a least-squares fit of the fitted model's click logits on those rows
    (given each row's logged history); both on the same design (the numeric columns, standardised,
    the categorical columns' indicators, the step of the session and a constant). Empty without
    numeric columns or recorded non-clicks."""
    inter = stages.splits.interactions
    features = side_features(inter.items, inter.n_items)
    if features.dense is None or inter.positive_only:
        return {}
    names = features.dense_names
    train, _ = training_tensors(inter, stages.behavior.max_len, seed=0)
    with torch.no_grad():
        model_logit = stages.behavior.sequence_logits(train)["click"]
    real = train.mask.bool()
    items = train.item[real]
    step = torch.arange(train.item.shape[1]).expand_as(train.item)[real].double() / train.item.shape[1]
    parts = [features.dense[items].double(), step[:, None], torch.ones(len(items), 1, dtype=torch.float64)]
    if features.tokens is not None:
        parts.append(features.tokens[items].double())
    design = torch.cat(parts, 1)
    logs = logistic_fit(design, train.click[real].double())
    model = torch.linalg.lstsq(design, model_logit[real].double()[:, None]).solution[:, 0]
    return {name: {"logs": float(logs[j]), "model": float(model[j])} for j, name in enumerate(names)}


def logistic_fit(design: Tensor, labels: Tensor) -> Tensor:
    """Maximum-likelihood coefficients of ``P(y = 1) = sigmoid(design @ beta)`` (L-BFGS)."""
    beta = torch.zeros(design.shape[1], dtype=design.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([beta], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(design @ beta, labels)
        value.backward()
        return value

    optimizer.step(loss)
    return beta.detach()


def score_fit(overrides: Sequence[str], training_seed: int, users: int | None,
              caution: float = 2.0) -> dict[str, Any]:
    """Fit (or load from the cache) the behavior model of ``overrides`` with ``training_seed`` and
    score it (:data:`MEASURES`, :func:`attribute_slopes`, the fit's epochs and seconds); the
    planner plans with ``caution`` (``algo.caution``) on ``users`` evaluation users
    (``eval.episodes`` when ``None``)."""
    cfg, stages, _, env = synthetic_run([*overrides, f"behavior.training.seed={training_seed}"],
                                        "simulator fits")
    report, model = stages.behavior_report, stages.behavior
    planner = SurvivalPlanner(stages.ctx, caution=caution)
    random_slates = true_model_agreement(model, env)
    planner_slates = true_model_agreement(model, env, policy=planner)
    runs = {where: run_episodes(planner, world_env, users or cfg.eval.episodes, seed=cfg.eval.seed,
                                batch_size=cfg.eval.batch_size).summary()
            for where, world_env in (("truth", env), ("simulator", stages.make_env(model)))}
    returns = {where: summary["return"]["mean"] for where, summary in runs.items()}
    return {"valid_click_logloss": float(report["valid_click_logloss"]),
            "valid_leave_logloss": float(report["valid_leave_logloss"]),
            "click_random": random_slates["click_prob_pearson"],
            "leave_random": random_slates["leave_prob_pearson"],
            "click_planner": planner_slates["click_prob_pearson"],
            "leave_planner": planner_slates["leave_prob_pearson"],
            "planner_return": float(returns["truth"]),
            "planner_sim_return": float(returns["simulator"]),
            "sim_over_truth": float(returns["simulator"] / returns["truth"]),
            # what the return is made of: clicks per step and steps per session, in each world
            **{f"planner_{key}_{where}": float(runs[where][key]["mean"])
               for key in ("ctr", "episode_length") for where in runs},
            "slopes": attribute_slopes(stages),
            "epochs": float(report.get("epochs", float("nan"))),
            "fit_seconds": float(report.get("seconds", float("nan")))}


def fits_table(title: str, seeds: Sequence[int], fits: dict[int, dict[str, Any]]) -> Table:
    """One row per training seed and a mean ± CI row."""
    table = Table(title=title, caption="log-loss: validation; r: Pearson correlation with the true "
                  "probabilities; planner: its return")
    table.add_column("training seed", justify="right")
    for _, column, _ in MEASURES:
        table.add_column(column, justify="right")
    keys = [key for key, _, _ in MEASURES]
    for seed in seeds:
        table.add_row(str(seed), *(f"{fits[seed][key]:.{_digits(key)}f}" for key in keys))
    table.add_row("mean ± 95% CI", *(_pm(summarize([fits[s][key] for s in seeds]), key) for key in keys))
    return table


def slopes_table(title: str, seeds: Sequence[int], fits: dict[int, dict[str, Any]]) -> Table | None:
    """The logs' slope of each numeric item attribute and every fit's (``None`` without any)."""
    names = list(fits[seeds[0]]["slopes"])
    if not names:
        return None
    table = Table(title=f"{title}: click-logit slope per standard deviation of each numeric item attribute")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    logs = fits[seeds[0]]["slopes"]  # the same logs for every fit
    table.add_row("logs (logistic regression)", *(f"{logs[n]['logs']:+.3f}" for n in names))
    for seed in seeds:
        slopes = fits[seed]["slopes"]
        table.add_row(f"fit, training seed {seed}", *(f"{slopes[n]['model']:+.3f}" for n in names))
    return table


def paired(seeds: Sequence[int], a: dict[int, dict[str, float]],
           b: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """B minus A per measure: mean, CI half width and how many seeds B is better on."""
    out = {}
    for key, _, higher in MEASURES:
        diffs = [b[s][key] - a[s][key] for s in seeds]
        better = None if higher is None else sum((d > 0) if higher else (d < 0) for d in diffs)
        out[key] = {**summarize(diffs), "b_better_on": better, "seeds": len(seeds)}
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
        title = f"{name}: {' '.join(overrides) or 'defaults'}"
        console.print(fits_table(title, args.seeds, fits[name]))
        slopes = slopes_table(title, args.seeds, fits[name])
        if slopes is not None:
            console.print(slopes)
    result: dict[str, Any] = {
        "configs": configs, "seeds": args.seeds,
        "fits": {name: {str(s): row for s, row in by_seed.items()} for name, by_seed in fits.items()},
        "summary": {name: {key: summarize([by_seed[s][key] for s in args.seeds]) for key, _, _ in MEASURES}
                    for name, by_seed in fits.items()}}
    if "B" in fits:
        result["b_minus_a"] = paired(args.seeds, fits["A"], fits["B"])
        console.print(paired_table(result["b_minus_a"]))
    result["facts"] = {"torch": torch.__version__, "python": platform.python_version(),
                       "cpu": cpu_model(), "threads": torch.get_num_threads(),
                       "seconds": time.perf_counter() - start}
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
