"""Slate off-policy evaluation: the pseudo-inverse estimator (PI) and its self-normalised variant.

Swaminathan, Krishnamurthy, Agarwal, Dudik, Langford, Jose & Zitouni, "Off-policy evaluation for
slate recommendation", NeurIPS 2017. A slate ``s = (s_1, ..., s_K)`` fills ``K`` slots from ``m``
items and earns one slate-level reward ``r``.

**Assumption (additivity)**: the expected slate reward is a sum over slots of unobserved
per-(slot, item) terms, ``E[r | x, s] = sum_k phi_x(k, s_k)``; nothing about ``phi`` is estimated
or needed. Under it, with the indicator vector ``1_s`` of the ``K * m`` (slot, item) pairs, the
target's per-slot marginals ``theta_pi(x) = E_pi[1_s]`` and ``Gamma_mu(x) = E_mu[1_s 1_s^T]``,

    V_PI = 1/n sum_i w_i r_i,   w_i = theta_pi(x_i)^T Gamma_mu(x_i)^+ 1_{s_i},

is unbiased whenever ``theta_pi(x)`` lies in the span of the logger's slates (every (slot, item)
pair the target uses is logged with positive probability, and the logger's slates can express
the target's marginals). When rewards are not additive (e.g. items interact) PI is biased.
PI-SN is ``sum_i w_i r_i / sum_i w_i``. PI weights can be negative; the ESS
``(sum w)^2 / sum w^2`` is still reported.

Closed forms of ``w_i`` (:func:`pi_weights`), from the logged items' per-slot marginals
``mu_ik = mu(s_ik at slot k | x_i)`` and ``pi_ik = pi(s_ik at slot k | x_i)``:

* ``"product"`` logger (slots drawn independently, with replacement across slots):
  ``w_i = sum_k pi_ik / mu_ik - (K - 1)``;
* ``"uniform"`` logger (``K`` distinct items of ``m > K`` uniformly at random, so every
  ``mu_ik = 1/m``): ``w_i = (m-1) A_i + (m-1)/(m-K) C_i - m (K-1)/(m-K)`` with
  ``A_i = sum_k pi_ik`` and ``C_i = sum_k sum_j pi(s_ik at slot j | x_i)``, the second needing the
  target's probability of the logged item at *any* slot (``p_target_in_slate``).

Both equal the general form (verified against the pseudo-inverse in the tests); for other
loggers over small action spaces, :func:`pi_weights_general` computes ``Gamma^+`` per context
from an enumerated logger (:func:`logger_gamma`). CIs use the shared Poisson bootstrap of
:mod:`recrl.ope.core` over slates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recrl.ope.core import N_BOOT, SEED, Estimate, Ratio, checked, checked_probs, estimate_ratios
from recrl.types import RecrlError

LOGGERS = ("product", "uniform")
"""Loggers with a closed-form pseudo-inverse weight (see the module docstring)."""
_MARGINAL_TOL = 1e-6  # per-slot marginals must sum to 1 within this
_SPAN_TOL = 1e-6  # relative residual above which a target's marginals lie outside the logger's span


# ---------------------------------------------------------------------------------------------
# Closed-form weights
# ---------------------------------------------------------------------------------------------

def _slot_probs(p_log: Any, p_target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked per-slot marginals ``[N, K]`` of the logged items under the logger and the target."""
    mu = checked("p_log", p_log, None)
    if mu.ndim != 2 or mu.shape[1] == 0:
        raise RecrlError(f"ope: slate p_log must be [slates, slots], got shape {mu.shape}")
    return checked_probs(mu, p_target, mu.shape)


def _uniform_items(mu: np.ndarray) -> np.ndarray:
    """``[N]`` item counts ``m = 1 / mu`` of a uniform logger, checked equal across a row's slots."""
    items = 1.0 / mu
    m = np.rint(items[:, 0])
    bad = int((np.abs(items - m[:, None]) > 1e-6 * m[:, None]).any(axis=1).sum())
    if bad:
        raise RecrlError(f"ope: {bad} slate(s) have p_log that is not 1/m in every slot (uniform logger)")
    slots = mu.shape[1]
    if (m <= slots).any():
        raise RecrlError(f"ope: the uniform closed form needs more items than the {slots} slots "
                         "(use pi_weights_general)")
    return m


def pi_weights(p_log: Any, p_target: Any, logger: str = "product",
               p_target_in_slate: Any = None) -> np.ndarray:
    """Pseudo-inverse weights ``[N]`` of logged slates from closed forms (see the module docstring).

    Args:
        p_log: ``[N, K]`` logger's marginal probability of each logged item at its slot.
        p_target: ``[N, K]`` target's marginal probability of each logged item at its slot.
        logger: ``"product"`` (slots drawn independently) or ``"uniform"`` (``K`` distinct items
            of ``m > K`` uniformly at random; ``p_log`` is ``1/m`` everywhere).
        p_target_in_slate: ``[N, K]`` (``"uniform"`` only) the target's marginal probability of
            each logged item summed over all ``K`` slots, in ``[0, K]``.
    """
    if logger not in LOGGERS:
        raise RecrlError(f"ope: unknown slate logger {logger!r}; expected one of {', '.join(LOGGERS)}")
    mu, pi = _slot_probs(p_log, p_target)
    slots = mu.shape[1]
    if logger == "product":
        return (pi / mu).sum(axis=1) - (slots - 1)
    if p_target_in_slate is None:
        raise RecrlError("ope: the uniform logger's weights need p_target_in_slate")
    anywhere = checked("p_target_in_slate", p_target_in_slate, mu.shape, 0.0, float(slots))
    m = _uniform_items(mu)
    return ((m - 1) * pi.sum(axis=1) + (m - 1) / (m - slots) * anywhere.sum(axis=1)
            - m * (slots - 1) / (m - slots))


# ---------------------------------------------------------------------------------------------
# General form (small action spaces)
# ---------------------------------------------------------------------------------------------

def _slates(name: str, slates: Any, n_items: int) -> np.ndarray:
    """``slates`` as an int array ``[M, K]`` of item ids checked in ``[0, n_items)``."""
    arr = np.asarray(slates)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise RecrlError(f"ope: {name} must be integer item ids [slates, slots], got {arr.dtype} {arr.shape}")
    bad = int(((arr < 0) | (arr >= n_items)).sum())
    if bad:
        raise RecrlError(f"ope: {bad} item id(s) of {name} are outside [0, {n_items})")
    return arr


def _indicators(slates: np.ndarray, n_items: int) -> np.ndarray:
    """``[M, K * n_items]`` 0/1 indicators ``1_s`` of the (slot, item) pairs of each slate."""
    count, slots = slates.shape
    out = np.zeros((count, slots * n_items))
    out[np.arange(count)[:, None], np.arange(slots) * n_items + slates] = 1.0
    return out


def slate_marginals(slates: Any, probs: Any, n_items: int) -> np.ndarray:
    """Per-slot marginals ``[C, K, n_items]`` of enumerated slate distributions.

    Args:
        slates: ``[M, K]`` the possible slates (item ids).
        probs: ``[C, M]`` (or ``[M]``) each context's probability of each slate, rows summing to 1.
        n_items: number of items ``m``.
    """
    s, p = _enumerated(slates, probs, n_items)
    return (p @ _indicators(s, n_items)).reshape(p.shape[0], s.shape[1], n_items)


def logger_gamma(slates: Any, probs: Any, n_items: int) -> np.ndarray:
    """``Gamma = E_mu[1_s 1_s^T]`` ``[C, K*m, K*m]`` of enumerated logging distributions.

    Arguments as :func:`slate_marginals`; entry ``(k*m + a, l*m + b)`` is the logger's
    probability of item ``a`` at slot ``k`` together with item ``b`` at slot ``l``.
    """
    s, p = _enumerated(slates, probs, n_items)
    ind = _indicators(s, n_items)
    return np.einsum("cm,mi,mj->cij", p, ind, ind)


def _enumerated(slates: Any, probs: Any, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked enumerated slates ``[M, K]`` and distributions ``[C, M]`` over them."""
    s = _slates("slates", slates, n_items)
    p = checked("probs", probs, None, 0.0, 1.0)
    p = p[None] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] != s.shape[0]:
        raise RecrlError(f"ope: probs has shape {p.shape}, expected [contexts, {s.shape[0]}]")
    off = int((np.abs(p.sum(axis=1) - 1.0) > _MARGINAL_TOL).sum())
    if off:
        raise RecrlError(f"ope: {off} context(s) of probs do not sum to 1")
    return s, p


def _check_marginals(theta: np.ndarray, contexts: int, slots: int, n_items: int) -> None:
    """Raise unless ``theta`` is ``[C, K, m]`` per-slot distributions."""
    if theta.shape != (contexts, slots, n_items):
        raise RecrlError(f"ope: target_marginals has shape {theta.shape}, "
                         f"expected {(contexts, slots, n_items)}")
    off = int((np.abs(theta.sum(axis=2) - 1.0) > _MARGINAL_TOL).sum())
    if off:
        raise RecrlError(f"ope: {off} (context, slot) row(s) of target_marginals do not sum to 1")


def _gamma_solutions(gamma: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``z_c = Gamma_c^+ theta_c`` ``[C, K*m]``, checked to solve ``Gamma_c z_c = theta_c``."""
    flat = theta.reshape(theta.shape[0], -1)
    z = np.einsum("cij,cj->ci", np.linalg.pinv(gamma, hermitian=True), flat)
    residual = np.abs(np.einsum("cij,cj->ci", gamma, z) - flat).max(axis=1)
    outside = int((residual > _SPAN_TOL * np.maximum(1.0, np.abs(flat).max(axis=1))).sum())
    if outside:
        raise RecrlError(f"ope: in {outside} context(s) the target's marginals lie outside the span of "
                         "the logger's slates (PI would be biased)")
    return z


def pi_weights_general(logged_slates: Any, target_marginals: Any, gamma: Any,
                       context: Any = None) -> np.ndarray:
    """Pseudo-inverse weights ``w_i = theta_pi(x_i)^T Gamma_mu(x_i)^+ 1_{s_i}`` ``[N]``, any logger.

    For small action spaces: one ``(K*m) x (K*m)`` pseudo-inverse per context.

    Args:
        logged_slates: ``[N, K]`` logged item ids.
        target_marginals: ``[C, K, m]`` the target's per-slot marginals in each context
            (e.g. from :func:`slate_marginals`).
        gamma: ``[C, K*m, K*m]`` the logger's ``E_mu[1_s 1_s^T]`` per context (:func:`logger_gamma`).
        context: ``[N]`` each logged slate's context id in ``[0, C)`` (None: one context).
    """
    theta = checked("target_marginals", target_marginals, None, 0.0, 1.0)
    if theta.ndim != 3:
        raise RecrlError(f"ope: target_marginals must be [contexts, slots, items], got shape {theta.shape}")
    contexts, slots, n_items = theta.shape
    g = checked("gamma", gamma, (contexts, slots * n_items, slots * n_items), 0.0, 1.0)
    _check_marginals(theta, contexts, slots, n_items)
    s = _slates("logged_slates", logged_slates, n_items)
    if s.shape[1] != slots:
        raise RecrlError(f"ope: logged_slates has {s.shape[1]} slots, target_marginals {slots}")
    c = _contexts(context, s.shape[0], contexts)
    cols = np.arange(slots) * n_items + s
    if (g[c[:, None], cols, cols] <= 0).any():
        raise RecrlError("ope: a logged (slot, item) pair has logging probability 0 in gamma")
    z = _gamma_solutions(g, theta)
    return z[c[:, None], cols].sum(axis=1)


def _contexts(context: Any, rows: int, contexts: int) -> np.ndarray:
    """Checked context ids ``[N]`` (zeros when ``context`` is None and there is one context)."""
    if context is None:
        if contexts != 1:
            raise RecrlError(f"ope: {contexts} contexts of target_marginals need a context id per slate")
        return np.zeros(rows, dtype=np.int64)
    c = np.asarray(context)
    if c.shape != (rows,) or not np.issubdtype(c.dtype, np.integer):
        raise RecrlError(f"ope: context must be {rows} integer ids, got {c.dtype} {c.shape}")
    bad = int(((c < 0) | (c >= contexts)).sum())
    if bad:
        raise RecrlError(f"ope: {bad} context id(s) are outside [0, {contexts})")
    return c


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------

def _reward_and_weights(reward: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked slate rewards ``[N]`` and pseudo-inverse weights ``[N]``."""
    r = checked("reward", reward, None)
    if r.ndim != 1:
        raise RecrlError(f"ope: reward must be one-dimensional [N], got shape {r.shape}")
    return r, checked("weights", weights, r.shape)


def _slate_stats(r: np.ndarray, w: np.ndarray) -> dict[str, Ratio]:
    """PI (``mean w r``) and PI-SN (``sum w r / sum w``) as ratios of slate sums."""
    return {"pi": Ratio(w * r, weights=w), "pi_sn": Ratio(w * r, w, weights=w)}


def slate_estimates(reward: Any, weights: Any, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Estimate]:
    """PI and PI-SN estimates (keys ``pi``, ``pi_sn``) from slate rewards and PI weights, one bootstrap.

    ``weights`` from :func:`pi_weights` or :func:`pi_weights_general`; CIs resample slates.
    """
    stats = _slate_stats(*_reward_and_weights(reward, weights))
    return dict(zip(stats, estimate_ratios(list(stats.values()), n_boot, seed), strict=True))


def _closed_form(name: str, reward: Any, p_log: Any, p_target: Any, logger: str,
                 p_target_in_slate: Any, n_boot: int, seed: int) -> Estimate:
    """One of PI / PI-SN with closed-form weights."""
    r = checked("reward", reward, None)
    mu = checked("p_log", p_log, None)
    if mu.ndim != 2 or mu.shape[0] != r.shape[0]:
        raise RecrlError(f"ope: slate p_log must be [{r.shape[0]} slates, slots], got shape {mu.shape}")
    w = pi_weights(mu, p_target, logger, p_target_in_slate)
    stat = _slate_stats(*_reward_and_weights(r, w))[name]
    return estimate_ratios([stat], n_boot, seed)[0]


def pseudo_inverse(reward: Any, p_log: Any, p_target: Any, logger: str = "product",
                   p_target_in_slate: Any = None, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Pseudo-inverse estimator (Swaminathan et al., NeurIPS 2017): ``V = 1/n sum_i w_i r_i``.

    Unbiased **under the additivity assumption** (slate reward = sum of per-(slot, item) terms)
    with a right logger; weights from :func:`pi_weights` (arguments as there); ``reward`` ``[N]``.
    """
    return _closed_form("pi", reward, p_log, p_target, logger, p_target_in_slate, n_boot, seed)


def pseudo_inverse_sn(reward: Any, p_log: Any, p_target: Any, logger: str = "product",
                      p_target_in_slate: Any = None, n_boot: int = N_BOOT, seed: int = SEED) -> Estimate:
    """Self-normalised pseudo-inverse (PI-SN): ``V = sum_i w_i r_i / sum_i w_i``.

    Arguments as :func:`pseudo_inverse`. Biased but consistent under the additivity assumption,
    usually of lower variance than PI.
    """
    return _closed_form("pi_sn", reward, p_log, p_target, logger, p_target_in_slate, n_boot, seed)
