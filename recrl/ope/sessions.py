"""Logged sessions for off-policy evaluation: each user's logged rows in time order, as the
observations a policy would have seen, cut to the episode length the other evaluations use.

A session is one user's rows of a log (sorted by user, then time, as every recrl log is). Its
first ``horizon`` rows are kept, so a session's return is comparable with an episode's return in
the simulator and the ground truth (the synthetic world logs sessions of exactly that shape; in
real logs a user's later rows are dropped, and the end of their rows counts as the end of the
session).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.algos.logged import LoggedSteps, logged_steps
from recrl.types import RecrlError, Reward


@dataclass(frozen=True)
class LoggedSessions:
    """``S`` logged sessions of at most ``T`` steps as ``N`` rows, and their ``[S, T]`` grid.

    Attributes:
        steps: the rows as transitions: observation, logged item (action), logged reward,
            propensity (NaN where the log does not record it), session index and step.
        n_sessions: ``S``.
        length: ``T``, the longest session kept.
        source: where the rows come from (named in errors), e.g. ``"the test split"``.
        log: the rows kept, as a log (same order as ``steps``).
        remaining: ``[N]`` steps from each row to its session's end that a model may value: to
            the horizon where the log says the user left after the session's last row
            (``leave = 1``: the user's leaving is part of what a policy changes), else to the
            last logged row (the log just ends there).
    """

    steps: LoggedSteps
    n_sessions: int
    length: int
    source: str
    log: pd.DataFrame
    remaining: Tensor

    @staticmethod
    def from_log(log: pd.DataFrame, n_items: int, history_len: int, horizon: int, reward: Reward,
                 device: torch.device | str = "cpu", max_sessions: int | None = None, seed: int = 0,
                 source: str = "the log") -> LoggedSessions:
        """Sessions of ``log``: each user's first ``horizon`` rows; with ``max_sessions``, that
        many users drawn at random (``seed``) when the log has more."""
        if log.empty:
            raise RecrlError(f"off-policy evaluation: {source} has no rows")
        users = log["user"].to_numpy()
        if max_sessions is not None and max_sessions < 1:
            raise RecrlError(f"ope.max_sessions must be >= 1, got {max_sessions}")
        unique = pd.unique(users)
        if max_sessions is not None and len(unique) > max_sessions:
            kept = np.random.default_rng(seed).choice(unique, size=max_sessions, replace=False)
            log = log[np.isin(users, kept)]
        position = log.groupby("user", sort=False).cumcount().to_numpy()
        log = log[position < horizon].reset_index(drop=True)
        steps = logged_steps(log, n_items, history_len, reward, device)
        return LoggedSessions(steps=steps, n_sessions=int(steps.session.max()) + 1,
                              length=int(steps.transitions.obs.step.max()) + 1, source=source, log=log,
                              remaining=_remaining(log, horizon).to(steps.device))

    def with_propensity(self, propensity: np.ndarray) -> LoggedSessions:
        """The same sessions with the rows' propensities replaced (e.g. filled in by a
        logging-policy model)."""
        values = torch.as_tensor(propensity, dtype=torch.float32, device=self.steps.device)
        return dataclasses.replace(self, steps=dataclasses.replace(self.steps, propensity=values))

    def __len__(self) -> int:
        return len(self.steps)

    @functools.cached_property
    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's (session, step) cell of the grid, on the host (read once)."""
        return self.steps.session.cpu().numpy(), self.steps.transitions.obs.step.cpu().numpy()

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """``[S, T]`` True where a session has a row."""
        return self.grid(np.ones(len(self), dtype=bool), fill=False)

    def grid(self, values: Tensor | np.ndarray, fill: float | bool = 0.0) -> np.ndarray:
        """Per-row ``values`` ``[N]`` laid out as ``[S, T]`` (``fill`` after a session's end)."""
        flat = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
        out = np.full((self.n_sessions, self.length), fill, dtype=flat.dtype)
        out[self._cells] = flat
        return out

    @property
    def first(self) -> Tensor:
        """``[S]`` the row index of each session's first step."""
        return torch.nonzero(self.steps.transitions.obs.step == 0).squeeze(1)


def _remaining(log: pd.DataFrame, horizon: int) -> Tensor:
    """``[N]`` steps each row's session may be valued for (see :attr:`LoggedSessions.remaining`)."""
    user = log["user"].to_numpy()
    step = log.groupby("user", sort=False).cumcount().to_numpy()
    size = log.groupby("user", sort=False)["user"].transform("size").to_numpy()
    last = np.ones(len(log), dtype=bool)
    last[:-1] = user[1:] != user[:-1]
    leave = log["leave"].to_numpy(dtype=np.float64) if "leave" in log else np.full(len(log), np.nan)
    left = pd.Series(np.where(last, leave == 1.0, False)).groupby(user).transform("any").to_numpy()
    return torch.as_tensor(np.where(left, horizon, size) - step, dtype=torch.long)
