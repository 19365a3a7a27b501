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
- which part of the fit costs the planner (a second table): its ground-truth return when it plans
  with the fit's responses (what the reward reads: clicks, conversions, ratings) and the truth's
  leaving, and with the truth's responses and the fit's leaving
  (:class:`~recrl.algos.planner.MixedModel`; the truth seen from the history as a deployed
  recommender would, :class:`~recrl.data.synthetic.HistoryBelief`), next to the planner on the
  truth alone; with ``--ablate`` also the truth's responses with one term of its click utility
  removed (the user's interest, topic boredom, item quality or the clickbait pull), so the
  table says which effects a fitted click model must get right;
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
    python scripts/simulator_fits.py --seeds 0 1 2 3 4 --ablate interest boredom quality clickbait
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

from recrl.algos.planner import MixedModel, SurvivalPlanner
from recrl.behavior.features import side_features
from recrl.behavior.fidelity import true_model_agreement
from recrl.behavior.fit import training_tensors
from recrl.data.synthetic import HistoryBelief, SyntheticWorld
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

#: which part of the fit costs the planner: its ground-truth return with a part of the fit
#: replaced by the truth seen from the history (:func:`attribution_models`)
ATTRIBUTION = (("planner_return", "fit responses · fit leaving", True),
               ("planner_true_leaving", "fit responses · true leaving", True),
               ("planner_true_responses", "true responses · fit leaving", True))

#: the truth's click-utility terms ``--ablate`` can remove: the world parameter set to 0, or
#: ``None`` for the interest, which is estimated from the history (set to zero instead)
ABLATIONS: dict[str, str | None] = {"interest": None, "boredom": "click_boredom",
                                    "quality": "click_quality", "clickbait": "click_bait"}


def attribution_measures(ablate: Sequence[str]) -> tuple[tuple[str, str, bool], ...]:
    """:data:`ATTRIBUTION` and, for each ablated term, the truth's responses without it."""
    return (*ATTRIBUTION, *((f"planner_true_responses_without_{part}",
                             f"true responses without {part} · fit leaving", True) for part in ablate))


def truth_without(world: SyntheticWorld, part: str) -> HistoryBelief:
    """The truth seen from the history with one click-utility term (:data:`ABLATIONS`) removed."""
    parameter = ABLATIONS[part]
    if parameter is None:
        return HistoryBelief(world, interest=lambda _, clicks: clicks.new_zeros(len(clicks), world.n_topics))
    changed = world.ground_truth(world.device)
    setattr(changed, parameter, 0.0)
    return HistoryBelief(changed)


def attribution_models(fit: Any, world: SyntheticWorld, ablate: Sequence[str]) -> dict[str, Any]:
    """The planner's user model behind each :func:`attribution_measures` key but the first (the
    fit itself): the fit and the truth mixed (:class:`~recrl.algos.planner.MixedModel`)."""
    truth = HistoryBelief(world)
    models = {"planner_true_leaving": MixedModel(fit, truth),
              "planner_true_responses": MixedModel(truth, fit)}
    for part in ablate:
        models[f"planner_true_responses_without_{part}"] = MixedModel(truth_without(world, part), fit)
    return models


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
              caution: float = 2.0, ablate: Sequence[str] = ()) -> dict[str, Any]:
    """Fit (or load from the cache) the behavior model of ``overrides`` with ``training_seed`` and
    score it (:data:`MEASURES`, :func:`attribution_measures`, :func:`attribute_slopes`, the fit's
    epochs and seconds, and ``truth_planner``: the planner on the truth alone); the planner plans
    with ``caution`` (``algo.caution``) on ``users`` evaluation users (``eval.episodes`` when
    ``None``)."""
    cfg, stages, world, env = synthetic_run([*overrides, f"behavior.training.seed={training_seed}"],
                                            "simulator fits")
    report, model = stages.behavior_report, stages.behavior
    planner = SurvivalPlanner(stages.ctx, caution=caution)
    random_slates = true_model_agreement(model, env)
    planner_slates = true_model_agreement(model, env, policy=planner)

    def summary(policy: Any, world_env: Any) -> dict[str, Any]:
        return run_episodes(policy, world_env, users or cfg.eval.episodes, seed=cfg.eval.seed,
                            batch_size=cfg.eval.batch_size).summary()

    runs = {where: summary(planner, world_env)
            for where, world_env in (("truth", env), ("simulator", stages.make_env(model)))}
    returns = {where: s["return"]["mean"] for where, s in runs.items()}
    planning_models = {**attribution_models(model, world, ablate), "truth_planner": HistoryBelief(world)}
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
            **{key: float(summary(SurvivalPlanner(stages.ctx, caution=caution, model=planning_model),
                                  env)["return"]["mean"]) for key, planning_model in planning_models.items()},
            "slopes": attribute_slopes(stages),
            "epochs": float(report.get("epochs", float("nan"))),
            "fit_seconds": float(report.get("seconds", float("nan")))}


def fits_table(title: str, seeds: Sequence[int], fits: dict[int, dict[str, Any]],
               measures: Sequence[tuple[str, str, bool | None]] = MEASURES,
               caption: str = "log-loss: validation; r: Pearson correlation with the true probabilities; "
                              "planner: its return") -> Table:
    """One row per training seed and a mean ± CI row of ``measures``."""
    table = Table(title=title, caption=caption)
    table.add_column("training seed", justify="right")
    for _, column, _ in measures:
        table.add_column(column, justify="right")
    keys = [key for key, _, _ in measures]
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


def paired(seeds: Sequence[int], a: dict[int, dict[str, float]], b: dict[int, dict[str, float]],
           measures: Sequence[tuple[str, str, bool | None]] = MEASURES) -> dict[str, dict[str, float]]:
    """B minus A per measure: mean, CI half width and how many seeds B is better on."""
    out = {}
    for key, _, higher in measures:
        diffs = [b[s][key] - a[s][key] for s in seeds]
        better = None if higher is None else sum((d > 0) if higher else (d < 0) for d in diffs)
        out[key] = {**summarize(diffs), "b_better_on": better, "seeds": len(seeds)}
    return out


def paired_table(differences: dict[str, dict[str, float]],
                 measures: Sequence[tuple[str, str, bool | None]] = MEASURES) -> Table:
    """The :func:`paired` differences, one row per measure."""
    table = Table(title="B minus A, paired by training seed")
    for column in ("measure", "mean ± 95% CI", "B better on"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for key, column, _ in measures:
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


def main(argv: Sequence[str] | None = None) -> None:
    """Fit, score, print the tables and write the JSON (``argv``: the command line's arguments)."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="behavior.training.seed values, one fit each")
    parser.add_argument("--against", default=None,
                        help='overrides of a second configuration B, quoted: "behavior.recency=false"')
    parser.add_argument("--users", type=int, default=None, help="planner evaluation users (eval.episodes)")
    parser.add_argument("--caution", type=float, default=2.0,
                        help="the planner's algo.caution (2: its default and the demonstrations')")
    parser.add_argument("--ablate", nargs="+", default=[], choices=list(ABLATIONS),
                        help="click-utility terms of the truth to plan without, one row each")
    parser.add_argument("--out", type=Path, default=Path("simulator_fits.json"))
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --, for both configs")
    args = parser.parse_args(argv)
    configs = {"A": list(args.overrides)}
    if args.against is not None:
        configs["B"] = [*args.overrides, *shlex.split(args.against)]
    start = time.perf_counter()
    fits = {name: {seed: score_fit(overrides, seed, args.users, args.caution, args.ablate)
                   for seed in args.seeds} for name, overrides in configs.items()}
    measures = (*MEASURES, *attribution_measures(args.ablate)[1:])  # planner_return is in both
    console = Console(width=200)
    for name, overrides in configs.items():
        title = f"{name}: {' '.join(overrides) or 'defaults'}"
        console.print(fits_table(title, args.seeds, fits[name]))
        truth = fits[name][args.seeds[0]]["truth_planner"]  # the same for every fit
        console.print(fits_table(f"{title}: which part of the fit costs the planner (ground-truth return)",
                                 args.seeds, fits[name], attribution_measures(args.ablate),
                                 caption=f"the planner on the truth alone (from the history): {truth:.3f}"))
        slopes = slopes_table(title, args.seeds, fits[name])
        if slopes is not None:
            console.print(slopes)
    result: dict[str, Any] = {
        "configs": configs, "seeds": args.seeds, "ablate": args.ablate,
        "fits": {name: {str(s): row for s, row in by_seed.items()} for name, by_seed in fits.items()},
        "summary": {name: {key: summarize([by_seed[s][key] for s in args.seeds]) for key, _, _ in measures}
                    for name, by_seed in fits.items()}}
    if "B" in fits:
        result["b_minus_a"] = paired(args.seeds, fits["A"], fits["B"], measures)
        console.print(paired_table(result["b_minus_a"], measures))
    result["facts"] = {"torch": torch.__version__, "python": platform.python_version(),
                       "cpu": cpu_model(), "threads": torch.get_num_threads(),
                       "seconds": time.perf_counter() - start}
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
