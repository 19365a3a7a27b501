"""Self-supervised Q-learning (SQN) from logged data (``algo=sqn``).

A GRU over the user's history (item embeddings and click flags, GRU4Rec-style; the paper's
bases are GRU4Rec, Caser, NItNet and SASRec; ``encoder: mlp`` swaps in the position-wise MLP)
gives a state ``h(s)`` shared by two heads over the catalogue: a supervised next-item head
``f(s) = W_f h(s) + b_f`` and a Q head ``Q(s, .) = W_q h(s) + b_q``. Both are trained on the
same logged steps and both losses shape the shared encoder::

    L_s = -mean[log softmax(f(s))_a]                                   (next logged item)
    y   = r + gamma * (1 - done) * Q_target(s', argmax_a' Q(s', a'))   (double Q-learning)
    L_q = mean[huber(Q(s, a) - y)]
    L   = L_s + L_q

As in the paper, recommendations come from the supervised head (``act_with: supervised``): the
Q-learning loss only shapes the shared representation, so on the log of a poor policy this
head still imitates it (in the known-answer test it serves the logger's clickbait exactly as
behaviour cloning does). ``act_with: q`` recommends by the Q head instead, which does learn
the long-term better items there. With ``explore`` the supervised head samples from its
softmax; the Q head is greedy. The paper uses the squared TD error; Huber is used here as in
the other value learners (equal for TD errors below 1). The authors' code discounts by 0.5.

Reference: Xin, Karatzoglou, Arapakis, Jose. Self-Supervised Reinforcement Learning for
Recommender Systems. SIGIR 2020.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.algos.learner_state import LearnerState
from recrl.algos.logged import LoggedSteps
from recrl.algos.nets import (
    adam,
    double_q_target,
    gradient_step,
    history_encoder,
    sample_top_k,
    skip_history,
    skips_shown,
    top_k,
    update_target,
)
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.types import AlgoContext, Obs, RecrlError


class SQNNetwork(nn.Module):
    """The shared GRU encoder with a supervised head and a Q head (each ``state @ W.T + b``).

    Example::

        net = SQNNetwork(GRUHistoryEncoder(100, 10, 1, 20, dim=32), n_items=100, dim=32)
        logits, q = net(obs)                 # [B, 100] each
    """

    def __init__(self, encoder: nn.Module, n_items: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.supervised = nn.Linear(dim, n_items)
        self.q = nn.Linear(dim, n_items)

    def forward(self, obs: Obs) -> tuple[Tensor, Tensor]:
        """Supervised logits and Q-values, ``[B, n_items]`` each."""
        state = self.encoder(obs)
        return self.supervised(state), self.q(state)


class SQN(LearnerState, ActsGreedily):
    """A GRU sequence recommender with a supervised head and a double-Q-learning head.

    Example::

        algo = SQN(ctx, gamma=0.9, act_with="supervised")
        stats = algo.update(algo.dataset.sample(256, generator))
        slates = algo.act(obs, explore=False)
    """

    networks = ("net", "net_target")

    mode = "offline"

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.95, target_update: int = 100, tau: float = 1.0,
                 grad_clip: float = 10.0, act_with: str = "supervised", encoder: str = "gru", layers: int = 2,
                 heads: int = 2, skip_shown: bool = False) -> None:
        if act_with not in ("supervised", "q"):
            raise RecrlError(f"algo.act_with={act_with!r}: use supervised or q")
        self.ctx, self.gamma, self.act_with = ctx, gamma, act_with
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.target_update, self.tau, self.grad_clip = target_update, tau, grad_clip
        self.dataset = LoggedSteps.from_context(ctx)
        self.net = SQNNetwork(history_encoder(encoder, ctx, dim, hidden, layers, heads),
                              ctx.n_items, dim).to(ctx.device)
        self.net_target = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = adam(self.net.parameters(), lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """The greedy ranking ``[B, n_items]``: Q-values or logits, as ``act_with`` says (with
        ``skip_shown`` the items in the history at ``-inf``)."""
        logits, q = self.net(obs)
        return skip_history(q if self.act_with == "q" else logits, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Top-``K`` items of the acting head (sampled from the supervised head with ``explore``)."""
        scores = self.scores(obs)
        if explore and self.act_with == "supervised":
            return sample_top_k(scores, self.ctx.slate_size, self.generator)
        return top_k(scores, self.ctx.slate_size)

    def update(self, batch: LoggedSteps) -> dict[str, Any]:
        """One gradient step of the supervised + Q-learning loss on a batch of logged steps."""
        tr = batch.transitions
        logits, q = self.net(tr.obs)
        q_taken = q.gather(1, tr.action)[:, 0]
        with torch.no_grad():
            target = double_q_target(self.net(tr.next_obs)[1], self.net_target(tr.next_obs)[1], tr.reward,
                                     tr.done, self.gamma)
        supervised = F.cross_entropy(logits, tr.action[:, 0])
        td = F.smooth_l1_loss(q_taken, target)
        loss = supervised + td
        gradient_step(self.optimizer, loss, self.net.parameters(), self.grad_clip)
        self.updates += 1
        update_target(self.net_target, self.net, self.updates, self.target_update, self.tau)
        return {"train/loss": loss.detach(), "train/supervised_loss": supervised.detach(),
                "train/td_loss": td.detach(), "train/q": q_taken.detach().mean()}
