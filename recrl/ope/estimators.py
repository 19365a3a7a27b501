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

Every estimator returns an :class:`Estimate`: the value, a 95% percentile CI from ``n_boot``
(default :data:`N_BOOT` = 200) Poisson-bootstrap resamples of the rows (per-step) or sessions
(sequential) drawn from ``numpy.random.default_rng(seed)`` (default seed 0; see
:mod:`recrl.ope.core`), the effective sample size of its weights ``(sum w)^2 / sum w^2`` and the
number of rows or sessions. :func:`estimate_all` and :func:`estimate_all_sessions` compute several
estimators over the same rows or sessions with one shared bootstrap: each CI equals the one of
the estimator's own function with the same seed, at a fraction of the cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recrl.ope.core import N_BOOT, SEED, Estimate, Ratio, checked, checked_probs, ess, estimate_ratios
from recrl.types import RecrlError

__all__ = ["N_BOOT", "SEED", "Estimate", "clipped_ips", "deterministic_probs", "dm", "dr", "ess",
           "estimate_all", "estimate_all_sessions", "ips", "pdis", "sequential_dr", "snips",
           "switch_dr", "wpdis"]


def _weights(p_log: Any, p_target: Any, shape: tuple[int, ...] | None,
             valid: np.ndarray | None = None) -> np.ndarray:
    """Importance weights ``p_target / p_log`` after checking ``p_log`` in (0, 1], ``p_target`` in [0, 1]."""
    mu, pi = checked_probs(p_log, p_target, shape, valid)
    if valid is None:
        return pi / mu
    return np.where(valid, pi / np.where(valid, mu, 1.0), 1.0)


def _one(stat: Ratio, n_boot: int, seed: int) -> Estimate:
    """The :class:`Estimate` of a single :class:`Ratio`."""
    return estimate_ratios([stat], n_boot, seed)[0]


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
    r = checked("reward", reward, None)
    if r.ndim != 1:
        raise RecrlError(f"ope: reward must be one-dimensional [N], got shape {r.shape}")
    return r, _weights(p_log, p_target, r.shape)


def _check_threshold(name: str, value: float) -> None:
    """Raise :class:`RecrlError` unless the clipping / switching threshold is positive."""
    if not value > 0:
        raise RecrlError(f"ope: {name} must be positive, got {value}")


def _model_terms(q_logged: Any, v_target: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Checked reward-model terms ``q`` (logged action) and ``v`` (under the target) of ``shape``."""
    return checked("q_logged", q_logged, shape), checked("v_target", v_target, shape)


def _dm_stat(v: np.ndarray) -> Ratio:
    """DM: the mean of ``v``."""
    return Ratio(v.reshape(-1))


def _ips_stat(r: np.ndarray, w: np.ndarray) -> Ratio:
    """IPS: the mean of ``w r``."""
    return Ratio(w * r, weights=w)


def _snips_stat(r: np.ndarray, w: np.ndarray) -> Ratio:
    """SNIPS: ``sum w r / sum w``."""
    return Ratio(w * r, w, weights=w)


def _clipped_stat(r: np.ndarray, w: np.ndarray, max_weight: float) -> Ratio:
    """Clipped IPS: the mean of ``min(w, max_weight) r``."""
    wc = np.minimum(w, max_weight)
    return Ratio(wc * r, weights=wc)


def _dr_stat(r: np.ndarray, w: np.ndarray, q: np.ndarray, v: np.ndarray) -> Ratio:
    """DR: the mean of ``v + w (r - q)``."""
    return Ratio(v + w * (r - q), weights=w)


def _switch_stat(r: np.ndarray, w: np.ndarray, q: np.ndarray, v: np.ndarray, tau: float) -> Ratio:
    """Switch-DR: DR where ``w <= tau``, DM elsewhere."""
    wk = np.where(w <= tau, w, 0.0)
    return Ratio(v + wk * (r - q), weights=wk)


def dm(v_target: Any, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Direct method: the reward model's expected reward under the target, averaged over rows.

    ``V_DM = 1/n sum_i v_i`` with ``v_i = sum_a pi(a|x_i) q(x_i, a)``. No weights (ESS = n);
    biased exactly as far as the reward model ``q`` is wrong (Dudik et al., ICML 2011, sec. 2).
    """
    return _one(_dm_stat(checked("v_target", v_target, None)), n_boot, seed)


def ips(reward: Any, p_log: Any, p_target: Any, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Inverse propensity scoring (Horvitz & Thompson, 1952): ``V_IPS = 1/n sum_i w_i r_i``.

    Unbiased when the logging propensities are right and cover the target's actions.
    """
    return _one(_ips_stat(*_rows(reward, p_log, p_target)), n_boot, seed)


def snips(reward: Any, p_log: Any, p_target: Any, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Self-normalised IPS (Swaminathan & Joachims, NeurIPS 2015): ``sum_i w_i r_i / sum_i w_i``.

    Slightly biased, consistent, and usually of much lower variance than IPS; NaN if all w are 0.
    """
    return _one(_snips_stat(*_rows(reward, p_log, p_target)), n_boot, seed)


def clipped_ips(reward: Any, p_log: Any, p_target: Any, max_weight: float = 10.0,
                n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """IPS with weights clipped from above: ``V = 1/n sum_i min(w_i, max_weight) r_i``.

    Trades variance for a downward bias (for nonnegative rewards) on rows whose weight exceeds
    ``max_weight`` (default 10); the ESS is that of the clipped weights.
    """
    _check_threshold("max_weight", max_weight)
    return _one(_clipped_stat(*_rows(reward, p_log, p_target), max_weight), n_boot, seed)


def dr(reward: Any, p_log: Any, p_target: Any, q_logged: Any, v_target: Any,
       n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Doubly robust (Dudik, Langford & Li, ICML 2011): ``1/n sum_i [v_i + w_i (r_i - q_i)]``.

    Unbiased when either the propensities or the reward model are right.
    """
    r, w = _rows(reward, p_log, p_target)
    return _one(_dr_stat(r, w, *_model_terms(q_logged, v_target, r.shape)), n_boot, seed)


def switch_dr(reward: Any, p_log: Any, p_target: Any, q_logged: Any, v_target: Any,
              tau: float = 10.0, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Switch-DR (Wang, Agarwal & Dudik, ICML 2017), per logged row:

    ``V = 1/n sum_i [v_i + 1[w_i <= tau] w_i (r_i - q_i)]``: DR on rows whose weight is at most
    ``tau`` (default 10), the DM on the others. This is the row-level form of Open Bandit
    Pipeline's ``SwitchDoublyRobust``; Wang et al.'s original switches per (context, action) pair,
    which needs ``q`` for every action rather than only ``q_logged`` and ``v_target``. The ESS is
    that of the weights kept, ``1[w <= tau] w``.
    """
    _check_threshold("tau", tau)
    r, w = _rows(reward, p_log, p_target)
    return _one(_switch_stat(r, w, *_model_terms(q_logged, v_target, r.shape), tau), n_boot, seed)


def _model_pair(q_logged: Any, v_target: Any) -> bool:
    """Whether a reward model is given; ``q_logged`` without ``v_target`` is an error."""
    if q_logged is not None and v_target is None:
        raise RecrlError("ope: q_logged needs v_target (the model's expected reward under the target)")
    return q_logged is not None


def estimate_all(reward: Any, p_log: Any, p_target: Any, q_logged: Any = None, v_target: Any = None,
                 max_weight: float = 10.0, tau: float = 10.0, n_boot: int = N_BOOT,
                 seed: int = SEED) -> dict[str, Estimate]:
    """Every per-step estimator over the same logged rows, with one shared bootstrap.

    Returns ``ips``, ``snips`` and ``clipped_ips``; with ``v_target`` also ``dm``; with both
    ``q_logged`` and ``v_target`` also ``dr`` and ``switch_dr``. Each :class:`Estimate` equals the
    one of the function of that name called with the same inputs, ``n_boot`` and ``seed`` (CIs up
    to float rounding); the inputs are checked once and the resample counts drawn once.
    """
    _check_threshold("max_weight", max_weight)
    _check_threshold("tau", tau)
    with_model = _model_pair(q_logged, v_target)
    r, w = _rows(reward, p_log, p_target)
    stats = {"ips": _ips_stat(r, w), "snips": _snips_stat(r, w),
             "clipped_ips": _clipped_stat(r, w, max_weight)}
    if v_target is not None:
        v = checked("v_target", v_target, r.shape)
        stats["dm"] = _dm_stat(v)
    if with_model:
        q = checked("q_logged", q_logged, r.shape)
        stats["dr"], stats["switch_dr"] = _dr_stat(r, w, q, v), _switch_stat(r, w, q, v, tau)
    return dict(zip(stats, estimate_ratios(list(stats.values()), n_boot, seed), strict=True))


# ---------------------------------------------------------------------------------------------
# Per-session (sequential) estimators
# ---------------------------------------------------------------------------------------------

def _sessions(reward: Any, p_log: Any, p_target: Any,
              mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked validity mask, rewards (0 when padded) and per-step weights (1 when padded), ``[S, T]``."""
    valid = np.asarray(mask, dtype=bool)
    if valid.ndim != 2:
        raise RecrlError(f"ope: mask must be [sessions, steps], got shape {valid.shape}")
    r = checked("reward", reward, valid.shape, valid=valid)
    w = _weights(p_log, p_target, valid.shape, valid=valid)
    return valid, np.where(valid, r, 0.0), w


def _session_model(q_logged: Any, v_target: Any, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``q`` and ``v`` ``[S, T]`` on valid steps, 0 on padded ones."""
    q = checked("q_logged", q_logged, valid.shape, valid=valid)
    v = checked("v_target", v_target, valid.shape, valid=valid)
    return np.where(valid, q, 0.0), np.where(valid, v, 0.0)


def _discounts(steps: int, gamma: float) -> np.ndarray:
    """``[gamma^0, ..., gamma^(steps-1)]``."""
    if not 0.0 <= gamma <= 1.0:
        raise RecrlError(f"ope: gamma must lie in [0, 1], got {gamma}")
    return gamma ** np.arange(steps, dtype=np.float64)


def _pdis_stat(r: np.ndarray, rho: np.ndarray, disc: np.ndarray) -> Ratio:
    """PDIS: the mean discounted ``rho``-weighted return per session."""
    return Ratio((disc * rho * r).sum(axis=1), weights=rho[:, -1])


def _wpdis_stat(r: np.ndarray, rho: np.ndarray, disc: np.ndarray) -> Ratio:
    """WPDIS: per step ``sum rho r / sum rho``, discounted and summed."""
    return Ratio(rho * r, rho, gain=disc, weights=rho[:, -1])


def _seq_dr_stat(r: np.ndarray, rho: np.ndarray, disc: np.ndarray, q: np.ndarray, v: np.ndarray) -> Ratio:
    """Sequential DR, unrolled (see :func:`sequential_dr`)."""
    rho_prev = np.concatenate([np.ones((rho.shape[0], 1)), rho[:, :-1]], axis=1)
    return Ratio((disc * (rho * (r - q) + rho_prev * v)).sum(axis=1), weights=rho[:, -1])


def _wdr_stat(r: np.ndarray, rho: np.ndarray, disc: np.ndarray, q: np.ndarray, v: np.ndarray) -> Ratio:
    """Weighted DR (see :func:`weighted_dr`): per step two self-normalised ratios."""
    rho_prev = np.concatenate([np.ones((rho.shape[0], 1)), rho[:, :-1]], axis=1)
    return Ratio(np.concatenate([rho * (r - q), rho_prev * v], axis=1),
                 np.concatenate([rho, rho_prev], axis=1), gain=np.concatenate([disc, disc]),
                 weights=rho[:, -1], empty_as_zero=True)


def pdis(reward: Any, p_log: Any, p_target: Any, mask: Any, gamma: float = 1.0,
         n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Per-decision importance sampling (Precup, Sutton & Singh, ICML 2000).

    ``V = 1/S sum_i sum_t gamma^t rho_it r_it`` with ``rho_it = prod_{t'<=t} w_it'``; inputs
    ``[S, T]`` padded after each session's end (``mask`` False). Unbiased with right propensities.
    The ESS is that of the sessions' final cumulative weights.
    """
    _, r, w = _sessions(reward, p_log, p_target, mask)
    return _one(_pdis_stat(r, np.cumprod(w, axis=1), _discounts(r.shape[1], gamma)), n_boot, seed)


def wpdis(reward: Any, p_log: Any, p_target: Any, mask: Any, gamma: float = 1.0,
          n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Weighted per-decision importance sampling (Precup, Sutton & Singh, ICML 2000).

    ``V = sum_t gamma^t (sum_i rho_it r_it) / (sum_i rho_it)``: each step normalised by the
    (sum, i.e. ``S`` times the mean) cumulative weight at ``t``; ended sessions keep their last
    ``rho`` and earn 0, so an on-policy log gives the plain mean return. Biased, consistent,
    lower variance than :func:`pdis`. The ESS is that of the final cumulative weights.
    """
    _, r, w = _sessions(reward, p_log, p_target, mask)
    return _one(_wpdis_stat(r, np.cumprod(w, axis=1), _discounts(r.shape[1], gamma)), n_boot, seed)


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
    q, v = _session_model(q_logged, v_target, valid)
    stat = _seq_dr_stat(r, np.cumprod(w, axis=1), _discounts(r.shape[1], gamma), q, v)
    return _one(stat, n_boot, seed)


def weighted_dr(reward: Any, p_log: Any, p_target: Any, q_logged: Any, v_target: Any, mask: Any,
                gamma: float = 1.0, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Weighted doubly robust (Thomas & Brunskill, ICML 2016): sequential DR with each step's
    cumulative weights self-normalised over sessions,

    ``V = sum_t gamma^t [sum_i rho_it (r_it - q_it) / sum_i rho_it + sum_i rho_i,t-1 v_it / sum_i rho_i,t-1]``

    (``rho_i,-1 = 1``; ``q``, ``v`` as in :func:`sequential_dr`). Biased, consistent, and far less
    variable than :func:`sequential_dr` when a few sessions carry the weight; a step no session
    with weight reaches adds nothing, so where the target leaves the logger's support the
    estimate falls back to the model. The ESS is that of the final cumulative weights.
    """
    valid, r, w = _sessions(reward, p_log, p_target, mask)
    q, v = _session_model(q_logged, v_target, valid)
    return _one(_wdr_stat(r, np.cumprod(w, axis=1), _discounts(r.shape[1], gamma), q, v), n_boot, seed)


def estimate_all_sessions(reward: Any, p_log: Any, p_target: Any, mask: Any, q_logged: Any = None,
                          v_target: Any = None, gamma: float = 1.0, n_boot: int = N_BOOT,
                          seed: int = SEED) -> dict[str, Estimate]:
    """Every per-session estimator over the same sessions ``[S, T]``, with one shared bootstrap.

    Returns ``pdis`` and ``wpdis``; with ``q_logged`` and ``v_target`` also ``sequential_dr`` and
    ``weighted_dr``.
    Each :class:`Estimate` equals the one of the function of that name called with the same
    inputs, ``gamma``, ``n_boot`` and ``seed`` (CIs up to float rounding).
    """
    with_model = _model_pair(q_logged, v_target)
    valid, r, w = _sessions(reward, p_log, p_target, mask)
    rho, disc = np.cumprod(w, axis=1), _discounts(r.shape[1], gamma)
    stats = {"pdis": _pdis_stat(r, rho, disc), "wpdis": _wpdis_stat(r, rho, disc)}
    if with_model:
        model = _session_model(q_logged, v_target, valid)
        stats["sequential_dr"] = _seq_dr_stat(r, rho, disc, *model)
        stats["weighted_dr"] = _wdr_stat(r, rho, disc, *model)
    return dict(zip(stats, estimate_ratios(list(stats.values()), n_boot, seed), strict=True))
