"""Run artifacts: metric logging (JSON lines + TensorBoard), learning curves and final reports."""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import platform
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recrl.fileio import write_bytes_atomic, write_text_atomic
from recrl.ope.evaluation import PER_SESSION, PER_STEP

METRICS_FILE = "metrics.jsonl"
PLOT_PREFIXES = ("eval/", "train/", "trained_in_ground_truth/eval/")  # the last: eval.train_in_ground_truth

logger = logging.getLogger(__name__)
_EVENT_FILES = itertools.count()  # event files opened by this process


def to_jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` into strict-JSON data: non-finite floats become ``None``.

    NumPy / torch scalars and arrays, paths, tuples and sets are converted to plain Python.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere): what
    benchmark figures name their machine by."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        return cpu


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented strict JSON (NaN/inf written as ``null``)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    write_text_atomic(path, text + "\n")


class TensorBoardScalars:
    """A TensorBoard event file of scalars (``events.out.tfevents.*`` in ``log_dir``), written and
    flushed in the calling thread.

    Not torch's ``SummaryWriter``: that one hands each record to a writer thread through a
    queue's locks, and a Ctrl-C or SIGTERM raised in the main thread while it holds one of them
    can leave the close on the way out of an interrupted run waiting for that lock forever.
    """

    def __init__(self, log_dir: Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        # the name TensorBoard globs for; time, host, process and a counter keep two writers apart
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
                f".{next(_EVENT_FILES)}")
        self._event, self._summary = Event, Summary  # imported here: tensorboard loads in ~0.35 s
        self._records = RecordWriter(open(log_dir / name, "ab"))  # noqa: SIM115 (closed in close)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """One event at ``step`` holding every scalar (tag: value), flushed to disk."""
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        self._write(self._event(wall_time=time.time(), step=step, summary=self._summary(value=values)))

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        """Close the event file (safe to call twice)."""
        if not self._records.closed:
            self._records.close()


class RunLogger:
    """Logs scalar metrics to ``run_dir/metrics.jsonl`` and, optionally, TensorBoard ``run_dir/tb``.

    Example::

        logger = RunLogger(run_dir)
        logger.log(100, {"train/loss": 0.3, "eval/return": 9.1})
        logger.close()
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self.metrics_path = self.run_dir / METRICS_FILE
        self._file: TextIO | None = None
        self._events: TensorBoardScalars | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append ``{"step": step, **metrics}`` as one JSON line and write the scalars to TensorBoard."""
        record = to_jsonable({"step": int(step), **metrics})
        if self._file is None:
            self._file = self.metrics_path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self.tensorboard:
            if self._events is None:
                self._events = TensorBoardScalars(self.run_dir / "tb")
            scalars = {key: _as_scalar(value) for key, value in metrics.items()}
            self._events.write(int(step), {key: v for key, v in scalars.items() if v is not None})

    def close(self) -> None:
        """Close the metrics file and the TensorBoard event file (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_scalar(value: Any) -> float | None:
    """``value`` as a float if it is a real scalar (bools excluded), else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        size = value.numel() if isinstance(value, torch.Tensor) else value.size
        return float(value.item()) if size == 1 else None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


def read_report(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``report.json`` as written (``{}`` when the run has none yet)."""
    path = Path(run_dir) / "report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_metrics(path: Path) -> list[dict]:
    """Read a ``metrics.jsonl`` file into a list of dicts (a truncated final line is skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records


def _curves(records: Iterable[dict], keys: Sequence[str] | None) -> dict[str, tuple[list, list]]:
    """Per-key (steps, values) series, null/non-finite points dropped, too-short series removed."""
    series: dict[str, tuple[list, list]] = {}
    for rec in (r for r in records if "step" in r):
        for key, value in rec.items():
            wanted = key.startswith(PLOT_PREFIXES) if keys is None else key in keys
            scalar = _as_scalar(value) if wanted and key != "step" else None
            if scalar is not None and math.isfinite(scalar):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(rec["step"]))
                ys.append(scalar)
    min_points = 2 if keys is None else 1
    ordered = sorted(series) if keys is None else [k for k in keys if k in series]
    return {k: series[k] for k in ordered if len(series[k][0]) >= min_points}


def plot_learning_curves(metrics_path: Path, out_png: Path, keys: Sequence[str] | None = None) -> Path | None:
    """Plot one subplot per metric (x = step) from ``metrics.jsonl`` into ``out_png``, atomically.

    By default every ``eval/*`` and ``train/*`` key with at least two points is drawn, and the
    ground-truth-trained copy's ``trained_in_ground_truth/eval/*`` curves. Returns the
    PNG path, or ``None`` when there is nothing to plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return None
    series = _curves(read_metrics(metrics_path), keys)
    if not series:
        return None
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, (xs, ys)) in enumerate(series.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(Path(out_png), buf.getvalue())
    return Path(out_png)


def format_stat(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """Format a ``{"mean", "ci95"}`` dict as ``"mean ± ci95"`` (the ``±`` part omitted if ci is null/nan)."""
    if not stat:
        return "–"
    mean, ci = stat.get("mean"), stat.get("ci95")
    if mean is None or not math.isfinite(float(mean)):
        return "nan"
    text = f"{float(mean):.{digits}f}"
    if ci is not None and math.isfinite(float(ci)):
        text += f" ± {float(ci):.{digits}f}"
    return text


def markdown_table(headers: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    """Render a GitHub-flavoured markdown table (pipes in cells are escaped).

    Columns with index ``>= right_from`` are right-aligned (numbers); earlier ones left-aligned.
    """

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    sep = "|" + "|".join("---:" if i >= right_from else "---" for i in range(len(headers))) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order, without duplicates."""
    return list(dict.fromkeys(items))


def _evaluation_axes(evaluation: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(envs, policies, metrics) of an evaluation block, ``return`` first among metrics."""
    envs = list(evaluation)
    policies = _unique(p for env in envs for p in evaluation[env])
    metrics = _unique(m for env in envs for pol in evaluation[env].values() for m in pol)
    if "return" in metrics:
        metrics.remove("return")
        metrics.insert(0, "return")
    return envs, policies, metrics


def _metric_by_env_table(evaluation: Mapping[str, Any], metric: str) -> str:
    """Markdown table of one metric: policies as rows, env names as columns."""
    envs, policies, _ = _evaluation_axes(evaluation)
    envs = [e for e in envs if any(metric in s for s in evaluation[e].values())]
    rows = [[p] + [format_stat(evaluation[e].get(p, {}).get(metric)) for e in envs] for p in policies]
    return markdown_table(["policy", *envs], rows)


def _env_metrics(evaluation: Mapping[str, Any], env: str) -> list[str]:
    """The metrics some policy of ``env`` has, in the order of the whole evaluation."""
    return [m for m in _evaluation_axes(evaluation)[2] if any(m in s for s in evaluation[env].values())]


def _env_table(evaluation: Mapping[str, Any], env: str) -> str:
    """Markdown table of one env: policies as rows, the env's metrics as columns."""
    metrics = _env_metrics(evaluation, env)
    rows = [[p] + [format_stat(stats.get(m)) for m in metrics] for p, stats in evaluation[env].items()]
    return markdown_table(["policy", *metrics], rows)


def _header_lines(report: Mapping[str, Any]) -> list[str]:
    """Title and run facts (algo, reward, seed, versions, run dir) of a report."""
    facts = [f"**{k}**: `{report[k]}`" for k in ("task", "algo", "reward", "seed") if k in report]
    facts += [f"{name} {ver}" for name, ver in report.get("versions", {}).items()]
    lines = [f"# recrl report: {report.get('algo', 'run')}", "", " · ".join(facts)]
    if "run_dir" in report:
        lines += ["", f"Run directory: `{report['run_dir']}`"]
    return lines


def _section(title: str, *body: str, level: int = 2) -> list[str]:
    """Markdown lines for a heading followed by blank-line-separated body blocks."""
    lines = ["", f"{'#' * level} {title}"]
    for block in body:
        lines += ["", block]
    return lines


def _kv_table(values: Mapping[str, Any], unit: str = "", digits: int = 4) -> str:
    """A two-column name/value markdown table (numbers with ``digits`` decimals)."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return f"{v}{unit}"
        return f"{v:.{digits}f}{unit}" if _as_scalar(v) is not None else str(v)

    return markdown_table(["name", "value"], [[k, cell(v)] for k, v in values.items()])


def _number(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals; ``–`` for missing or non-finite values."""
    scalar = _as_scalar(value)
    return f"{scalar:.{digits}f}" if scalar is not None and math.isfinite(scalar) else "–"


def _fidelity_text(fidelity: Mapping[str, Any]) -> str:
    """Click accuracy per check, and the agreement with a true model when there is one."""
    names = {"validation": "validation rows",
             "randomized": "randomized exposures (model fitted on biased log)"}
    rows = [[names.get(k, k), *(_number(v[m]) for m in ("click_logloss", "click_auc", "click_ece")),
             str(v["rows"])] for k, v in fidelity.items() if "click_logloss" in v]
    text = markdown_table(["check", "click logloss", "click AUC", "ECE", "rows"], rows) if rows else ""
    for key, where in (("true_model", "random slates"), ("true_model_policy", "the trained policy's slates")):
        true = fidelity.get(key)
        if true:
            text += (f"\n\nAgainst the true user model ({where}, {true['pairs']} pairs): Pearson "
                     f"correlation of click probabilities {_number(true['click_prob_pearson'], 3)}, "
                     f"conversion {_number(true.get('conversion_prob_pearson'), 3)}, leave "
                     f"{_number(true.get('leave_prob_pearson'), 3)}; mean true click "
                     f"{_number(true['mean_true'], 3)}, mean model {_number(true['mean_model'], 3)}.")
    members = fidelity.get("members")
    if members:
        checks = ("true_model", "true_model_policy")
        rows = [[str(i), *(_number(m.get("validation", {}).get(k)) for k in ("click_logloss", "click_auc")),
                 *(_number(m.get(c, {}).get("click_prob_pearson"), 3) for c in checks)]
                for i, m in enumerate(members)]
        text += "\n\nEnsemble members (the figures above are the ensemble's, its members' mean):\n\n"
        text += markdown_table(["member", "valid click logloss", "valid click AUC", "click r (random)",
                                "click r (policy)"], rows)
    return text + "\n\nCalibration curve: `plots/calibration.png`."


def _offline_table(offline: Mapping[str, Mapping[str, float]]) -> str:
    """Protocols as rows, metrics as columns."""
    metrics = list(dict.fromkeys(m for values in offline.values() for m in values))
    rows = [[protocol, *(_metric_cell(m, values.get(m)) for m in metrics)]
            for protocol, values in offline.items()]
    return markdown_table(["protocol", *metrics], rows)


POLICY_RANKING_NOTE = (
    "Full ranking of each {split} user's next item (their first clicked {split} item) over the "
    "whole catalogue, the user's other seen items left out, by every policy that ranks the "
    "catalogue: the {n} users of \"Behavior model: offline ranking\", each policy observing their "
    "last `env.history_len` logged items. A policy that never re-serves items in its observed "
    "history scores 0 on targets that repeat one of them (`target_masked`: the share of such "
    "users). `return · <env>`: the policy's return (mean ± 95% CI) from the tables above, for the "
    "trade-off between next-item accuracy and long-term return.")


def ranking_users(report: Mapping[str, Any]) -> str:
    """Whose next items the report's rankings are on: ``test`` or ``validation``
    (``eval.ranking_split``; reports written before it existed are on the test users)."""
    return "validation" if report.get("ranking_split") == "valid" else "test"


def _policy_ranking_text(ranking: Mapping[str, Mapping[str, float]],
                         evaluation: Mapping[str, Any], split: str = "test") -> str:
    """The note and the table of the policies' next-item ranking, with their returns."""
    found = _unique(m for values in ranking.values() for m in values if m != "n_users")
    first = [m for m in ("hr@10", "ndcg@10") if m in found]
    metrics = first + [m for m in found if m not in first]
    envs = [e for e in evaluation if any(p in evaluation[e] for p in ranking)]
    rows = [[policy, *(_metric_cell(m, values.get(m)) for m in metrics),
             *(format_stat((evaluation[e].get(policy) or {}).get("return")) for e in envs)]
            for policy, values in ranking.items()]
    users = _unique(_metric_cell("n_users", v.get("n_users")) for v in ranking.values())
    note = POLICY_RANKING_NOTE.format(n=" / ".join(users), split=split)
    table = markdown_table(["policy", *metrics, *(f"return · {e}" for e in envs)], rows)
    return f"{note}\n\n{table}"


def _metric_cell(metric: str, value: Any) -> str:
    """A ranking metric with 4 decimals; the user count as an integer; ``–`` when missing."""
    if metric == "n_users" and _as_scalar(value) is not None:
        return str(int(_as_scalar(value)))
    return _number(value)


def _estimate_cell(estimate: Mapping[str, Any] | None) -> str:
    """``value [low, high] (ESS e)`` of one off-policy estimate."""
    if not estimate:
        return "–"
    return (f"{_number(estimate['value'], 3)} [{_number(estimate['ci95_low'], 3)}, "
            f"{_number(estimate['ci95_high'], 3)}] (ESS {_number(estimate['ess'], 1)})")


def _propensity_text(propensity: Mapping[str, Any]) -> str:
    """Where the rows' propensities came from, and how well the estimated ones are calibrated."""
    text = (f"propensities logged on {propensity.get('logged', 0)} rows, estimated on "
            f"{propensity.get('estimated', 0)}, missing on {propensity.get('missing', 0)}.")
    fit = propensity.get("calibration")
    if fit:
        text += (f" The logging-policy model's calibration on these rows: ECE {_number(fit['ece'], 6)} over "
                 f"every (row, item) pair, log-loss of the logged items {_number(fit['log_loss'], 3)} "
                 f"(uniform: {_number(fit['uniform_log_loss'], 3)})")
        agree = fit.get("logged") or {}
        if agree.get("rows"):
            text += (f"; against the {agree['rows']} logged propensities: Pearson of the logs "
                     f"{_number(agree['pearson_log'], 3)}, median |log ratio| "
                     f"{_number(agree['median_abs_log_ratio'], 3)}")
        text += "."
    return text


def _off_policy_text(section: Mapping[str, Any]) -> str:
    """The report's off-policy section: what the logs are, then one table per view."""
    if section.get("skipped") and not section.get("policies"):
        return f"Not computed: {section['skipped']}."
    parts = [f"From {section['sessions']} sessions ({section['rows']} rows) of {section['source']}, each "
             f"cut to {section['horizon']} steps; {_propensity_text(section.get('propensity', {}))} "
             "Value [95% bootstrap CI] (effective sample size "
             f"of the weights). Per session: expected return (gamma {section['gamma']}), comparable with "
             f"the `return` columns; `{section['column']}` is the `ope` column. Per step: expected "
             f"reward of one recommendation at the logged users' states."]
    policies = section.get("policies", {})
    for title, names in (("Per session", PER_SESSION), ("Per step", PER_STEP)):
        shown = [n for n in names if any(n in est for est in policies.values())]
        if shown:
            rows = [[p] + [_estimate_cell(est.get(n)) for n in shown] for p, est in policies.items()
                    if "error" not in est]
            parts.append(f"**{title}**\n\n" + markdown_table(["policy", *shown], rows))
    for name, est in policies.items():
        if "error" in est:
            parts.append(f"{name}: not estimated: {est['error']}")
    for name, why in (section.get("skipped") or {}).items():
        parts.append(f"`{name}` skipped: {why}.")
    return "\n\n".join(parts)


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render a final report dict as markdown (the return table first: the sim-to-real gap)."""
    lines = _header_lines(report)
    if report.get("timings"):
        lines += _section("Timings", _kv_table(report["timings"], unit=" s", digits=2))
    if report.get("data"):
        lines += _section("Data", _kv_table(report["data"]))
    if report.get("behavior"):
        lines += _section("Behavior model", _kv_table(report["behavior"]))
    if report.get("offline"):
        note = (f"Next-item ranking of the behavior model on held-out {ranking_users(report)} users: "
                "`full` ranks among all unseen items, `sampled-100` among 100 sampled unseen items "
                "(fixed seed).")
        lines += _section("Behavior model: offline ranking", note, _offline_table(report["offline"]))
    if report.get("fidelity"):
        lines += _section("Simulator fidelity", _fidelity_text(report["fidelity"]))
    evaluation = report.get("evaluation") or {}
    if evaluation:
        note = "Mean ± 95% CI half width; policies as rows, environments as columns."
        lines += _section("Return by environment", note, _metric_by_env_table(evaluation, "return"))
        for metric in _evaluation_axes(evaluation)[2]:
            if metric != "return":
                lines += _section(metric, _metric_by_env_table(evaluation, metric), level=3)
        lines += _section("All metrics per environment")
        for env in evaluation:
            lines += _section(env, _env_table(evaluation, env), level=3)
    if report.get("policy_ranking"):
        lines += _section("Policies as next-item recommenders",
                          _policy_ranking_text(report["policy_ranking"], evaluation, ranking_users(report)))
    if report.get("off_policy"):
        lines += _section("Off-policy estimates", _off_policy_text(report["off_policy"]))
    if report.get("config"):
        config_json = json.dumps(to_jsonable(report["config"]), indent=2)
        details = f"<details><summary>resolved config</summary>\n\n```json\n{config_json}\n```\n\n</details>"
        lines += _section("Config", details)
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, report: dict) -> None:
    """Write ``run_dir/report.json`` (indent 2) and ``run_dir/report.md``, both atomically."""
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "report.md", render_markdown(to_jsonable(report)))


def summary_line(report: Mapping[str, Any]) -> str:
    """The result in one line: the run's policy's return in every environment (with its share of
    the oracle's), or the behavior model's full-ranking scores, and where the report is."""
    evaluation = report.get("evaluation") or {}
    parts = []
    for env, policies in evaluation.items():
        name = report.get("algo") if report.get("algo") in policies else next(iter(policies), None)
        if name is None:
            continue
        stats = policies[name]
        text = f"{name} return {format_stat(stats.get('return'))} in {env}"
        share = (stats.get("oracle_share") or {}).get("mean")
        if share is not None and math.isfinite(float(share)):
            text += f" ({float(share):.0%} of the oracle)"
        parts.append(text)
    if not parts and report.get("offline"):
        protocol, values = next(iter(report["offline"].items()))
        scores = ", ".join(f"{m} {_metric_cell(m, v)}" for m, v in values.items())
        parts.append(f"behavior model offline ranking ({protocol}): {scores}")
    line = "result: " + ("; ".join(parts) if parts else "no evaluation results")
    if report.get("run_dir"):
        line += f"; report in {Path(report['run_dir']) / 'report.md'}"
    return line


def print_report_table(report: dict, console: Console | None = None) -> None:
    """Print one rich table per evaluation env: policies as rows, metrics as ``mean ± ci`` columns
    (or the behavior model's offline ranking), then log :func:`summary_line`."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough for every metric column
            console = Console(width=150)
    _print_tables(report, console)
    logger.info(summary_line(report))


def _print_tables(report: dict, console: Console) -> None:
    evaluation = report.get("evaluation") or {}
    if report.get("offline") and not evaluation:
        _print_offline_table(report["offline"], console, ranking_users(report))
        return
    if not evaluation:
        return
    for env, policies in evaluation.items():
        metrics = _env_metrics(evaluation, env)
        table = Table(title=escape(f"Evaluation on {env}"), title_justify="left")
        table.add_column("policy", style="bold")
        for metric in metrics:
            table.add_column(escape(metric), justify="right")
        for policy, stats in policies.items():
            table.add_row(escape(policy), *(format_stat(stats.get(m)) for m in metrics))
        console.print(table)


def _print_offline_table(offline: Mapping[str, Mapping[str, float]], console: Console,
                         split: str = "test") -> None:
    """The behavior model's offline ranking: protocols as rows, metrics as columns."""
    metrics = list(dict.fromkeys(m for values in offline.values() for m in values))
    table = Table(title=f"Behavior model: offline ranking ({split} users)", title_justify="left")
    table.add_column("protocol", style="bold")
    for metric in metrics:
        table.add_column(escape(metric), justify="right")
    for protocol, values in offline.items():
        table.add_row(escape(protocol), *(_metric_cell(m, values.get(m)) for m in metrics))
    console.print(table)
