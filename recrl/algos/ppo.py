"""Proximal policy optimization with the clipped objective and GAE (``algo=ppo``).

The policy is a softmax over the catalogue, ``pi(a|s) = softmax(state @ E.T + b)``; slates of
size ``K`` are sampled without replacement (Gumbel top-``K``) and their log-probability is
approximated by the sum of the items' log-probabilities. A value head ``V(s)`` shares the
policy's history encoder. Whole episodes are collected with the current policy ``pi_old``; its
log-probabilities and values ``V_old`` are computed once before the first epoch, then::

    A_t = GAE(gamma, lam)_t from V_old,  R_t = A_t + V_old(s_t),  A_t normalised over valid rows
    rho_t = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
    L_clip = -mean[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)]
    L_V = mean[(V(s_t) - R_t)^2]        or, with value_clip = c,
    L_V = mean[max((V - R_t)^2, (V_old + clip(V - V_old, -c, c) - R_t)^2)]
    L = L_clip + value_coef * L_V - entropy_coef * mean[H(pi(.|s_t))] + kl_coef * mean[KL(pi || pi_0)]

minimised for ``epochs`` passes over shuffled minibatches of ``minibatch_size`` valid user-steps,
with the gradient norm clipped to ``grad_clip``. With ``target_kl`` set, the update stops at the
first minibatch whose ``approx_kl = mean[(rho - 1) - log rho]`` exceeds it. With
``init_from`` the policy starts from pretrained weights ``pi_0`` and ``kl_coef`` (fixed, or
adapted toward ``kl_target``) keeps it near them: the KL is exact over the catalogue at every
state (:class:`~recrl.algos.backbone.KLPenalty`), logged as ``train/kl`` apart from the
reward (``train/reward``). With ``candidates`` it serves and learns to rank only the starting
model's top items at each state (:meth:`SoftmaxActorCritic.candidate_mask`).

References: Schulman et al. Proximal policy optimization algorithms. arXiv:1707.06347, 2017.
Schulman et al. High-dimensional continuous control using generalized advantage estimation.
ICLR 2016.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recrl.algos.actor_critic import SoftmaxActorCritic
from recrl.algos.backbone import Backbone, PretrainSettings
from recrl.algos.nets import gradient_step
from recrl.buffer import Rollout, gae
from recrl.types import AlgoContext, Obs, RecrlError


class PPO(SoftmaxActorCritic):
    """PPO-clip actor-critic on whole episodes, several epochs of minibatches per rollout.

    Example::

        algo = PPO(ctx, lr=1e-3, epochs=4, minibatch_size=256, clip=0.2)
        slates = algo.act(obs, explore=True)     # sampled from the policy
        stats = algo.update(rollout)             # stats["train/approx_kl"], stats["train/clip_fraction"]
    """

    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.95, lam: float = 0.95, clip: float = 0.2, epochs: int = 4,
                 minibatch_size: int = 256, value_coef: float = 0.5, value_clip: float | None = None,
                 entropy_coef: float = 0.01, normalize_advantage: bool = True,
                 target_kl: float | None = None, grad_clip: float = 0.5, sample_in_eval: bool = True,
                 item_init: str = "random", summary: bool = False, skip_shown: bool = False,
                 encoder: str = "mlp", layers: int = 2, heads: int = 2, item_ids: bool = True,
                 init_from: str | None = None, pretrain: PretrainSettings | None = None,
                 kl_coef: float = 0.0, kl_target: float | None = None, demonstrations: int | str = 0,
                 demo_weight: float = 1.0, demo_batch: int = 128, demo_decay_steps: int = 0,
                 demo_caution: float = 2.0, candidates: int = 0) -> None:
        if epochs < 1 or minibatch_size < 1 or clip <= 0:
            raise RecrlError("algo=ppo: epochs and minibatch_size must be >= 1 and clip > 0")
        self.gamma, self.lam, self.clip = gamma, lam, clip
        self.epochs, self.minibatch_size = epochs, minibatch_size
        self.value_coef, self.value_clip, self.entropy_coef = value_coef, value_clip, entropy_coef
        self.normalize_advantage, self.target_kl = normalize_advantage, target_kl
        self.grad_clip = grad_clip
        backbone = Backbone(encoder, dim, hidden, layers, heads, item_init, item_ids, summary)
        self.build(ctx, lr, sample_in_eval, backbone, skip_shown, init_from, pretrain, kl_coef, kl_target,
                   demonstrations, demo_weight, demo_batch, demo_decay_steps, demo_caution, candidates)

    def evaluate(self, obs: Obs, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Slate log-probabilities ``[N]``, values ``[N]``, policy entropies ``[N]`` and the KL
        to the starting policy ``[N]`` (zeros without ``kl_coef``)."""
        state = self.policy.encoder(obs)
        logp, entropy, kl = self.policy_terms(obs, state, action)
        return logp, self.value(state).squeeze(1), entropy, kl

    def loss(self, obs: Obs, action: Tensor, old_logp: Tensor, old_value: Tensor, advantage: Tensor,
             target: Tensor) -> dict[str, Tensor]:
        """The PPO loss and its parts on one minibatch of (valid) user-steps."""
        logp, value, entropy, kl = self.evaluate(obs, action)
        log_ratio = logp - old_logp
        ratio = log_ratio.exp()
        surrogate = torch.min(ratio * advantage, ratio.clamp(1.0 - self.clip, 1.0 + self.clip) * advantage)
        policy_loss = -surrogate.mean()
        value_err = (value - target) ** 2
        if self.value_clip is not None:
            clipped = old_value + (value - old_value).clamp(-self.value_clip, self.value_clip)
            value_err = torch.max(value_err, (clipped - target) ** 2)
        value_loss = value_err.mean()
        entropy_mean, kl_mean = entropy.mean(), kl.mean()
        loss = (policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy_mean
                + self.leash.coef * kl_mean)
        loss, demo = self.plus_demo_term(loss)
        with torch.no_grad():
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > self.clip).float().mean()
        parts = {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
                 "entropy": entropy_mean, "approx_kl": approx_kl, "clip_fraction": clip_fraction,
                 "kl": kl_mean}
        return parts if demo is None else {**parts, "demo_loss": demo}

    def update(self, batch: Rollout) -> dict[str, Any]:
        """``epochs`` passes of clipped-objective minibatch steps on a batch of complete episodes."""
        t_len, b = batch.reward.shape
        obs = batch.flat_obs()
        action = batch.action.reshape(t_len * b, -1)
        with torch.no_grad():  # the rollout was collected with exactly this (pre-update) policy
            old_logp, old_value, _, _ = self.evaluate(obs, action)
            advantage = gae(batch.reward, old_value.reshape(t_len, b), batch.done, batch.valid,
                            self.gamma, self.lam).reshape(-1)
            target = advantage + old_value
        rows = batch.valid.reshape(-1).nonzero().squeeze(1)  # one host sync: the number of valid rows
        n = rows.numel()
        if n == 0:
            return {}
        if self.normalize_advantage:
            adv = advantage[rows]
            advantage = (advantage - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
        totals: dict[str, Tensor] = {}
        steps = 0
        stop = False
        for _ in range(self.epochs):
            order = rows[torch.randperm(n, device=rows.device, generator=self.generator)]
            for start in range(0, n, self.minibatch_size):
                idx = order[start:start + self.minibatch_size]
                parts = self.loss(obs.index(idx), action[idx], old_logp[idx], old_value[idx],
                                  advantage[idx], target[idx])
                if self.target_kl is not None and float(parts["approx_kl"]) > self.target_kl:
                    stop = True
                    break
                gradient_step(self.optimizer, parts["loss"], self.params, self.grad_clip)
                steps += 1
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0.0) + value.detach()
            if stop:
                break
        self.updates += 1
        mean_kl = totals.pop("kl", torch.zeros(())) / max(steps, 1)
        stats: dict[str, Any] = {f"train/{k}": v / max(steps, 1) for k, v in totals.items()}
        stats["train/minibatch_steps"] = float(steps)
        return {**stats, **self.leash_stats(mean_kl, batch)}
