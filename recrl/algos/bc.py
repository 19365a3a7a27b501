"""Behaviour cloning of the logging policy (``algo=bc``): the baseline of offline learners.

A softmax over the catalogue, ``pi(a|s) = softmax(state @ E.T + b)``, fitted to the logged
items by maximum likelihood on batches of logged steps ``(s, a)``::

    L = -mean[log pi(a|s)]

``state`` encodes the user's logged history (``encoder``: ``gru``, a GRU over the history, or
``mlp``, the position-wise :class:`~recrl.algos.nets.HistoryEncoder`). It imitates whoever
produced the log: offline RL (CQL, BCQ, SQN) must beat it on the same data. It acts by its
top-``K`` items (evaluation) or samples from ``pi`` (``explore``).

Reference: Pomerleau. Efficient training of artificial neural networks for autonomous
navigation. Neural Computation 3, 1991.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from recrl.algos.learner_state import LearnerState
from recrl.algos.logged import LoggedSteps
from recrl.algos.nets import (
    ItemScorer,
    adam,
    gradient_step,
    history_encoder,
    masked_scores,
    sample_top_k,
    skips_shown,
    top_k,
)
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.types import AlgoContext, Obs


class BehaviorCloning(LearnerState, ActsGreedily):
    """Maximum-likelihood imitation of the logged items, learned from the training log only.

    Example::

        algo = BehaviorCloning(ctx, lr=1e-3)
        stats = algo.update(algo.dataset.sample(256, generator))
        slates = algo.act(obs, explore=False)    # the most likely logged items
    """

    networks = ("policy",)

    mode = "offline"

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 grad_clip: float = 10.0, encoder: str = "gru", layers: int = 2,
                 heads: int = 2, skip_shown: bool = False) -> None:
        self.ctx, self.grad_clip = ctx, grad_clip
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.dataset = LoggedSteps.from_context(ctx)
        self.policy = ItemScorer(history_encoder(encoder, ctx, dim, hidden, layers, heads),
                                 ctx.n_items, dim).to(ctx.device)
        self.optimizer = adam(self.policy.parameters(), lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    @torch.no_grad()
    def scores(self, obs: Obs) -> torch.Tensor:
        """The policy's logits ``[B, n_items]`` (its greedy ranking; with ``skip_shown`` the items
        in the history at ``-inf``)."""
        return masked_scores(self.policy, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        """The top-``K`` items of ``pi``, or a slate sampled from it with ``explore``."""
        logits = self.scores(obs)
        if explore:
            return sample_top_k(logits, self.ctx.slate_size, self.generator)
        return top_k(logits, self.ctx.slate_size)

    def update(self, batch: LoggedSteps) -> dict[str, Any]:
        """One gradient step of the cross-entropy on a batch of logged steps."""
        tr = batch.transitions
        logits = self.policy(tr.obs)
        loss = F.cross_entropy(logits, tr.action[:, 0])
        gradient_step(self.optimizer, loss, self.policy.parameters(), self.grad_clip)
        self.updates += 1
        accuracy = (logits.detach().argmax(1) == tr.action[:, 0]).float().mean()
        return {"train/loss": loss.detach(), "train/accuracy": accuracy}
