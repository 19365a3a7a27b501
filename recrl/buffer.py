"""On-device storage of transitions: a circular replay buffer (uniform or prioritized), an
n-step window over the per-step stream, and an episode rollout."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recrl.types import Env, Obs, Transition


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
        self.click: Tensor | None = None  # [capacity, K] recorded clicks, made on the first add with them
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
        if tr.click is not None:
            if self.click is None:
                self.click = torch.zeros(self.capacity, tr.click.shape[1], device=self.device)
            self.click[idx] = tr.click
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Transition:
        """A uniformly random batch of stored transitions."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return self.rows(idx)

    def rows(self, idx: Tensor) -> Transition:
        """The stored transitions at slots ``idx``."""
        feats, next_feats = ((None, None) if self.features is None
                             else (self.features[idx], self.next_features[idx]))
        return Transition(obs=Obs(self.items[idx], self.clicks[idx], self.step[idx], feats),
                          action=self.action[idx], reward=self.reward[idx],
                          next_obs=Obs(self.next_items[idx], self.next_clicks[idx], self.next_step[idx],
                                       next_feats),
                          done=self.done[idx], valid=self.valid[idx],
                          click=None if self.click is None else self.click[idx])


class PrioritizedReplayBuffer(ReplayBuffer):
    """Replay with proportional prioritization (Schaul et al., ICLR 2016), on device.

    Slot ``i`` is drawn with probability ``P(i) = p_i^alpha / sum_j p_j^alpha`` by
    ``torch.multinomial`` over the stored priorities (no sum tree: one pass over ``size`` floats
    per batch, at most 2**24 slots). New rows get the largest priority seen so far (1 at first);
    :meth:`update_priorities` sets ``p_i = |delta_i| + eps`` after each learning step. The
    importance weights ``w_i = (N P(i))^-beta`` are divided by their largest value over the
    stored rows (that of the least likely row), so they only ever scale updates down.

    Example::

        buf = PrioritizedReplayBuffer(10_000, history_len=10, slate_size=1, n_items=100, alpha=0.6)
        buf.add(transition)
        batch, idx, weights = buf.sample_weighted(256, generator, beta=0.4)
        algo.update(batch, weights=weights)
        buf.update_priorities(idx, algo.td_error)
    """

    def __init__(self, capacity: int, history_len: int, slate_size: int, n_items: int,
                 device: torch.device | str = "cpu", alpha: float = 0.6, eps: float = 1e-3) -> None:
        super().__init__(capacity, history_len, slate_size, n_items, device)
        self.alpha, self.eps = alpha, eps
        self.priorities = torch.zeros(capacity, device=self.device)  # p_i ** alpha of each slot
        self.max_priority = torch.ones((), device=self.device)  # largest p_i so far (a tensor: no sync)

    def add(self, tr: Transition) -> None:
        """Append a batch of transitions with the largest priority seen so far."""
        idx = (torch.arange(tr.action.shape[0], device=self.device) + self.cursor) % self.capacity
        super().add(tr)
        self.priorities[idx] = self.max_priority ** self.alpha

    def sample_weighted(self, batch_size: int, generator: torch.Generator,
                        beta: float = 0.4) -> tuple[Transition, Tensor, Tensor]:
        """A prioritized batch, its slots ``[batch_size]`` and importance weights ``[batch_size]``."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        scaled = self.priorities[:self.size]  # slots fill in order, so the stored rows are a prefix
        idx = torch.multinomial(scaled, batch_size, replacement=True, generator=generator)
        # (N P_i)^-beta / max_j (N P_j)^-beta = (P_i / min_j P_j)^-beta = (p_i^a / min_j p_j^a)^-beta
        weights = (scaled[idx] / scaled.min()) ** -beta
        return self.rows(idx), idx, weights

    def sample(self, batch_size: int, generator: torch.Generator) -> Transition:
        """A prioritized batch (without the weights; see :meth:`sample_weighted`)."""
        return self.sample_weighted(batch_size, generator)[0]

    def update_priorities(self, idx: Tensor, td_error: Tensor) -> None:
        """Set the priorities of slots ``idx`` to ``|td_error| + eps`` (before ``** alpha``)."""
        priority = td_error.detach().abs() + self.eps
        self.priorities[idx] = priority ** self.alpha
        self.max_priority = torch.maximum(self.max_priority, priority.max())


def _where_obs(mask: Tensor, a: Obs, b: Obs) -> Obs:
    """Rows of ``a`` where ``mask`` ``[B]`` is true, else of ``b``."""
    def pick(x: Tensor, y: Tensor) -> Tensor:
        return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, y)
    features = None if a.features is None else pick(a.features, b.features)
    return Obs(items=pick(a.items, b.items), clicks=pick(a.clicks, b.clicks), step=pick(a.step, b.step),
               features=features)


class NStepWindow:
    """Turns the per-step stream of ``B`` users into ``n``-step transitions, on device.

    The off-policy loop pushes one :class:`Transition` of all ``B`` rows per environment step; a
    row whose episode ends is refilled in place by a new user. Once ``n`` steps are held, each
    push returns the ``n``-step transition that starts ``n - 1`` steps earlier (at ``t``)::

        m        = n, or k + 1 for the first step t + k within the window with done = 1
        reward   = sum_{k < m} gamma^k r_{t+k}
        next_obs = next_obs_{t+m-1}
        done     = 1 if the episode ended within the window (nothing to bootstrap), else 0
        valid    = valid_t (a row not alive at ``t`` stays invalid)
        click    = click_t (the clicks on the slate shown at ``t``, when recorded)

    Rewards after a ``done`` belong to the row's next user and are never added. Transitions of
    the last ``n - 1`` steps of a run are never returned. With ``n = 1`` every push returns its
    input.

    Example::

        window = NStepWindow(n=3, gamma=0.9)
        out = window.push(transition)      # None for the first n - 1 pushes
        if out is not None:
            buffer.add(out)
    """

    def __init__(self, n: int, gamma: float) -> None:
        if n < 1:
            raise ValueError(f"n-step window needs n >= 1, got {n}")
        self.n, self.gamma = n, gamma
        self.steps: deque[Transition] = deque(maxlen=n)

    def push(self, tr: Transition) -> Transition | None:
        """Add one step; return the ``n``-step transition completed by it, if any."""
        if self.n == 1:
            return tr
        self.steps.append(tr)
        if len(self.steps) < self.n:
            return None
        first = self.steps[0]
        reward = first.reward
        running = first.done <= 0  # [B] bool: the episode has not ended before the next step
        next_obs = first.next_obs
        for k in range(1, self.n):
            step = self.steps[k]
            reward = reward + (self.gamma ** k) * running.to(reward.dtype) * step.reward * step.valid
            next_obs = _where_obs(running, step.next_obs, next_obs)
            running = running & (step.done <= 0)
        return Transition(obs=first.obs, action=first.action, reward=reward, next_obs=next_obs,
                          done=(~running).to(first.done.dtype), valid=first.valid, click=first.click)



@dataclass
class ReplaySample:
    """A batch drawn from a :class:`Replay`: the transitions, their importance weights ``[B]``
    (prioritized replay; ``None``: uniform) and the way a learner hands the rows' new
    priorities back (:meth:`reprioritize`, a no-op for uniform replay)."""

    transitions: Transition
    weights: Tensor | None = None
    index: Tensor | None = None
    replay: Replay | None = None

    def reprioritize(self, errors: Tensor) -> None:
        """Set the sampled rows' priorities from their errors ``[B]`` (``|error| + eps``)."""
        if self.replay is not None and self.index is not None:
            self.replay.reprioritize(self.index, errors)


def transitions_of(batch: Transition | ReplaySample) -> Transition:
    """The transitions of a replay batch, whether drawn from a :class:`Replay` or built by hand."""
    return batch.transitions if isinstance(batch, ReplaySample) else batch


class Replay:
    """An off-policy learner's experience replay, all on one device: transitions in, through an
    ``n``-step window when ``n_step > 1`` (:class:`NStepWindow`, discount ``gamma``), into a
    uniform or prioritized circular buffer; batches out, prioritized ones with importance
    weights whose exponent rises linearly from ``beta`` to 1 over the run (``progress`` 0 -> 1).

    The learner builds it (``make_replay`` on the algorithm; DQN's settings), the training loop
    only adds and samples, and the learner's ``update`` returns the sampled rows' priorities
    through :meth:`ReplaySample.reprioritize`.

    Example::

        replay = Replay(100_000, history_len=10, slate_size=1, n_items=500, n_step=3, gamma=0.9,
                        prioritized=True)
        replay.add(transition)                     # every environment step, B rows
        sample = replay.sample(256, generator, progress=step / steps)
        algo.update(sample)                        # uses sample.weights, calls sample.reprioritize
    """

    def __init__(self, capacity: int, history_len: int, slate_size: int, n_items: int,
                 device: torch.device | str = "cpu", *, n_step: int = 1, gamma: float = 1.0,
                 prioritized: bool = False, alpha: float = 0.6, beta: float = 0.4,
                 eps: float = 1e-3) -> None:
        args = (capacity, history_len, slate_size, n_items, device)
        self.buffer = (PrioritizedReplayBuffer(*args, alpha=alpha, eps=eps) if prioritized
                       else ReplayBuffer(*args))
        self.window = NStepWindow(n_step, gamma) if n_step > 1 else None
        self.prioritized, self.beta = prioritized, beta

    @classmethod
    def for_env(cls, capacity: int, env: Env, **options: Any) -> Replay:
        """A replay sized for ``env``'s observations and actions (``options``: see the class)."""
        return cls(capacity, env.history_len, env.slate_size, env.n_items, env.device, **options)

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, transition: Transition) -> None:
        """Store one environment step of ``B`` rows (``n``-step: the transition it completes)."""
        if self.window is not None:
            transition = self.window.push(transition)
        if transition is not None:
            self.buffer.add(transition)

    def sample(self, batch_size: int, generator: torch.Generator, progress: float = 0.0) -> ReplaySample:
        """A batch of ``batch_size`` rows; ``progress`` (0..1, the share of the run done) anneals
        the importance-weight exponent of prioritized replay."""
        if not self.prioritized:
            return ReplaySample(self.buffer.sample(batch_size, generator))
        beta = self.beta + (1.0 - self.beta) * min(1.0, progress)
        assert isinstance(self.buffer, PrioritizedReplayBuffer)
        batch, index, weights = self.buffer.sample_weighted(batch_size, generator, beta)
        return ReplaySample(batch, weights=weights, index=index, replay=self)

    def reprioritize(self, index: Tensor, errors: Tensor) -> None:
        """New priorities of buffer rows ``index`` from their errors (prioritized replay only)."""
        if isinstance(self.buffer, PrioritizedReplayBuffer):
            self.buffer.update_priorities(index, errors)

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


def gae(reward: Tensor, value: Tensor, done: Tensor, valid: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates ``[T, B]`` of a time-major rollout (Schulman et al., 2016).

    ``delta_t = r_t + gamma * (1 - done_t) * V(s_{t+1}) - V(s_t)`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``, with ``V(s_T) = A_T = 0``: the value
    after an episode's last step is 0 (it ended, or reached the horizon, which the state encodes).
    Rows with ``valid = 0`` (the user's episode ended earlier) get ``A_t = 0`` and never bootstrap
    into valid rows. ``lam = 1`` gives ``G_t - V(s_t)`` (Monte-Carlo returns minus the baseline),
    ``lam = 0`` the one-step TD error. The value targets are ``A_t + V(s_t)``.

    Example::

        # one user, rewards 1, 1, the episode ends after step 1; V = 0.5 everywhere, gamma 0.5, lam 1
        gae(torch.ones(2, 1), torch.full((2, 1), 0.5), torch.tensor([[0.0], [1.0]]),
            torch.ones(2, 1), 0.5, 1.0)
        # -> [[1.0], [0.5]]   (returns 1.5, 1.0 minus V)
    """
    value = value * valid
    out = torch.zeros_like(reward)
    running = torch.zeros_like(reward[0])
    next_value = torch.zeros_like(reward[0])
    for t in range(reward.shape[0] - 1, -1, -1):
        live = 1.0 - done[t]
        delta = reward[t] + gamma * live * next_value - value[t]
        running = (delta + gamma * lam * live * running) * valid[t]
        out[t] = running
        next_value = value[t]
    return out


def n_step_returns(reward: Tensor, value: Tensor, done: Tensor, valid: Tensor, gamma: float,
                   n: int) -> Tensor:
    """``n``-step bootstrapped returns ``[T, B]`` of a time-major rollout (Mnih et al., 2016).

    ``G_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n})``, cut at the end of the episode (no
    rewards and no bootstrap after a ``done``; ``V`` beyond the rollout is 0). Rows with
    ``valid = 0`` get 0. With ``n >= T`` these are :func:`discounted_returns`.

    Example::

        # one user, rewards 1, 1, 1, no end inside the rollout, V = 2 everywhere, gamma 0.5, n 1
        n_step_returns(torch.ones(3, 1), torch.full((3, 1), 2.0), torch.zeros(3, 1),
                       torch.ones(3, 1), 0.5, 1)
        # -> [[2.0], [2.0], [1.0]]
    """
    t_len = reward.shape[0]

    def shifted(x: Tensor, k: int, fill: float) -> Tensor:  # x[t + k], ``fill`` past the end
        return torch.cat([x[k:], x.new_full((min(k, t_len), *x.shape[1:]), fill)])

    out = torch.zeros_like(reward)
    alive = torch.ones_like(reward)  # 1 while no episode end in steps t .. t+k-1
    for k in range(n):
        out = out + alive * gamma**k * shifted(reward, k, 0.0)
        alive = alive * (1.0 - shifted(done, k, 1.0))
    out = out + alive * gamma**n * shifted(value * valid, n, 0.0)
    return out * valid
