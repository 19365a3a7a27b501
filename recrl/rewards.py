"""Reward functions over a :class:`~recrl.types.Response`
(``reward=ctr|conversion|rating|watch|signal|mix``).

Each is a small callable: ``reward(response) -> Tensor[B]`` is the realised reward of a step,
``outputs`` names the optional model outputs it reads (``rating``, signal names: a training
environment computes only those, see ``RecEnv(lean=True)``; a reward without it gets them all),
``reward.expected(response) -> Tensor[B, K]`` the expected immediate reward of each slate item
under the model's probabilities (used by myopic baselines). ``signals`` names the user signals
(:mod:`recrl.env.signals`) it reads: they are checked against the logs before anything is fitted.
"""

from __future__ import annotations

from torch import Tensor

from recrl.types import RecrlError, Response


class ClickReward:
    """1 per click (``reward=ctr``)."""

    name = "ctr"
    signals: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # optional model outputs it reads ("rating", signal names)

    def __call__(self, response: Response) -> Tensor:
        """Clicks in the slate ``[B]``."""
        return response.click.sum(1)

    def expected(self, response: Response) -> Tensor:
        """Click probability of each item ``[B, K]``."""
        return response.click_prob


class ConversionReward:
    """1 per conversion (purchase after a click) (``reward=conversion``)."""

    name = "conversion"
    signals: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __call__(self, response: Response) -> Tensor:
        """Conversions in the slate ``[B]``."""
        return response.conversion.sum(1)

    def expected(self, response: Response) -> Tensor:
        """``P(click) * P(conversion | click)`` of each item ``[B, K]``."""
        return response.click_prob * response.conversion_prob


class RatingReward:
    """The rating of the clicked item, 0 without a click (``reward=rating``)."""

    name = "rating"
    signals: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("rating",)

    def __call__(self, response: Response) -> Tensor:
        """Rating of the clicked item ``[B]``."""
        return (response.click * response.rating).sum(1)

    def expected(self, response: Response) -> Tensor:
        """``P(click) * E[rating | click]`` of each item ``[B, K]``."""
        return response.click_prob * response.rating


class SignalReward:
    """The value of a user signal for the clicked item, 0 without a click
    (``reward=signal reward.signal=<name>``): click x value.

    Needs a user model that knows the signal: one fitted on logs with its column (its values
    are NaN otherwise), or the synthetic world for ``watch``.

    Example::

        reward = SignalReward(signal="watch")
        reward(response)            # [B]: the watch of each user's clicked item
    """

    def __init__(self, signal: str) -> None:
        self.signal = signal
        self.name = signal
        self.signals = self.outputs = (signal,)

    def __call__(self, response: Response) -> Tensor:
        """The signal's value of the clicked item ``[B]``."""
        return (response.click * response.value(self.signal)).sum(1)

    def expected(self, response: Response) -> Tensor:
        """``P(click) * E[value | click]`` of each item ``[B, K]``."""
        return response.click_prob * response.value(self.signal)


class WatchReward(SignalReward):
    """The watch (dwell) of the clicked item, 0 without a click (``reward=watch``): the signal
    reward of ``watch``.

    Needs a user model that knows watch values: the synthetic world (share of the item consumed)
    or a behavior model fitted on logs with a ``watch`` column (KuaiRand's watch ratio).
    """

    def __init__(self) -> None:
        super().__init__("watch")


class MixReward:
    """A weighted sum of click, conversion, rating and watch rewards (``reward=mix``); parts
    with weight 0 are left out.

    Example::

        reward = MixReward(ctr=1.0, conversion=2.0, rating=0.0, watch=0.5)
    """

    name = "mix"

    def __init__(self, ctr: float = 1.0, conversion: float = 1.0, rating: float = 0.0,
                 watch: float = 0.0) -> None:
        parts = [(ctr, ClickReward()), (conversion, ConversionReward()), (rating, RatingReward()),
                 (watch, WatchReward())]
        self.parts = [(w, part) for w, part in parts if w != 0.0]
        if not self.parts:
            raise RecrlError("reward=mix: every weight is 0; give at least one of reward.ctr, "
                             "reward.conversion, reward.rating, reward.watch a non-zero weight")
        self.signals = ("watch",) if watch != 0.0 else ()
        self.outputs = ("rating",) * (rating != 0.0) + self.signals

    def __call__(self, response: Response) -> Tensor:
        """Weighted realised reward ``[B]``."""
        return sum(w * part(response) for w, part in self.parts)

    def expected(self, response: Response) -> Tensor:
        """Weighted expected reward ``[B, K]``."""
        return sum(w * part.expected(response) for w, part in self.parts)
