"""Tests for recrl.ope.slate: the pseudo-inverse estimator (PI) and PI-SN.

Known answers: slate rewards that are sums of per-(slot, item) Bernoulli clicks (the additivity
assumption holds exactly), logged by a product logger, a uniform-without-replacement logger and
a correlated logger (general form); ``DRAWS`` independent logs at once, the mean estimate within
3 standard errors of the exact target value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from recrl.ope import slate
from recrl.types import RecrlError

DRAWS, N_SLATES, SLOTS, ITEMS = 200, 400, 3, 5
PHI = np.array([[0.1, 0.5, 0.3, 0.8, 0.2],  # click probability of item a at slot k
                [0.4, 0.2, 0.6, 0.1, 0.3],
                [0.3, 0.3, 0.1, 0.5, 0.4]])


def assert_unbiased(estimates: np.ndarray, truth: float) -> None:
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - truth) < 3 * se, (estimates.mean(), truth, se)


def slate_rewards(rng: np.random.Generator, slates: np.ndarray) -> np.ndarray:
    """Sum over slots of Bernoulli(PHI[k, s_k]) clicks: ``[..., K]`` slates -> ``[...]`` rewards."""
    p = PHI[np.arange(SLOTS), slates]
    return (rng.random(p.shape) < p).sum(axis=-1).astype(np.float64)


def truth(theta: np.ndarray) -> float:
    """Exact value of a target with per-slot marginals ``theta`` ``[K, m]`` (additive reward)."""
    return float((theta * PHI).sum())


def pi_values(reward: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PI and PI-SN of every draw (first axis), without bootstrap."""
    ests = [slate.slate_estimates(reward[d], weights[d], n_boot=0) for d in range(DRAWS)]
    return np.array([e["pi"].value for e in ests]), np.array([e["pi_sn"].value for e in ests])


ALL_PERMUTATIONS = np.array(list(itertools.permutations(range(ITEMS), SLOTS)))
ALL_PRODUCTS = np.array(list(itertools.product(range(ITEMS), repeat=SLOTS)))


def stochastic_target() -> np.ndarray:
    """A target mixing three rankings (without replacement): per-slot marginals ``[K, m]``."""
    probs = np.zeros(len(ALL_PERMUTATIONS))
    for ranking, p in (((3, 2, 4), 0.5), ((1, 0, 3), 0.3), ((3, 4, 0), 0.2)):
        probs[(np.array(ranking) == ALL_PERMUTATIONS).all(axis=1)] = p
    return slate.slate_marginals(ALL_PERMUTATIONS, probs, ITEMS)[0]


def deterministic_target(ranking: tuple[int, ...] = (3, 2, 4)) -> np.ndarray:
    """The one-hot marginals ``[K, m]`` of always showing ``ranking``."""
    theta = np.zeros((SLOTS, ITEMS))
    theta[np.arange(SLOTS), ranking] = 1.0
    return theta


# ---------------------------------------------------------------------------------------------
# Hand-computed values and the closed forms against the general form
# ---------------------------------------------------------------------------------------------

def test_product_logger_hand_computed() -> None:
    # K = 2: w = pi_1/mu_1 + pi_2/mu_2 - 1
    mu = np.array([[0.5, 0.25], [0.5, 0.5], [0.25, 1.0]])
    pi = np.array([[1.0, 0.5], [0.0, 0.5], [0.5, 1.0]])
    r = np.array([2.0, 1.0, 1.0])
    w = slate.pi_weights(mu, pi)
    np.testing.assert_allclose(w, [2 + 2 - 1, 0 + 1 - 1, 2 + 1 - 1])  # [3, 0, 2]
    est = slate.pseudo_inverse(r, mu, pi)
    assert est.value == pytest.approx((6 + 0 + 2) / 3)
    assert est.ess == pytest.approx(25 / 13) and est.n == 3
    assert slate.pseudo_inverse_sn(r, mu, pi).value == pytest.approx(8 / 5)


def test_uniform_logger_hand_computed() -> None:
    # m = 3 items, K = 2 slots, mu = 1/3; w = 2 A + 2 C - 3
    mu = np.full((2, 2), 1 / 3)
    pi = np.array([[1.0, 0.0], [0.5, 0.5]])
    anywhere = np.array([[1.0, 1.0], [0.5, 1.0]])
    w = slate.pi_weights(mu, pi, logger="uniform", p_target_in_slate=anywhere)
    np.testing.assert_allclose(w, [2 * 1 + 2 * 2 - 3, 2 * 1 + 2 * 1.5 - 3])  # [3, 2]
    est = slate.pseudo_inverse(np.array([1.0, 3.0]), mu, pi, logger="uniform", p_target_in_slate=anywhere)
    assert est.value == pytest.approx((3 + 6) / 2)
    # on-policy (the target is the logger): every weight is 1
    on = slate.pi_weights(mu, mu, logger="uniform", p_target_in_slate=np.full((2, 2), 2 / 3))
    np.testing.assert_allclose(on, 1.0)


def test_single_slot_is_ips() -> None:
    mu, pi = np.array([[0.5], [0.2]]), np.array([[0.25], [0.6]])
    np.testing.assert_allclose(slate.pi_weights(mu, pi), [0.5, 3.0])
    uniform = slate.pi_weights(np.full((2, 1), 0.25), pi, logger="uniform", p_target_in_slate=pi)
    np.testing.assert_allclose(uniform, pi[:, 0] * 4)


@pytest.mark.parametrize("target", ["stochastic", "deterministic"])
def test_closed_forms_equal_the_general_form(target: str) -> None:
    rng = np.random.default_rng(0)
    theta = stochastic_target() if target == "stochastic" else deterministic_target()
    # product logger: independent per-slot distributions
    mu_k = rng.dirichlet(np.ones(ITEMS), SLOTS)
    product = np.prod(mu_k[np.arange(SLOTS), ALL_PRODUCTS], axis=1)
    gamma = slate.logger_gamma(ALL_PRODUCTS, product, ITEMS)
    general = slate.pi_weights_general(ALL_PRODUCTS, theta[None], gamma)
    closed = slate.pi_weights(mu_k[np.arange(SLOTS), ALL_PRODUCTS], theta[np.arange(SLOTS), ALL_PRODUCTS])
    np.testing.assert_allclose(closed, general, atol=1e-7)
    # uniform without replacement
    uniform = np.full(len(ALL_PERMUTATIONS), 1 / len(ALL_PERMUTATIONS))
    gamma = slate.logger_gamma(ALL_PERMUTATIONS, uniform, ITEMS)
    general = slate.pi_weights_general(ALL_PERMUTATIONS, theta[None], gamma)
    closed = slate.pi_weights(np.full(ALL_PERMUTATIONS.shape, 1 / ITEMS),
                              theta[np.arange(SLOTS), ALL_PERMUTATIONS], logger="uniform",
                              p_target_in_slate=theta.sum(axis=0)[ALL_PERMUTATIONS])
    np.testing.assert_allclose(closed, general, atol=1e-9)
    assert gamma[0].diagonal() == pytest.approx(np.full(SLOTS * ITEMS, 1 / ITEMS))


# ---------------------------------------------------------------------------------------------
# Known answers over many logs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["stochastic", "deterministic"])
def test_product_logger_unbiased(target: str) -> None:
    rng = np.random.default_rng(30)
    theta = stochastic_target() if target == "stochastic" else deterministic_target()
    mu_k = 0.5 * rng.dirichlet(np.ones(ITEMS), SLOTS) + 0.1  # every item at least 10% per slot
    u = rng.random((DRAWS, N_SLATES, SLOTS, 1))
    slates = (u > np.cumsum(mu_k, axis=1)[None, None, :, :]).sum(axis=-1).clip(max=ITEMS - 1)
    r = slate_rewards(rng, slates)
    k = np.arange(SLOTS)
    w = slate.pi_weights(mu_k[k, slates].reshape(-1, SLOTS), theta[k, slates].reshape(-1, SLOTS))
    pi, pi_sn = pi_values(r, w.reshape(DRAWS, N_SLATES))
    assert_unbiased(pi, truth(theta))
    assert abs(pi_sn.mean() - truth(theta)) < 0.05 * truth(theta)  # biased, consistent
    assert pi_sn.var() < pi.var()


@pytest.mark.parametrize("target", ["stochastic", "deterministic"])
def test_uniform_without_replacement_logger_unbiased(target: str) -> None:
    rng = np.random.default_rng(31)
    theta = stochastic_target() if target == "stochastic" else deterministic_target()
    slates = rng.random((DRAWS, N_SLATES, ITEMS)).argsort(axis=-1)[..., :SLOTS]
    r = slate_rewards(rng, slates)
    flat = slates.reshape(-1, SLOTS)
    w = slate.pi_weights(np.full(flat.shape, 1 / ITEMS), theta[np.arange(SLOTS), flat], logger="uniform",
                         p_target_in_slate=theta.sum(axis=0)[flat])
    pi, pi_sn = pi_values(r, w.reshape(DRAWS, N_SLATES))
    assert_unbiased(pi, truth(theta))
    assert abs(pi_sn.mean() - truth(theta)) < 0.02 * truth(theta)


def test_general_form_unbiased_with_a_correlated_logger_in_two_contexts() -> None:
    rng = np.random.default_rng(32)
    # each context: a mixture of two product loggers (slots correlated), over all slates
    mixtures = []
    for _ in range(2):
        parts = [np.prod(rng.dirichlet(np.ones(ITEMS) * 2, SLOTS)[np.arange(SLOTS), ALL_PRODUCTS], axis=1)
                 for _ in range(2)]
        mixtures.append(0.5 * parts[0] + 0.5 * parts[1])
    probs = np.stack(mixtures)
    gamma = slate.logger_gamma(ALL_PRODUCTS, probs, ITEMS)
    thetas = np.stack([stochastic_target(), deterministic_target((0, 1, 2))])
    x = rng.integers(0, 2, size=(DRAWS, N_SLATES))
    u = rng.random((DRAWS, N_SLATES, 1))
    idx = (u > np.cumsum(probs, axis=1)[x]).sum(axis=-1).clip(max=len(ALL_PRODUCTS) - 1)
    slates = ALL_PRODUCTS[idx]
    r = slate_rewards(rng, slates)
    w = slate.pi_weights_general(slates.reshape(-1, SLOTS), thetas, gamma, context=x.reshape(-1))
    pi, _ = pi_values(r, w.reshape(DRAWS, N_SLATES))
    assert_unbiased(pi, 0.5 * truth(thetas[0]) + 0.5 * truth(thetas[1]))


def test_slate_ci_brackets_value_and_estimates_share_the_bootstrap() -> None:
    rng = np.random.default_rng(33)
    slates = rng.random((2000, ITEMS)).argsort(axis=-1)[:, :SLOTS]
    theta = stochastic_target()
    args = (slate_rewards(rng, slates), np.full(slates.shape, 1 / ITEMS), theta[np.arange(SLOTS), slates])
    kwargs = {"logger": "uniform", "p_target_in_slate": theta.sum(axis=0)[slates]}
    pi = slate.pseudo_inverse(*args, **kwargs)
    assert pi.ci95_low < pi.value < pi.ci95_high
    assert pi.ci95_low < truth(theta) < pi.ci95_high
    both = slate.slate_estimates(args[0], slate.pi_weights(*args[1:], **kwargs))
    for name, est in (("pi", pi), ("pi_sn", slate.pseudo_inverse_sn(*args, **kwargs))):
        assert both[name].value == pytest.approx(est.value, rel=1e-12)
        assert (both[name].ci95_low, both[name].ci95_high) == pytest.approx((est.ci95_low, est.ci95_high))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

MU = np.full((3, 2), 0.5)
PI = np.full((3, 2), 0.25)
R = np.ones(3)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: slate.pi_weights(MU[:, 0], PI[:, 0]), r"^ope: slate p_log must be \[slates, slots\]"),
    (lambda: slate.pi_weights(MU, PI[:2]), r"^ope: p_target has shape \(2, 2\), expected \(3, 2\)$"),
    (lambda: slate.pi_weights(np.array([[0.5, 0.0], [0.5, 0.5], [0.5, 0.5]]), PI),
     r"^ope: 1 row\(s\) of p_log are NaN or outside"),
    (lambda: slate.pi_weights(MU, PI + 1), r"^ope: 6 row\(s\) of p_target are NaN or outside \[0, 1\]$"),
    (lambda: slate.pi_weights(MU, PI, logger="cascade"), r"^ope: unknown slate logger 'cascade'"),
    (lambda: slate.pi_weights(MU, PI, logger="uniform"), r"need p_target_in_slate$"),
    (lambda: slate.pi_weights(MU, PI, logger="uniform", p_target_in_slate=PI),
     r"needs more items than the 2 slots"),
    (lambda: slate.pi_weights(np.array([[0.2, 0.25]] * 3), PI, logger="uniform", p_target_in_slate=PI),
     r"^ope: 3 slate\(s\) have p_log that is not 1/m"),
    (lambda: slate.pseudo_inverse(R[:2], MU, PI), r"^ope: slate p_log must be \[2 slates, slots\]"),
    (lambda: slate.slate_estimates(R, np.array([1.0, np.nan, 1.0])),
     r"^ope: 1 row\(s\) of weights are not finite$"),
])
def test_bad_closed_form_input(call: Callable[[], object], message: str) -> None:
    with pytest.raises(RecrlError, match=message):
        call()


def test_bad_general_form_input() -> None:
    uniform = np.full(len(ALL_PERMUTATIONS), 1 / len(ALL_PERMUTATIONS))
    gamma = slate.logger_gamma(ALL_PERMUTATIONS, uniform, ITEMS)
    theta = deterministic_target()[None]
    with pytest.raises(RecrlError, match=r"^ope: 1 item id\(s\) of logged_slates are outside \[0, 5\)$"):
        slate.pi_weights_general(np.array([[0, 1, 5]]), theta, gamma)
    with pytest.raises(RecrlError, match="do not sum to 1"):
        slate.pi_weights_general(np.array([[0, 1, 2]]), theta * 0.5, gamma)
    with pytest.raises(RecrlError, match="need a context id per slate"):
        slate.pi_weights_general(np.array([[0, 1, 2]]), np.repeat(theta, 2, axis=0),
                                 np.repeat(gamma, 2, axis=0))
    with pytest.raises(RecrlError, match=r"^ope: 1 context id\(s\) are outside \[0, 1\)$"):
        slate.pi_weights_general(np.array([[0, 1, 2]]), theta, gamma, context=np.array([1]))
    with pytest.raises(RecrlError, match="probs do not sum to 1"):
        slate.logger_gamma(ALL_PERMUTATIONS, uniform * 2, ITEMS)
    # a logger that never shows item 4: a target showing it is outside the logger's span
    never = np.where((ALL_PERMUTATIONS == 4).any(axis=1), 0.0, 1.0)
    gamma_never = slate.logger_gamma(ALL_PERMUTATIONS, never / never.sum(), ITEMS)
    with pytest.raises(RecrlError, match="outside the span of the logger's slates"):
        slate.pi_weights_general(np.array([[0, 1, 2]]), theta, gamma_never)
    # full permutations (m = K): a target with replacement is outside the span
    perms = np.array(list(itertools.permutations(range(3))))
    gamma_perm = slate.logger_gamma(perms, np.full(6, 1 / 6), 3)
    with pytest.raises(RecrlError, match="outside the span"):
        slate.pi_weights_general(perms[:1], np.eye(3)[[0, 0, 1]][None], gamma_perm)  # item 0 twice
