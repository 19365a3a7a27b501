"""Pessimism where the simulator does not know (``env.pessimism``): penalties on simulated steps
whose outcome the behavior-model ensemble's members disagree about.

A policy trained in a learned simulator drifts to where the simulator is wrong and flattering.
With ``behavior.ensemble=K > 1`` every simulated response carries the members' disagreement
(:attr:`~recrl.types.Response.uncertainty`, the standard deviation of each shown item's click
probability over the members) and this turns it into a cost, as model-based offline RL does:

- ``penalty`` (MOPO, Yu et al., NeurIPS 2020): the step's reward minus ``penalty`` times the
  slate's summed uncertainty, so the policy gains only where the members agree that it gains;
- ``halt_threshold`` (MOReL, Kidambi et al., NeurIPS 2020): a step where some shown item's
  uncertainty exceeds the threshold ends the episode in an absorbing "halt" state, and its
  reward is ``-halt_penalty``: leaving the known region costs the rest of the session.

- ``entropy_bonus`` (DORL, Gao et al., SIGIR 2023): the step's reward plus ``entropy_bonus``
  times the entropy of the *logging* policy in the state the step leads to
  (:class:`LoggedPolicyEntropy`): where the logs were diverse, the simulator has seen many
  alternatives and can be trusted more, so conservatism is relaxed there. DORL adds it to the
  MOPO penalty to counter the Matthew effect of pessimism (popular items and categories
  crowding out the rest). It needs no ensemble.

All are off by default (``penalty: 0``, ``halt_threshold: null``, ``entropy_bonus: 0``).
Ground-truth environments have no uncertainty, so evaluation there is never penalised, and the
training simulator's evaluation runs without pessimism (the report shows what the simulator
itself predicts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.types import RecrlError, Response


class LoggedPolicyEntropy:
    """DORL's entropy term: how diverse the logging policy was after a given recent history.

    The state is approximated, as in DORL, by the categories of the last ``window`` items (a
    ``window``-order Markov model of the logs). For each such context the table holds the
    entropy of the category of the item the logging policy showed next, normalised by
    ``log(n_categories)`` to lie in ``[0, 1]``. Contexts seen fewer than ``min_count`` times in
    the logs get the entropy of all logged categories (the order-0 model) instead of a noisy
    estimate. Histories shorter than ``window`` are padded with a "no item yet" category, so
    session starts are contexts of their own.

    Example::

        entropy = LoggedPolicyEntropy.fit(interactions.train, categories, window=1)
        entropy(recent_items)   # [B, >= window] item ids (n_items = no item) -> [B] in [0, 1]
    """

    def __init__(self, table: Tensor, item_codes: Tensor, n_categories: int, window: int) -> None:
        self.table, self.item_codes = table, item_codes
        self.n_categories, self.window = n_categories, window

    @classmethod
    def fit(cls, log: pd.DataFrame, categories: Tensor, window: int = 1,
            min_count: int = 10) -> LoggedPolicyEntropy:
        """Count, in ``log`` (rows sorted by user then time), which category followed each context.

        ``categories`` ``[n_items]`` holds each item's code (``-1``: unknown; such rows are never
        a target and count as the padding category in a context)."""
        if window < 1:
            raise RecrlError(f"env.pessimism.entropy_window={window} must be >= 1")
        n_categories = int(categories.max()) + 1
        if n_categories < 2:
            raise RecrlError("env.pessimism.entropy_bonus needs an item table with at least two categories")
        pad = n_categories  # "no (known) item": session starts and unknown categories
        n_contexts = (n_categories + 1) ** window
        if n_contexts > 10_000_000:
            raise RecrlError(f"env.pessimism.entropy_window={window} gives {n_contexts} contexts for "
                             f"{n_categories} categories; use a smaller window")
        known_codes = categories.cpu().numpy()
        item_codes = np.append(np.where(known_codes < 0, pad, known_codes), pad)  # id n_items: no item
        codes = item_codes[log["item"].to_numpy()]
        users = log["user"].to_numpy()
        context = np.zeros(len(codes), dtype=np.int64)
        for lag in range(1, window + 1):  # context digit `lag`: the category `lag` rows back
            previous = np.full(len(codes), pad)
            previous[lag:] = codes[:-lag]
            same_user = np.zeros(len(codes), dtype=bool)
            same_user[lag:] = users[lag:] == users[:-lag]
            context = context * (n_categories + 1) + np.where(same_user, previous, pad)
        known = codes != pad
        counts = np.bincount(context[known] * n_categories + codes[known],
                             minlength=n_contexts * n_categories).reshape(n_contexts, n_categories)
        marginal = _normalised_entropy(counts.sum(0, keepdims=True))[0]
        table = np.where(counts.sum(1) >= min_count, _normalised_entropy(counts), marginal)
        return cls(torch.tensor(table, dtype=torch.float32), torch.tensor(item_codes), n_categories, window)

    def to(self, device: torch.device | str) -> LoggedPolicyEntropy:
        """This table on ``device``."""
        return LoggedPolicyEntropy(self.table.to(device), self.item_codes.to(device),
                                   self.n_categories, self.window)

    def __call__(self, recent: Tensor) -> Tensor:
        """The logging policy's entropy ``[B]`` after the recent item ids ``[B, L]`` (most recent
        last, ``L >= window``; id ``n_items`` is "no item")."""
        codes = self.item_codes[recent[:, -self.window:]]
        context = torch.zeros(recent.shape[0], dtype=torch.long, device=recent.device)
        for lag in range(1, self.window + 1):
            context = context * (self.n_categories + 1) + codes[:, -lag]
        return self.table[context]


def _normalised_entropy(counts: np.ndarray) -> np.ndarray:
    """Row-wise entropy of count vectors divided by ``log(columns)`` (0 for empty rows)."""
    totals = counts.sum(1, keepdims=True)
    p = counts / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(1) / np.log(counts.shape[1])


class Pessimism:
    """Uncertainty penalties of simulated steps (see the module docstring).

    Example::

        pessimism = Pessimism(penalty=1.0, halt_threshold=0.2, halt_penalty=1.0)
        reward, halted = pessimism.apply(reward, response, recent_items)   # [B], [B] bool

    With ``entropy_bonus > 0`` the logged entropy table must be bound first (:meth:`bind`; the
    run does it from the training logs).
    """

    def __init__(self, penalty: float = 0.0, halt_threshold: float | None = None,
                 halt_penalty: float = 0.0, entropy_bonus: float = 0.0, entropy_window: int = 1,
                 category_column: str | None = None) -> None:
        if penalty < 0 or halt_penalty < 0 or entropy_bonus < 0:
            raise RecrlError(f"env.pessimism: penalty={penalty}, halt_penalty={halt_penalty} and "
                             f"entropy_bonus={entropy_bonus} must be >= 0")
        if halt_threshold is not None and halt_threshold <= 0:
            raise RecrlError(f"env.pessimism.halt_threshold={halt_threshold} must be > 0 (null: off)")
        if entropy_window < 1:
            raise RecrlError(f"env.pessimism.entropy_window={entropy_window} must be >= 1")
        self.penalty, self.halt_threshold, self.halt_penalty = penalty, halt_threshold, halt_penalty
        self.entropy_bonus, self.entropy_window = entropy_bonus, entropy_window
        self.category_column = category_column
        self.logged_entropy: LoggedPolicyEntropy | None = None

    @property
    def active(self) -> bool:
        """Whether any term is on."""
        return self.uses_uncertainty or self.entropy_bonus > 0

    @property
    def uses_uncertainty(self) -> bool:
        """Whether a term reads the ensemble's disagreement (MOPO, MOReL)."""
        return self.penalty > 0 or self.halt_threshold is not None

    def bind(self, logged_entropy: LoggedPolicyEntropy) -> None:
        """Use ``logged_entropy`` for the DORL term."""
        self.logged_entropy = logged_entropy

    def apply(self, reward: Tensor, response: Response,
              recent_items: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The penalised reward ``[B]`` and which users halt ``[B]`` (``None`` when the halt rule is
        off). ``recent_items`` ``[B, L]``: the history including this step's slate, most recent
        last (the DORL term's state). The uncertainty terms leave the reward unchanged when the
        response has no uncertainty (a single model, the ground truth)."""
        if self.entropy_bonus > 0:
            if self.logged_entropy is None or recent_items is None:
                raise RecrlError("env.pessimism.entropy_bonus: no logged entropy bound (Pessimism.bind)")
            reward = reward + self.entropy_bonus * self.logged_entropy(recent_items)
        uncertainty = response.uncertainty
        if uncertainty is None or not self.uses_uncertainty:
            return reward, None
        reward = reward - self.penalty * uncertainty.sum(1)
        if self.halt_threshold is None:
            return reward, None
        halted = (uncertainty > self.halt_threshold).any(1)
        return reward.masked_fill(halted, -self.halt_penalty), halted
