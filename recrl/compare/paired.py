"""Paired statistics of ``recrl compare``: per-seed returns and the paired difference of every two
configurations over the seeds they share (mean and Student-t 95% CI)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recrl.compare.runs import SIMULATOR, Run
from recrl.metrics.stats import summarize
from recrl.sweep import GROUND_TRUTH


@dataclass(frozen=True)
class PairedDifference:
    """Mean paired difference ``a − b`` of the trained policies' return in ``env`` over the seeds
    configurations ``a`` and ``b`` share, with its Student-t 95% CI half width and ``n`` pairs."""

    a: str
    b: str
    env: str
    mean: float
    ci95: float
    n: int
    seeds: tuple[int, ...]


def pairing_key(run: Run) -> Any:
    """What pairs runs: the seed (the folder for a run without one)."""
    return run.path if run.seed is None else run.seed


def mean_per_seed(runs: Sequence[Run], value: Callable[[Run], float]) -> dict[Any, float]:
    """seed -> ``value(run)`` averaged over the runs with that seed (non-finite values dropped; a run
    without a seed keys by its folder)."""
    values: dict[Any, list[float]] = {}
    for run in runs:
        v = value(run)
        if math.isfinite(v):
            values.setdefault(pairing_key(run), []).append(v)
    return {seed: sum(v) / len(v) for seed, v in values.items()}


def _trained_return(run: Run, env: str) -> float:
    """The return of the run's trained policy in ``env`` (NaN when missing)."""
    policy = run.trained_policy(env)
    return run.mean(env, policy) if policy else float("nan")


def seed_returns(runs: Sequence[Run], env: str) -> dict[int, float]:
    """seed -> return of each run's trained policy in ``env``, in seed order (runs sharing a seed
    are averaged; runs without a seed are left out)."""
    seeded = [run for run in runs if run.seed is not None]
    return dict(sorted(mean_per_seed(seeded, lambda run: _trained_return(run, env)).items()))


def paired_env(runs: Sequence[Run]) -> str | None:
    """The environment of the paired comparison: the ground truth when every run has it, else the
    simulator when every run has it, else whichever of the two some run has."""
    envs = [GROUND_TRUTH, SIMULATOR]
    for env in envs:
        if all(run.trained_policy(env) for run in runs):
            return env
    return next((env for env in envs if any(run.trained_policy(env) for run in runs)), None)


def paired_differences(groups: dict[str, list[Run]], env: str) -> list[PairedDifference]:
    """For every pair of configurations (in label order), the mean of ``return_a − return_b`` over
    their common seeds with its Student-t 95% CI half width (NaN below two pairs)."""
    per_seed = {label: seed_returns(runs, env) for label, runs in groups.items()}
    pairs = []
    for a, b in itertools.combinations(groups, 2):
        seeds = tuple(sorted(set(per_seed[a]) & set(per_seed[b])))
        stats = summarize([per_seed[a][s] - per_seed[b][s] for s in seeds])
        pairs.append(PairedDifference(a, b, env, stats["mean"], stats["ci95"], int(stats["n"]), seeds))
    return pairs
