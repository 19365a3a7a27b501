"""Most-clicked items of the training logs (``algo=popular``), not repeating what was shown."""

from __future__ import annotations

import torch

from recrl.algos.fixed import FixedPolicy
from recrl.algos.nets import mask_shown
from recrl.types import AlgoContext, Obs


class PopularPolicy(FixedPolicy):
    """Recommends the items with the most clicks in the training split.

    Items already shown in the user's observed history are skipped, so a session walks down
    the popularity list instead of repeating its head.

    Example::

        slates = PopularPolicy(ctx).act(obs, explore=False)
    """

    def __init__(self, ctx: AlgoContext, skip_shown: bool = True) -> None:
        super().__init__(ctx)
        self.skip_shown = skip_shown
        # score = minus the rank, so equally popular items are ordered by id on every device
        order = torch.sort(-ctx.item_popularity.double(), stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(ctx.n_items)
        self.popularity = -rank.to(ctx.device).float()

    def scores(self, obs: Obs) -> torch.Tensor:
        """Popularity of every item, ``-inf`` for items already shown when ``skip_shown``."""
        scores = self.popularity.expand(obs.batch_size, -1)
        return mask_shown(scores, obs) if self.skip_shown else scores
