"""Tests for recrl.metrics.stats: Student-t quantiles, confidence intervals, seeding."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from recrl.metrics.stats import mean_ci, set_seed, student_t_ppf, student_t_sf, summarize


@pytest.mark.parametrize(
    ("q", "df", "expected"),
    [
        (0.975, 1, 12.706204736),
        (0.975, 2, 4.302652730),
        (0.975, 4, 2.776445105),
        (0.975, 30, 2.042272456),
        (0.95, 10, 1.812461123),
        (0.995, 5, 4.032142984),
        (0.9995, 1, 636.619248768),
        (0.975, 10**7, 1.959964),
    ],
)
def test_student_t_ppf_matches_reference_table(q: float, df: float, expected: float) -> None:
    assert student_t_ppf(q, df) == pytest.approx(expected, rel=1e-6)


def test_student_t_ppf_is_symmetric_and_inverts_sf() -> None:
    assert student_t_ppf(0.5, 3) == 0.0
    assert student_t_ppf(0.025, 4) == pytest.approx(-2.776445105, rel=1e-8)
    assert student_t_sf(student_t_ppf(0.9, 7), 7) == pytest.approx(0.1, abs=1e-10)
    # df = 1 is the Cauchy distribution: P(T > 1) = 1/4
    assert student_t_sf(1.0, 1) == pytest.approx(0.25, abs=1e-12)
    assert student_t_sf(-1.0, 1) == pytest.approx(0.75, abs=1e-12)


def test_mean_ci_five_values() -> None:
    mean, half = mean_ci([1, 2, 3, 4, 5])
    assert mean == 3.0
    # t_{0.975,4} * sd / sqrt(n) with sd = sqrt(2.5)
    assert half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), abs=1e-6)
    assert half == pytest.approx(1.963243, abs=1e-6)


def test_mean_ci_two_values_uses_t_with_one_df() -> None:
    mean, half = mean_ci([1.0, 3.0])  # sd = sqrt(2), sqrt(n) = sqrt(2)
    assert mean == 2.0
    assert half == pytest.approx(12.7062, abs=1e-4)


def test_mean_ci_large_n_approaches_normal() -> None:
    values = np.random.default_rng(0).normal(5.0, 2.0, size=20_000)
    mean, half = mean_ci(values)
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx(1.96 * values.std(ddof=1) / math.sqrt(values.size), rel=1e-3)


def test_mean_ci_other_confidence_levels() -> None:
    values = [1, 2, 3, 4, 5]
    _, half90 = mean_ci(values, confidence=0.90)
    _, half99 = mean_ci(values, confidence=0.99)
    assert half90 == pytest.approx(2.131847 * math.sqrt(2.5) / math.sqrt(5), abs=1e-5)
    assert half99 == pytest.approx(4.604095 * math.sqrt(2.5) / math.sqrt(5), abs=1e-5)


def test_mean_ci_drops_nan_and_accepts_arrays_and_tensors() -> None:
    expected = mean_ci([1, 2, 3, 4, 5])
    assert mean_ci([1, float("nan"), 2, 3, 4, 5, float("nan")]) == pytest.approx(expected)
    assert mean_ci(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, np.nan]])) == pytest.approx(expected)
    assert mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(expected)


def test_mean_ci_degenerate_sizes() -> None:
    mean, half = mean_ci([7.0])
    assert mean == 7.0 and math.isnan(half)
    assert all(math.isnan(x) for x in mean_ci([]))
    assert all(math.isnan(x) for x in mean_ci([float("nan"), float("nan")]))
    assert mean_ci([4.0, 4.0, 4.0]) == (4.0, 0.0)


def test_mean_ci_rejects_invalid_confidence() -> None:
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1, 2, 3], confidence=1.0)


def test_summarize_returns_mean_ci_and_count() -> None:
    stats = summarize([1, 2, 3, 4, float("nan"), 5])
    assert stats["mean"] == 3.0
    assert stats["ci95"] == pytest.approx(1.963243, abs=1e-6)
    assert stats["n"] == 5
    assert summarize([])["n"] == 0


def test_set_seed_makes_all_generators_reproducible() -> None:
    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_seed(123)
    first = draw()
    set_seed(123)
    assert draw() == first
    set_seed(124)
    assert draw() != first
