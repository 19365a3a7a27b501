"""Compare runs: ``recrl compare <run or sweep folders...>`` writes one Markdown and one HTML page.

The pages show the runs' learning curves overlaid, the return of every policy in every
environment, the simulator-vs-ground-truth scatter (the sim-to-real gap) and, when the runs group
into configurations that share seeds, the paired difference of every pair of configurations.
The figures are PNG files next to the pages; the HTML page links them by relative path, so the
folder opens offline and can be moved as a whole.

The modules: :mod:`~recrl.compare.runs` (collecting and grouping run folders),
:mod:`~recrl.compare.paired` (paired statistics across seeds), :mod:`~recrl.compare.figures`
(the PNG figures), :mod:`~recrl.compare.tables` (the tables), :mod:`~recrl.compare.render`
(Markdown and HTML) and :mod:`~recrl.compare.page` (the sections and :func:`compare`).
"""

from __future__ import annotations

from recrl.compare.figures import (
    LEGEND_WIDTH,
    LINESTYLES,
    MARKERS,
    plot_curves,
    plot_paired,
    plot_returns,
    plot_sim_vs_truth,
)
from recrl.compare.page import (
    CURVES_PNG,
    PAGE_NAME,
    PAIRED_PNG,
    RETURNS_PNG,
    SCATTER_PNG,
    build_sections,
    compare,
    default_out_dir,
)
from recrl.compare.paired import PairedDifference, paired_differences, paired_env, seed_returns
from recrl.compare.render import Section, render_html, render_markdown
from recrl.compare.runs import (
    CURVE_KEY,
    IGNORED_KEYS,
    SAME_CONFIG,
    SIMULATOR,
    UNSET,
    Run,
    collect_runs,
    envs_of,
    flatten,
    group_labels,
    group_runs,
    load_run,
    policies_of,
    sim_truth_points,
)
from recrl.compare.tables import (
    Table,
    configurations_table,
    gap_table,
    paired_table,
    returns_table,
    runs_table,
)

__all__ = [
    "CURVES_PNG", "CURVE_KEY", "IGNORED_KEYS", "LEGEND_WIDTH", "LINESTYLES", "MARKERS", "PAGE_NAME",
    "PAIRED_PNG", "RETURNS_PNG", "SAME_CONFIG", "SCATTER_PNG", "SIMULATOR", "UNSET",
    "PairedDifference", "Run", "Section", "Table",
    "build_sections", "collect_runs", "compare", "configurations_table", "default_out_dir", "envs_of",
    "flatten", "gap_table", "group_labels", "group_runs", "load_run", "paired_differences",
    "paired_env", "paired_table", "plot_curves", "plot_paired", "plot_returns", "plot_sim_vs_truth",
    "policies_of", "render_html", "render_markdown", "returns_table", "runs_table", "seed_returns",
    "sim_truth_points",
]
