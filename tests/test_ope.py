"""Tests for recrl.ope.estimators: hand-computed values, known answers over many log draws, bad input.

Known answers: a contextual bandit and a 3-step MDP whose true policy values are computed
exactly; 200 independent logs are drawn at once (vectorised) and each estimator's mean over
them is compared with the truth within 3 standard errors (seeds fixed: numpy's PCG64 streams
are the same on every machine).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from recrl.ope import core
from recrl.ope import estimators as ope
from recrl.types import RecrlError

DRAWS = 200

# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------

# 4 rows: weights w = p_target / p_log = [2, 2, 0.5, 0.25]
R4 = np.array([1.0, 0.0, 1.0, 0.0])
MU4 = np.array([0.5, 0.25, 0.5, 0.8])
PI4 = np.array([1.0, 0.5, 0.25, 0.2])
Q4 = np.array([0.5, 0.2, 0.4, 0.1])
V4 = np.array([0.6, 0.3, 0.5, 0.2])


def test_per_step_hand_computed() -> None:
    est = ope.ips(R4, MU4, PI4)
    assert est.value == pytest.approx((2 * 1 + 0.5 * 1) / 4)  # 0.625
    assert est.ess == pytest.approx(4.75**2 / (4 + 4 + 0.25 + 0.0625))
    assert est.n == 4
    assert ope.snips(R4, MU4, PI4).value == pytest.approx(2.5 / 4.75)
    assert ope.dm(V4).value == pytest.approx(1.6 / 4)
    assert ope.dm(V4).ess == 4
    # DR rows: 0.6 + 2(1 - 0.5), 0.3 + 2(0 - 0.2), 0.5 + 0.5(1 - 0.4), 0.2 + 0.25(0 - 0.1)
    assert ope.dr(R4, MU4, PI4, Q4, V4).value == pytest.approx((1.6 - 0.1 + 0.8 + 0.175) / 4)
    # clipped at 1: weights [1, 1, 0.5, 0.25]
    clipped = ope.clipped_ips(R4, MU4, PI4, max_weight=1.0)
    assert clipped.value == pytest.approx((1 + 0.5) / 4)
    assert clipped.ess == pytest.approx(2.75**2 / (1 + 1 + 0.25 + 0.0625))
    # switch at tau=1: DM on rows 1-2 (w = 2), DR on rows 3-4
    assert ope.switch_dr(R4, MU4, PI4, Q4, V4, tau=1.0).value == pytest.approx((0.6 + 0.3 + 0.8 + 0.175) / 4)
    # a large clip / switch threshold is plain IPS / DR
    assert ope.clipped_ips(R4, MU4, PI4, max_weight=100).value == pytest.approx(0.625)
    assert ope.switch_dr(R4, MU4, PI4, Q4, V4, tau=100).value == pytest.approx(0.61875)


def test_per_step_accepts_tensors_and_ci_brackets_value() -> None:
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.2, 1.0, 1000)
    r = rng.random(1000)
    est = ope.ips(torch.tensor(r), torch.tensor(mu), torch.full((1000,), 0.5))
    assert est.ci95_low < est.value < est.ci95_high
    again = ope.ips(r, mu, np.full(1000, 0.5))
    assert (again.ci95_low, again.ci95_high) == (est.ci95_low, est.ci95_high)  # fixed seed
    no_boot = ope.ips(r, mu, np.full(1000, 0.5), n_boot=0)
    assert np.isnan(no_boot.ci95_low) and no_boot.value == pytest.approx(est.value)


# 2 sessions, gamma = 0.5. Session A has 2 steps (padded to 3), session B 3 steps.
MASK2 = np.array([[True, True, False], [True, True, True]])
R2 = np.array([[1.0, 1.0, np.nan], [0.0, 1.0, 1.0]])  # padding may hold anything
MU2 = np.array([[0.5, 0.5, 0.0], [0.5, 0.25, 1.0]])
PI2 = np.array([[1.0, 0.5, 7.0], [0.5, 0.5, 0.5]])  # w: A [2, 1], B [1, 2, 0.5]
Q2 = np.array([[0.5, 0.5, np.nan], [0.2, 0.6, 0.9]])
VS2 = np.array([[0.8, 0.4, np.nan], [0.3, 0.5, 0.7]])


def test_sequential_hand_computed() -> None:
    # rho: A [2, 2, (2)], B [1, 2, 1]
    est = ope.pdis(R2, MU2, PI2, MASK2, gamma=0.5)
    assert est.value == pytest.approx((2 * 1 + 0.5 * 2 * 1 + (0 + 0.5 * 2 * 1 + 0.25 * 1 * 1)) / 2)  # 2.125
    assert est.ess == pytest.approx(9 / 5)  # final weights [2, 1]
    assert est.n == 2
    # WPDIS: t0 (2*1 + 1*0)/3, t1 (2*1 + 2*1)/4, t2 (2*0 + 1*1)/3
    assert ope.wpdis(R2, MU2, PI2, MASK2, gamma=0.5).value == pytest.approx(2 / 3 + 0.5 * 1 + 0.25 / 3)
    # DR, recursively: A: V1 = 0.4 + 1(1 - 0.5) = 0.9, V0 = 0.8 + 2(1 + 0.5*0.9 - 0.5) = 2.7;
    # B: V2 = 0.7 + 0.5(1 - 0.9) = 0.75, V1 = 0.5 + 2(1 + 0.375 - 0.6) = 2.05,
    #    V0 = 0.3 + 1(0 + 1.025 - 0.2) = 1.125
    seq_dr = ope.sequential_dr(R2, MU2, PI2, Q2, VS2, MASK2, gamma=0.5)
    assert seq_dr.value == pytest.approx((2.7 + 1.125) / 2)
    # WDR, per step (rho A [2, 2, 2], B [1, 2, 1]; rho_prev A [1, 2, 2], B [1, 1, 2]):
    # t0 (2*0.5 - 0.2)/3 + (0.8 + 0.3)/2, t1 (2*0.5 + 2*0.4)/4 + (2*0.4 + 0.5)/3, t2 (0.1)/3 + (2*0.7)/4
    wdr = ope.weighted_dr(R2, MU2, PI2, Q2, VS2, MASK2, gamma=0.5)
    assert wdr.value == pytest.approx(0.8 / 3 + 0.55 + 0.5 * (0.45 + 1.3 / 3) + 0.25 * (0.1 / 3 + 0.35))


def test_weighted_dr_falls_back_to_the_model_without_support() -> None:
    """A target the logger never matches: every weight is 0, so WDR is the model's first-step value."""
    wdr = ope.weighted_dr(R2, MU2, np.zeros_like(PI2), Q2, VS2, MASK2, gamma=0.5)
    assert wdr.value == pytest.approx((0.8 + 0.3) / 2)
    assert np.isnan(ope.wpdis(R2, MU2, np.zeros_like(PI2), MASK2).value)  # WPDIS has nothing to say


def test_on_policy_log_gives_the_mean_return() -> None:
    rng = np.random.default_rng(1)
    mask = np.arange(4)[None, :] < rng.integers(1, 5, size=50)[:, None]
    r = rng.random((50, 4))
    p = rng.uniform(0.1, 1.0, (50, 4))
    mean_return = np.where(mask, r * 0.9 ** np.arange(4), 0).sum(axis=1).mean()
    assert ope.pdis(r, p, p, mask, gamma=0.9).value == pytest.approx(mean_return)
    assert ope.wpdis(r, p, p, mask, gamma=0.9).value == pytest.approx(mean_return)


def test_deterministic_probs() -> None:
    chosen, logged = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    assert ope.deterministic_probs(chosen, logged, 4).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert ope.deterministic_probs(chosen, logged, 4, epsilon=0.2) == pytest.approx([0.85, 0.05, 0.85, 0.05])
    with pytest.raises(RecrlError):
        ope.deterministic_probs(chosen, logged, 4, epsilon=1.5)


# ---------------------------------------------------------------------------------------------
# Known answers: a contextual bandit
# ---------------------------------------------------------------------------------------------

N_ROWS = 500
P_X = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
REWARD = np.array([[0.1, 0.5, 0.8, 0.3],
                   [0.7, 0.2, 0.4, 0.6],
                   [0.3, 0.9, 0.1, 0.5],
                   [0.5, 0.4, 0.6, 0.2],
                   [0.2, 0.3, 0.7, 0.9]])
TARGET = np.array([[0.1, 0.2, 0.6, 0.1],
                   [0.6, 0.1, 0.1, 0.2],
                   [0.1, 0.7, 0.1, 0.1],
                   [0.2, 0.2, 0.5, 0.1],
                   [0.1, 0.1, 0.2, 0.6]])
UNIFORM = np.full((5, 4), 0.25)
TRUE_VALUE = float(P_X @ (TARGET * REWARD).sum(axis=1))


def skewed_logger() -> np.ndarray:
    """A logger that rarely takes the target's favourite action (5%)."""
    mu = np.full((5, 4), 0.95 / 3)
    mu[np.arange(5), TARGET.argmax(axis=1)] = 0.05
    return mu


def draw_bandit_logs(logger: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """``DRAWS`` independent logs of ``N_ROWS`` rows at once: arrays ``[DRAWS, N_ROWS]``."""
    rng = np.random.default_rng(seed)
    x = rng.choice(len(P_X), size=(DRAWS, N_ROWS), p=P_X)
    u = rng.random((DRAWS, N_ROWS, 1))
    a = (u > np.cumsum(logger[x], axis=-1)).sum(axis=-1).clip(max=logger.shape[1] - 1)
    r = (rng.random((DRAWS, N_ROWS)) < REWARD[x, a]).astype(np.float64)
    return {"x": x, "a": a, "r": r, "mu": logger[x, a], "pi": TARGET[x, a]}


def model_terms(logs: dict[str, np.ndarray], q_table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``q_logged`` and ``v_target`` of a reward model ``q_table`` on the logs."""
    return q_table[logs["x"], logs["a"]], (TARGET * q_table).sum(axis=1)[logs["x"]]


def values(fn: Callable[..., ope.Estimate], *arrays: np.ndarray, **kwargs: float) -> np.ndarray:
    """The estimate of ``fn`` on every draw (first axis), without bootstrap."""
    return np.array([fn(*(arr[d] for arr in arrays), n_boot=0, **kwargs).value for d in range(DRAWS)])


def assert_unbiased(estimates: np.ndarray, truth: float) -> None:
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - truth) < 3 * se, (estimates.mean(), truth, se)


WRONG_Q = REWARD[:, ::-1] * 0.5 + 0.05  # a badly wrong reward model (reversed, shrunk)


def test_bandit_ips_and_dr_unbiased() -> None:
    logs = draw_bandit_logs(UNIFORM * 0.5 + TARGET * 0.5, seed=10)
    assert_unbiased(values(ope.ips, logs["r"], logs["mu"], logs["pi"]), TRUE_VALUE)
    q, v = model_terms(logs, WRONG_Q * 0.5 + REWARD * 0.5)
    assert_unbiased(values(ope.dr, logs["r"], logs["mu"], logs["pi"], q, v), TRUE_VALUE)


def test_bandit_snips_lower_variance_than_ips_on_skewed_logger() -> None:
    logs = draw_bandit_logs(skewed_logger(), seed=11)
    ips = values(ope.ips, logs["r"], logs["mu"], logs["pi"])
    snips = values(ope.snips, logs["r"], logs["mu"], logs["pi"])
    assert snips.var() < 0.7 * ips.var(), (snips.var(), ips.var())
    assert abs(snips.mean() - TRUE_VALUE) < 0.05


def test_bandit_dr_unbiased_with_right_model_and_wrong_propensities() -> None:
    logs = draw_bandit_logs(skewed_logger(), seed=12)
    q, v = model_terms(logs, REWARD)
    wrong_mu = np.full_like(logs["mu"], 0.25)
    assert_unbiased(values(ope.dr, logs["r"], wrong_mu, logs["pi"], q, v), TRUE_VALUE)
    # ... whereas IPS with the same wrong propensities is far off
    ips = values(ope.ips, logs["r"], wrong_mu, logs["pi"])
    assert abs(ips.mean() - TRUE_VALUE) > 0.1


def test_bandit_dr_unbiased_with_wrong_model_and_right_propensities_dm_biased() -> None:
    logs = draw_bandit_logs(UNIFORM * 0.7 + TARGET * 0.3, seed=13)
    q, v = model_terms(logs, WRONG_Q)
    assert_unbiased(values(ope.dr, logs["r"], logs["mu"], logs["pi"], q, v), TRUE_VALUE)
    dm = np.array([ope.dm(v[d], n_boot=0).value for d in range(DRAWS)])
    se = dm.std(ddof=1) / np.sqrt(DRAWS)
    assert abs(dm.mean() - TRUE_VALUE) > max(20 * se, 0.05)
    # the right model makes DM (nearly) exact
    _, v_right = model_terms(logs, REWARD)
    assert_unbiased(np.array([ope.dm(v_right[d], n_boot=0).value for d in range(DRAWS)]), TRUE_VALUE)


def test_bandit_clipping_and_switch_trade_bias_for_variance() -> None:
    logs = draw_bandit_logs(skewed_logger(), seed=14)
    ips = values(ope.ips, logs["r"], logs["mu"], logs["pi"])
    clipped = values(ope.clipped_ips, logs["r"], logs["mu"], logs["pi"], max_weight=5.0)
    assert clipped.var() < 0.5 * ips.var()
    assert clipped.mean() < TRUE_VALUE  # nonnegative rewards: clipping biases down
    q, v = model_terms(logs, REWARD)
    switch = values(ope.switch_dr, logs["r"], logs["mu"], logs["pi"], q, v, tau=5.0)
    dr = values(ope.dr, logs["r"], logs["mu"], logs["pi"], q, v)
    assert switch.var() < dr.var()
    assert_unbiased(switch, TRUE_VALUE)  # right model: DM on the big-weight rows is exact


# ---------------------------------------------------------------------------------------------
# Known answers: a 3-step MDP (sessions end early with probability 0.2 after each step)
# ---------------------------------------------------------------------------------------------

N_SESSIONS, HORIZON, GAMMA, CONTINUE = 400, 3, 0.9, 0.8
START = np.array([0.6, 0.4])
MDP_REWARD = np.array([[0.2, 0.8], [0.6, 0.3]])  # Bernoulli means R[s, a]
NEXT = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.1, 0.9]]])  # P[s, a, s']
MDP_TARGET = np.array([[0.2, 0.8], [0.7, 0.3]])
MDP_LOGGER = np.array([[0.6, 0.4], [0.4, 0.6]])


def mdp_q_values(reward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``Q[t, s, a]`` and ``V[t, s]`` of the target by backward induction."""
    q = np.zeros((HORIZON, 2, 2))
    v = np.zeros((HORIZON + 1, 2))
    for t in reversed(range(HORIZON)):
        q[t] = reward + GAMMA * CONTINUE * NEXT @ v[t + 1]
        v[t] = (MDP_TARGET * q[t]).sum(axis=1)
    return q, v[:HORIZON]


MDP_Q, MDP_V = mdp_q_values(MDP_REWARD)
MDP_TRUE = float(START @ MDP_V[0])


def draw_sessions(seed: int) -> dict[str, np.ndarray]:
    """``DRAWS`` logs of ``N_SESSIONS`` sessions at once: arrays ``[DRAWS, N_SESSIONS, HORIZON]``."""
    rng = np.random.default_rng(seed)
    shape = (DRAWS, N_SESSIONS)
    s = (rng.random(shape) > START[0]).astype(int)
    alive = np.ones(shape, dtype=bool)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "a", "r", "mask")}
    for _ in range(HORIZON):  # a loop over the 3 steps only
        a = (rng.random(shape) > MDP_LOGGER[s, 0]).astype(int)
        r = (rng.random(shape) < MDP_REWARD[s, a]).astype(np.float64)
        for key, val in (("s", s), ("a", a), ("r", r), ("mask", alive)):
            cols[key].append(val)
        alive = alive & (rng.random(shape) < CONTINUE)
        s = (rng.random(shape) > NEXT[s, a, 0]).astype(int)
    logs = {k: np.stack(v, axis=-1) for k, v in cols.items()}
    logs["mu"] = MDP_LOGGER[logs["s"], logs["a"]]
    logs["pi"] = MDP_TARGET[logs["s"], logs["a"]]
    return logs


def seq_model(logs: dict[str, np.ndarray], q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``q_logged`` and ``v_target`` ``[DRAWS, N_SESSIONS, HORIZON]`` of a model ``Q[t, s, a]``."""
    t = np.arange(HORIZON)
    v = (MDP_TARGET[None] * q).sum(axis=-1)
    return q[t, logs["s"], logs["a"]], v[t, logs["s"]]


@pytest.fixture(scope="module")
def sessions() -> dict[str, np.ndarray]:
    return draw_sessions(seed=20)


def seq_values(fn: Callable[..., ope.Estimate], logs: dict[str, np.ndarray], *model: np.ndarray,
               mu: np.ndarray | None = None) -> np.ndarray:
    """The estimate of ``fn`` on every draw of the session logs."""
    arrays = (logs["r"], logs["mu"] if mu is None else mu, logs["pi"], *model, logs["mask"])
    return values(fn, *arrays, gamma=GAMMA)


def test_mdp_pdis_unbiased_wpdis_close_with_lower_variance(sessions: dict[str, np.ndarray]) -> None:
    assert sessions["mask"][..., -1].mean() == pytest.approx(CONTINUE**2, abs=0.01)  # sessions do end early
    pdis = seq_values(ope.pdis, sessions)
    assert_unbiased(pdis, MDP_TRUE)
    wpdis = seq_values(ope.wpdis, sessions)
    assert abs(wpdis.mean() - MDP_TRUE) < 0.02 * MDP_TRUE
    assert wpdis.var() < pdis.var()


def test_mdp_sequential_dr_unbiased_with_wrong_model(sessions: dict[str, np.ndarray]) -> None:
    wrong_q, _ = mdp_q_values(MDP_REWARD[:, ::-1] + 0.3)
    dr = seq_values(ope.sequential_dr, sessions, *seq_model(sessions, wrong_q))
    assert_unbiased(dr, MDP_TRUE)


def test_mdp_weighted_dr_close_with_a_wrong_model_and_less_variable_than_pdis(
        sessions: dict[str, np.ndarray]) -> None:
    wrong_q, _ = mdp_q_values(MDP_REWARD[:, ::-1] + 0.3)
    wdr = seq_values(ope.weighted_dr, sessions, *seq_model(sessions, wrong_q))
    assert abs(wdr.mean() - MDP_TRUE) < 0.02 * MDP_TRUE  # consistent: the self-normalised bias is small
    assert wdr.var() < seq_values(ope.pdis, sessions).var()


def test_mdp_sequential_dr_unbiased_with_wrong_propensities(sessions: dict[str, np.ndarray]) -> None:
    wrong_mu = np.full_like(sessions["mu"], 0.5)
    right = seq_model(sessions, MDP_Q)
    assert_unbiased(seq_values(ope.sequential_dr, sessions, *right, mu=wrong_mu), MDP_TRUE)
    # right model and propensities: much lower variance than PDIS
    assert seq_values(ope.sequential_dr, sessions, *right).var() < 0.5 * seq_values(ope.pdis, sessions).var()
    # PDIS with the wrong propensities is biased
    assert abs(seq_values(ope.pdis, sessions, mu=wrong_mu).mean() - MDP_TRUE) > 0.05


# ---------------------------------------------------------------------------------------------
# Bad input and the bootstrap
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mu", "count"), [([0.5, 0.0, 0.5, 0.5], 1), ([0.5, 1.2, np.nan, 0.5], 2),
                                           ([-0.1, 0.5, 0.5, 0.5], 1)])
def test_bad_logging_propensity(mu: list[float], count: int) -> None:
    for fn in (ope.ips, ope.snips, ope.clipped_ips):
        message = rf"^ope: {count} row\(s\) of p_log are NaN or outside \(0, 1\]$"
        with pytest.raises(RecrlError, match=message):
            fn(R4, np.array(mu), PI4)
    with pytest.raises(RecrlError, match=rf"{count} row\(s\) of p_log"):
        ope.dr(R4, np.array(mu), PI4, Q4, V4)


def test_bad_target_reward_and_model_inputs() -> None:
    with pytest.raises(RecrlError, match=r"2 row\(s\) of p_target"):
        ope.ips(R4, MU4, np.array([1.5, np.nan, 0.5, 0.5]))
    with pytest.raises(RecrlError, match=r"1 row\(s\) of reward are not finite"):
        ope.ips(np.array([1.0, np.nan, 0.0, 0.0]), MU4, PI4)
    with pytest.raises(RecrlError, match=r"1 row\(s\) of q_logged"):
        ope.dr(R4, MU4, PI4, np.array([0.1, 0.2, np.inf, 0.3]), V4)
    with pytest.raises(RecrlError, match=r"1 row\(s\) of v_target"):
        ope.dm(np.array([0.1, np.nan]))
    with pytest.raises(RecrlError, match="shape"):
        ope.ips(R4, MU4[:3], PI4[:3])


def test_bad_sequential_input_counts_only_valid_steps() -> None:
    mu = MU2.copy()
    mu[1, 2] = 0.0  # a valid step; the padded [0, 2] = 0.0 is not counted
    with pytest.raises(RecrlError, match=r"^ope: 1 row\(s\) of p_log"):
        ope.pdis(R2, mu, PI2, MASK2)
    q = Q2.copy()
    q[0, 0] = np.nan
    with pytest.raises(RecrlError, match=r"1 row\(s\) of q_logged"):
        ope.sequential_dr(R2, MU2, PI2, q, VS2, MASK2)


def test_bootstrap_blocks_do_not_change_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    cols = np.random.default_rng(4).random((1003, 3))  # not a multiple of any block size
    whole = core.poisson_counts(np.random.default_rng(7), 1003, 50)
    np.testing.assert_allclose(core.bootstrap_sums(cols, 50, seed=7), whole.T @ cols)
    for rows in (4, 8, 100, 4096):
        monkeypatch.setattr(core, "_BLOCK_ROWS", rows)
        np.testing.assert_allclose(core.bootstrap_sums(cols, 50, seed=7), whole.T @ cols)


def test_poisson_counts_are_poisson_one() -> None:
    counts = core.poisson_counts(np.random.default_rng(0), 10_000, 200)
    assert counts.mean() == pytest.approx(1.0, abs=0.003)
    assert counts.var() == pytest.approx(1.0, abs=0.005)
    assert (counts == 0).mean() == pytest.approx(np.exp(-1), abs=0.002)
    assert set(np.unique(counts).tolist()) <= set(range(9))


def assert_same_estimate(got: ope.Estimate, want: ope.Estimate) -> None:
    """Equal estimates, up to float rounding in the bootstrap's sums."""
    assert (got.n, got.ess, got.value) == (want.n, want.ess, pytest.approx(want.value, rel=1e-12))
    assert (got.ci95_low, got.ci95_high) == pytest.approx((want.ci95_low, want.ci95_high), rel=1e-12)


def test_estimate_all_equals_the_single_estimators() -> None:
    logs = draw_bandit_logs(skewed_logger(), seed=15)
    r, mu, pi = logs["r"][0], logs["mu"][0], logs["pi"][0]
    q, v = (arr[0] for arr in model_terms(logs, WRONG_Q))
    together = ope.estimate_all(r, mu, pi, q, v, max_weight=5.0, tau=4.0, seed=3)
    alone = {"ips": ope.ips(r, mu, pi, seed=3), "snips": ope.snips(r, mu, pi, seed=3),
             "clipped_ips": ope.clipped_ips(r, mu, pi, max_weight=5.0, seed=3), "dm": ope.dm(v, seed=3),
             "dr": ope.dr(r, mu, pi, q, v, seed=3),
             "switch_dr": ope.switch_dr(r, mu, pi, q, v, tau=4.0, seed=3)}
    assert together.keys() == alone.keys()
    for name, est in alone.items():
        assert_same_estimate(together[name], est)
    assert ope.estimate_all(r, mu, pi).keys() == {"ips", "snips", "clipped_ips"}
    assert ope.estimate_all(r, mu, pi, v_target=v).keys() == {"ips", "snips", "clipped_ips", "dm"}
    with pytest.raises(RecrlError, match="q_logged needs v_target"):
        ope.estimate_all(r, mu, pi, q_logged=q)


def test_estimate_all_sessions_equals_the_single_estimators(sessions: dict[str, np.ndarray]) -> None:
    one = {k: v[0] for k, v in sessions.items()}
    q, v = (arr[0] for arr in seq_model(sessions, MDP_Q))
    args = (one["r"], one["mu"], one["pi"])
    together = ope.estimate_all_sessions(*args, one["mask"], q, v, gamma=GAMMA)
    alone = {"pdis": ope.pdis(*args, one["mask"], gamma=GAMMA),
             "wpdis": ope.wpdis(*args, one["mask"], gamma=GAMMA),
             "sequential_dr": ope.sequential_dr(*args, q, v, one["mask"], gamma=GAMMA),
             "weighted_dr": ope.weighted_dr(*args, q, v, one["mask"], gamma=GAMMA)}
    assert together.keys() == alone.keys()
    for name, est in alone.items():
        assert_same_estimate(together[name], est)


def test_bootstrap_ci_covers_the_truth_about_95_percent() -> None:
    logs = draw_bandit_logs(UNIFORM * 0.5 + TARGET * 0.5, seed=16)
    ests = [ope.ips(logs["r"][d], logs["mu"][d], logs["pi"][d], seed=d) for d in range(DRAWS)]
    covered = np.mean([e.ci95_low <= TRUE_VALUE <= e.ci95_high for e in ests])
    assert 0.88 <= covered <= 0.99, covered


def test_sequential_ci_brackets_value(sessions: dict[str, np.ndarray]) -> None:
    one = {k: v[0] for k, v in sessions.items()}
    for est in (ope.pdis(one["r"], one["mu"], one["pi"], one["mask"], gamma=GAMMA),
                ope.wpdis(one["r"], one["mu"], one["pi"], one["mask"], gamma=GAMMA)):  # 6 columns: counts
        assert est.ci95_low < est.value < est.ci95_high
        assert est.ci95_low < MDP_TRUE < est.ci95_high
        assert 0 < est.ess < N_SESSIONS and est.n == N_SESSIONS
