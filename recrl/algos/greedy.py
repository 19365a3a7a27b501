"""Myopic greedy (``algo=greedy``): the best predicted *immediate* reward under the user model.

It encodes the observed history with the fitted behavior model and recommends the items with
the highest expected reward of this step alone. It ignores every long-term effect (leaving,
boredom, satisfaction), which is exactly what a long-term RL policy should improve on.
"""

from __future__ import annotations

import torch

from recrl.algos.fixed import FixedPolicy
from recrl.types import AlgoContext, Obs, RecrlError


class GreedyPolicy(FixedPolicy):
    """Top-``K`` items by ``reward.expected`` of the behavior model's per-item predictions.

    Example::

        slates = GreedyPolicy(ctx).act(obs, explore=False)
    """

    def __init__(self, ctx: AlgoContext) -> None:
        super().__init__(ctx)
        if not hasattr(ctx.behavior, "score_all"):
            raise RecrlError("algo=greedy needs a behavior model that can score all items")
        self.model, self.reward = ctx.behavior, ctx.reward

    def scores(self, obs: Obs) -> torch.Tensor:
        """Expected immediate reward of each item ``[B, n_items]``."""
        return self.reward.expected(self.model.score_all(self.model.encode(obs)))
