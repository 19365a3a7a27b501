"""Small tensor helpers shared by the ranking metrics, the negative sampler and the ranking
protocols: argument checks, a mean that is NaN when empty, and the first occurrence per row."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def mean_or_nan(x: Tensor) -> float:
    """Mean of ``x`` in float64 as a Python float; NaN when ``x`` is empty."""
    return float(x.double().mean()) if x.numel() else float("nan")


def check_k(k: int) -> None:
    """Raise ``ValueError`` unless the cut-off ``k`` is at least 1."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """The cut-offs ``ks`` as ints without repeats (first seen first), each checked by :func:`check_k`."""
    out = tuple(dict.fromkeys(int(k) for k in ks))
    for k in out:
        check_k(k)
    return out


def check_items(items: Tensor, n_items: int, name: str) -> None:
    """Raise ``ValueError`` (naming the argument ``name``) unless ``items`` lie in ``[0, n_items)``."""
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ValueError(f"{name} must hold item ids in [0, {n_items})")


def first_occurrence(x: Tensor) -> Tensor:
    """Bool mask of the entries of each row that are the first (leftmost) of their value."""
    values, order = torch.sort(x, dim=1, stable=True)
    first_sorted = torch.ones_like(values, dtype=torch.bool)
    first_sorted[:, 1:] = values[:, 1:] != values[:, :-1]
    return torch.empty_like(first_sorted).scatter_(1, order, first_sorted)
