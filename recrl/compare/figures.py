"""The figures of ``recrl compare``: learning curves, return per policy and environment, the
simulator-vs-ground-truth scatter and the paired differences, each drawn into a PNG file with
matplotlib's Agg canvas (no pyplot state)."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recrl.compare.paired import PairedDifference
from recrl.compare.runs import CURVE_KEY, Run, as_float, envs_of, policies_of, sim_truth_points
from recrl.fileio import write_bytes_atomic
from recrl.sweep import HEADLINE_METRIC

LEGEND_WIDTH = 48  # characters per legend line
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")


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
                mean, ci = as_float(stat.get("mean")), as_float(stat.get("ci95"))
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
        xerr, yerr = as_float(sim.get("ci95")), as_float(truth.get("ci95"))
        ax.errorbar(as_float(sim["mean"]), as_float(truth["mean"]),
                    xerr=xerr if math.isfinite(xerr) else None, yerr=yerr if math.isfinite(yerr) else None,
                    fmt=MARKERS[policies.index(policy) % len(MARKERS)], color=colors[run.label],
                    markersize=7, elinewidth=0.6, capsize=2, alpha=0.85)
    values = [as_float(s["mean"]) for _, _, s, _ in points] + [as_float(t["mean"]) for _, _, _, t in points]
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
