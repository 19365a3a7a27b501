"""Logged sessions for off-policy evaluation: each user's logged rows in time order, as the
observations a policy would have seen, cut to the episode length the other evaluations use.

A session is one user's rows of a log (sorted by user, then time, as every recrl log is). Its
first ``horizon`` rows are kept, so a session's return is comparable with an episode's return in
the simulator and the ground truth (the synthetic world logs sessions of exactly that shape; in
real logs a user's later rows are dropped, and the end of their rows counts as the end of the
session).
"""

from __future__ import annotations

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
    """

    steps: LoggedSteps
    n_sessions: int
    length: int
    source: str

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
                              length=int(steps.transitions.obs.step.max()) + 1, source=source)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def mask(self) -> np.ndarray:
        """``[S, T]`` True where a session has a row."""
        return self.grid(np.ones(len(self), dtype=bool), fill=False)

    def grid(self, values: Tensor | np.ndarray, fill: float | bool = 0.0) -> np.ndarray:
        """Per-row ``values`` ``[N]`` laid out as ``[S, T]`` (``fill`` after a session's end)."""
        flat = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
        out = np.full((self.n_sessions, self.length), fill, dtype=flat.dtype)
        out[self.steps.session.cpu().numpy(), self.steps.transitions.obs.step.cpu().numpy()] = flat
        return out

    @property
    def first(self) -> Tensor:
        """``[S]`` the row index of each session's first step."""
        return torch.nonzero(self.steps.transitions.obs.step == 0).squeeze(1)
