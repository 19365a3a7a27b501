"""Shared machinery of the OPE estimators: the :class:`Estimate`, input checks and the bootstrap.

Every estimator is a ratio of sums over independent units ``i`` (logged rows, sessions or slates),
``value = sum_k g_k (sum_i A_ik) / (sum_i B_ik)`` (``B`` = 1 for a plain mean), so one bootstrap
of column sums serves any number of estimators over the same units (:func:`estimate_ratios`).

The bootstrap is the Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012): resample
``b`` gives unit ``i`` the weight ``c_bi ~ Poisson(1)`` independently, and the resampled estimate
is the same ratio of ``c``-weighted sums (a plain mean divides by ``sum_i c_bi``). It matches the
classic multinomial bootstrap as ``n`` grows and needs no index gather: the sums of every column
are one matrix product per block of units. Each count comes from 16 random bits through the
Poisson(1) quantile table (probabilities rounded to multiples of 2^-16, so counts above 8 are
never drawn), read in unit order from ``numpy.random.default_rng(seed)``'s raw 64-bit stream:
the counts of a unit do not depend on how the units are split into blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recrl.types import RecrlError

N_BOOT = 200
"""Default number of bootstrap resamples behind every CI."""
SEED = 0
"""Default seed of the bootstrap's ``numpy.random.default_rng``."""
_BLOCK_ROWS = 4096  # units per block of Poisson counts (a multiple of 4: 4 counts per raw draw)
_COUNT_BITS = 16


@dataclass(frozen=True)
class Estimate:
    """One off-policy estimate.

    Attributes:
        value: the estimated policy value (mean reward per row or slate, or mean discounted
            return per session).
        ci95_low, ci95_high: 2.5% and 97.5% percentiles of the estimate over ``n_boot`` Poisson
            bootstrap resamples of the rows, slates or sessions; NaN when ``n_boot == 0``.
        ess: effective sample size of the estimator's importance weights
            ``(sum w)^2 / sum w^2`` (``n`` for DM, which uses none; NaN when all weights are 0).
        n: number of rows, slates or sessions.
    """

    value: float
    ci95_low: float
    ci95_high: float
    ess: float
    n: int


@dataclass(frozen=True)
class Ratio:
    """One estimator as a ratio of unit sums: ``value = sum_k gain_k sum_i a_ik / sum_i b_ik``.

    Attributes:
        a: ``[n]`` or ``[n, k]`` per-unit numerator terms.
        b: per-unit denominator terms of ``a``'s shape, or None for a plain mean (``b = 1``).
        gain: ``[k]`` weights of the ``k`` ratios (None: ones).
        weights: importance weights behind the ESS (None: no weights, ESS = ``n``).
        empty_as_zero: a ratio whose denominator sums to 0 (no unit with weight) adds 0 instead
            of making the value NaN.
    """

    a: np.ndarray
    b: np.ndarray | None = None
    gain: np.ndarray | None = None
    weights: np.ndarray | None = None
    empty_as_zero: bool = False


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def as_array(values: Any) -> np.ndarray:
    """``values`` (array-like or tensor) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def check_range(name: str, arr: np.ndarray, low: float, high: float, low_open: bool,
                valid: np.ndarray | None = None) -> None:
    """Raise :class:`RecrlError` naming ``name`` and the count of rows outside the range or NaN."""
    inside = np.isfinite(arr) & (arr > low if low_open else arr >= low) & (arr <= high)
    bad = ~inside if valid is None else valid & ~inside
    count = int(bad.sum())
    if count:
        bracket = "(" if low_open else "["
        where = "not finite" if np.isinf(low) and np.isinf(high) else \
            f"NaN or outside {bracket}{low:g}, {high:g}]"
        raise RecrlError(f"ope: {count} row(s) of {name} are {where}")


def checked(name: str, values: Any, shape: tuple[int, ...] | None, low: float = -np.inf,
            high: float = np.inf, low_open: bool = False, valid: np.ndarray | None = None) -> np.ndarray:
    """``values`` as an array of ``shape``, checked to lie in its range (finite by default)."""
    arr = as_array(values)
    if shape is not None and arr.shape != shape:
        raise RecrlError(f"ope: {name} has shape {arr.shape}, expected {shape}")
    check_range(name, arr, low, high, low_open, valid)
    return arr


def checked_probs(p_log: Any, p_target: Any, shape: tuple[int, ...] | None,
                  valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``p_log`` checked in (0, 1] and ``p_target`` in [0, 1], both of ``shape``."""
    mu = checked("p_log", p_log, shape, 0.0, 1.0, low_open=True, valid=valid)
    pi = checked("p_target", p_target, mu.shape, 0.0, 1.0, valid=valid)
    return mu, pi


def ess(weights: Any) -> float:
    """Effective sample size of importance weights: ``(sum w)^2 / sum w^2`` (NaN if all are 0).

    Equals ``n`` for equal weights and 1 when one weight carries everything (Kish's formula).
    """
    w = as_array(weights).reshape(-1)
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Poisson bootstrap
# ---------------------------------------------------------------------------------------------

def _poisson_table() -> np.ndarray:
    """Poisson(1) quantiles at the midpoints of the ``2^16`` equal steps of [0, 1] (float64)."""
    cdf = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])
    levels = (np.arange(1 << _COUNT_BITS) + 0.5) / (1 << _COUNT_BITS)
    return np.searchsorted(cdf, levels).astype(np.float64)


_POISSON_TABLE = _poisson_table()


def poisson_counts(rng: np.random.Generator, units: int, n_boot: int) -> np.ndarray:
    """``[units, n_boot]`` Poisson(1) resample counts: the next ``units`` units of ``rng``'s stream.

    Four counts per raw 64-bit draw, in unit-major order, so consecutive calls with ``units`` a
    multiple of 4 read the same counts as one call over all the units.
    """
    need = units * n_boot
    raw = rng.bit_generator.random_raw((need + 3) // 4).astype("<u8", copy=False)
    bits = raw.view("<u2")[:need].reshape(units, n_boot)
    return np.take(_POISSON_TABLE, bits)


def bootstrap_sums(cols: np.ndarray, n_boot: int, seed: int = SEED) -> np.ndarray:
    """``[n_boot, k]`` Poisson-resampled column sums ``sum_i c_bi cols_ik`` of ``cols`` ``[n, k]``.

    Memory stays bounded (blocks of units); the cost is ``O(n * n_boot * (1 + k))``.
    """
    n, k = cols.shape
    rng = np.random.default_rng(seed)
    sums = np.zeros((n_boot, k))
    for start in range(0, n, _BLOCK_ROWS):
        block = cols[start:start + _BLOCK_ROWS]
        sums += poisson_counts(rng, block.shape[0], n_boot).T @ block
    return sums


def _ratio_value(num: np.ndarray, den: np.ndarray, gain: np.ndarray,
                 empty_as_zero: bool = False) -> np.ndarray:
    """``sum_k gain_k num_k / den_k`` over the last axis (NaN where a denominator is 0, unless
    ``empty_as_zero``: then that ratio adds 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
    if empty_as_zero:
        ratio = np.where(den == 0, 0.0, ratio)
    return (gain * ratio).sum(axis=-1)


Layout = list[tuple[slice, slice | None, np.ndarray, bool]]


def _columns(stats: Sequence[Ratio]) -> tuple[np.ndarray, Layout]:
    """All numerator/denominator columns side by side, a ones column last, and each stat's slices."""
    n = stats[0].a.shape[0]
    blocks, layout, width = [], [], 0
    for stat in stats:
        a = stat.a.reshape(n, -1)
        k = a.shape[1]
        blocks.append(a)
        num = slice(width, width + k)
        width += k
        den = None
        if stat.b is not None:
            blocks.append(stat.b.reshape(n, k))
            den = slice(width, width + k)
            width += k
        layout.append((num, den, np.ones(k) if stat.gain is None else stat.gain, stat.empty_as_zero))
    blocks.append(np.ones((n, 1)))
    return np.concatenate(blocks, axis=1), layout


def _values(sums: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """Each stat's ratio value from column sums ``[..., width]`` (last column: the unit count)."""
    out = []
    for num, den, gain, empty_as_zero in layout:
        denominator = sums[..., -1:] if den is None else sums[..., den]
        out.append(_ratio_value(sums[..., num], denominator, gain, empty_as_zero))
    return out


def estimate_ratios(stats: Sequence[Ratio], n_boot: int = N_BOOT, seed: int = SEED) -> list[Estimate]:
    """The :class:`Estimate` of each :class:`Ratio` over the same ``n`` units, with one shared bootstrap.

    Every stat sees the same resample counts, so each CI equals the one that stat gets alone with
    the same ``seed`` (up to float rounding), and the bootstrap's cost is paid once.
    """
    n = stats[0].a.shape[0]
    if n == 0:
        raise RecrlError("ope: no logged rows to estimate from")
    if any(stat.a.shape[0] != n for stat in stats):
        raise RecrlError("ope: the estimators to bootstrap together cover different numbers of units")
    cols, layout = _columns(stats)
    values = _values(cols.sum(axis=0), layout)
    boot = _values(bootstrap_sums(cols, n_boot, seed), layout) if n_boot > 0 else [None] * len(stats)
    return [_make_estimate(float(v), b, stat.weights, n)
            for v, b, stat in zip(values, boot, stats, strict=True)]


def _make_estimate(value: float, boot: np.ndarray | None, weights: np.ndarray | None, n: int) -> Estimate:
    """An :class:`Estimate` from its value, its bootstrap values (None: no CI) and its weights."""
    low = high = float("nan")
    if boot is not None and np.isfinite(boot).any():
        low, high = (float(x) for x in np.nanpercentile(boot, [2.5, 97.5]))
    return Estimate(value=value, ci95_low=low, ci95_high=high,
                    ess=float(n) if weights is None else ess(weights), n=n)
