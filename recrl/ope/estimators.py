"""Off-policy evaluation (OPE): what would a target policy have earned on the logged users?

Library estimators over logged rows with propensities (issue 15, first part; reports and the CLI
do not call them yet). Everything is vectorised with numpy: no Python loop over rows or sessions.

Notation, per logged row ``i`` (bandit view): reward ``r_i``, logging propensity ``mu_i`` of the
logged action, target probability ``pi_i`` of the same action, importance weight
``w_i = pi_i / mu_i``; for DM/DR a reward model's expected reward of the logged action
``q_i = q(x_i, a_i)`` and its expected reward under the target ``v_i = sum_a pi(a|x_i) q(x_i, a)``.

Per-session (sequential) view: arrays ``[S, T]`` padded after each session's end, with a boolean
validity mask; cumulative weight ``rho_it = prod_{t' <= t} w_it'``. A padded step is treated as an
absorbing state: weight 1 (so ``rho`` carries forward), reward, ``q`` and ``v`` 0.

Every estimator returns an :class:`Estimate`: the value, a 95% percentile-bootstrap CI over rows
(per-step) or sessions (sequential) with ``n_boot`` resamples (default :data:`N_BOOT` = 200) from
``numpy.random.default_rng(seed)`` (default seed 0), the effective sample size of its weights
``(sum w)^2 / sum w^2`` and the number of rows or sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recrl.types import RecrlError

N_BOOT = 200
"""Default number of bootstrap resamples behind every CI."""
SEED = 0
"""Default seed of the bootstrap's ``numpy.random.default_rng``."""
_BOOT_CHUNK_ELEMS = 1 << 24  # resamples x units drawn at once (bounds the bootstrap's memory)
_GATHER_MAX_COLS = 4  # above this many columns, bootstrap sums via per-unit counts


@dataclass(frozen=True)
class Estimate:
    """One off-policy estimate.

    Attributes:
        value: the estimated policy value (mean reward per row, or mean discounted return per
            session).
        ci95_low, ci95_high: 2.5% and 97.5% percentiles of the estimate over ``n_boot`` bootstrap
            resamples of the rows (per-step) or sessions (sequential); NaN when ``n_boot == 0``.
        ess: effective sample size of the estimator's importance weights
            ``(sum w)^2 / sum w^2`` (``n`` for DM, which uses none; NaN when all weights are 0).
        n: number of rows or sessions.
    """

    value: float
    ci95_low: float
    ci95_high: float
    ess: float
    n: int


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def _as_array(values: Any) -> np.ndarray:
    """``values`` (array-like or tensor) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _check(name: str, arr: np.ndarray, low: float, high: float, low_open: bool,
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


def _checked(name: str, values: Any, shape: tuple[int, ...] | None, low: float = -np.inf,
             high: float = np.inf, low_open: bool = False, valid: np.ndarray | None = None) -> np.ndarray:
    """``values`` as an array of ``shape``, checked to lie in its range (finite by default)."""
    arr = _as_array(values)
    if shape is not None and arr.shape != shape:
        raise RecrlError(f"ope: {name} has shape {arr.shape}, expected {shape}")
    _check(name, arr, low, high, low_open, valid)
    return arr


def _weights(p_log: Any, p_target: Any, shape: tuple[int, ...] | None,
             valid: np.ndarray | None = None) -> np.ndarray:
    """Importance weights ``p_target / p_log`` after checking ``p_log`` in (0, 1], ``p_target`` in [0, 1]."""
    mu = _checked("p_log", p_log, shape, 0.0, 1.0, low_open=True, valid=valid)
    pi = _checked("p_target", p_target, mu.shape, 0.0, 1.0, valid=valid)
    if valid is None:
        return pi / mu
    return np.where(valid, pi / np.where(valid, mu, 1.0), 1.0)


# ---------------------------------------------------------------------------------------------
# Shared machinery: value = sum_k g_k (sum_i A_ik) / (sum_i B_ik), bootstrapped over units i
# ---------------------------------------------------------------------------------------------

def ess(weights: Any) -> float:
    """Effective sample size of importance weights: ``(sum w)^2 / sum w^2`` (NaN if all are 0).

    Equals ``n`` for equal weights and 1 when one weight carries everything (Kish's formula).
    """
    w = _as_array(weights).reshape(-1)
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0 else float("nan")


def _ratio_value(num: np.ndarray, den: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """``sum_k gain_k num_k / den_k`` over the last axis (NaN where a denominator is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (gain * (num / den)).sum(axis=-1)


def _resampled_sums(cols: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``[m, k]`` sums of ``cols`` ``[n, k]`` over each row of resampled unit ids ``idx`` ``[m, n]``.

    Few columns: a gather per column; many (WPDIS over long sessions): per-unit counts times ``cols``.
    """
    m, n = idx.shape
    if cols.shape[1] <= _GATHER_MAX_COLS:
        return np.stack([np.take(np.ascontiguousarray(c), idx).sum(axis=1) for c in cols.T], axis=1)
    counts = np.bincount((idx + n * np.arange(m)[:, None]).reshape(-1), minlength=m * n)
    return counts.reshape(m, n).astype(np.float64) @ cols


def _bootstrap_ci(a: np.ndarray, b: np.ndarray | None, gain: np.ndarray, n_boot: int,
                  seed: int) -> tuple[float, float]:
    """95% percentile CI of ``sum_k gain_k sum_i A_ik / sum_i B_ik`` under resampling units ``i``.

    Each resample draws ``n`` units with replacement (``B = None``: ones, whose sums are ``n``);
    the cost is ``O(n_boot * n * k)``, in chunks of bounded memory.
    """
    if n_boot <= 0:
        return float("nan"), float("nan")
    n, k = a.shape
    rng = np.random.default_rng(seed)
    cols = a if b is None else np.concatenate([a, b], axis=1)
    chunk = max(1, _BOOT_CHUNK_ELEMS // max(n, 1))
    values = []
    for start in range(0, n_boot, chunk):
        sums = _resampled_sums(cols, rng.integers(0, n, size=(min(chunk, n_boot - start), n)))
        den = np.full_like(sums[:, :k], float(n)) if b is None else sums[:, k:]
        values.append(_ratio_value(sums[:, :k], den, gain))
    low, high = np.nanpercentile(np.concatenate(values), [2.5, 97.5])
    return float(low), float(high)


def _estimate(a: np.ndarray, b: np.ndarray | None = None, gain: np.ndarray | None = None,
              weights: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """The :class:`Estimate` of per-unit terms ``a`` ``[n]`` or ``[n, k]`` (see :func:`_ratio_value`).

    ``b`` defaults to ones (a plain mean), ``gain`` to ones, ``weights`` (for the ESS) to none (ESS = n).
    """
    a2 = a.reshape(a.shape[0], -1)
    b2 = None if b is None else b.reshape(a2.shape)
    g = np.ones(a2.shape[1]) if gain is None else gain
    n = a2.shape[0]
    if n == 0:
        raise RecrlError("ope: no logged rows to estimate from")
    den = np.full(a2.shape[1], float(n)) if b2 is None else b2.sum(axis=0)
    value = float(_ratio_value(a2.sum(axis=0), den, g))
    low, high = _bootstrap_ci(a2, b2, g, n_boot, seed)
    return Estimate(value=value, ci95_low=low, ci95_high=high,
                    ess=float(n) if weights is None else ess(weights), n=n)


# ---------------------------------------------------------------------------------------------
# Target probabilities
# ---------------------------------------------------------------------------------------------

def deterministic_probs(chosen: Any, logged: Any, n_actions: int, epsilon: float = 0.0) -> np.ndarray:
    """Probability that an epsilon-smoothed deterministic (argmax) target takes the logged action.

    ``pi(a | x) = (1 - epsilon) * 1[a == chosen(x)] + epsilon / n_actions``: with ``epsilon = 0``
    the probabilities are 0/1 (rows the target would not take get weight 0); a small ``epsilon``
    (e.g. 0.05) keeps every logged action possible, at the price of evaluating the smoothed policy.

    Args:
        chosen: ``[N]`` the target's action for each logged row.
        logged: ``[N]`` the logged action.
        n_actions: size of the action set.
        epsilon: smoothing in [0, 1].
    """
    if not 0.0 <= epsilon <= 1.0:
        raise RecrlError(f"ope: epsilon must lie in [0, 1], got {epsilon}")
    match = np.asarray(chosen) == np.asarray(logged)
    return (1.0 - epsilon) * match.astype(np.float64) + epsilon / n_actions


# ---------------------------------------------------------------------------------------------
# Per-step (bandit) estimators
# ---------------------------------------------------------------------------------------------

def _rows(reward: Any, p_log: Any, p_target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked rewards ``[N]`` and importance weights ``[N]``."""
    r = _checked("reward", reward, None)
    if r.ndim != 1:
        raise RecrlError(f"ope: reward must be one-dimensional [N], got shape {r.shape}")
    return r, _weights(p_log, p_target, r.shape)


def dm(v_target: Any, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Direct method: the reward model's expected reward under the target, averaged over rows.

    ``V_DM = 1/n sum_i v_i`` with ``v_i = sum_a pi(a|x_i) q(x_i, a)``. No weights (ESS = n);
    biased exactly as far as the reward model ``q`` is wrong (Dudik et al., ICML 2011, sec. 2).
    """
    v = _checked("v_target", v_target, None)
    return _estimate(v.reshape(-1), n_boot=n_boot, seed=seed)


def ips(reward: Any, p_log: Any, p_target: Any, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Inverse propensity scoring (Horvitz & Thompson, 1952): ``V_IPS = 1/n sum_i w_i r_i``.

    Unbiased when the logging propensities are right and cover the target's actions.
    """
    r, w = _rows(reward, p_log, p_target)
    return _estimate(w * r, weights=w, n_boot=n_boot, seed=seed)


def snips(reward: Any, p_log: Any, p_target: Any, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Self-normalised IPS (Swaminathan & Joachims, NeurIPS 2015): ``sum_i w_i r_i / sum_i w_i``.

    Slightly biased, consistent, and usually of much lower variance than IPS; NaN if all w are 0.
    """
    r, w = _rows(reward, p_log, p_target)
    return _estimate(w * r, w, weights=w, n_boot=n_boot, seed=seed)


def clipped_ips(reward: Any, p_log: Any, p_target: Any, max_weight: float = 10.0,
                n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """IPS with weights clipped from above: ``V = 1/n sum_i min(w_i, max_weight) r_i``.

    Trades variance for a downward bias (for nonnegative rewards) on rows whose weight exceeds
    ``max_weight`` (default 10); the ESS is that of the clipped weights.
    """
    if not max_weight > 0:
        raise RecrlError(f"ope: max_weight must be positive, got {max_weight}")
    r, w = _rows(reward, p_log, p_target)
    wc = np.minimum(w, max_weight)
    return _estimate(wc * r, weights=wc, n_boot=n_boot, seed=seed)


def _dr_inputs(reward: Any, p_log: Any, p_target: Any, q_logged: Any,
               v_target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``r, w, q, v`` of the doubly robust estimators."""
    r, w = _rows(reward, p_log, p_target)
    return r, w, _checked("q_logged", q_logged, r.shape), _checked("v_target", v_target, r.shape)


def dr(reward: Any, p_log: Any, p_target: Any, q_logged: Any, v_target: Any,
       n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Doubly robust (Dudik, Langford & Li, ICML 2011): ``1/n sum_i [v_i + w_i (r_i - q_i)]``.

    Unbiased when either the propensities or the reward model are right.
    """
    r, w, q, v = _dr_inputs(reward, p_log, p_target, q_logged, v_target)
    return _estimate(v + w * (r - q), weights=w, n_boot=n_boot, seed=seed)


def switch_dr(reward: Any, p_log: Any, p_target: Any, q_logged: Any, v_target: Any,
              tau: float = 10.0, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Switch-DR (Wang, Agarwal & Dudik, ICML 2017), per logged row:

    ``V = 1/n sum_i [v_i + 1[w_i <= tau] w_i (r_i - q_i)]``: DR on rows whose weight is at most
    ``tau`` (default 10), the DM on the others. This is the row-level form of Open Bandit
    Pipeline's ``SwitchDoublyRobust``; Wang et al.'s original switches per (context, action) pair,
    which needs ``q`` for every action rather than only ``q_logged`` and ``v_target``. The ESS is
    that of the weights kept, ``1[w <= tau] w``.
    """
    if not tau > 0:
        raise RecrlError(f"ope: tau must be positive, got {tau}")
    r, w, q, v = _dr_inputs(reward, p_log, p_target, q_logged, v_target)
    wk = np.where(w <= tau, w, 0.0)
    return _estimate(v + wk * (r - q), weights=wk, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------------------------
# Per-session (sequential) estimators
# ---------------------------------------------------------------------------------------------

def _sessions(reward: Any, p_log: Any, p_target: Any,
              mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked validity mask, rewards (0 when padded) and per-step weights (1 when padded), ``[S, T]``."""
    valid = np.asarray(mask, dtype=bool)
    if valid.ndim != 2:
        raise RecrlError(f"ope: mask must be [sessions, steps], got shape {valid.shape}")
    r = _checked("reward", reward, valid.shape, valid=valid)
    w = _weights(p_log, p_target, valid.shape, valid=valid)
    return valid, np.where(valid, r, 0.0), w


def _discounts(steps: int, gamma: float) -> np.ndarray:
    """``[gamma^0, ..., gamma^(steps-1)]``."""
    if not 0.0 <= gamma <= 1.0:
        raise RecrlError(f"ope: gamma must lie in [0, 1], got {gamma}")
    return gamma ** np.arange(steps, dtype=np.float64)


def pdis(reward: Any, p_log: Any, p_target: Any, mask: Any, gamma: float = 1.0,
         n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Per-decision importance sampling (Precup, Sutton & Singh, ICML 2000).

    ``V = 1/S sum_i sum_t gamma^t rho_it r_it`` with ``rho_it = prod_{t'<=t} w_it'``; inputs
    ``[S, T]`` padded after each session's end (``mask`` False). Unbiased with right propensities.
    The ESS is that of the sessions' final cumulative weights.
    """
    _, r, w = _sessions(reward, p_log, p_target, mask)
    rho = np.cumprod(w, axis=1)
    per_session = (_discounts(r.shape[1], gamma) * rho * r).sum(axis=1)
    return _estimate(per_session, weights=rho[:, -1], n_boot=n_boot, seed=seed)


def wpdis(reward: Any, p_log: Any, p_target: Any, mask: Any, gamma: float = 1.0,
          n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Weighted per-decision importance sampling (Precup, Sutton & Singh, ICML 2000).

    ``V = sum_t gamma^t (sum_i rho_it r_it) / (sum_i rho_it)``: each step normalised by the
    (sum, i.e. ``S`` times the mean) cumulative weight at ``t``; ended sessions keep their last
    ``rho`` and earn 0, so an on-policy log gives the plain mean return. Biased, consistent,
    lower variance than :func:`pdis`. The ESS is that of the final cumulative weights.
    """
    _, r, w = _sessions(reward, p_log, p_target, mask)
    rho = np.cumprod(w, axis=1)
    return _estimate(rho * r, rho, gain=_discounts(r.shape[1], gamma), weights=rho[:, -1],
                     n_boot=n_boot, seed=seed)


def sequential_dr(reward: Any, p_log: Any, p_target: Any, q_logged: Any, v_target: Any, mask: Any,
                  gamma: float = 1.0, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Sequential doubly robust (Jiang & Li, ICML 2016), averaged over sessions.

    Recursively ``V_T = 0``, ``V_t = v_t + w_t (r_t + gamma V_{t+1} - q_t)`` with ``q_t = q(s_t, a_t)``
    and ``v_t = sum_a pi(a|s_t) q(s_t, a)``; computed unrolled, without a loop, as
    ``V_0 = sum_t gamma^t [rho_t (r_t - q_t) + rho_{t-1} v_t]`` (``rho_{-1} = 1``). Padded steps
    count as an absorbing state (q = v = r = 0). Unbiased when either the propensities or the
    model are right. The ESS is that of the final cumulative weights.
    """
    valid, r, w = _sessions(reward, p_log, p_target, mask)
    q = np.where(valid, _checked("q_logged", q_logged, valid.shape, valid=valid), 0.0)
    v = np.where(valid, _checked("v_target", v_target, valid.shape, valid=valid), 0.0)
    rho = np.cumprod(w, axis=1)
    rho_prev = np.concatenate([np.ones((rho.shape[0], 1)), rho[:, :-1]], axis=1)
    per_session = (_discounts(r.shape[1], gamma) * (rho * (r - q) + rho_prev * v)).sum(axis=1)
    return _estimate(per_session, weights=rho[:, -1], n_boot=n_boot, seed=seed)
