"""Double DQN over a catalogue (``algo=dqn``).

Q-values of all items are one product of the encoded history with an item-embedding table, so
acting scales to large catalogues. For slates of size ``K`` the slate is the top-``K`` items and
``Q(s, slate)`` is the mean of its items' Q-values (a simple decomposition; SlateQ refines it).

Loss (Huber), with ``a*`` the online network's top-``K`` at ``s'`` (double DQN)::

    y = r + gamma * (1 - done) * mean_k Q_target(s', a*_k)
    L = huber(mean_k Q(s, a_k), y)

Reference: van Hasselt, Guez, Silver. Deep Reinforcement Learning with Double Q-learning.
AAAI 2016.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from recrl.algos.nets import HistoryEncoder, ItemScorer, random_slates, top_k
from recrl.types import AlgoContext, Obs, Transition


class DQN:
    """Double DQN with a target network, replay on device and a linear epsilon schedule.

    Example::

        algo = DQN(ctx, lr=1e-3, gamma=0.9)
        slates = algo.act(obs, explore=True)
        stats = algo.update(replay.sample(256, generator))
    """

    mode = "off_policy"

    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.9, epsilon_start: float = 1.0, epsilon_end: float = 0.05,
                 epsilon_decay_steps: int = 2000, target_update: int = 200, tau: float = 1.0,
                 grad_clip: float = 10.0) -> None:
        self.ctx, self.gamma = ctx, gamma
        self.epsilon_start, self.epsilon_end = epsilon_start, epsilon_end
        self.epsilon_decay_steps, self.target_update, self.tau = epsilon_decay_steps, target_update, tau
        self.grad_clip = grad_clip
        torch.manual_seed(ctx.seed)
        encoder = HistoryEncoder(ctx.n_items, ctx.history_len, ctx.slate_size, ctx.horizon, dim, hidden,
                                 features=ctx.obs_features)
        self.q = ItemScorer(encoder, ctx.n_items, dim).to(ctx.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.acted_steps, self.updates = 0, 0

    def epsilon(self) -> float:
        """Exploration rate now: linear from ``epsilon_start`` to ``epsilon_end``."""
        frac = min(1.0, self.acted_steps / max(1, self.epsilon_decay_steps))
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        """Top-``K`` items by Q; with ``explore``, a random slate with probability epsilon."""
        slates = top_k(self.q(obs), self.ctx.slate_size)
        if not explore:
            return slates
        eps = self.epsilon()
        self.acted_steps += 1
        b, dev = obs.batch_size, slates.device
        rand = random_slates(b, self.ctx.n_items, self.ctx.slate_size, dev, self.generator)
        coin = torch.rand(b, 1, device=dev, generator=self.generator) < eps
        return torch.where(coin, rand, slates)

    def update(self, batch: Transition) -> dict[str, float]:
        """One gradient step of the double-DQN loss on a replay batch."""
        q_taken = self.q(batch.obs).gather(1, batch.action).mean(1)
        with torch.no_grad():
            best_next = top_k(self.q(batch.next_obs), self.ctx.slate_size)
            q_next = self.q_target(batch.next_obs).gather(1, best_next).mean(1)
            target = batch.reward + self.gamma * (1.0 - batch.done) * q_next
        loss = (F.smooth_l1_loss(q_taken, target, reduction="none") * batch.valid).sum()
        loss = loss / batch.valid.sum().clamp(min=1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.q.parameters(), self.grad_clip)
        self.optimizer.step()
        self.updates += 1
        self._sync_target()
        return {"train/loss": loss.detach(), "train/q": q_taken.detach().mean(),
                "train/epsilon": self.epsilon()}

    def _sync_target(self) -> None:
        if self.tau < 1.0:
            with torch.no_grad():
                for p, tp in zip(self.q.parameters(), self.q_target.parameters(), strict=True):
                    tp.lerp_(p, self.tau)
        elif self.updates % self.target_update == 0:
            self.q_target.load_state_dict(self.q.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Weights, target weights, optimizer and counters."""
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "acted_steps": self.acted_steps,
                "updates": self.updates, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.acted_steps, self.updates = int(state["acted_steps"]), int(state["updates"])
        self.generator.set_state(state["generator"])
