"""The known-answer world of the learning tests, shared by every algorithm's test file.

The world has one topic, so every user ranks items the same way and the myopic choice is a
fixed item: the most clickable one, which is clickbait. Clickbait lowers satisfaction and makes
users leave, so the best fixed item is a good non-bait item, and every fixed item's return can
be computed by simulation. A learner must beat random and myopic greedy clearly and reach at
least 90% of the best fixed item's return (:func:`assert_learned`).

``tests/conftest.py`` serves the world and its reference returns as the session fixtures
``clickbait_world`` and ``clickbait_references``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from recrl.algos.random import RandomPolicy
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.metrics.online import run_episodes
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs

N_ITEMS, HORIZON, HISTORY = 10, 10, 4
EPISODES = 2000          # evaluation episodes per policy (fixed seed)
NEVER = 10**9


class FixedItem:
    """Always recommends one item."""

    def __init__(self, item: int) -> None:
        self.item = item

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return torch.full((obs.batch_size, 1), self.item)


def make_world() -> SyntheticWorld:
    """One topic, 10 items, 30% clickbait (seed 3: the myopic choice is a bait item)."""
    return SyntheticWorld(n_items=N_ITEMS, n_users=10, n_topics=1, horizon=HORIZON,
                          clickbait_share=0.3, seed=3)


def make_env(world: SyntheticWorld) -> RecEnv:
    """Single-item slates, click reward."""
    return RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=HISTORY)


def myopic_item(world: SyntheticWorld) -> int:
    """The item with the highest immediate click probability (what greedy serves)."""
    return int((world.click_quality * world.quality + world.click_bait * world.is_bait).argmax())


def mean_return(policy, world: SyntheticWorld) -> float:
    """Mean return of ``policy`` over ``EPISODES`` evaluation episodes (seed 0)."""
    return float(run_episodes(policy, make_env(world), EPISODES, seed=0).returns.mean())


def context(**kwargs) -> AlgoContext:
    """The algorithm context of this world (``kwargs`` override fields, e.g. ``interactions``)."""
    args = dict(n_items=N_ITEMS, slate_size=1, history_len=HISTORY, horizon=HORIZON,
                device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(N_ITEMS),
                behavior=None, reward=ClickReward())
    args.update(kwargs)
    return AlgoContext(**args)


def references(world: SyntheticWorld) -> dict[str, float]:
    """Returns of the best fixed item, myopic greedy and random, and whether greedy serves bait."""
    fixed = [mean_return(FixedItem(i), world) for i in range(N_ITEMS)]
    greedy_item = myopic_item(world)
    return {"best_fixed": max(fixed), "greedy": fixed[greedy_item],
            "random": mean_return(RandomPolicy(context()), world),
            "myopic_is_bait": float(world.is_bait[greedy_item])}


def train(algo, world: SyntheticWorld, seed: int = 0, env: RecEnv | None = None, **trainer_kwargs) -> float:
    """Train ``algo`` in the world (no evaluation, logging or saving; environment draws from
    ``seed``) and return its mean return."""
    trainer = Trainer(eval_every=NEVER, log_every=NEVER, checkpoint_every=NEVER, progress=False,
                      device="cpu", **trainer_kwargs)
    trainer.fit(algo, env or make_env(world), evaluate=lambda: {"eval/return": 0.0},
                log=lambda step, metrics: None, save=lambda tag, step: None, seed=seed)
    return mean_return(algo, world) if env is None else float(
        run_episodes(algo, env, EPISODES, seed=0).returns.mean())


SEEDS = (0, 1, 2)


def median_over_seeds(make_algo: Callable[[AlgoContext], Any], world: SyntheticWorld,
                      env: Callable[[], RecEnv] | None = None, **trainer_kwargs) -> float:
    """The median over :data:`SEEDS` of the return of ``make_algo(context(seed=s))`` trained with
    environment seed ``s``: a known answer that no single lucky (or unlucky) seed decides."""
    returns = [train(make_algo(context(seed=seed)), world, seed=seed, env=env() if env else None,
                     **trainer_kwargs) for seed in SEEDS]
    return statistics.median(returns)


def assert_learned(learned: float, refs: dict[str, float]) -> None:
    """Clearly above greedy and random, and within 10% of the best fixed item."""
    assert learned > 1.3 * refs["greedy"], (learned, refs)
    assert learned > 1.3 * refs["random"], (learned, refs)
    assert learned >= 0.9 * refs["best_fixed"], (learned, refs)
