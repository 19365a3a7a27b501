"""Advantage actor-critic, synchronous (``algo=a2c``).

The policy is a softmax over the catalogue, ``pi(a|s) = softmax(state @ E.T + b)``; slates of
size ``K`` are sampled without replacement (Gumbel top-``K``) and their log-probability is
approximated by the sum of the items' log-probabilities. A value head ``V(s)`` shares the
policy's history encoder. Whole episodes of ``B`` users are collected with the current policy;
then one gradient step on::

    A_t = GAE(gamma, lam)_t                                        (default), or
    A_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n}) - V(s_t)   (n_steps = n)
    R_t = A_t + V(s_t)                                             (targets; A, R not differentiated)
    L = -mean[A_t * log pi(a_t|s_t)] + value_coef * mean[(V(s_t) - R_t)^2]
        - entropy_coef * mean[H(pi(.|s_t))]

where the means run over the valid (still in an episode) user-steps and the gradient norm is
clipped to ``grad_clip``. The synchronous variant replaces A3C's asynchronous workers by a batch
of users stepped together.

References: Mnih et al. Asynchronous methods for deep reinforcement learning. ICML 2016.
Schulman et al. High-dimensional continuous control using generalized advantage estimation.
ICLR 2016.
"""

from __future__ import annotations

from typing import Any

import torch

from recrl.algos.actor_critic import SoftmaxActorCritic, standardised
from recrl.algos.backbone import Backbone, PretrainSettings
from recrl.algos.nets import gradient_step
from recrl.buffer import Rollout, gae, n_step_returns
from recrl.types import AlgoContext, RecrlError


class A2C(SoftmaxActorCritic):
    """Synchronous advantage actor-critic with GAE or n-step returns and an entropy bonus.

    Example::

        algo = A2C(ctx, lr=3e-3, lam=0.95)       # or n_steps=5 for n-step bootstrapped returns
        slates = algo.act(obs, explore=True)     # sampled from the policy
        stats = algo.update(rollout)             # one gradient step on whole episodes
    """

    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 3e-3,
                 gamma: float = 0.95, lam: float = 0.95, n_steps: int | None = None,
                 value_coef: float = 0.5, entropy_coef: float = 0.01, normalize_advantage: bool = True,
                 grad_clip: float = 0.5, sample_in_eval: bool = True,
                 item_init: str = "random", summary: bool = False, skip_shown: bool = False,
                 encoder: str = "mlp", layers: int = 2, heads: int = 2, item_ids: bool = True,
                 init_from: str | None = None, pretrain: PretrainSettings | None = None,
                 kl_coef: float = 0.0, kl_target: float | None = None, demonstrations: int | str = 0,
                 demo_weight: float = 1.0, demo_batch: int = 128, demo_decay_steps: int = 0,
                 demo_caution: float = 2.0, candidates: int = 0) -> None:
        if n_steps is not None and n_steps < 1:
            raise RecrlError(f"algo.n_steps={n_steps} must be >= 1 or null (GAE)")
        self.gamma, self.lam, self.n_steps = gamma, lam, n_steps
        self.value_coef, self.entropy_coef, self.grad_clip = value_coef, entropy_coef, grad_clip
        self.normalize_advantage = normalize_advantage
        backbone = Backbone(encoder, dim, hidden, layers, heads, item_init, item_ids, summary)
        self.build(ctx, lr, sample_in_eval, backbone, skip_shown, init_from, pretrain, kl_coef, kl_target,
                   demonstrations, demo_weight, demo_batch, demo_decay_steps, demo_caution, candidates)

    def update(self, batch: Rollout) -> dict[str, Any]:
        """One actor-critic gradient step on a batch of complete episodes."""
        t_len, b = batch.reward.shape
        obs = batch.flat_obs()
        state = self.policy.encoder(obs)
        logp, entropy, kl = self.policy_terms(obs, state, batch.action.reshape(t_len * b, -1))
        value = self.value(state).squeeze(1)
        with torch.no_grad():
            v = value.reshape(t_len, b)
            if self.n_steps is None:
                advantage = gae(batch.reward, v, batch.done, batch.valid, self.gamma, self.lam)
                target = advantage + v
            else:
                target = n_step_returns(batch.reward, v, batch.done, batch.valid, self.gamma, self.n_steps)
                advantage = target - v
            advantage, target = advantage.reshape(-1), target.reshape(-1)
        valid = batch.valid.reshape(-1)
        if self.normalize_advantage:
            advantage = standardised(advantage, valid)
        loss, stats, kl = self.valid_rows_loss(logp, entropy, kl, value, advantage, target, valid)
        grad_norm = gradient_step(self.optimizer, loss, self.params, self.grad_clip)
        self.updates += 1
        return {**stats, "train/grad_norm": grad_norm.detach(), **self.leash_stats(kl, batch)}
