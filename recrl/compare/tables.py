"""The tables of ``recrl compare``: runs, returns per policy (per run and per configuration), the
sim-to-real gap and the paired differences, as :class:`Table` values of text cells."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from recrl.compare.paired import PairedDifference, mean_per_seed, pairing_key
from recrl.compare.runs import CURVE_KEY, SIMULATOR, Run, as_float, policies_of, sim_truth_points
from recrl.metrics.stats import summarize
from recrl.report import format_stat
from recrl.sweep import GROUND_TRUTH


class Table(NamedTuple):
    """A table of text cells; columns from ``text_columns`` on hold numbers (right-aligned)."""

    header: list[str]
    rows: list[list[str]]
    text_columns: int = 1


def _number(value: float, digits: int = 3) -> str:
    """A float with ``digits`` decimals, ``–`` when not finite."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def runs_table(groups: dict[str, list[Run]]) -> Table:
    """One row per run: label, configuration, seed, trained algorithm, folder, last ``eval/return``."""
    rows = [[run.label, run.group, "–" if run.seed is None else str(run.seed),
             str(run.report.get("algo", "–")), str(run.path),
             _number(run.curve[1][-1]) if run.curve[1] else "–"]
            for runs in groups.values() for run in runs]
    return Table(["run", "configuration", "seed", "algo", "folder", f"last {CURVE_KEY}"], rows, 5)


def returns_table(runs: Sequence[Run], env: str) -> Table:
    """Runs as rows, the policies of ``env`` as columns: ``mean ± 95% CI`` over evaluation episodes."""
    policies = policies_of(runs, env)
    rows = [[run.label, *(format_stat(run.stat(env, p)) for p in policies)] for run in runs]
    return Table(["run", *policies], rows)


def configurations_table(groups: dict[str, list[Run]], env: str) -> Table:
    """Configurations as rows, policies as columns: the mean over seeds of the runs' returns ± its
    Student-t 95% CI (runs sharing a seed are averaged first; ``seeds`` counts the distinct seeds)."""
    runs = [run for g in groups.values() for run in g]
    policies = policies_of(runs, env)
    rows = []
    for label, members in groups.items():
        cells = []
        for policy in policies:
            values = list(mean_per_seed(members, lambda run, p=policy: run.mean(env, p)).values())
            cells.append(format_stat(summarize(values)) if values else "–")
        rows.append([label, str(len({pairing_key(run) for run in members})), *cells])
    return Table(["configuration", "seeds", *policies], rows)


def gap_table(runs: Sequence[Run]) -> Table:
    """Per run and policy: simulator return, ground-truth return and the gap (truth − simulator)."""
    rows = [[run.label, policy, format_stat(sim), format_stat(truth),
             _number(as_float(truth["mean"]) - as_float(sim["mean"]))]
            for run, policy, sim, truth in sim_truth_points(runs)]
    return Table(["run", "policy", SIMULATOR, GROUND_TRUTH, "gap (truth − sim)"], rows, 2)


def paired_table(pairs: Sequence[PairedDifference]) -> Table:
    """One row per pair of configurations: mean difference, CI half width, interval, pairs and seeds."""
    rows = []
    for p in pairs:
        low, high = p.mean - p.ci95, p.mean + p.ci95
        interval = f"[{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else "–"
        rows.append([p.a, p.b, _number(p.mean), _number(p.ci95), interval, str(p.n),
                     ", ".join(map(str, p.seeds)) or "none in common"])
    return Table(["A", "B", "mean A − B", "± 95% CI", "interval", "pairs", "seeds"], rows, 2)
