"""Context-free epsilon-greedy bandit (``algo=epsilon_greedy``): per-item running mean reward.

Every item ``i`` keeps a count ``n_i`` and a reward sum ``s_i`` (on the device, updated with
``scatter_add`` from each step's slates). Its estimate is the mean with ``n0`` pseudo-observations
of value ``m0`` (the prior)::

    mu_i = (s_i + n0 * m0) / (n_i + n0)            (mu_i = m0 while n_i + n0 = 0)

With probability ``epsilon_t`` (linear from ``epsilon_start`` to ``epsilon_end`` over
``epsilon_decay_steps`` acting steps; fixed when the two are equal) a user gets a uniformly
random slate, otherwise the top-``K`` items by ``mu`` (ties broken at random). The default prior
``m0 = 1, n0 = 1`` is optimistic for rewards in ``[0, 1]`` (clicks): an item looks perfect until
it is shown, so the whole catalogue is tried early even with a small epsilon. ``m0 = 0`` is the
zero (pessimistic for positive rewards) prior, under which exploration is epsilon's alone.
Evaluation (``explore=False``) ranks by the empirical mean ``s_i / n_i`` alone, with items never
shown last: the optimistic prior is an exploration device, not an estimate.

Per-slot rewards. A :class:`~recrl.types.Transition` holds the slate's reward ``r`` ``[B]`` only.
For ``K = 1`` it is the item's reward. For ``K > 1`` (:func:`slot_rewards`, shared by the linear
bandits), ``attribute="clicks"`` gives it to the clicked slots, read off
``next_obs.clicks[:, -1]`` (:class:`~recrl.env.simulator.RecEnv` appends the slate just shown and
its clicks as the newest history slot). Every reward of :mod:`recrl.rewards` is earned on the
clicked item (the click itself, a conversion after it, its rating or watch) and the choice models
click at most one slot, so this is exact; where no click is visible (no click, so ``r = 0`` for
those rewards, or a user who finished and was replaced by ``autoreset``, whose new history is
empty) the reward is split equally. ``attribute="equal"`` always splits it equally (``r / K``
per slot), for rewards not tied to clicks.

Reference: Sutton & Barto, Reinforcement Learning: An Introduction (2nd ed., 2018), ch. 2
(epsilon-greedy action selection, incremental sample averages, optimistic initial values).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recrl.algos.nets import mask_shown, random_slates
from recrl.algos.probs import ActsGreedily
from recrl.types import AlgoContext, Obs, RecrlError, Transition

ATTRIBUTIONS = ("clicks", "equal")


def slot_rewards(batch: Transition, attribute: str = "clicks") -> Tensor:
    """Each slate slot's share ``[B, K]`` of the slate reward ``batch.reward`` ``[B]``.

    ``clicks``: to the slots clicked in the slate just shown (``next_obs.clicks[:, -1]``), equally
    where none is visible; ``equal``: ``reward / K`` to every slot. Rows sum to ``batch.reward``.

    Example::

        r = slot_rewards(transition)          # [B, K]
    """
    k = batch.action.shape[1]
    if k == 1:
        return batch.reward[:, None]
    equal = torch.full_like(batch.action, 1.0 / k, dtype=batch.reward.dtype)
    if attribute == "equal":
        return batch.reward[:, None] * equal
    clicks = batch.next_obs.clicks[:, -1].to(batch.reward.dtype)
    total = clicks.sum(1, keepdim=True)
    share = torch.where(total > 0, clicks / total.clamp(min=1.0), equal)
    return batch.reward[:, None] * share


def check_attribution(attribute: str, algo: str) -> None:
    """A clear error for an unknown ``attribute`` value."""
    if attribute not in ATTRIBUTIONS:
        raise RecrlError(f"algo={algo}: attribute={attribute!r} must be one of {', '.join(ATTRIBUTIONS)}")


class EpsilonGreedy(ActsGreedily):
    """Epsilon-greedy over per-item mean rewards, updated online from every step.

    Example::

        algo = EpsilonGreedy(ctx, epsilon_start=0.1, epsilon_end=0.01, prior_mean=1.0)
        slates = algo.act(obs, explore=True)      # [B, K]
        stats = algo.update(transition)           # one env step of all users
    """

    mode = "online"

    def __init__(self, ctx: AlgoContext, epsilon_start: float = 0.1, epsilon_end: float = 0.01,
                 epsilon_decay_steps: int = 2000, prior_mean: float = 1.0, prior_count: float = 1.0,
                 attribute: str = "clicks", skip_shown: bool = False) -> None:
        if not (0.0 <= epsilon_end <= 1.0 and 0.0 <= epsilon_start <= 1.0) or prior_count < 0:
            raise RecrlError("algo=epsilon_greedy: epsilons must lie in [0, 1] and prior_count be >= 0")
        check_attribution(attribute, "epsilon_greedy")
        self.ctx, self.attribute, self.skip_shown = ctx, attribute, skip_shown
        self.epsilon_start, self.epsilon_end = epsilon_start, epsilon_end
        self.epsilon_decay_steps = epsilon_decay_steps
        self.prior_mean, self.prior_count = prior_mean, prior_count
        self.counts = torch.zeros(ctx.n_items, device=ctx.device)
        self.sums = torch.zeros(ctx.n_items, device=ctx.device)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.acted_steps, self.updates = 0, 0

    def epsilon(self) -> float:
        """Exploration rate now: linear from ``epsilon_start`` to ``epsilon_end``."""
        frac = min(1.0, self.acted_steps / max(1, self.epsilon_decay_steps))
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)

    def means(self) -> Tensor:
        """Prior-smoothed mean reward of every item ``[n_items]`` (what exploration ranks by)."""
        num = self.sums + self.prior_count * self.prior_mean
        den = self.counts + self.prior_count
        return torch.where(den > 0, num / den.clamp(min=1e-12), torch.full_like(num, self.prior_mean))

    def empirical_means(self) -> Tensor:
        """``s_i / n_i`` of every item ``[n_items]``, ``-inf`` for items never shown."""
        return torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1.0),
                           torch.full_like(self.sums, float("-inf")))

    @torch.no_grad()
    def scores(self, obs: Obs, explore: bool = False) -> Tensor:
        """Estimated means ``[B, n_items]`` (``explore=False``: the empirical means, the greedy
        ranking; ``True``: with tiny noise that breaks ties between untried items at random, not
        by id); with ``skip_shown`` the items in the history at ``-inf``."""
        b, dev = obs.batch_size, self.counts.device
        if not explore:
            scores = self.empirical_means().expand(b, -1)
        else:
            noise = torch.rand(b, self.ctx.n_items, device=dev, generator=self.generator)
            scores = self.means() + 1e-6 * noise
        return mask_shown(scores, obs) if self.skip_shown else scores

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Top-``K`` items by estimated mean; with ``explore``, a random slate with prob. epsilon."""
        b, k, dev = obs.batch_size, self.ctx.slate_size, self.counts.device
        slates = self.scores(obs, explore).topk(k, dim=1).indices
        if not explore:
            return slates
        eps = self.epsilon()
        self.acted_steps += 1
        rand = random_slates(b, self.ctx.n_items, k, dev, self.generator)
        coin = torch.rand(b, 1, device=dev, generator=self.generator) < eps
        return torch.where(coin, rand, slates)

    @torch.no_grad()
    def update(self, batch: Transition) -> dict[str, Any]:
        """Add each valid row's slate items and per-slot rewards to the counts and sums."""
        valid = batch.valid[:, None].expand_as(batch.action).to(self.sums.dtype)
        reward = slot_rewards(batch, self.attribute).to(self.sums.dtype)
        items = batch.action.flatten()
        self.counts.scatter_add_(0, items, valid.flatten())
        self.sums.scatter_add_(0, items, (reward * valid).flatten())
        self.updates += 1
        mean_reward = (batch.reward * batch.valid).sum() / batch.valid.sum().clamp(min=1.0)
        return {"train/reward": mean_reward, "train/epsilon": self.epsilon(),
                "train/items_tried": (self.counts > 0).float().mean()}

    def state_dict(self) -> dict[str, Any]:
        """Counts, sums, step counters and the generator state."""
        return {"counts": self.counts.clone(), "sums": self.sums.clone(), "acted_steps": self.acted_steps,
                "updates": self.updates, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.counts.copy_(state["counts"])
        self.sums.copy_(state["sums"])
        self.acted_steps, self.updates = int(state["acted_steps"]), int(state["updates"])
        self.generator.set_state(state["generator"])
