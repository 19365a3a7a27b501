"""Top-K off-policy correction: the two simulations of Chen et al. (WSDM 2019) and hand checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.algos.logged import LoggedSteps, logged_steps
from recrl.algos.topk_reinforce import TopKOffPolicyReinforce
from recrl.data.preprocess import log_frame
from recrl.rewards import ClickReward, RatingReward
from recrl.types import AlgoContext, Interactions, Obs, RecrlError

N_ITEMS, HISTORY = 10, 2


def bandit_logs(rewards: np.ndarray, logging: np.ndarray, rows: int = 4000, seed: int = 0) -> Interactions:
    """One-step sessions: the logging policy picks item ``a`` with probability ``logging[a]`` and
    earns ``rewards[a]`` (stored as the rating of a click, read by ``reward=rating``)."""
    rng = np.random.default_rng(seed)
    item = rng.choice(len(rewards), size=rows, p=logging)
    log = log_frame({"user": np.arange(rows), "item": item, "time": np.zeros(rows, np.int64),
                     "click": np.ones(rows), "rating": rewards[item], "propensity": logging[item]})
    return Interactions(train=log, valid=log.iloc[:0], items=pd.DataFrame(index=range(len(rewards))),
                        n_users=rows, n_items=len(rewards))


def context(interactions: Interactions, slate_size: int = 1) -> AlgoContext:
    return AlgoContext(n_items=N_ITEMS, slate_size=slate_size, history_len=HISTORY, horizon=5,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(N_ITEMS),
                       behavior=None, reward=RatingReward(), interactions=interactions)


def learned_policy(interactions: Interactions, updates: int = 600, **kwargs) -> torch.Tensor:
    """``pi(.|s)`` of the empty history after ``updates`` steps on the logs."""
    algo = TopKOffPolicyReinforce(context(interactions), lr=0.01, **kwargs)
    generator = torch.Generator().manual_seed(0)
    for _ in range(updates):
        algo.update(algo.dataset.sample(256, generator))
    empty = Obs(items=torch.full((1, HISTORY, 1), N_ITEMS), clicks=torch.zeros(1, HISTORY, 1),
                step=torch.zeros(1, dtype=torch.long))
    return algo.probabilities(empty)[0]


@pytest.fixture(scope="module")
def skewed_logs() -> Interactions:
    """Rewards r(a_i) = i + 1; the logging policy favours the low-reward items (beta ~ 10 - i)."""
    logging = np.arange(N_ITEMS, 0, -1, dtype=np.float64)
    return bandit_logs(np.arange(1, N_ITEMS + 1, dtype=np.float64), logging / logging.sum())


def test_without_correction_the_policy_follows_the_logging_bias(skewed_logs: Interactions) -> None:
    pi = learned_policy(skewed_logs, correction=False)
    # plain REINFORCE on logs converges towards pi ~ beta * r: the mode is a middle item, not the best
    assert int(pi.argmax()) in (3, 4, 5, 6) and float(pi[-1]) < 0.2


def test_with_correction_the_policy_puts_most_mass_on_the_best_item(skewed_logs: Interactions) -> None:
    # a cap as low as 10 would bind here (beta of the best item is 1/55) and bias the policy
    # towards items the logging policy favours: capping trades that bias for lower variance
    pi = learned_policy(skewed_logs, weight_cap=1000.0)
    assert int(pi.argmax()) == N_ITEMS - 1 and float(pi[-1]) > 0.6, pi
    # beta learned from the logged items (first alone, then alongside the policy)
    estimated = learned_policy(skewed_logs, updates=800, weight_cap=1000.0, propensity="estimated",
                               beta_warmup=200)
    assert int(estimated.argmax()) == N_ITEMS - 1 and float(estimated[-1]) > 0.5, estimated


def test_top_k_correction_keeps_mass_on_the_second_best_item() -> None:
    rewards = np.array([10.0, 9.0] + [1.0] * (N_ITEMS - 2))
    logs = bandit_logs(rewards, np.full(N_ITEMS, 1.0 / N_ITEMS))
    k1, k2 = learned_policy(logs, topk=1, weight_cap=1000.0), learned_policy(logs, topk=2, weight_cap=1000.0)
    assert float(k1[0]) > 0.6 and float(k1[1]) < 0.3, k1
    assert float(k2[1]) > 0.3 and float(k2[0] + k2[1]) > 0.8, k2  # both top items kept in the slate
    assert float(k2[1]) > float(k1[1]) + 0.1


def test_weights_by_hand() -> None:
    logs = bandit_logs(np.ones(N_ITEMS), np.full(N_ITEMS, 0.1), rows=10)
    algo = TopKOffPolicyReinforce(context(logs), topk=3, weight_cap=2.5)
    log_pi = torch.log(torch.tensor([0.05, 0.5]))
    beta = torch.tensor([0.1, 0.1])
    # row 0: w = 0.5, lambda = 3 * 0.95^2; row 1: w = min(5, 2.5), lambda = 3 * 0.5^2
    torch.testing.assert_close(algo.weights(log_pi, beta), torch.tensor([0.5 * 3 * 0.95**2, 2.5 * 3 * 0.25]))
    algo.correction = False
    torch.testing.assert_close(algo.weights(log_pi, beta), torch.ones(2))


def test_logged_steps_by_hand() -> None:
    log = log_frame({"user": [0, 0, 0, 1, 1], "item": [3, 1, 2, 0, 4], "time": [0, 1, 2, 0, 1],
                     "click": [1.0, 0.0, 1.0, 0.0, 1.0], "propensity": [0.1, 0.2, 0.3, 0.4, 0.5]})
    steps = logged_steps(log, n_items=5, history_len=2, reward=ClickReward())
    tr = steps.transitions
    assert tr.obs.items[..., 0].tolist() == [[5, 5], [5, 3], [3, 1], [5, 5], [5, 0]]
    assert tr.next_obs.items[..., 0].tolist() == [[5, 3], [3, 1], [1, 2], [5, 0], [0, 4]]
    assert tr.obs.clicks[..., 0].tolist() == [[0, 0], [0, 1], [1, 0], [0, 0], [0, 0]]
    assert tr.obs.step.tolist() == [0, 1, 2, 0, 1] and tr.done.tolist() == [0, 0, 1, 0, 1]
    assert tr.action[:, 0].tolist() == [3, 1, 2, 0, 4] and tr.reward.tolist() == [1, 0, 1, 0, 1]
    # gamma 0.5: user 0 earns 1, 0, 1 -> 1.25, 0.5, 1; user 1 earns 0, 1 -> 0.5, 1
    torch.testing.assert_close(steps.returns(0.5), torch.tensor([1.25, 0.5, 1.0, 0.5, 1.0]))
    batch = steps.sample(7, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.transitions.action[:, 0], tr.action[batch.row, 0])


def test_logged_algorithms_need_single_item_logs_and_propensities() -> None:
    logs = bandit_logs(np.ones(N_ITEMS), np.full(N_ITEMS, 0.1), rows=10)
    with pytest.raises(RecrlError, match=r"env\.slate_size=1"):
        LoggedSteps.from_context(context(logs, slate_size=2))
    logs.train["propensity"] = np.nan
    with pytest.raises(RecrlError, match=r"algo\.propensity=estimated"):
        TopKOffPolicyReinforce(context(logs), propensity="logged")
    assert not TopKOffPolicyReinforce(context(logs)).use_logged  # auto falls back to estimating


def test_state_dict_round_trip() -> None:
    logs = bandit_logs(np.arange(N_ITEMS, dtype=np.float64), np.full(N_ITEMS, 0.1), rows=50)
    a, b = TopKOffPolicyReinforce(context(logs)), TopKOffPolicyReinforce(context(logs))
    a.update(a.dataset.sample(16, torch.Generator().manual_seed(0)))
    b.load_state_dict(a.state_dict())
    obs = a.dataset.transitions.obs
    torch.testing.assert_close(a.probabilities(obs), b.probabilities(obs))
