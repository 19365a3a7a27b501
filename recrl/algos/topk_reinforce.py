"""REINFORCE with top-K off-policy correction, learned from logs (``algo=topk_reinforce``).

The policy ``pi(a|s) = softmax(state @ E.T + b)`` is trained only on logged steps ``(s, a, G)``
collected by another policy ``beta`` (the logging policy), with ``G`` the discounted return from
the logged step to the end of the logged session. Following Chen et al.::

    w(s, a)   = min(pi(a|s) / beta(a|s), cap)           # importance weight, capped
    lambda_K  = K * (1 - pi(a|s)) ** (K - 1)            # top-K correction (K = 1: none)
    L_policy  = -mean[ w * lambda_K * G * log pi(a|s) ]  # w and lambda_K carry no gradient

``w`` makes the update an unbiased (up to the cap) estimate of the on-policy gradient, so the
policy maximises its own expected return instead of imitating ``beta`` weighted by reward; the
top-K multiplier is the gradient of the probability that ``a`` is in a slate of ``K`` items drawn
from ``pi``, so the policy spreads its mass over several good items when it recommends ``K``.
``beta`` is the logged propensity where the data records one (``propensity=logged``), or a
second softmax head on the same state, trained by cross-entropy on the logged items with the
gradient into the state blocked (``propensity=estimated``); ``auto`` picks logged when every row
has one; ``beta_warmup`` updates train only that head first, so the importance weights are not
computed from an untrained ``beta`` while the policy moves. ``correction=false`` drops ``w`` and
``lambda_K`` (plain REINFORCE on logs, for ablation).

Reference: Chen, Beutel, Covington, Jain, Belletti, Chi. Top-K Off-Policy Correction for a
REINFORCE Recommender System. WSDM 2019.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recrl.algos.learner_state import LearnerState
from recrl.algos.logged import LoggedSteps
from recrl.algos.nets import (
    HistoryEncoder,
    ItemScorer,
    adam,
    gradient_step,
    masked_scores,
    sample_top_k,
    skips_shown,
    top_k,
)
from recrl.algos.probs import evaluation_slate_probs
from recrl.algos.seeding import seeded_init
from recrl.types import AlgoContext, Obs, RecrlError

PROPENSITY = ("auto", "logged", "estimated")


class TopKOffPolicyReinforce(LearnerState):
    """REINFORCE with importance weights and the top-K correction, trained offline on logs.

    Example::

        algo = TopKOffPolicyReinforce(ctx, topk=2, weight_cap=10.0)
        stats = algo.update(algo.dataset.sample(256, generator))
        slates = algo.act(obs, explore=False)
    """

    networks = ("policy", "beta")

    mode = "offline"

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 3e-3,
                 gamma: float = 0.9, topk: int | None = None, weight_cap: float = 10.0,
                 correction: bool = True, propensity: str = "auto", baseline: bool = True,
                 beta_warmup: int = 0, grad_clip: float = 10.0, sample_in_eval: bool = True,
                 skip_shown: bool = False) -> None:
        if propensity not in PROPENSITY:
            raise RecrlError(f"algo.propensity={propensity!r}: use one of {', '.join(PROPENSITY)}")
        self.ctx, self.gamma, self.weight_cap, self.correction = ctx, gamma, weight_cap, correction
        self.topk = ctx.slate_size if topk is None else int(topk)
        self.grad_clip, self.sample_in_eval, self.baseline = grad_clip, sample_in_eval, baseline
        self.beta_warmup = beta_warmup
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.dataset = LoggedSteps.from_context(ctx)
        self.returns = self.dataset.returns(gamma)
        known = bool(torch.isfinite(self.dataset.propensity).all() and (self.dataset.propensity > 0).all())
        if propensity == "logged" and not known:
            raise RecrlError("algo.propensity=logged but the logs lack propensities on some rows; "
                             "use algo.propensity=estimated")
        self.use_logged = propensity == "logged" or (propensity == "auto" and known)
        encoder = HistoryEncoder(ctx.n_items, ctx.history_len, 1, ctx.horizon, dim, hidden,
                                 features=ctx.obs_features)
        self.policy = ItemScorer(encoder, ctx.n_items, dim).to(ctx.device)
        self.beta = nn.Linear(dim, ctx.n_items).to(ctx.device)  # the logging policy's head
        params = list(self.policy.parameters()) + list(self.beta.parameters())
        self.optimizer = adam(params, lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    @torch.no_grad()
    def scores(self, obs: Obs) -> torch.Tensor:
        """The policy's logits ``[B, n_items]`` (its greedy ranking; with ``skip_shown`` the items
        in the history at ``-inf``, so neither served nor sampled)."""
        return masked_scores(self.policy, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        """A slate sampled from the policy (Gumbel top-``K``), or its top-``K`` items when
        neither ``explore`` nor ``sample_in_eval`` is set."""
        logits = self.scores(obs)
        if not (explore or self.sample_in_eval):
            return top_k(logits, self.ctx.slate_size)
        return sample_top_k(logits, self.ctx.slate_size, self.generator)

    @torch.no_grad()
    def action_probs(self, obs: Obs) -> torch.Tensor:
        """Per-slot probabilities ``[B, K, n_items]`` of the slates :meth:`act` serves in
        evaluation: the softmax (``sample_in_eval``) or the one-hot of the top-``K``."""
        return evaluation_slate_probs(self.scores(obs), self.ctx.slate_size, self.sample_in_eval)

    def weights(self, log_pi_a: torch.Tensor, beta_a: torch.Tensor) -> torch.Tensor:
        """Per-row multiplier ``min(pi/beta, cap) * K (1 - pi)^(K-1)`` (no gradient)."""
        pi_a = log_pi_a.detach().exp()
        if not self.correction:
            return torch.ones_like(pi_a)
        importance = (pi_a / beta_a.clamp(min=1e-8)).clamp(max=self.weight_cap)
        return importance * self.topk * (1.0 - pi_a) ** (self.topk - 1)

    def update(self, batch: LoggedSteps) -> dict[str, Any]:
        """One gradient step on a batch of logged steps."""
        tr = batch.transitions
        action = tr.action[:, 0]
        state = self.policy.encoder(tr.obs)
        log_pi_a = torch.log_softmax(self.policy.score(state), 1).gather(1, action[:, None])[:, 0]
        beta_logp = torch.log_softmax(self.beta(state.detach()), 1).gather(1, action[:, None])[:, 0]
        beta_a = batch.propensity if self.use_logged else beta_logp.detach().exp()
        weight = self.weights(log_pi_a, beta_a)
        returns = self.returns[batch.row]
        advantage = returns - returns.mean() if self.baseline else returns
        policy_loss = -(weight * advantage * log_pi_a).mean()
        beta_loss = -beta_logp.mean()
        if self.use_logged:
            loss = policy_loss
        else:
            loss = beta_loss + (policy_loss if self.updates >= self.beta_warmup else 0.0)
        gradient_step(self.optimizer, loss, list(self.policy.parameters()) + list(self.beta.parameters()),
                      self.grad_clip)
        self.updates += 1
        return {"train/loss": loss.detach(), "train/policy_loss": policy_loss.detach(),
                "train/beta_loss": beta_loss.detach(), "train/weight": weight.mean()}

    def probabilities(self, obs: Obs) -> torch.Tensor:
        """``pi(.|s)`` ``[B, n_items]`` (for inspection and tests)."""
        with torch.no_grad():
            return F.softmax(self.policy(obs), 1)
