"""Common base for policies that never learn (the baselines)."""

from __future__ import annotations

from typing import Any

import torch

from recrl.algos.probs import ActsGreedily
from recrl.types import AlgoContext, Obs


class FixedPolicy(ActsGreedily):
    """A non-learning policy: ``update`` does nothing and there is no state to save.

    Subclasses implement :meth:`scores`; the slate is the top-``K`` scored items.
    """

    mode = "none"

    def __init__(self, ctx: AlgoContext) -> None:
        self.ctx = ctx

    def scores(self, obs: Obs) -> torch.Tensor:
        """Item scores ``[B, n_items]`` (higher is recommended first)."""
        raise NotImplementedError  # abstract: every subclass defines it

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        """Top-``K`` items by :meth:`scores`."""
        return self.scores(obs).topk(self.ctx.slate_size, dim=1).indices

    def update(self, batch: Any) -> dict[str, float]:
        """Baselines do not learn."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
