"""Uniformly random recommendations (``algo=random``): the floor every policy must beat."""

from __future__ import annotations

import torch

from recrl.algos.fixed import FixedPolicy
from recrl.algos.nets import random_slates
from recrl.algos.probs import uniform_slate_probs
from recrl.types import AlgoContext, Obs


class RandomPolicy(FixedPolicy):
    """Slates of distinct items drawn uniformly at random.

    Example::

        slates = RandomPolicy(ctx).act(obs, explore=False)   # [B, K]
    """

    def __init__(self, ctx: AlgoContext) -> None:
        super().__init__(ctx)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)

    @torch.no_grad()
    def scores(self, obs: Obs) -> torch.Tensor:
        """Uniformly random scores ``[B, n_items]``: a random ranking per user."""
        return torch.rand(obs.batch_size, self.ctx.n_items, device=obs.items.device, generator=self.generator)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        """A random slate per user."""
        return random_slates(obs.batch_size, self.ctx.n_items, self.ctx.slate_size,
                             obs.items.device, self.generator)

    def action_probs(self, obs: Obs) -> torch.Tensor:
        """Per-slot probabilities ``[B, K, n_items]``: uniform."""
        return uniform_slate_probs(obs.batch_size, self.ctx.slate_size, self.ctx.n_items, obs.items.device)
