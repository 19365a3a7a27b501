"""Reward functions over a :class:`~recrl.types.Response` (``reward=ctr|conversion|rating|mix``).

Each is a small callable: ``reward(response) -> Tensor[B]`` is the realised reward of a step,
``reward.expected(response) -> Tensor[B, K]`` the expected immediate reward of each slate item
under the model's probabilities (used by myopic baselines).
"""

from __future__ import annotations

from torch import Tensor

from recrl.types import Response


class ClickReward:
    """1 per click (``reward=ctr``)."""

    name = "ctr"

    def __call__(self, response: Response) -> Tensor:
        """Clicks in the slate ``[B]``."""
        return response.click.sum(1)

    def expected(self, response: Response) -> Tensor:
        """Click probability of each item ``[B, K]``."""
        return response.click_prob


class ConversionReward:
    """1 per conversion (purchase after a click) (``reward=conversion``)."""

    name = "conversion"

    def __call__(self, response: Response) -> Tensor:
        """Conversions in the slate ``[B]``."""
        return response.conversion.sum(1)

    def expected(self, response: Response) -> Tensor:
        """``P(click) * P(conversion | click)`` of each item ``[B, K]``."""
        return response.click_prob * response.conversion_prob


class RatingReward:
    """The rating of the clicked item, 0 without a click (``reward=rating``)."""

    name = "rating"

    def __call__(self, response: Response) -> Tensor:
        """Rating of the clicked item ``[B]``."""
        return (response.click * response.rating).sum(1)

    def expected(self, response: Response) -> Tensor:
        """``P(click) * E[rating | click]`` of each item ``[B, K]``."""
        return response.click_prob * response.rating


class MixReward:
    """A weighted sum of click, conversion and rating rewards (``reward=mix``).

    Example::

        reward = MixReward(ctr=1.0, conversion=2.0, rating=0.0)
    """

    name = "mix"

    def __init__(self, ctr: float = 1.0, conversion: float = 1.0, rating: float = 0.0) -> None:
        self.parts = [(ctr, ClickReward()), (conversion, ConversionReward()), (rating, RatingReward())]

    def __call__(self, response: Response) -> Tensor:
        """Weighted realised reward ``[B]``."""
        return sum(w * part(response) for w, part in self.parts)

    def expected(self, response: Response) -> Tensor:
        """Weighted expected reward ``[B, K]``."""
        return sum(w * part.expected(response) for w, part in self.parts)
