"""The training log as RL transitions, for algorithms that learn from logged data only.

Each logged row (one shown item, sorted by user then time) becomes one transition with the
observation a policy would have seen in the environment: the user's last ``history_len`` logged
items and their clicks (padding before the first), the step within the session, the logged item
as the action, the reward of the logged response under the run's reward function, and the next
observation. A user's last logged row ends the episode (``done = 1``). The logging policy's
propensity of each row comes along (NaN where the data does not record it).

Offline algorithms (``mode = "offline"``) build one of these from :class:`~recrl.types.AlgoContext`
and the training loop samples batches from it; nothing of the test users is in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.buffer import discounted_returns
from recrl.env.signals import SIGNALS
from recrl.types import AlgoContext, Obs, RecrlError, Response, Transition


@dataclass(frozen=True)
class LoggedSteps:
    """``N`` logged steps as transitions (slate size 1) plus what off-policy learners need.

    Attributes:
        transitions: ``[N]`` rows of observation, action ``[N, 1]``, reward, next observation,
            done (1 on a session's last row) and valid (all 1).
        propensity: ``[N]`` the logging policy's probability of the logged item (NaN: unknown).
        session: ``[N]`` dense session (user) index of each row (its step within the session is
            ``transitions.obs.step``).
        row: ``[N]`` each row's index in the full dataset (kept by :meth:`index`, so per-row
            tables such as :meth:`returns` can be looked up for a sampled batch).

    Example::

        steps = LoggedSteps.from_context(ctx)
        batch = steps.sample(256, generator)
        g = steps.returns(0.9)[batch.row]
    """

    transitions: Transition
    propensity: Tensor
    session: Tensor
    row: Tensor

    def __len__(self) -> int:
        return int(self.row.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.row.device

    @staticmethod
    def from_context(ctx: AlgoContext) -> LoggedSteps:
        """The training rows of ``ctx.interactions`` under ``ctx.reward``, on ``ctx.device``."""
        if ctx.interactions is None:
            raise RecrlError("this algorithm learns from logged data, but the run has none (env=gym)")
        if ctx.slate_size != 1:
            raise RecrlError(f"this algorithm learns from logs of single recommended items, but "
                             f"env.slate_size={ctx.slate_size}; use env.slate_size=1")
        return logged_steps(ctx.interactions.train, ctx.n_items, ctx.history_len, ctx.reward, ctx.device)

    def index(self, idx: Tensor) -> LoggedSteps:
        """Rows ``idx``."""
        return LoggedSteps(transitions=self.transitions.index(idx), propensity=self.propensity[idx],
                           session=self.session[idx], row=self.row[idx])

    def sample(self, batch_size: int, generator: torch.Generator) -> LoggedSteps:
        """A uniformly random batch of rows (with replacement)."""
        idx = torch.randint(0, len(self), (batch_size,), device=self.device, generator=generator)
        return self.index(idx)

    def returns(self, gamma: float) -> Tensor:
        """Discounted return ``[N]`` from each row to the end of its session."""
        tr = self.transitions
        steps = tr.obs.step
        shape = (int(steps.max()) + 1, int(self.session.max()) + 1)  # time-major [T, sessions]
        reward = torch.zeros(shape, device=self.device).index_put_((steps, self.session), tr.reward)
        done = torch.ones(shape, device=self.device).index_put_((steps, self.session), tr.done)
        return discounted_returns(reward, done, gamma)[steps, self.session]


def logged_response(log: pd.DataFrame, device: torch.device | str = "cpu") -> Response:
    """The logged outcomes of each row as a ``[N, 1]`` response (unknown ratings and signal
    values = 0; every registered signal, :mod:`recrl.env.signals`)."""
    def column(name: str, default: float = 0.0) -> Tensor:
        values = (log[name].to_numpy(dtype=np.float32) if name in log
                  else np.full(len(log), default, np.float32))
        return torch.as_tensor(np.nan_to_num(values, nan=default), device=device)[:, None]
    click = column("click")
    return Response(click_prob=click, click=click, conversion_prob=column("conversion"),
                    conversion=column("conversion"), rating=column("rating"),
                    leave_prob=torch.zeros(len(log), device=device),
                    values={name: column(name) for name in SIGNALS})


def logged_steps(log: pd.DataFrame, n_items: int, history_len: int, reward, device: torch.device | str = "cpu"
                 ) -> LoggedSteps:
    """Transitions of every row of ``log`` (sorted by user, then time); see the module docstring."""
    if log.empty:
        raise RecrlError("no logged interactions to learn from: the training split is empty")
    session = pd.factorize(log["user"], sort=False)[0]
    position = log.groupby(session, sort=False).cumcount().to_numpy()
    items = log["item"].to_numpy(dtype=np.int64)
    clicks = log["click"].to_numpy(dtype=np.float32)
    n = len(log)
    last = np.ones(n, dtype=bool)
    last[:-1] = session[1:] != session[:-1]

    def history(end: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``history_len`` rows before ``end`` (exclusive) of a session ``steps`` rows in."""
        offset = np.arange(-history_len, 0)
        idx = end[:, None] + offset[None, :]
        real = offset[None, :] >= -steps[:, None]
        safe = np.clip(idx, 0, n - 1)
        return np.where(real, items[safe], n_items), np.where(real, clicks[safe], 0.0).astype(np.float32)

    rows = np.arange(n)
    obs_items, obs_clicks = history(rows, position)
    next_items, next_clicks = history(rows + 1, position + 1)

    def tensor(values: np.ndarray) -> Tensor:
        return torch.tensor(values, device=device)

    obs = Obs(items=tensor(obs_items)[:, :, None], clicks=tensor(obs_clicks)[:, :, None],
              step=tensor(position))
    next_obs = Obs(items=tensor(next_items)[:, :, None], clicks=tensor(next_clicks)[:, :, None],
                   step=tensor(position + 1))
    transitions = Transition(obs=obs, action=tensor(items)[:, None],
                             reward=reward(logged_response(log, device)), next_obs=next_obs,
                             done=tensor(last.astype(np.float32)), valid=torch.ones(n, device=device))
    propensity = log["propensity"].to_numpy(dtype=np.float32) if "propensity" in log else np.full(n, np.nan)
    return LoggedSteps(transitions=transitions, propensity=tensor(propensity.astype(np.float32)),
                       session=tensor(session.astype(np.int64)), row=torch.arange(n, device=device))
