"""Learning tests: DQN and REINFORCE find the long-term optimum of a tiny world.

The world (tests/clickbait.py) has one topic and clickbait that makes users leave, so the myopic
choice is a trap and the best fixed item is a good non-bait item; a learner must beat random and
myopic greedy clearly and reach at least 90% of the best fixed item's return. Each known answer
is the median over three seeds (algorithm and environment), so no single seed decides it.
"""

from __future__ import annotations

from clickbait import assert_learned, median_over_seeds

from recrl.algos.dqn import DQN
from recrl.algos.reinforce import Reinforce
from recrl.data.synthetic import SyntheticWorld


def test_world_has_a_long_term_trap(clickbait_references: dict[str, float]) -> None:
    assert clickbait_references["myopic_is_bait"] == 1.0
    assert clickbait_references["best_fixed"] > 1.5 * clickbait_references["greedy"]


def test_dqn_beats_greedy_and_random(clickbait_world: SyntheticWorld,
                                     clickbait_references: dict[str, float]) -> None:
    def make(ctx):
        return DQN(ctx, epsilon_decay_steps=300, target_update=50, gamma=0.9, lr=3e-4, n_step=3)
    learned = median_over_seeds(make, clickbait_world, steps=800, n_users=16, batch_size=64,
                                learning_starts=200)
    assert_learned(learned, clickbait_references)


def test_reinforce_beats_greedy_and_random(clickbait_world: SyntheticWorld,
                                           clickbait_references: dict[str, float]) -> None:
    learned = median_over_seeds(lambda ctx: Reinforce(ctx, lr=0.01, entropy_coef=0.0), clickbait_world,
                                steps=600, n_users=64)
    assert_learned(learned, clickbait_references)
