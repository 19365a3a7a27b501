"""Aggregate a Hydra multirun sweep: mean and 95% CI of every evaluation metric across seeds,
and the status of every job (a failed job is recorded in its folder; the others still run)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recrl.metrics.stats import summarize
from recrl.report import format_stat, markdown_table, write_json_atomic, write_text_atomic

SEED_KEY = "seed"
DEFAULT_CONFIGURATION = "(default)"
HEADLINE_METRIC = "return"
ALGO_KEY = "algo"
GROUND_TRUTH = "ground_truth"
COLUMNS = ["configuration", "env", "policy", "metric", "mean", "ci95", "n_seeds", "status"]
JOB_COLUMNS = ["job", "configuration", "seed", "status", "exit_code", "error"]
STATUS_FILE = "status.json"
OK, FAILED, PRUNED, INTERRUPTED = "ok", "failed", "pruned", "interrupted"

_Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class JobStatus:
    """How one job ended, kept in ``<job folder>/status.json``.

    Attributes:
        status: ``ok``, ``failed``, ``pruned`` (stopped early by a search's pruner) or
            ``interrupted`` (Ctrl-C / SIGTERM).
        exit_code: the code ``recrl train`` would have exited with (0 for ``ok`` and ``pruned``).
        error: the one-line error, or ``None``.
        seconds: wall time of the job.
    """

    status: str
    exit_code: int
    error: str | None = None
    seconds: float = float("nan")

    def write(self, job_dir: Path) -> None:
        """Write ``status.json`` into ``job_dir`` (atomically)."""
        write_json_atomic(Path(job_dir) / STATUS_FILE, asdict(self))

    @classmethod
    def read(cls, job_dir: Path) -> JobStatus | None:
        """The status a job wrote, or ``None`` (a job still running, or one killed outright)."""
        path = Path(job_dir) / STATUS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            seconds = data.get("seconds")
            return cls(str(data["status"]), int(data["exit_code"]), data.get("error"),
                       float("nan") if seconds is None else float(seconds))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def load_overrides(job_dir: Path) -> list[str]:
    """The command-line overrides of a Hydra job (``job_dir/.hydra/overrides.yaml``), or ``[]``."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(item) for item in data or []]


def override_key(override: str) -> str:
    """The key of a command-line override, without Hydra's ``+``/``~`` prefixes: ``+seed=3`` -> ``seed``."""
    return override.split("=", 1)[0].lstrip("+~")


def configuration_label(overrides: list[str], shared: frozenset[str] = frozenset()) -> str:
    """Sorted, space-joined overrides without the seed and the ``shared`` ones.

    ``shared`` holds the overrides every job of the sweep has (``experiment=smoke``, say), so
    the label names only what tells configurations apart.

    Example::

        >>> configuration_label(["seed=1", "reward=ctr", "algo=dqn"])
        'algo=dqn reward=ctr'
        >>> configuration_label(["+seed=3"])
        '(default)'
        >>> configuration_label(["algo=dqn", "experiment=smoke"], frozenset({"experiment=smoke"}))
        'algo=dqn'
    """
    kept = sorted(o for o in overrides
                  if override_key(o) != SEED_KEY and o not in shared)
    return " ".join(kept) or DEFAULT_CONFIGURATION


def _job_means(report: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """``(env, policy, metric) -> mean`` of one job's report (missing/null means become NaN)."""
    means: dict[tuple[str, str, str], float] = {}
    for env, policies in (report.get("evaluation") or {}).items():
        for policy, metrics in policies.items():
            for metric, stat in metrics.items():
                mean = stat.get("mean") if isinstance(stat, dict) else None
                means[(env, policy, metric)] = float("nan") if mean is None else float(mean)
    return means


def find_reports(sweep_dir: Path) -> list[Path]:
    """Every job ``report.json`` below ``sweep_dir`` (not a report in ``sweep_dir`` itself), sorted."""
    sweep_dir = Path(sweep_dir)
    return sorted(p for p in sweep_dir.rglob("report.json") if p.parent != sweep_dir)


def _job_order(job_dir: Path) -> tuple[int, str]:
    """Jobs ``0, 1, ..., 10`` in numeric order, other names after them."""
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (1 << 62, str(job_dir))


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every job folder below ``sweep_dir``: one with Hydra's ``.hydra/overrides.yaml``, a
    ``report.json`` or a ``status.json``, failed jobs included; in job order."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    found |= {p.parent for name in ("report.json", STATUS_FILE) for p in sweep_dir.rglob(name)}
    return sorted((d for d in found if d != sweep_dir), key=_job_order)


def job_labels(job_dirs: list[Path]) -> dict[Path, str]:
    """The configuration label of every job (:func:`configuration_label`, without the overrides
    all jobs share, unless they form a single configuration)."""
    overrides = {Path(d): load_overrides(d) for d in job_dirs}
    shared = frozenset.intersection(*(frozenset(o) for o in overrides.values())) if overrides else frozenset()
    if len({configuration_label(o) for o in overrides.values()}) == 1:
        shared = frozenset()  # a single configuration keeps its full label
    return {d: configuration_label(o, shared) for d, o in overrides.items()}


def job_status(job_dir: Path) -> JobStatus:
    """What ``status.json`` says, else ``ok`` when the job wrote its report, else ``unknown``
    (still running, or killed before it could write anything)."""
    status = JobStatus.read(job_dir)
    if status is not None:
        return status
    return JobStatus(OK, 0) if (Path(job_dir) / "report.json").is_file() else JobStatus("unknown", -1)


def _seed_of(overrides: list[str]) -> str:
    seeds = [o.split("=", 1)[1] for o in overrides if override_key(o) == SEED_KEY]
    return seeds[0] if seeds else ""


def collect_jobs(job_dirs: list[Path], labels: dict[Path, str] | None = None) -> pd.DataFrame:
    """One row per job (``JOB_COLUMNS``): its configuration, seed, status, exit code and error."""
    labels = labels if labels is not None else job_labels(job_dirs)
    rows = []
    for job_dir in job_dirs:
        status = job_status(job_dir)
        rows.append([Path(job_dir).name, labels[Path(job_dir)], _seed_of(load_overrides(job_dir)),
                     status.status, status.exit_code, status.error or ""])
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def configuration_status(jobs: pd.DataFrame) -> dict[str, str]:
    """``ok`` for a configuration whose jobs all succeeded, else e.g. ``1 of 3 failed, 1 pruned``."""
    result = {}
    for label, group in jobs.groupby("configuration", sort=False):
        counts = group["status"].value_counts()
        bad = [f"{n} {status}" for status, n in counts.items() if status != OK]
        result[str(label)] = "ok" if not bad else f"{' and '.join(bad)} of {len(group)}"
    return result


def collect_sweep(report_paths: list[Path], labels: dict[Path, str] | None = None,
                  status: dict[str, str] | None = None) -> pd.DataFrame:
    """Long table (``COLUMNS``) of per-configuration means and 95% CIs across the seeds of each
    job group; ``status`` (per configuration, :func:`configuration_status`) fills the status
    column, and a configuration none of whose jobs wrote a report gets one row of its own."""
    values: dict[_Key, list[float]] = {}
    labels = labels if labels is not None else job_labels([p.parent for p in report_paths])
    status = status or {}
    for path in report_paths:
        label = labels[path.parent]
        report = json.loads(path.read_text(encoding="utf-8"))
        for (env, policy, metric), mean in _job_means(report).items():
            values.setdefault((label, env, policy, metric), []).append(mean)
    rows = []
    for (label, env, policy, metric), means in values.items():
        stats = summarize(means)
        rows.append([label, env, policy, metric, stats["mean"], stats["ci95"], stats["n"],
                     status.get(label, OK)])
    reported = {row[0] for row in rows}
    rows += [[label, "", "", "", math.nan, math.nan, 0, text] for label, text in status.items()
             if label not in reported]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values("configuration", kind="stable", ignore_index=True)


def _cell(row: pd.Series) -> str:
    """``mean ± ci95`` text of one summary row."""
    return format_stat({"mean": row["mean"], "ci95": row["ci95"]})


def _headline(frame: pd.DataFrame) -> str:
    """The metric shown in per-env tables: ``return`` when present, else the first metric."""
    metrics = list(frame["metric"].unique())
    return HEADLINE_METRIC if HEADLINE_METRIC in metrics else metrics[0]


def pivot_metric(frame: pd.DataFrame, env: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """(configurations, rows) for one env and metric: policies as rows, configurations as columns."""
    sub = frame[(frame["env"] == env) & (frame["metric"] == metric)]
    configs = list(dict.fromkeys(sub["configuration"]))
    cells = {(r["policy"], r["configuration"]): _cell(r) for _, r in sub.iterrows()}
    policies = list(dict.fromkeys(sub["policy"]))
    rows = [[p] + [cells.get((p, c), "–") for c in configs] for p in policies]
    return configs, rows


def split_algo(configuration: str) -> tuple[str | None, str]:
    """``(algo, context)`` of a configuration label: its ``algo=`` choice and the other overrides.

    Example::

        >>> split_algo("algo=dqn dataset=coat")
        ('dqn', 'dataset=coat')
        >>> split_algo("algo=ppo")
        ('ppo', '(default)')
        >>> split_algo("reward=conversion")
        (None, 'reward=conversion')
    """
    parts = configuration.split() if configuration != DEFAULT_CONFIGURATION else []
    algos = [p.split("=", 1)[1] for p in parts if override_key(p) == ALGO_KEY]
    context = " ".join(p for p in parts if override_key(p) != ALGO_KEY)
    return (algos[0] if algos else None), (context or DEFAULT_CONFIGURATION)


def algorithm_table(frame: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) comparing algorithms when the sweep varies ``algo``; ``None`` otherwise.

    One row per trained algorithm (its own policy in its own configuration), then one per
    baseline; one column per (context, env), where the context is every override but ``algo``
    (``dataset=coat``, say) and the ground truth comes before the simulator. A baseline does not
    depend on the algorithm trained beside it, so its cell comes from the first configuration of
    that context.
    """
    sub = frame[frame["metric"] == metric]
    labels = list(dict.fromkeys(sub["configuration"]))
    split = {label: split_algo(label) for label in labels}
    algos = list(dict.fromkeys(a for a, _ in split.values() if a is not None))
    if len(algos) < 2:
        return None
    contexts = list(dict.fromkeys(c for _, c in split.values()))
    envs = sorted(dict.fromkeys(sub["env"]), key=lambda env: env != GROUND_TRUTH)  # stable: truth first
    cells: dict[tuple[str, str, str], str] = {}
    per_algo: set[str] = set()  # rows that belong to the algorithm trained beside them
    for _, row in sub.iterrows():
        algo, context = split[row["configuration"]]
        policy = row["policy"]
        owned = policy == algo             # the trained policy wins over a same-named baseline
        if policy in PER_ALGORITHM_POLICIES and algo is not None:
            policy, owned = f"{algo} · {policy}", True
            per_algo.add(policy)
        key = (policy, context, row["env"])
        if owned:
            cells[key] = _cell(row)
        else:
            cells.setdefault(key, _cell(row))
    baselines = [p for p in dict.fromkeys(sub["policy"])
                 if p not in algos and p not in PER_ALGORITHM_POLICIES]
    columns = [(c, e) for c in contexts for e in envs]
    header = ["policy", *(e if c == DEFAULT_CONFIGURATION else f"{c} {e}" for c, e in columns)]
    order = [*algos, *sorted(per_algo), *baselines]
    rows = [[p, *(cells.get((p, c, e), "–") for c, e in columns)] for p in order]
    return header, rows


# policies of a report that depend on the algorithm trained in the run (not baselines)
PER_ALGORITHM_POLICIES = ("trained_in_ground_truth",)

# shown by algorithm after the headline when the reports have them: how close to the oracle,
# and whether the policy serves everyone the same thing
COMPANION_METRICS = ("oracle_share", "coverage", "same_top_item")


def _fmt(value: float) -> str:
    """Three-decimal number, or ``nan``."""
    return f"{value:.3f}" if math.isfinite(value) else "nan"


def render_sweep_markdown(frame: pd.DataFrame, sweep_dir: Path, jobs: pd.DataFrame) -> str:
    """Markdown summary: the jobs that did not succeed, a headline-metric table per env, then
    the full long table."""
    results = frame[frame["env"] != ""]
    n_configs = frame["configuration"].nunique()
    counts = ", ".join(f"{n} {status}" for status, n in jobs["status"].value_counts().items())
    lines = [
        f"# Sweep summary: `{sweep_dir}`",
        "",
        f"{len(jobs)} jobs ({counts}), {n_configs} configurations; mean ± 95% CI half width across seeds.",
    ]
    unsuccessful = jobs[jobs["status"] != OK]
    if len(unsuccessful):
        rows = [[str(v) for v in row] for row in unsuccessful[JOB_COLUMNS].itertuples(index=False)]
        lines += ["", "## Jobs that did not succeed", "", markdown_table(JOB_COLUMNS, rows)]
    if not results.empty:
        lines += _metric_sections(results)
    long_rows = [[r["configuration"], r["env"], r["policy"], r["metric"], _fmt(r["mean"]), _fmt(r["ci95"]),
                  str(r["n_seeds"]), r["status"]] for _, r in frame.iterrows()]
    lines += ["", "## All metrics", "", markdown_table(COLUMNS, long_rows, right_from=4)]
    return "\n".join(lines) + "\n"


def _metric_sections(frame: pd.DataFrame) -> list[str]:
    """Markdown lines: the headline (and companion metrics) by algorithm, then per env."""
    metric = _headline(frame)
    lines: list[str] = []
    present = set(frame["metric"])
    for shown in [metric, *(m for m in COMPANION_METRICS if m in present and m != metric)]:
        by_algo = algorithm_table(frame, shown)
        if by_algo is not None:
            header, rows = by_algo
            lines += ["", f"## {shown} by algorithm", "", markdown_table(header, rows)]
    for env in frame["env"].unique():
        configs, rows = pivot_metric(frame, env, metric)
        lines += ["", f"## {metric} on {env}", "", markdown_table(["policy", *configs], rows)]
    return lines


def print_sweep_tables(frame: pd.DataFrame, console: Console) -> None:
    """Print the headline metric: one algorithms x (context, env) table when the sweep varies
    ``algo``, else one policies x configurations table per env."""
    metric = _headline(frame)
    by_algo = algorithm_table(frame, metric)
    if by_algo is not None:
        header, rows = by_algo
        _print_table(console, f"Sweep: {metric} by algorithm (mean ± 95% CI across seeds)", header, rows)
        return
    for env in frame["env"].unique():
        configs, rows = pivot_metric(frame, env, metric)
        _print_table(console, f"Sweep: {metric} on {env} (mean ± 95% CI across seeds)",
                     ["policy", *configs], rows)


def _print_table(console: Console, title: str, header: list[str], rows: list[list[str]]) -> None:
    """One rich table: a bold first column, right-aligned value columns."""
    table = Table(title=escape(title), title_justify="left")
    table.add_column(escape(header[0]), style="bold")
    for name in header[1:]:
        table.add_column(escape(name), justify="right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


def summarize_sweep(sweep_dir: Path, console: Console | None = None) -> pd.DataFrame | None:
    """Aggregate the job folders of a multirun dir into ``summary.csv``, ``summary.md`` and ``jobs.csv``.

    Jobs are grouped by their Hydra overrides minus ``seed=...``; each (configuration, env,
    policy, metric) gets the mean and Student-t 95% CI of the per-job means, ``n_seeds`` and the
    configuration's ``status`` (``ok``, or how many of its jobs failed or were pruned); failed
    jobs are listed with their exit code and one-line error. Returns the long DataFrame, or
    ``None`` (with a message) when there is no job folder with a report or a status.
    """
    return _summarize(Path(sweep_dir), console or Console())[0]


def _summarize(sweep_dir: Path, console: Console) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """:func:`summarize_sweep`, also returning the jobs table (``JOB_COLUMNS``) it built."""
    job_dirs = [d for d in find_jobs(sweep_dir)
                if (d / "report.json").is_file() or (d / STATUS_FILE).is_file()]
    labels = job_labels(job_dirs)
    jobs = collect_jobs(job_dirs, labels)
    if not job_dirs:
        console.print(f"[yellow]No report.json found under {sweep_dir}; nothing to summarize.[/yellow]")
        return None, jobs
    reports = [d / "report.json" for d in job_dirs if (d / "report.json").is_file()]
    frame = collect_sweep(reports, labels, configuration_status(jobs))
    if frame.empty:
        console.print(f"[yellow]Reports under {sweep_dir} hold no evaluation results.[/yellow]")
        return None, jobs
    write_text_atomic(sweep_dir / "jobs.csv", jobs.to_csv(index=False))
    write_text_atomic(sweep_dir / "summary.csv", frame.to_csv(index=False))
    write_text_atomic(sweep_dir / "summary.md", render_sweep_markdown(frame, sweep_dir, jobs))
    if (frame["env"] != "").any():
        print_sweep_tables(frame[frame["env"] != ""], console)
    for row in jobs[jobs["status"] != OK].itertuples(index=False):
        seed = f", seed {row.seed}" if row.seed else ""
        console.print(f"[red]job {row.job} ({escape(row.configuration)}{seed}): {row.status}, "
                      f"exit code {row.exit_code}: {escape(row.error)}[/red]")
    console.print(f"Sweep summary of {len(jobs)} jobs written to {sweep_dir / 'summary.md'}")
    return frame, jobs


def _failed(jobs: pd.DataFrame) -> list[str]:
    """Names of the failed jobs of a jobs table."""
    return [str(job) for job in jobs.loc[jobs["status"] == FAILED, "job"]]


def failed_jobs(sweep_dir: Path) -> list[str]:
    """Names of the job folders below ``sweep_dir`` whose ``status.json`` says ``failed``."""
    return _failed(collect_jobs(find_jobs(sweep_dir)))


@dataclass
class SweepOutcome:
    """What the last multirun of this process left: its folder and its failed jobs' names."""

    sweep_dir: Path
    n_jobs: int
    failed: list[str]


LAST_SWEEP: list[SweepOutcome] = []  # filled by SweepSummaryCallback, read by ``recrl sweep``


class SweepSummaryCallback(Callback):
    """Hydra callback that summarizes the sweep directory once all multirun jobs have finished,
    and records the failed jobs (``LAST_SWEEP``) so ``recrl sweep`` can exit non-zero.

    Register it with ``hydra.callbacks.sweep_summary._target_: recrl.sweep.SweepSummaryCallback``.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Run :func:`summarize_sweep` on ``config.hydra.sweep.dir``."""
        sweep_dir = Path(config.hydra.sweep.dir)
        _, jobs = _summarize(sweep_dir, Console())
        LAST_SWEEP[:] = [SweepOutcome(sweep_dir, len(jobs), _failed(jobs))]
