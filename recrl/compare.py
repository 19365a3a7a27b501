"""Compare runs: ``recrl compare <run or sweep folders...>`` writes one Markdown and one HTML page.

The pages show the runs' learning curves overlaid, the return of every policy in every
environment, the simulator-vs-ground-truth scatter (the sim-to-real gap) and, when the runs group
into configurations that share seeds, the paired difference of every pair of configurations.
The figures are PNG files next to the pages; the HTML page links them by relative path, so the
folder opens offline and can be moved as a whole.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from recrl.fileio import write_bytes_atomic, write_text_atomic
from recrl.metrics.stats import summarize
from recrl.report import METRICS_FILE, format_stat, markdown_table, read_metrics
from recrl.sweep import GROUND_TRUTH, HEADLINE_METRIC, SEED_KEY, find_reports
from recrl.types import RecrlError

SIMULATOR = "simulator"
CURVE_KEY = "eval/return"
# config keys that do not make two runs different configurations: the seed (the pairing key)
# and where files live or how progress is shown
IGNORED_KEYS = frozenset({SEED_KEY, "cache_dir", "data_dir", "resume", "trainer.progress"})
SAME_CONFIG = "(same config)"
UNSET = "(unset)"
PAGE_NAME = "compare"  # compare.md and compare.html
CURVES_PNG, RETURNS_PNG, SCATTER_PNG, PAIRED_PNG = (
    "learning_curves.png", "returns.png", "sim_vs_truth.png", "paired.png")
LEGEND_WIDTH = 48  # characters per legend line
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")



class Table(NamedTuple):
    """A table of text cells; columns from ``text_columns`` on hold numbers (right-aligned)."""

    header: list[str]
    rows: list[list[str]]
    text_columns: int = 1


@dataclass
class Run:
    """One run folder: its report, its flattened config (the seed and bookkeeping keys dropped),
    its Hydra group choices (``algo: dqn``), seed and ``eval/return`` learning curve.

    ``group`` (the configuration label) and ``label`` (unique per run) are set by :func:`group_runs`.
    """

    path: Path
    report: dict[str, Any]
    config: dict[str, str]
    choices: dict[str, str]
    seed: int | None
    curve: tuple[list[float], list[float]]
    group: str = ""
    label: str = ""

    @property
    def evaluation(self) -> dict[str, dict[str, Any]]:
        """The report's ``evaluation`` block: ``{env: {policy: {metric: {mean, ci95, n}}}}``."""
        return self.report.get("evaluation") or {}

    def stat(self, env: str, policy: str, metric: str = HEADLINE_METRIC) -> dict[str, Any] | None:
        """``{mean, ci95, n}`` of one policy's metric in one environment, or ``None``."""
        stat = self.evaluation.get(env, {}).get(policy, {}).get(metric)
        return stat if isinstance(stat, dict) else None

    def mean(self, env: str, policy: str, metric: str = HEADLINE_METRIC) -> float:
        """The mean of :meth:`stat`, NaN when missing or null."""
        return _float((self.stat(env, policy, metric) or {}).get("mean"))

    def trained_policy(self, env: str) -> str | None:
        """The policy this run trained: the report's ``algo`` when the env lists it, else the env's first."""
        policies = list(self.evaluation.get(env, {}))
        algo = self.report.get("algo")
        if algo in policies:
            return str(algo)
        return policies[0] if policies else None


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


@dataclass
class Section:
    """One part of the page: a heading, notes, optional figure (a PNG file name) and tables."""

    title: str
    notes: list[str] = field(default_factory=list)
    figure: str | None = None
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)


def _float(value: Any) -> float:
    """``value`` as a float; NaN for ``None`` or anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _read_yaml(path: Path) -> Any:
    """Parsed YAML of ``path``, or ``None`` when it is absent or unreadable."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key -> compact JSON text of every leaf of a nested dict (lists are leaves).

    Example::

        >>> flatten({"algo": {"lr": 0.001, "dims": [1, 2]}, "seed": 0})
        {'algo.lr': '0.001', 'algo.dims': '[1, 2]', 'seed': '0'}
    """
    if isinstance(node, dict) and node:
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(node, sort_keys=True)} if prefix else {}


def _choices(run_dir: Path, report: dict[str, Any]) -> dict[str, str]:
    """Top-level Hydra group choices of a run (``.hydra/hydra.yaml``), plus the report's ``algo``."""
    node: Any = _read_yaml(run_dir / ".hydra" / "hydra.yaml")
    for key in ("hydra", "runtime", "choices"):
        node = node.get(key) if isinstance(node, dict) else None
    choices = {str(k): str(v) for k, v in (node or {}).items() if v is not None and "/" not in str(k)}
    if report.get("algo"):
        choices["algo"] = str(report["algo"])
    return choices


def _curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(steps, values) of ``eval/return`` in the run's ``metrics.jsonl`` (empty when absent or unreadable)."""
    try:
        records = read_metrics(run_dir / METRICS_FILE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [], []
    points = [(_float(r.get("step")), _float(r.get(CURVE_KEY))) for r in records
              if isinstance(r, dict) and CURVE_KEY in r]
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in points], [y for _, y in points]


def load_run(report_path: Path) -> Run:
    """Read one run folder from its ``report.json`` (config from the report, else ``.hydra/config.yaml``)."""
    report_path = Path(report_path)
    run_dir = report_path.parent
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecrlError(f"cannot read {report_path}: {err}") from err
    if not isinstance(report, dict):
        raise RecrlError(f"{report_path} is not a recrl report (not a JSON object)")
    config = report.get("config") or _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    config = config if isinstance(config, dict) else {}
    seed = report.get("seed", config.get(SEED_KEY))
    flat = {k: v for k, v in flatten(config).items() if k not in IGNORED_KEYS}
    return Run(path=run_dir, report=report, config=flat, choices=_choices(run_dir, report),
               seed=int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None,
               curve=_curve(run_dir))


def collect_runs(folders: Sequence[Path]) -> list[Run]:
    """Every run below the given run or sweep folders (a folder with its own ``report.json`` is one
    run; otherwise its job folders are, as :func:`recrl.sweep.find_reports` finds them).

    Runs without evaluation results are left out. Raises :class:`RecrlError` for a missing folder,
    a folder without any ``report.json`` and when no run has evaluation results.
    """
    paths: list[Path] = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise RecrlError(f"run or sweep folder {folder} does not exist")
        if not folder.is_dir():
            raise RecrlError(f"{folder} is not a folder (give run or sweep folders)")
        found = [folder / "report.json"] if (folder / "report.json").is_file() else find_reports(folder)
        if not found:
            raise RecrlError(f"no report.json under {folder} (give run folders or sweep folders)")
        paths += found
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    runs = [run for run in map(load_run, unique) if run.evaluation]
    if not runs:
        raise RecrlError("no report.json under " + ", ".join(map(str, folders)) + " has evaluation results")
    return runs


def _show(value: str | None) -> str:
    """A flattened config value for a label: strings without quotes, lists compact."""
    if value is None:
        return UNSET
    parsed = json.loads(value)
    return parsed if isinstance(parsed, str) else json.dumps(parsed, separators=(",", ":"))


def group_labels(reps: Sequence[Run]) -> list[str]:
    """One label per configuration (a representative run each): the config keys that differ.

    A config group chosen differently (``algo``: dqn vs ppo) shows as ``algo=dqn`` instead of the
    keys below it; keys below it still show where configurations with the same choice differ.
    Other differing keys show as ``key=value``. Nothing differs: ``(same config)``.
    """
    keys = sorted(set().union(*(r.config for r in reps)))
    differing = [k for k in keys if len({r.config.get(k) for r in reps}) > 1]
    tokens: list[list[str]] = [[] for _ in reps]
    handled: set[str] = set()
    for prefix in sorted({k.split(".", 1)[0] for k in differing}):
        picks = [r.choices.get(prefix) for r in reps]
        if None in picks or len(set(picks)) == 1:
            continue
        under = [k for k in differing if k == prefix or k.startswith(prefix + ".")]
        handled.update(under)
        for i, run in enumerate(reps):
            mates = [m for m, pick in zip(reps, picks, strict=True) if pick == picks[i]]
            tokens[i].append(f"{prefix}={picks[i]}")
            tokens[i] += [f"{k}={_show(run.config.get(k))}" for k in under
                          if len({m.config.get(k) for m in mates}) > 1]
    for i, run in enumerate(reps):
        tokens[i] += [f"{k}={_show(run.config.get(k))}" for k in differing if k not in handled]
    return [" ".join(t) or SAME_CONFIG for t in tokens]


def _config_key(run: Run) -> tuple[tuple[str, str], ...]:
    """What identifies a run's configuration: its flattened config minus the ignored keys."""
    return tuple(sorted(run.config.items()))


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Group runs by their config minus the seed: label -> runs (in seed order), first seen first.

    Sets every run's ``group`` and a unique ``label`` (``<configuration> seed=<s>``, plus the
    folder when two runs would share a label).
    """
    by_key: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        by_key.setdefault(_config_key(run), []).append(run)
    members = list(by_key.values())
    labels = group_labels([m[0] for m in members])
    groups: dict[str, list[Run]] = {}
    for label, group in zip(labels, members, strict=True):
        group.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
        for run in group:
            run.group = label
            parts = ([] if label == SAME_CONFIG else [label]) + (
                [] if run.seed is None else [f"seed={run.seed}"])
            run.label = " ".join(parts) or run.path.name
        groups[label] = group
    _disambiguate([run for group in groups.values() for run in group])
    return groups


def _disambiguate(runs: Sequence[Run]) -> None:
    """Append the folder name, then the whole path, to labels that two runs share."""
    for suffix in (lambda r: r.path.name, lambda r: str(r.path)):
        counts = Counter(run.label for run in runs)
        for run in runs:
            if counts[run.label] > 1:
                run.label = f"{run.label.split(' [')[0]} [{suffix(run)}]"


def envs_of(runs: Sequence[Run]) -> list[str]:
    """Evaluation environments of the runs, first seen first."""
    return list(dict.fromkeys(env for run in runs for env in run.evaluation))


def policies_of(runs: Sequence[Run], env: str) -> list[str]:
    """Policies evaluated in ``env`` by any run, first seen first."""
    return list(dict.fromkeys(p for run in runs for p in run.evaluation.get(env, {})))


def _seed_key(run: Run) -> Any:
    """What pairs runs: the seed (the folder for a run without one)."""
    return run.path if run.seed is None else run.seed


def _per_seed(runs: Sequence[Run], value: Callable[[Run], float]) -> dict[Any, float]:
    """seed -> ``value(run)`` averaged over the runs with that seed (non-finite values dropped; a run
    without a seed keys by its folder)."""
    values: dict[Any, list[float]] = {}
    for run in runs:
        v = value(run)
        if math.isfinite(v):
            values.setdefault(_seed_key(run), []).append(v)
    return {seed: sum(v) / len(v) for seed, v in values.items()}


def _trained_return(run: Run, env: str) -> float:
    """The return of the run's trained policy in ``env`` (NaN when missing)."""
    policy = run.trained_policy(env)
    return run.mean(env, policy) if policy else float("nan")


def seed_returns(runs: Sequence[Run], env: str) -> dict[int, float]:
    """seed -> return of each run's trained policy in ``env``, in seed order (runs sharing a seed
    are averaged; runs without a seed are left out)."""
    seeded = [run for run in runs if run.seed is not None]
    return dict(sorted(_per_seed(seeded, lambda run: _trained_return(run, env)).items()))


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


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure with an Agg canvas (no pyplot state, safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> str:
    """Write ``fig`` as a PNG to ``path`` atomically; returns the file name."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())
    return path.name


def _wrap(text: str) -> str:
    """A legend entry wrapped to ``LEGEND_WIDTH`` characters per line."""
    return textwrap.fill(text, LEGEND_WIDTH)


def _colors(groups: dict[str, list[Run]]) -> dict[str, Any]:
    """Run label -> RGB colour: one hue per configuration, lighter for its later seeds."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    colors = {}
    for g, runs in enumerate(groups.values()):
        base = palette(g % 10)[:3]
        for i, run in enumerate(runs):
            mix = 0.55 * i / max(len(runs), 2)
            colors[run.label] = tuple(c + (1.0 - c) * mix for c in base)
    return colors


def plot_curves(groups: dict[str, list[Run]], out_png: Path) -> str | None:
    """Every run's ``eval/return`` against the env step, overlaid; ``None`` when no run logged one."""
    runs = [run for g in groups.values() for run in g if run.curve[0]]
    if not runs:
        return None
    colors = _colors(groups)
    fig = _figure(11, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for run in runs:
        steps, values = run.curve
        style = LINESTYLES[groups[run.group].index(run) % len(LINESTYLES)]
        ax.plot(steps, values, linestyle=style, color=colors[run.label], label=_wrap(run.label),
                marker="o" if len(steps) < 30 else None, markersize=3)
    ax.set_xlabel("env step")
    ax.set_ylabel(CURVE_KEY)
    ax.set_title("Learning curves (evaluation in the training simulator)")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return _save(fig, out_png)


def plot_returns(groups: dict[str, list[Run]], out_png: Path) -> str | None:
    """Bars of every run's return per policy (one panel per environment), 95% CI as error bars."""
    runs = [run for g in groups.values() for run in g]
    envs = envs_of(runs)
    if not envs:
        return None
    colors = _colors(groups)
    n_policies = max(len(policies_of(runs, env)) for env in envs)
    width = min(24.0, max(9.0, 0.22 * len(runs) * n_policies + 4))
    fig = _figure(width, 3.6 * len(envs))
    bar = 0.8 / len(runs)
    for row, env in enumerate(envs):
        ax = fig.add_subplot(len(envs), 1, row + 1)
        policies = policies_of(runs, env)
        for i, run in enumerate(runs):
            xs, ys, errs = [], [], []
            for x, policy in enumerate(policies):
                stat = run.stat(env, policy) or {}
                mean, ci = _float(stat.get("mean")), _float(stat.get("ci95"))
                if math.isfinite(mean):
                    xs.append(x - 0.4 + bar * (i + 0.5))
                    ys.append(mean)
                    errs.append(ci if math.isfinite(ci) else 0.0)
            ax.bar(xs, ys, bar, yerr=errs, capsize=2, color=colors[run.label],
                   label=_wrap(run.label) if row == 0 else None, error_kw={"elinewidth": 0.8})
        ax.set_xticks(range(len(policies)), policies)
        ax.set_ylabel(HEADLINE_METRIC)
        ax.set_title(f"{HEADLINE_METRIC} on {env} (mean ± 95% CI over evaluation episodes)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return _save(fig, out_png)


def sim_truth_points(runs: Sequence[Run]) -> list[tuple[Run, str, dict[str, Any], dict[str, Any]]]:
    """(run, policy, simulator stat, ground-truth stat) for every policy with a finite return in both."""
    points = []
    for run in runs:
        for policy in run.evaluation.get(SIMULATOR, {}):
            sim, truth = run.stat(SIMULATOR, policy), run.stat(GROUND_TRUTH, policy)
            if sim and truth and math.isfinite(_float(sim.get("mean"))) and math.isfinite(
                    _float(truth.get("mean"))):
                points.append((run, policy, sim, truth))
    return points


def plot_sim_vs_truth(groups: dict[str, list[Run]], out_png: Path) -> str | None:
    """Ground-truth against simulator return per run and policy, with the y = x line; ``None``
    when no policy has both."""
    from matplotlib.lines import Line2D

    runs = [run for g in groups.values() for run in g]
    points = sim_truth_points(runs)
    if not points:
        return None
    colors = _colors(groups)
    policies = list(dict.fromkeys(policy for _, policy, _, _ in points))
    fig = _figure(10, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    for run, policy, sim, truth in points:
        xerr, yerr = _float(sim.get("ci95")), _float(truth.get("ci95"))
        ax.errorbar(_float(sim["mean"]), _float(truth["mean"]), xerr=xerr if math.isfinite(xerr) else None,
                    yerr=yerr if math.isfinite(yerr) else None, fmt=MARKERS[policies.index(policy) % len(
                        MARKERS)], color=colors[run.label], markersize=7, elinewidth=0.6, capsize=2,
                    alpha=0.85)
    values = [_float(s["mean"]) for _, _, s, _ in points] + [_float(t["mean"]) for _, _, _, t in points]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel(f"{HEADLINE_METRIC} in the simulator")
    ax.set_ylabel(f"{HEADLINE_METRIC} in the ground truth")
    ax.set_title("Simulator vs ground truth (below the dashed y = x line: the simulator flatters)")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="gray", label=p)
               for i, p in enumerate(policies)]
    handles += [Line2D([], [], linestyle="", marker="o", color=colors[run.label], label=_wrap(run.label))
                for run in runs if any(r is run for r, _, _, _ in points)]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return _save(fig, out_png)


def plot_paired(pairs: Sequence[PairedDifference], out_png: Path) -> str | None:
    """Forest plot of the paired differences with their 95% CIs; ``None`` when none is finite."""
    shown = [p for p in pairs if math.isfinite(p.mean)]
    if not shown:
        return None
    fig = _figure(10, 1.2 + 0.55 * len(shown))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(shown)))[::-1]
    errs = [p.ci95 if math.isfinite(p.ci95) else 0.0 for p in shown]
    ax.errorbar([p.mean for p in shown], ys, xerr=errs, fmt="o", capsize=4, color="tab:blue")
    ax.axvline(0.0, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [textwrap.fill(f"{p.a}  −  {p.b}  (n={p.n})", 70) for p in shown], fontsize="small")
    ax.set_xlabel(f"paired difference of {HEADLINE_METRIC} in {shown[0].env} (mean ± 95% CI over seeds)")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out_png)


# ---------------------------------------------------------------- tables


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
            values = list(_per_seed(members, lambda run, p=policy: run.mean(env, p)).values())
            cells.append(format_stat(summarize(values)) if values else "–")
        rows.append([label, str(len({_seed_key(run) for run in members})), *cells])
    return Table(["configuration", "seeds", *policies], rows)


def gap_table(runs: Sequence[Run]) -> Table:
    """Per run and policy: simulator return, ground-truth return and the gap (truth − simulator)."""
    rows = [[run.label, policy, format_stat(sim), format_stat(truth),
             _number(_float(truth["mean"]) - _float(sim["mean"]))]
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


# ---------------------------------------------------------------- sections and pages


def build_sections(groups: dict[str, list[Run]], out_dir: Path) -> list[Section]:
    """The page's sections in order, drawing each figure into ``out_dir``."""
    runs = [run for g in groups.values() for run in g]
    sections = [Section("Runs", [f"{len(runs)} runs in {len(groups)} configurations (runs grouped by "
                                 "their resolved config minus the seed; a configuration is named by "
                                 "the keys that differ)."], tables=[("", runs_table(groups))])]
    curves = Section("Learning curves", [f"`{CURVE_KEY}` (the return in the training simulator) "
                                         "against the env step, from each run's `metrics.jsonl`."])
    curves.figure = plot_curves(groups, out_dir / CURVES_PNG)
    if curves.figure is None:
        curves.notes.append(f"No run logged `{CURVE_KEY}`.")
    sections.append(curves)
    returns = Section(f"{HEADLINE_METRIC.capitalize()} per policy and environment",
                      ["Mean ± 95% CI half width over each run's evaluation episodes."])
    returns.figure = plot_returns(groups, out_dir / RETURNS_PNG)
    returns.tables = [(f"{HEADLINE_METRIC} on {env}", returns_table(runs, env)) for env in envs_of(runs)]
    if any(len(members) > 1 for members in groups.values()):
        returns.tables += [(f"{HEADLINE_METRIC} on {env} by configuration (mean ± Student-t 95% CI "
                            "across the runs' seeds)", configurations_table(groups, env))
                           for env in envs_of(runs)]
    sections.append(returns)
    sections.append(_gap_section(groups, out_dir))
    sections.append(_paired_section(groups, out_dir))
    return sections


def _gap_section(groups: dict[str, list[Run]], out_dir: Path) -> Section:
    """The simulator-vs-ground-truth scatter and gap table (a note when no run has both)."""
    runs = [run for g in groups.values() for run in g]
    section = Section("Simulator vs ground truth")
    section.figure = plot_sim_vs_truth(groups, out_dir / SCATTER_PNG)
    if section.figure is None:
        section.notes.append(f"No policy was evaluated in both `{SIMULATOR}` and `{GROUND_TRUTH}`.")
        return section
    section.notes.append("One point per run and policy (colour: run, marker: policy), 95% CIs as "
                         "error bars. On the dashed y = x line the simulator predicts the ground "
                         "truth; the vertical distance to it is the sim-to-real gap.")
    section.tables = [("", gap_table(runs))]
    return section


def _paired_section(groups: dict[str, list[Run]], out_dir: Path) -> Section:
    """Paired differences across seeds between every two configurations (a note when there are not two)."""
    runs = [run for g in groups.values() for run in g]
    section = Section("Paired comparison across seeds")
    env = paired_env(runs)
    if len(groups) < 2:
        section.notes.append("Needs at least two configurations; all runs here share one configuration.")
        return section
    if env is None:
        section.notes.append(f"No run has a `{HEADLINE_METRIC}` in `{GROUND_TRUTH}` or `{SIMULATOR}`.")
        return section
    pairs = paired_differences(groups, env)
    section.notes.append(
        f"For each pair of configurations A and B: the mean over their common seeds of A's minus B's "
        f"`{HEADLINE_METRIC}` in `{env}` (each run's trained policy), with the Student-t 95% CI "
        "half width (n − 1 degrees of freedom; none below two pairs). An interval that excludes 0 "
        "separates the configurations at this number of seeds.")
    section.figure = plot_paired(pairs, out_dir / PAIRED_PNG)
    section.tables = [("", paired_table(pairs))]
    return section


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The Markdown page: every section's notes, figure (a link to the PNG next to the page) and tables."""
    lines = [f"# {title}"]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for note in section.notes:
            lines += ["", note]
        if section.figure:
            lines += ["", f"![{section.title}]({section.figure})"]
        for caption, table in section.tables:
            if caption:
                lines += ["", f"**{caption}**"]
            lines += ["", markdown_table(table.header, table.rows, right_from=table.text_columns)]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline_html(text: str) -> str:
    """Escape ``text`` for HTML and turn Markdown ```code``` spans into ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(caption: str, table: Table) -> str:
    """An HTML table: the text columns left-aligned, the number columns right-aligned."""
    header, rows, text_columns = table
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_inline_html(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = [f'<td{" class=num" if i >= text_columns else ""}>{html.escape(c)}</td>'
                 for i, c in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*out, "</table>"])


def render_html(title: str, sections: Sequence[Section]) -> str:
    """A self-standing HTML page (no scripts, no network) with the same content as the Markdown page;
    figures are ``<img>`` elements with relative ``src``, so the page needs only its folder."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [f"<p>{_inline_html(note)}</p>" for note in section.notes]
        if section.figure:
            body.append(f'<a href="{html.escape(section.figure)}"><img src="{html.escape(section.figure)}" '
                        f'alt="{html.escape(section.title)}"></a>')
        body += [_html_table(caption, table) for caption, table in section.tables]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        *body, "</body>", "</html>", ""])


def default_out_dir(now: datetime | None = None) -> Path:
    """``outputs/compare/<YYYY-MM-DD_HH-MM-SS>`` (relative to the working folder, like a run's)."""
    return Path("outputs") / "compare" / (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")


def compare(folders: Sequence[Path], out_dir: Path) -> tuple[Path, Path, int, int]:
    """Compare the runs below ``folders``: write ``compare.md``, ``compare.html`` and the figures
    into ``out_dir``. Returns (Markdown path, HTML path, number of runs, number of configurations).

    Raises :class:`RecrlError` (before anything is written) when an input folder is missing or
    holds no run with evaluation results, or when ``out_dir`` is a file.
    """
    runs = collect_runs(folders)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RecrlError(f"output folder {out_dir} is a file")
    groups = group_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(groups, out_dir)
    title = "recrl compare: " + ", ".join(str(f) for f in folders)
    md_path, html_path = out_dir / f"{PAGE_NAME}.md", out_dir / f"{PAGE_NAME}.html"
    write_text_atomic(md_path, render_markdown(title, sections))
    write_text_atomic(html_path, render_html(title, sections))
    return md_path, html_path, len(runs), len(groups)
