"""Collecting and grouping the runs of ``recrl compare``.

A :class:`Run` is one run folder read from its ``report.json`` (config, Hydra choices, seed and
``eval/return`` learning curve). :func:`collect_runs` finds the runs below run or sweep folders;
:func:`group_runs` groups them into configurations (the config minus the seed) and labels them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recrl.report import METRICS_FILE, read_metrics
from recrl.sweep import GROUND_TRUTH, HEADLINE_METRIC, SEED_KEY, find_reports
from recrl.types import RecrlError

SIMULATOR = "simulator"
CURVE_KEY = "eval/return"
# config keys that do not make two runs different configurations: the seed (the pairing key)
# and where files live or how progress is shown
IGNORED_KEYS = frozenset({SEED_KEY, "cache_dir", "data_dir", "resume", "trainer.progress"})
SAME_CONFIG = "(same config)"
UNSET = "(unset)"


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
        return as_float((self.stat(env, policy, metric) or {}).get("mean"))

    def trained_policy(self, env: str) -> str | None:
        """The policy this run trained: the report's ``algo`` when the env lists it, else the env's first."""
        policies = list(self.evaluation.get(env, {}))
        algo = self.report.get("algo")
        if algo in policies:
            return str(algo)
        return policies[0] if policies else None


def as_float(value: Any) -> float:
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
    points = [(as_float(r.get("step")), as_float(r.get(CURVE_KEY))) for r in records
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


def sim_truth_points(runs: Sequence[Run]) -> list[tuple[Run, str, dict[str, Any], dict[str, Any]]]:
    """(run, policy, simulator stat, ground-truth stat) for every policy with a finite return in both."""
    points = []
    for run in runs:
        for policy in run.evaluation.get(SIMULATOR, {}):
            sim, truth = run.stat(SIMULATOR, policy), run.stat(GROUND_TRUTH, policy)
            if sim and truth and math.isfinite(as_float(sim.get("mean"))) and math.isfinite(
                    as_float(truth.get("mean"))):
                points.append((run, policy, sim, truth))
    return points

