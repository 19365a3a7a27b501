"""REINFORCE with a learned baseline (``algo=reinforce``).

The policy is a softmax over the catalogue, ``pi(a|s) = softmax(state @ E.T + b)``; slates of
size ``K`` are sampled without replacement (Gumbel top-``K``) and their log-probability is
approximated by the sum of the items' log-probabilities. Whole episodes are collected with the
current policy, then::

    G_t = sum_{t' >= t} gamma^(t'-t) r_t'
    L = -mean[(G_t - V(s_t)) * log pi(a_t|s_t)] + value_coef * mean[(V(s_t) - G_t)^2]
        - entropy_coef * mean[H(pi(.|s_t))] + kl_coef * mean[KL(pi(.|s_t) || pi_0(.|s_t))]

(the last term with ``init_from`` and ``kl_coef``: see :class:`~recrl.algos.backbone.KLPenalty`).

Reference: Williams. Simple statistical gradient-following algorithms for connectionist
reinforcement learning. Machine Learning 8, 1992.
"""

from __future__ import annotations

from recrl.algos.actor_critic import SoftmaxActorCritic, standardised
from recrl.algos.backbone import Backbone, PretrainSettings
from recrl.algos.nets import gradient_step
from recrl.buffer import Rollout, discounted_returns
from recrl.types import AlgoContext


class Reinforce(SoftmaxActorCritic):
    """Monte-Carlo policy gradient with a state-value baseline and an entropy bonus.

    Example::

        algo = Reinforce(ctx, lr=3e-3)
        slates = algo.act(obs, explore=True)     # sampled from the policy
        stats = algo.update(rollout)             # one step on whole episodes
    """

    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 3e-3,
                 gamma: float = 0.95, value_coef: float = 0.5, entropy_coef: float = 0.01,
                 epochs: int = 1, grad_clip: float = 10.0, sample_in_eval: bool = True,
                 item_init: str = "random", summary: bool = False, skip_shown: bool = False,
                 encoder: str = "mlp", layers: int = 2, heads: int = 2, item_ids: bool = True,
                 init_from: str | None = None, pretrain: PretrainSettings | None = None,
                 kl_coef: float = 0.0, kl_target: float | None = None, demonstrations: int | str = 0,
                 demo_weight: float = 1.0, demo_batch: int = 128, demo_decay_steps: int = 0,
                 demo_caution: float = 2.0, candidates: int = 0) -> None:
        self.gamma, self.value_coef, self.entropy_coef, self.epochs = gamma, value_coef, entropy_coef, epochs
        self.grad_clip = grad_clip
        backbone = Backbone(encoder, dim, hidden, layers, heads, item_init, item_ids, summary)
        self.build(ctx, lr, sample_in_eval, backbone, skip_shown, init_from, pretrain, kl_coef, kl_target,
                   demonstrations, demo_weight, demo_batch, demo_decay_steps, demo_caution, candidates)

    def update(self, batch: Rollout) -> dict[str, float]:
        """Policy-gradient steps on a batch of complete episodes."""
        returns = discounted_returns(batch.reward, batch.done, self.gamma).reshape(-1)
        valid = batch.valid.reshape(-1)
        actions = batch.action.reshape(-1, batch.action.shape[-1])
        obs = batch.flat_obs()
        for _ in range(self.epochs):
            state = self.policy.encoder(obs)
            logp, entropy, kl = self.policy_terms(obs, state, actions)
            value = self.value(state).squeeze(1)
            advantage = standardised((returns - value).detach(), valid)
            loss, stats, kl = self.valid_rows_loss(logp, entropy, kl, value, advantage, returns, valid)
            gradient_step(self.optimizer, loss, self.params, self.grad_clip)
        self.updates += 1
        return {**stats, **self.leash_stats(kl, batch)}
