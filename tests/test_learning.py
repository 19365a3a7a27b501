"""Learning tests: DQN and REINFORCE find the long-term optimum of a tiny world.

The world has one topic, so every user ranks items the same way and the myopic choice is a
fixed item: the most clickable one, which is clickbait. Clickbait lowers satisfaction and makes
users leave, so the best fixed item is a good non-bait item, and we can compute every fixed
item's return exactly by simulation. A learner must beat random and myopic greedy clearly and
reach at least 90% of the best fixed item's return.
"""

from __future__ import annotations

import pytest
import torch

from recrl.algos.dqn import DQN
from recrl.algos.random import RandomPolicy
from recrl.algos.reinforce import Reinforce
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.metrics.online import run_episodes
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs

N_ITEMS, HORIZON, HISTORY = 10, 10, 4
EPISODES = 2000


class FixedItem:
    """Always recommends one item."""

    def __init__(self, item: int) -> None:
        self.item = item

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return torch.full((obs.batch_size, 1), self.item)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(n_items=N_ITEMS, n_users=10, n_topics=1, horizon=HORIZON,
                          clickbait_share=0.3, seed=3)


def make_env(world: SyntheticWorld) -> RecEnv:
    return RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=HISTORY)


def mean_return(policy, world: SyntheticWorld) -> float:
    return float(run_episodes(policy, make_env(world), EPISODES, seed=0).returns.mean())


@pytest.fixture(scope="module")
def references(world: SyntheticWorld) -> dict[str, float]:
    fixed = [mean_return(FixedItem(i), world) for i in range(N_ITEMS)]
    myopic_item = int((world.click_quality * world.quality + world.click_bait * world.is_bait).argmax())
    return {"best_fixed": max(fixed), "greedy": fixed[myopic_item],
            "random": mean_return(RandomPolicy(context()), world),
            "myopic_is_bait": float(world.is_bait[myopic_item])}


def context() -> AlgoContext:
    return AlgoContext(n_items=N_ITEMS, slate_size=1, history_len=HISTORY, horizon=HORIZON,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(N_ITEMS),
                       behavior=None, reward=ClickReward())


def train(algo, world: SyntheticWorld, **trainer_kwargs) -> float:
    never = 10**9
    trainer = Trainer(eval_every=never, log_every=never, checkpoint_every=never, progress=False,
                      device="cpu", **trainer_kwargs)
    trainer.fit(algo, make_env(world), evaluate=lambda: {"eval/return": 0.0},
                log=lambda step, metrics: None, save=lambda tag, step: None)
    return mean_return(algo, world)


def test_world_has_a_long_term_trap(references: dict[str, float]) -> None:
    assert references["myopic_is_bait"] == 1.0
    assert references["best_fixed"] > 1.5 * references["greedy"]


def assert_learned(learned: float, references: dict[str, float]) -> None:
    assert learned > 1.3 * references["greedy"], (learned, references)
    assert learned > 1.3 * references["random"], (learned, references)
    assert learned >= 0.9 * references["best_fixed"], (learned, references)


def test_dqn_beats_greedy_and_random(world: SyntheticWorld, references: dict[str, float]) -> None:
    algo = DQN(context(), epsilon_decay_steps=300, target_update=50, gamma=0.9)
    learned = train(algo, world, steps=800, n_users=16, batch_size=64, learning_starts=200)
    assert_learned(learned, references)


def test_reinforce_beats_greedy_and_random(world: SyntheticWorld, references: dict[str, float]) -> None:
    algo = Reinforce(context(), lr=0.01, entropy_coef=0.0)
    learned = train(algo, world, steps=600, n_users=64)
    assert_learned(learned, references)
