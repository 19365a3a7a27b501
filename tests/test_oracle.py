"""The oracle reference policy: it plans with the true state and dynamics and beats every simple
policy by a wide margin; its pieces are checked on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from recrl.algos.oracle import Oracle, can_plan
from recrl.data.synthetic import SyntheticWorld
from recrl.env.choice import Choice
from recrl.env.simulator import RecEnv
from recrl.evaluate import add_oracle_share
from recrl.metrics.online import run_episodes
from recrl.rewards import ClickReward, ConversionReward
from recrl.types import Obs, RecrlError

HORIZON = 12


def small_world(seed: int = 0) -> SyntheticWorld:
    return SyntheticWorld(n_items=80, n_users=10, n_topics=4, horizon=HORIZON, seed=seed)


def make_env(world: SyntheticWorld, slate_size: int = 1, reward=None) -> RecEnv:
    return RecEnv(world, reward or ClickReward(), horizon=HORIZON, slate_size=slate_size, history_len=4)


def mean_return(policy, env: RecEnv, episodes: int = 600) -> float:
    return float(run_episodes(policy, env, episodes, seed=1, batch_size=300).returns.mean())


class Random:
    def __init__(self, n_items: int, k: int = 1) -> None:
        self.n_items, self.k, self.g = n_items, k, torch.Generator().manual_seed(0)

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return torch.rand(obs.batch_size, self.n_items, generator=self.g).topk(self.k, 1).indices


class TrueGreedy:
    """The myopic policy with the true state: the most clickable items now."""

    def __init__(self, world: SyntheticWorld, env: RecEnv) -> None:
        self.world, self.env = world, env

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return self.world.click_utility(self.env.state, None).topk(self.env.slate_size, 1).indices


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_beats_random_and_myopic_greedy_by_far_and_its_base_policy(seed: int) -> None:
    world = small_world(seed)
    env = make_env(world)
    oracle = mean_return(Oracle(world, ClickReward(), env, candidates=4), env)
    base = mean_return(Oracle(world, ClickReward(), env, lookahead=False), env)
    assert oracle > 1.5 * mean_return(Random(world.n_items), env)
    assert oracle > 1.5 * mean_return(TrueGreedy(world, env), env)
    assert oracle >= base - 0.1  # the lookahead never loses more than noise to its base policy


def test_oracle_uses_each_users_true_state() -> None:
    world = small_world()
    env = make_env(world)
    obs = env.reset(2, seed=0)
    topics = torch.tensor([0, 1])
    interest = torch.nn.functional.one_hot(topics, world.n_topics).float()
    env.state = torch.cat([interest, torch.zeros(2, 1 + world.n_topics)], 1)
    items = Oracle(world, ClickReward(), env).act(obs)[:, 0]
    affinity = interest @ world.item_emb[items].T  # [user, item chosen for user]
    assert items[0] != items[1]
    assert bool((affinity.diagonal() > affinity.flip(1).diagonal()).all())  # each got the item for them
    assert world.is_bait[items].tolist() == [0.0, 0.0]


def test_oracle_slates_are_distinct_items_for_each_reward() -> None:
    world = small_world()
    for reward in (ClickReward(), ConversionReward()):
        env = make_env(world, slate_size=3, reward=reward)
        obs = env.reset(5, seed=0)
        slates = Oracle(world, reward, env, candidates=5).act(obs)
        assert slates.shape == (5, 3)
        assert all(len(set(row)) == 3 for row in slates.tolist())


def test_first_slates_put_each_candidate_first_then_the_best_others() -> None:
    world = small_world()
    env = make_env(world, slate_size=3)
    oracle = Oracle(world, ClickReward(), env, candidates=3)
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.0]])  # best others: 1, 3, 2
    slates = oracle._first_slates(scores, torch.tensor([[3, 4]]))
    assert slates.tolist() == [[3, 1, 2], [4, 1, 3]]


def test_expected_response_matches_the_sampled_world_on_average() -> None:
    world = small_world()
    state = world.initial_state(4, torch.Generator().manual_seed(0))
    slates = torch.tensor([[0], [5], [9], [17]])
    expected = world.expected_response(state, slates, Choice())
    alone = world.expected_response(state, None, Choice())
    torch.testing.assert_close(expected.click, alone.click.gather(1, slates))
    torch.testing.assert_close(expected.click, torch.sigmoid(world.click_utility(state, slates)))
    torch.testing.assert_close(alone.conversion_prob.gather(1, slates), world.conversion_prob(state, slates))
    # a click on an item leaves satisfaction at decay * s + gain: the single-item leave probability
    satisfaction = state[:, world.n_topics]
    after = world.satisfaction_decay * satisfaction[:, None] + world.click_gain()
    leave = torch.sigmoid(world.leave_bias - world.leave_satisfaction * after)
    torch.testing.assert_close(alone.leave_prob, leave)


def test_oracle_needs_a_model_it_can_plan_with() -> None:
    assert can_plan(small_world())
    env = make_env(small_world())
    with pytest.raises(RecrlError, match="plan with"):
        Oracle(object(), ClickReward(), env)  # type: ignore[arg-type]


def test_oracle_share_is_return_over_the_oracles() -> None:
    results = {"ground_truth": {"dqn": {"return": {"mean": 3.0, "ci95": 0.6, "n": 10}},
                                "oracle": {"return": {"mean": 12.0, "ci95": 0.4, "n": 10}}},
               "simulator": {"dqn": {"return": {"mean": 9.0, "ci95": 0.1, "n": 10}}}}
    add_oracle_share(results)
    share = results["ground_truth"]["dqn"]["oracle_share"]
    assert share == {"mean": 0.25, "ci95": pytest.approx(0.05), "n": 10}
    assert results["ground_truth"]["oracle"]["oracle_share"]["mean"] == 1.0
    assert "oracle_share" not in results["simulator"]["dqn"]  # no oracle there
