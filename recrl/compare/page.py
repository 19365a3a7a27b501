"""Building ``recrl compare``'s page: the sections in order (figures drawn next to the page) and
:func:`compare`, which writes ``compare.md`` and ``compare.html``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from recrl.compare.figures import plot_curves, plot_paired, plot_returns, plot_sim_vs_truth
from recrl.compare.paired import paired_differences, paired_env
from recrl.compare.render import Section, render_html, render_markdown
from recrl.compare.runs import CURVE_KEY, SIMULATOR, Run, collect_runs, envs_of, group_runs
from recrl.compare.tables import configurations_table, gap_table, paired_table, returns_table, runs_table
from recrl.fileio import write_text_atomic
from recrl.sweep import GROUND_TRUTH, HEADLINE_METRIC
from recrl.types import RecrlError

PAGE_NAME = "compare"  # compare.md and compare.html
CURVES_PNG, RETURNS_PNG, SCATTER_PNG, PAIRED_PNG = (
    "learning_curves.png", "returns.png", "sim_vs_truth.png", "paired.png")


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
