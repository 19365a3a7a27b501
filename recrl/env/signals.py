"""User signals as data: the values a user gives a clicked item beyond the click itself.

The *core* responses (click, conversion, rating, leave) drive the choice model and the user
state and stay explicit fields of :class:`~recrl.types.Response`. Every other signal (``watch``
today) is a :class:`Signal` in the registry :data:`SIGNALS`, and one name is all of it: the log
column, the key in :attr:`Response.values <recrl.types.Response.values>`, the behavior models'
head (``<name>_head``, with its ``<name>_known`` flag) and what a reward declares it reads
(:class:`recrl.rewards.SignalReward`). Registering a signal is enough for the logs to keep its
column, for every behavior model built afterwards to fit a head for it and predict it (NaN where
the logs have no values) and for the evaluation to report its total per episode.

Example::

    from recrl.env.signals import Signal, register
    import torch

    register(Signal("like", link=torch.sigmoid, loss="bce", weight=1.0, label="like"))

This module imports only torch: :mod:`recrl.types` builds on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("huber", "mse", "bce")
CORE_COLUMNS = ("user", "item", "time", "click", "conversion", "rating", "leave", "propensity")


@dataclass(frozen=True)
class Signal:
    """A value a user gives a clicked item (e.g. its watch time), learned and served as data.

    Attributes:
        name: the log column, the key in ``Response.values`` and the head ``<name>_head``.
        link: maps the head's logit to the prediction (``softplus`` for a non-negative amount,
            ``sigmoid`` for a probability).
        loss: how the head is fitted on the clicked rows whose value is known: ``huber``
            (smooth L1 of ``link(logit)``, robust to long tails), ``mse`` (squared error of
            ``link(logit)``) or ``bce`` (binary cross-entropy of the logit, values in 0..1).
        weight: the weight of that loss next to the click loss (which has weight 1).
        label: how messages name it (``"watch (dwell)"``); the name when empty.
        datasets: the shipped ``dataset=`` options whose logs have it (named in messages).

    Example::

        Signal("watch", link=F.softplus, loss="huber", weight=0.1, label="watch (dwell)")
    """

    name: str
    link: Callable[[Tensor], Tensor] = F.softplus
    loss: str = "huber"
    weight: float = 0.1
    label: str = ""
    datasets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name in CORE_COLUMNS:
            raise ValueError(f"signal name {self.name!r}: use an identifier that is not one of "
                             f"{', '.join(CORE_COLUMNS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"signal {self.name}: loss={self.loss!r}; use one of {', '.join(LOSSES)}")

    @property
    def head(self) -> str:
        """The behavior models' attribute holding its head: ``<name>_head``."""
        return f"{self.name}_head"

    @property
    def known(self) -> str:
        """The behavior models' buffer saying the logs had values: ``<name>_known``."""
        return f"{self.name}_known"

    @property
    def description(self) -> str:
        """How messages name it."""
        return self.label or self.name

    def predict(self, logit: Tensor, known: Tensor) -> Tensor:
        """The prediction ``link(logit)``, NaN where ``known`` (broadcasting) is false: a value
        never learned cannot be used silently."""
        value = self.link(logit)
        return torch.where(known, value, torch.full_like(value, float("nan")))

    def fit_loss(self, logit: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """``weight`` times the mean loss over the rows where ``mask`` is 1."""
        if self.loss == "bce":
            each = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        elif self.loss == "mse":
            each = (self.link(logit) - target) ** 2
        else:
            each = F.smooth_l1_loss(self.link(logit), target, reduction="none")
        return self.weight * (each * mask).sum() / mask.sum().clamp(min=1.0)


SIGNALS: dict[str, Signal] = {}


def register(signal: Signal) -> Signal:
    """Add ``signal`` to :data:`SIGNALS` (a name already there is an error) and return it.
    Behavior models built afterwards get a head for it."""
    if signal.name in SIGNALS:
        raise ValueError(f"signal {signal.name!r} is already registered")
    SIGNALS[signal.name] = signal
    return signal


def unregister(name: str) -> None:
    """Remove the signal ``name`` from :data:`SIGNALS` (tests that register one clean up)."""
    SIGNALS.pop(name)


def signal_names() -> tuple[str, ...]:
    """The registered signals' names, in registration order."""
    return tuple(SIGNALS)


WATCH = register(Signal("watch", link=F.softplus, loss="huber", weight=0.1, label="watch (dwell)",
                        datasets=("kuairand", "synthetic")))
