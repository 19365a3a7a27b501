"""On-device storage of transitions: a circular replay buffer and an episode rollout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recrl.types import Obs, Transition


class ReplayBuffer:
    """Fixed-capacity circular buffer of :class:`Transition` rows, preallocated on one device.

    Adding and sampling are pure tensor indexing: no host round trip per step.

    Example::

        buf = ReplayBuffer(capacity=10_000, history_len=10, slate_size=1, n_items=100)
        buf.add(transition)                   # B rows
        batch = buf.sample(256, generator)
    """

    def __init__(self, capacity: int, history_len: int, slate_size: int, n_items: int,
                 device: torch.device | str = "cpu") -> None:
        self.capacity, self.device = capacity, torch.device(device)
        shape = (capacity, history_len, slate_size)
        d = self.device
        self.items = torch.full(shape, n_items, dtype=torch.long, device=d)
        self.clicks = torch.zeros(shape, device=d)
        self.step = torch.zeros(capacity, dtype=torch.long, device=d)
        self.next_items = torch.full(shape, n_items, dtype=torch.long, device=d)
        self.next_clicks = torch.zeros(shape, device=d)
        self.next_step = torch.zeros(capacity, dtype=torch.long, device=d)
        self.action = torch.zeros(capacity, slate_size, dtype=torch.long, device=d)
        self.reward = torch.zeros(capacity, device=d)
        self.done = torch.zeros(capacity, device=d)
        self.valid = torch.zeros(capacity, device=d)
        self.features: Tensor | None = None  # [capacity, F] real observations (gym envs), made on first add
        self.next_features: Tensor | None = None
        self.cursor, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, tr: Transition) -> None:
        """Append a batch of transitions, overwriting the oldest rows when full."""
        n = tr.action.shape[0]
        idx = (torch.arange(n, device=self.device) + self.cursor) % self.capacity
        for name, value in (("items", tr.obs.items), ("clicks", tr.obs.clicks), ("step", tr.obs.step),
                            ("next_items", tr.next_obs.items), ("next_clicks", tr.next_obs.clicks),
                            ("next_step", tr.next_obs.step), ("action", tr.action),
                            ("reward", tr.reward), ("done", tr.done), ("valid", tr.valid)):
            getattr(self, name)[idx] = value
        if tr.obs.features is not None:
            if self.features is None:
                width = tr.obs.features.shape[1]
                self.features = torch.zeros(self.capacity, width, device=self.device)
                self.next_features = torch.zeros(self.capacity, width, device=self.device)
            self.features[idx] = tr.obs.features
            self.next_features[idx] = tr.next_obs.features
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Transition:
        """A uniformly random batch of stored transitions."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        feats, next_feats = ((None, None) if self.features is None
                             else (self.features[idx], self.next_features[idx]))
        return Transition(obs=Obs(self.items[idx], self.clicks[idx], self.step[idx], feats),
                          action=self.action[idx], reward=self.reward[idx],
                          next_obs=Obs(self.next_items[idx], self.next_clicks[idx], self.next_step[idx],
                                       next_feats),
                          done=self.done[idx], valid=self.valid[idx])


@dataclass(frozen=True)
class Rollout:
    """``T`` steps of ``B`` users collected with the current policy (on-policy learning).

    Every field is time-major: ``[T, B, ...]``; ``valid`` is 0 after a user's episode ended.
    """

    obs: Obs
    action: Tensor
    reward: Tensor
    done: Tensor
    valid: Tensor

    @staticmethod
    def stack(steps: list[Transition]) -> Rollout:
        """Stack per-step transitions into a time-major rollout."""
        features = steps[0].obs.features
        obs = Obs(items=torch.stack([s.obs.items for s in steps]),
                  clicks=torch.stack([s.obs.clicks for s in steps]),
                  step=torch.stack([s.obs.step for s in steps]),
                  features=None if features is None else torch.stack([s.obs.features for s in steps]))
        return Rollout(obs=obs, action=torch.stack([s.action for s in steps]),
                       reward=torch.stack([s.reward for s in steps]),
                       done=torch.stack([s.done for s in steps]),
                       valid=torch.stack([s.valid for s in steps]))

    def flat_obs(self) -> Obs:
        """Observations reshaped to ``[T * B, ...]``."""
        t, b = self.reward.shape
        features = self.obs.features
        return Obs(items=self.obs.items.reshape(t * b, *self.obs.items.shape[2:]),
                   clicks=self.obs.clicks.reshape(t * b, *self.obs.clicks.shape[2:]),
                   step=self.obs.step.reshape(t * b),
                   features=None if features is None else features.reshape(t * b, -1))


def discounted_returns(reward: Tensor, done: Tensor, gamma: float) -> Tensor:
    """Returns-to-go ``[T, B]``: ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}``, ``G_T = 0``.

    Example::

        # one user, rewards 1, 1, 1, the episode ends after step 1, gamma 0.5
        discounted_returns(torch.ones(3, 1), torch.tensor([[0.0], [1.0], [0.0]]), 0.5)
        # -> [[1.5], [1.0], [1.0]]
    """
    out = torch.zeros_like(reward)
    running = torch.zeros_like(reward[0])
    for t in range(reward.shape[0] - 1, -1, -1):
        running = reward[t] + gamma * (1.0 - done[t]) * running
        out[t] = running
    return out
