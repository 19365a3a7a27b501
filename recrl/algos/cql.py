"""Discrete conservative Q-learning from logged data (``algo=cql``).

A double DQN (target network, Huber loss) on the logged transitions ``(s, a, r, s', done)``,
plus a regulariser that pushes the Q-values of the whole catalogue down (soft maximum) and the
logged item's up, so items the logging policy rarely served cannot look better than the data
supports::

    y   = r + gamma * (1 - done) * Q_target(s', argmax_a' Q(s', a'))
    L   = mean[huber(Q(s, a) - y)] + alpha * mean[logsumexp_a' Q(s, a') - Q(s, a)]

It acts by the top-``K`` items by Q (offline, so ``explore`` changes nothing). ``alpha = 0``
is plain double DQN on the log; a large ``alpha`` drifts towards behaviour cloning. The
regulariser's pull on an item grows with the inverse of its logged share at ``s`` (at the
optimum ``Q`` is lowered by about ``alpha * (softmax(Q)(a|s) / share(a|s) - 1)``), so on logs
where one item dominates and the others each have a few percent, ``alpha`` must be small (0.05
in the known-answer test; the paper's Atari runs use 0.5 to 5 on far less skewed data).
``encoder`` picks the history encoder (``gru`` or ``mlp``, as in :mod:`recrl.algos.bc`).

Reference: Kumar, Zhou, Tucker, Levine. Conservative Q-Learning for Offline Reinforcement
Learning. NeurIPS 2020 (the CQL(H) variant for discrete actions).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.algos.learner_state import LearnerState
from recrl.algos.logged import LoggedSteps
from recrl.algos.nets import (
    ItemScorer,
    adam,
    double_q_target,
    gradient_step,
    history_encoder,
    masked_scores,
    skips_shown,
    top_k,
    update_target,
)
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.types import AlgoContext, Obs


def cql_regulariser(q: Tensor, action: Tensor) -> Tensor:
    """``mean[logsumexp_a Q(s, a) - Q(s, a_logged)]`` from Q-values ``[B, n_items]`` and the
    logged items ``[B, 1]`` (a scalar, >= 0 up to ``log n_items`` for a flat Q)."""
    return (torch.logsumexp(q, 1) - q.gather(1, action)[:, 0]).mean()


class DiscreteCQL(LearnerState, ActsGreedily):
    """Double DQN with the CQL(H) regulariser, learned from the training log only.

    Example::

        algo = DiscreteCQL(ctx, alpha=1.0, gamma=0.9)
        stats = algo.update(algo.dataset.sample(256, generator))
        slates = algo.act(obs, explore=False)
    """

    networks = ("q", "q_target")

    mode = "offline"

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.95, alpha: float = 0.05, target_update: int = 100,
                 tau: float = 1.0, grad_clip: float = 10.0, encoder: str = "gru", layers: int = 2,
                 heads: int = 2, skip_shown: bool = False) -> None:
        self.ctx, self.gamma, self.alpha = ctx, gamma, alpha
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.target_update, self.tau, self.grad_clip = target_update, tau, grad_clip
        self.dataset = LoggedSteps.from_context(ctx)
        self.q = ItemScorer(history_encoder(encoder, ctx, dim, hidden, layers, heads),
                            ctx.n_items, dim).to(ctx.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizer = adam(self.q.parameters(), lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """Q-values ``[B, n_items]`` (the greedy ranking; with ``skip_shown`` the items in the
        history at ``-inf``)."""
        return masked_scores(self.q, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Top-``K`` items by Q."""
        return top_k(self.scores(obs), self.ctx.slate_size)

    def update(self, batch: LoggedSteps) -> dict[str, Any]:
        """One gradient step of TD + ``alpha`` * CQL regulariser on a batch of logged steps."""
        tr = batch.transitions
        q = self.q(tr.obs)
        q_taken = q.gather(1, tr.action)[:, 0]
        with torch.no_grad():
            target = double_q_target(self.q(tr.next_obs), self.q_target(tr.next_obs), tr.reward, tr.done,
                                     self.gamma)
        td = F.smooth_l1_loss(q_taken, target)
        conservative = cql_regulariser(q, tr.action)
        loss = td + self.alpha * conservative
        gradient_step(self.optimizer, loss, self.q.parameters(), self.grad_clip)
        self.updates += 1
        update_target(self.q_target, self.q, self.updates, self.target_update, self.tau)
        return {"train/loss": loss.detach(), "train/td_loss": td.detach(),
                "train/cql_loss": conservative.detach(), "train/q": q_taken.detach().mean()}
