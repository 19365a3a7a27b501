"""The pretrained next-item model as a policy (``algo=supervised``): the baseline of RL
fine-tuning.

The scorer of a :class:`~recrl.algos.backbone.Backbone` (a SASRec-style transformer by default)
fitted to the training log's clicked items by cross-entropy
(:func:`~recrl.algos.backbone.pretrained_state`, cached under ``<cache_dir>/pretrain/``), serving
its top-``K`` items, items already in the history skipped. It is what ``algo.init_from=pretrain``
starts a policy from, and a run that starts from it reports it as the row ``supervised``: RL
fine-tuning has to beat it on long-term return.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recrl.algos.backbone import Backbone, PretrainSettings, pretrained_state
from recrl.algos.nets import masked_scores, skips_shown, top_k
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import own_random_stream
from recrl.types import AlgoContext, Obs


class Supervised(ActsGreedily):
    """Top-``K`` of a pretrained next-item scorer; trains nothing in the environment.

    Example::

        algo = Supervised(ctx, encoder="transformer", dim=64, pretrain=PretrainSettings(steps=2000))
        slates = algo.act(obs, explore=False)
    """

    mode = "none"

    def __init__(self, ctx: AlgoContext, encoder: str = "transformer", dim: int = 64, hidden: int = 128,
                 layers: int = 2, heads: int = 2, item_init: str = "auto", item_ids: bool = True,
                 summary: bool = False, skip_shown: bool = True,
                 pretrain: PretrainSettings | None = None) -> None:
        backbone = Backbone(encoder, dim, hidden, layers, heads, item_init, item_ids, summary)
        with own_random_stream(ctx.seed, ctx.device):
            policy = backbone.scorer(ctx)
        state, self.report = pretrained_state(ctx, backbone, pretrain or PretrainSettings())
        policy.load_state_dict(state)
        self._setup(ctx, policy.requires_grad_(False).eval(), skip_shown)

    @classmethod
    def of(cls, ctx: AlgoContext, policy: nn.Module, skip_shown: bool) -> Supervised:
        """The policy of an already pretrained (frozen) ``policy`` scorer."""
        algo = cls.__new__(cls)
        algo._setup(ctx, policy, skip_shown)
        algo.report = {}
        return algo

    @classmethod
    def starting_row(cls, ctx: AlgoContext, init_from: dict[str, Any], policy: nn.Module,
                     skip_shown: bool) -> tuple[str, Supervised]:
        """The report row of a fine-tuned run's frozen starting ``policy``: ``supervised`` when it
        came from ``algo.init_from=pretrain``, ``pretrained`` from another source."""
        name = "supervised" if init_from["source"] == "pretrain" else "pretrained"
        return name, cls.of(ctx, policy, skip_shown)

    def _setup(self, ctx: AlgoContext, policy: nn.Module, skip_shown: bool) -> None:
        self.ctx, self.policy = ctx, policy
        self.skip_shown = skips_shown(ctx, skip_shown)

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """The scorer's logits ``[B, n_items]``, items in the history at ``-inf`` (``skip_shown``)."""
        return masked_scores(self.policy, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """The top-``K`` items."""
        return top_k(self.scores(obs), self.ctx.slate_size)

    def update(self, batch: Any) -> dict[str, float]:
        """Nothing is learned in the environment."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The scorer's weights."""
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.policy.load_state_dict(state["policy"])
