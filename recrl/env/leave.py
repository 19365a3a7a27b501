"""Rules that make simulated users leave, on top of the user model's own leave head.

Each rule keeps a little per-user state on the environment's device, updated in place every
step without host round trips; the environment resets rows of replaced users.

- ``env.boredom`` (as in KuaiEnv, Gao et al. 2022): a user leaves when more than
  ``max_repeats`` of the items shown in the last ``window`` steps share one category.
- ``env.satisfaction``: satisfaction starts at ``initial`` and follows an exponential moving
  average of "clicked something this step"; a user leaves once it falls below ``threshold``
  (after ``min_steps`` steps).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from recrl.types import RecrlError, Response


class LeaveRule(Protocol):
    """Per-user leave decisions from what was shown and how the user responded."""

    def reset(self, n_users: int, device: torch.device) -> None:
        """Fresh state for ``n_users`` users."""
        ...

    def step(self, slates: Tensor, response: Response, t: Tensor) -> Tensor:
        """Update with this step; ``[B]`` bool: the user leaves now. ``t`` = steps done."""
        ...

    def restart(self, rows: Tensor) -> None:
        """Fresh state for the users in ``rows`` (``[B]`` bool)."""
        ...


class BoredomRule:
    """Leave when one category fills more than ``max_repeats`` of the last ``window`` steps' items.

    ``category_column`` picks the item-table column whose values are the categories (``None``:
    the column with the most categories, between 2 and 64; see
    :func:`recrl.behavior.features.item_categories`). Items of unknown category never count.

    Example::

        rule = BoredomRule(window=5, max_repeats=3)
        rule.bind(torch.tensor([0, 0, 1, 1]))            # item categories
        rule.reset(n_users=2, device=torch.device("cpu"))
        leaves = rule.step(slates, response, t)
    """

    def __init__(self, window: int = 10, max_repeats: int = 6, category_column: str | None = None) -> None:
        if window < 1 or max_repeats < 1:
            raise RecrlError("env.boredom: window and max_repeats must be >= 1")
        self.window, self.max_repeats, self.category_column = window, max_repeats, category_column
        self.categories: Tensor | None = None

    def bind(self, categories: Tensor) -> None:
        """The category code of every item ``[n_items]`` (-1 = unknown)."""
        self.categories = categories.long()
        self.n_categories = int(categories.max()) + 1 if len(categories) else 0

    def reset(self, n_users: int, device: torch.device) -> None:
        """Empty windows for ``n_users`` users."""
        if self.categories is None:
            raise RecrlError("env.boredom needs item categories; the environment binds them at build time")
        self.categories = self.categories.to(device)
        self.recent: Tensor | None = None  # [B, window, K] categories, -1 = empty
        self.n_users, self.device = n_users, device

    def step(self, slates: Tensor, response: Response, t: Tensor) -> Tensor:
        """Shift this step's categories into the window; true where a category is over the limit."""
        shown = self.categories[slates]
        if self.recent is None:
            self.recent = torch.full((self.n_users, self.window, slates.shape[1]), -1, dtype=torch.long,
                                     device=slates.device)
        self.recent = torch.cat([self.recent[:, 1:], shown[:, None]], 1)
        flat = self.recent.flatten(1)
        counts = torch.zeros(flat.shape[0], self.n_categories + 1, device=flat.device)
        counts.scatter_add_(1, flat + 1, torch.ones_like(flat, dtype=counts.dtype))  # slot 0: unknown
        return (counts[:, 1:] > self.max_repeats).any(1)

    def restart(self, rows: Tensor) -> None:
        """Empty the windows of ``rows``."""
        if self.recent is not None:
            self.recent = torch.where(rows[:, None, None], torch.full_like(self.recent, -1), self.recent)


class SatisfactionRule:
    """Leave when the moving average of "clicked this step" falls below ``threshold``.

    ``s <- decay * s + (1 - decay) * clicked``, starting from ``initial``; checked from step
    ``min_steps`` on.

    Example::

        rule = SatisfactionRule(decay=0.8, threshold=0.3)
    """

    def __init__(self, decay: float = 0.8, threshold: float = 0.2, initial: float = 1.0,
                 min_steps: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise RecrlError("env.satisfaction.decay must be in [0, 1)")
        self.decay, self.threshold, self.initial, self.min_steps = decay, threshold, initial, min_steps

    def reset(self, n_users: int, device: torch.device) -> None:
        """Everyone starts at ``initial``."""
        self.level = torch.full((n_users,), self.initial, device=device)

    def step(self, slates: Tensor, response: Response, t: Tensor) -> Tensor:
        """Update the levels with this step's clicks; true where a user is now too dissatisfied."""
        clicked = response.click.sum(1).clamp(max=1.0)
        self.level = self.decay * self.level + (1.0 - self.decay) * clicked
        return (self.level < self.threshold) & (t >= self.min_steps)

    def restart(self, rows: Tensor) -> None:
        """Back to ``initial`` for ``rows``."""
        self.level = torch.where(rows, torch.full_like(self.level, self.initial), self.level)
