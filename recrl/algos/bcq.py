"""Discrete batch-constrained Q-learning from logged data (``algo=bcq``).

Two networks over the catalogue: a generative model of the logging policy ``G(a|s) =
softmax(g(s))``, fitted to the logged items, and Q. Only items the logging policy plausibly
serves at ``s`` are candidates, both in the target and when acting::

    allowed(s) = {a : G(a|s) / max_a' G(a'|s) > threshold}
    y   = r + gamma * (1 - done) * Q_target(s', argmax_{a' in allowed(s')} Q(s', a'))
    L   = mean[huber(Q(s, a) - y)] - mean[log G(a|s)] + logit_reg * mean[g(s)^2]

(the last term, on the logits of ``G``, is the reference implementation's). ``threshold = 0``
is double DQN on the log; ``threshold = 1`` keeps only the logging policy's most likely item,
i.e. behaviour cloning. On a log where one item dominates, another item's ratio is about its
share over the dominant item's, so ``threshold`` must sit below it for it to be allowed.
It acts by the top-``K`` allowed items by Q (offline, so ``explore`` changes nothing). ``G``
and Q are separate networks (as in the reference's non-Atari version), each with its own
history encoder (``encoder``: ``gru`` or ``mlp``).

Reference: Fujimoto, Conti, Ghavamzadeh, Pineau. Benchmarking Batch Deep Reinforcement
Learning Algorithms. NeurIPS 2019 Deep RL workshop (arXiv:1910.01708).
"""

from __future__ import annotations

import copy
import math
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
    skip_history,
    skips_shown,
    top_k,
    update_target,
)
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.types import AlgoContext, Obs


def allowed_items(g_logits: Tensor, threshold: float) -> Tensor:
    """``[B, n_items]`` bool: ``G(a|s) / max_a' G(a'|s) > threshold`` from the logits of ``G``
    (in log space: ``log G(a|s) - max log G > log threshold``; the argmax is always allowed)."""
    if threshold <= 0:
        return torch.ones_like(g_logits, dtype=torch.bool)
    log_g = torch.log_softmax(g_logits, 1)
    ratio = log_g - log_g.max(1, keepdim=True).values
    return (ratio > math.log(threshold)) | (ratio == 0)


class DiscreteBCQ(LearnerState, ActsGreedily):
    """Q-learning restricted to the items a fitted logging-policy model deems likely.

    Example::

        algo = DiscreteBCQ(ctx, threshold=0.3, gamma=0.9)
        stats = algo.update(algo.dataset.sample(256, generator))
        slates = algo.act(obs, explore=False)     # best allowed items
    """

    networks = ("q", "q_target", "g")

    mode = "offline"

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.95, threshold: float = 0.3, logit_reg: float = 0.01,
                 target_update: int = 100, tau: float = 1.0, grad_clip: float = 10.0,
                 encoder: str = "gru", layers: int = 2,
                 heads: int = 2, skip_shown: bool = False) -> None:
        self.ctx, self.gamma, self.threshold, self.logit_reg = ctx, gamma, threshold, logit_reg
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.target_update, self.tau, self.grad_clip = target_update, tau, grad_clip
        self.dataset = LoggedSteps.from_context(ctx)
        def scorer() -> ItemScorer:
            return ItemScorer(history_encoder(encoder, ctx, dim, hidden, layers, heads),
                              ctx.n_items, dim).to(ctx.device)

        self.q, self.g = scorer(), scorer()
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.params = list(self.q.parameters()) + list(self.g.parameters())
        self.optimizer = adam(self.params, lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """Q-values ``[B, n_items]``, items the behavior clone deems unlikely (and with
        ``skip_shown`` the items in the history) at ``-inf``."""
        q = self.q(obs).masked_fill(~allowed_items(self.g(obs), self.threshold), float("-inf"))
        return skip_history(q, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Top-``K`` allowed items by Q (disallowed items follow if fewer than ``K`` are allowed)."""
        return top_k(self.scores(obs), self.ctx.slate_size)

    def update(self, batch: LoggedSteps) -> dict[str, Any]:
        """One gradient step of the TD loss and the generative model's likelihood."""
        tr = batch.transitions
        q_taken = self.q(tr.obs).gather(1, tr.action)[:, 0]
        g_logits = self.g(tr.obs)
        with torch.no_grad():
            allowed = allowed_items(self.g(tr.next_obs), self.threshold)
            target = double_q_target(self.q(tr.next_obs), self.q_target(tr.next_obs), tr.reward, tr.done,
                                     self.gamma, allowed=allowed)
        td = F.smooth_l1_loss(q_taken, target)
        imitation = F.cross_entropy(g_logits, tr.action[:, 0])
        loss = td + imitation + self.logit_reg * g_logits.pow(2).mean()
        gradient_step(self.optimizer, loss, self.params, self.grad_clip)
        self.updates += 1
        update_target(self.q_target, self.q, self.updates, self.target_update, self.tau)
        return {"train/loss": loss.detach(), "train/td_loss": td.detach(),
                "train/imitation_loss": imitation.detach(), "train/q": q_taken.detach().mean(),
                "train/allowed": allowed.float().sum(1).mean()}
