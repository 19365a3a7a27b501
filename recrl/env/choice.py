"""How a user picks (at most) one item from a slate: the choice models of ``env.choice``.

A user model gives each slate item a click utility; a choice model turns the utilities
``[B, K]`` into the probability that each slot is the one clicked (the rest is "no click") and
samples the click. Items a user will not consider (``env.no_repeat``: already shown) get
utility ``-inf`` before the choice.

- ``mnl``: multinomial logit with a no-click option of utility ``no_click`` (default 0):
  ``P(k) = exp(u_k) / (exp(no_click) + sum_j exp(u_j))``; for ``K = 1`` it is ``sigmoid(u - no_click)``.
- ``cascade``: the user scans the slate top to bottom and clicks slot ``k`` with probability
  ``a_k = sigmoid(u_k)`` if they reach it, stopping at the first click (Craswell et al., 2008):
  ``P(k) = a_k * prod_{j<k} (1 - a_j)``. Position matters: the same item is clicked less often
  further down.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.env.noise import RandomSource, uniform
from recrl.types import RecrlError

CHOICES = ("mnl", "cascade")


def sample_choice(click_prob: Tensor, generator: RandomSource) -> Tensor:
    """Sample at most one clicked slot per row from per-slot choice probabilities ``[B, K]``.

    The probability of no click is ``1 - click_prob.sum(1)``. Returns 0/1 floats ``[B, K]``.

    Example::

        clicks = sample_choice(torch.tensor([[0.2, 0.5]]), torch.Generator().manual_seed(0))
    """
    u = uniform((click_prob.shape[0], 1), click_prob.device, generator)
    cum = click_prob.cumsum(1)
    # compare with the previous cumulative sum itself: `cum - p` can round below it
    previous = F.pad(cum[:, :-1], (1, 0))  # [0, cum_0, ..., cum_{K-2}]
    chosen = (u < cum) & (u >= previous)
    return chosen.to(click_prob.dtype)


def mnl_probs(utility: Tensor, no_click: float = 0.0) -> Tensor:
    """Multinomial-logit choice probabilities ``[B, K]`` with a no-click option of utility
    ``no_click``. For ``K = 1`` this is ``sigmoid(utility - no_click)``.

    Example::

        >>> mnl_probs(torch.tensor([[0.0, 0.0]]))
        tensor([[0.3333, 0.3333]])
    """
    return torch.softmax(F.pad(utility, (1, 0), value=no_click), 1)[:, 1:]  # slot 0: no click


def cascade_probs(utility: Tensor) -> Tensor:
    """Cascade-model probabilities ``[B, K]`` that each slot is the first (only) click.

    Example::

        >>> cascade_probs(torch.tensor([[0.0, 0.0]]))   # 0.5, then 0.5 * 0.5
        tensor([[0.5000, 0.2500]])
    """
    attract = torch.sigmoid(utility)
    reach = torch.cumprod(F.pad(1.0 - attract[:, :-1], (1, 0), value=1.0), 1)
    return attract * reach


class ChoiceModel(Protocol):
    """Turns slate utilities ``[B, K]`` into per-slot click probabilities (at most one click)."""

    def probs(self, utility: Tensor) -> Tensor:
        """Probability ``[B, K]`` that each slot is the clicked one."""
        ...

    def sample(self, utility: Tensor, generator: RandomSource,
               available: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(click_prob, click)`` with unavailable slots never clicked."""
        ...


class Choice:
    """The ``env.choice`` setting: ``mnl`` (with ``no_click`` utility) or ``cascade``.

    Example::

        choice = Choice("cascade")
        clicks = choice.sample(utility, generator)          # [B, K] 0/1, at most one per row
    """

    def __init__(self, kind: Literal["mnl", "cascade"] = "mnl", no_click: float = 0.0) -> None:
        if kind not in CHOICES:
            raise RecrlError(f"env.choice={kind!r}: use one of {', '.join(CHOICES)}")
        self.kind, self.no_click = kind, no_click

    def probs(self, utility: Tensor) -> Tensor:
        """Per-slot click probabilities ``[B, K]`` (``-inf`` utilities are never clicked)."""
        if self.kind == "cascade":
            return cascade_probs(utility)
        return mnl_probs(utility, self.no_click)

    def sample(self, utility: Tensor, generator: RandomSource,
               available: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(click_prob, click)``: the probabilities and one sampled choice per row; slots where
        ``available`` ``[B, K]`` is false (already shown, with ``env.no_repeat``) are never clicked."""
        if available is not None:
            utility = utility.masked_fill(~available, float("-inf"))
        prob = self.probs(utility)
        return prob, sample_choice(prob, generator)

    def alone_probs(self, utility: Tensor) -> Tensor:
        """Click probability ``[B, N]`` of each item shown alone: ``sigmoid(u - no_click)``
        (MNL) or ``sigmoid(u)`` (cascade), what ``probs`` gives a one-item slate."""
        return torch.sigmoid(utility if self.kind == "cascade" else utility - self.no_click)


MNL = Choice("mnl")


def alone_probs(choice: ChoiceModel, utility: Tensor) -> Tensor:
    """Click probability ``[B, N]`` of each item shown *alone* (a slate of one), for utilities
    ``[B, N]``: ``sigmoid(u - no_click)`` for MNL and ``sigmoid(u)`` for the cascade, one
    elementwise pass (the general path, ``probs`` of ``B * N`` one-item slates, costs a softmax
    per item: most of the oracle's time). A choice model without ``alone_probs`` of its own
    goes the general path.

    Example::

        alone_probs(MNL, torch.tensor([[0.0, 2.0]]))   # tensor([[0.5000, 0.8808]])
    """
    own = getattr(choice, "alone_probs", None)
    return own(utility) if own is not None else choice.probs(utility.reshape(-1, 1)).view_as(utility)
