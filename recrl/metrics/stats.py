"""Summary statistics for evaluation results: Student-t confidence intervals and seeding.

No scipy dependency: the Student-t quantile is obtained by numerically inverting the
t CDF, which is expressed through the regularized incomplete beta function
(evaluated with a Lentz continued fraction and ``math.lgamma``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

_CF_MAX_ITER = 500
_CF_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _CF_EPS:
            break
    return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``; ``y`` must equal ``1 - x`` (passed for precision)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, y) / b


def student_t_sf(t: float, df: float) -> float:
    """Upper-tail probability ``P(T > t)`` of a Student-t variable with ``df`` degrees of freedom.

    Example::

        >>> round(student_t_sf(2.776445105, 4), 6)
        0.025
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    t2 = t * t
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def student_t_ppf(q: float, df: float) -> float:
    """Quantile function (inverse CDF) of the Student-t distribution, found by bisection.

    Accurate to about 1e-10 in ``t``.

    Example::

        >>> round(student_t_ppf(0.975, 1), 4)
        12.7062
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must lie in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    tail = 1.0 - q
    lo, hi = 0.0, 1.0
    while student_t_sf(hi, df) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_sf(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _as_float_array(values: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Flatten ``values`` into a float64 numpy array with NaNs removed."""
    if isinstance(values, torch.Tensor):
        arr = values.detach().cpu().double().numpy()
    else:
        arr = np.asarray(values, dtype=np.float64)
    arr = arr.reshape(-1)
    return arr[~np.isnan(arr)]


def mean_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor, confidence: float = 0.95
) -> tuple[float, float]:
    """Mean and half width of a Student-t confidence interval for the mean.

    ``half_width = t_{(1+confidence)/2, n-1} * sd(ddof=1) / sqrt(n)``. NaN values are
    dropped first; with no values both results are NaN, with one value the half width is NaN.

    Example::

        >>> m, h = mean_ci([1, 2, 3, 4, 5])
        >>> m, round(h, 6)
        (3.0, 1.963243)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    arr = _as_float_array(values)
    n = arr.size
    if n == 0:
        return float("nan"), float("nan")
    mean = float(arr.mean())
    if n == 1:
        return mean, float("nan")
    sd = float(arr.std(ddof=1))
    t = student_t_ppf((1.0 + confidence) / 2.0, n - 1)
    return mean, t * sd / math.sqrt(n)


def summarize(
    values: Sequence[float] | np.ndarray | torch.Tensor, confidence: float = 0.95
) -> dict[str, float]:
    """Summary dict ``{"mean", "ci95", "n"}`` of ``values`` (NaNs dropped; ``n`` counts the rest).

    The ``ci95`` key holds the half width at the requested ``confidence`` (95% by default).

    Example::

        >>> summarize([2.0, 4.0, float("nan")])["n"]
        2
    """
    mean, half_width = mean_ci(values, confidence)
    return {"mean": mean, "ci95": half_width, "n": int(_as_float_array(values).size)}


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
