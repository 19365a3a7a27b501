"""Dataset statistics for ``recrl data info`` and run reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from recrl.types import Splits


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal, towards 1: concentrated).

    Example::

        >>> gini(np.array([1, 1, 1, 1]))
        0.0
        >>> round(gini(np.array([0, 0, 0, 4])), 2)
        0.75
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * x).sum()) / (n * total) - (n + 1) / n)


def describe(splits: Splits) -> dict[str, Any]:
    """Users, items, rows per split, density, popularity Gini, rows-per-user quantiles."""
    inter = splits.interactions
    every = pd.concat([inter.train, inter.valid, splits.test], ignore_index=True)
    n_users, n_items = inter.n_users, inter.n_items
    per_user = np.bincount(every["user"].to_numpy(), minlength=n_users)
    per_item = np.bincount(every["item"].to_numpy(), minlength=n_items)
    q = np.quantile(per_user, [0.0, 0.25, 0.5, 0.75, 0.95, 1.0]) if n_users else np.zeros(6)
    return {"name": splits.meta.get("name", "?"), "users": n_users, "items": n_items,
            "interactions": len(every), "density": len(every) / max(n_users * n_items, 1),
            "train": len(inter.train), "valid": len(inter.valid), "test": len(splits.test),
            "click_rate": float(every["click"].mean()) if len(every) else float("nan"),
            "positive_only": inter.positive_only,
            "popularity_gini": gini(per_item),
            "per_user_quantiles": dict(zip(["min", "p25", "median", "p75", "p95", "max"],
                                           (float(v) for v in q), strict=True)),
            "ground_truth_rows": 0 if splits.ground_truth is None else
            len(splits.ground_truth.train) + len(splits.ground_truth.valid),
            "skipped_rows": int(splits.meta.get("skipped_rows", 0)),
            "duplicates_removed": int(splits.meta.get("duplicates_removed", 0)),
            "split": splits.meta.get("split", "?")}


def print_description(desc: dict[str, Any], console: Console | None = None,
                      load: dict[str, Any] | None = None) -> None:
    """A rich table of :func:`describe`'s figures (plus how the load went)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=110)
    table = Table(title=f"dataset {desc['name']}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key in ("users", "items", "interactions", "train", "valid", "test", "ground_truth_rows",
                "skipped_rows", "duplicates_removed"):
        table.add_row(key, f"{desc[key]:,}")
    table.add_row("density", f"{desc['density']:.4%}")
    note = " (positive-only log)" if desc["positive_only"] else ""
    table.add_row("click rate", f"{desc['click_rate']:.3f}{note}")
    table.add_row("popularity Gini", f"{desc['popularity_gini']:.3f}")
    quant = desc["per_user_quantiles"]
    table.add_row("rows per user", " / ".join(f"{k} {v:g}" for k, v in quant.items()))
    table.add_row("split", str(desc["split"]))
    if load:
        table.add_row("cache", f"{load.get('cache', '?')} ({load.get('seconds', 0):.3f} s)")
        if load.get("folder"):
            table.add_row("cache folder", str(load["folder"]))
    console.print(table)
