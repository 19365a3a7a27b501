"""From a user model's predictions to a :class:`~recrl.types.Response`, in one place.

Every user model (the synthetic world, each behavior model, an ensemble and its own-member
simulator) predicts the same things for a slate: click utilities, the conversion probability,
the expected rating and the expected value of every user signal it knows, given a click
(:class:`Predictions`). This module turns them into a response: :func:`sample_response` draws
the click by the choice model and the conversion given it, lets the model advance its state,
and assembles the sampled response; :func:`expected_response` assembles the expected one
(click probabilities in place of clicks), for planning and greedy scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from recrl.env.choice import ChoiceModel
from recrl.env.noise import RandomSource, uniform
from recrl.types import Response

# (click, conversion) -> (next state, leave probability there): how a model moves on after a draw
Advance = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Predictions:
    """A user model's head outputs for a batch of items ``[B, K]`` (or the catalogue ``[B, N]``):
    click utilities (logits), and given a click the conversion probability, expected rating (1..5)
    and expected value of each user signal (``values``, keyed by signal name)."""

    click_logit: Tensor
    conversion_prob: Tensor
    rating: Tensor
    values: Mapping[str, Tensor] = field(default_factory=dict)

    def flat(self) -> tuple[Tensor, ...]:
        """Every field as one tuple (the signal values last, in ``values`` order): what batched
        functional calls (``torch.func.vmap``) return."""
        return (self.click_logit, self.conversion_prob, self.rating, *self.values.values())

    @staticmethod
    def unflat(parts: Sequence[Tensor], signals: Sequence[str]) -> Predictions:
        """The predictions of a :meth:`flat` tuple whose signal values are ``signals``."""
        click_logit, conversion_prob, rating, *values = parts
        return Predictions(click_logit, conversion_prob, rating, dict(zip(signals, values, strict=True)))

    @property
    def signals(self) -> tuple[str, ...]:
        """The names of the signal values, in order."""
        return tuple(self.values)


def draw_response(predicted: Predictions, generator: RandomSource, choice: ChoiceModel,
                  available: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Sample a slate's clicks by ``choice`` over the click utilities and the conversions given a
    click: ``(click_prob, click, conversion)``, each ``[B, K]``; items where ``available`` is false
    are never clicked."""
    click_prob, click = choice.sample(predicted.click_logit, generator, available)
    conv_prob = predicted.conversion_prob
    u = uniform(tuple(conv_prob.shape), conv_prob.device, generator)
    return click_prob, click, click * (u < conv_prob).to(click.dtype)


def sample_response(predicted: Predictions, generator: RandomSource, choice: ChoiceModel,
                    available: Tensor | None, advance: Advance,
                    uncertainty: Tensor | None = None) -> tuple[Response, Tensor]:
    """The sampled response to a slate and the user's next state: the draw of
    :func:`draw_response`, then ``advance(click, conversion)`` for the next state and the
    probability of leaving there.

    Example::

        def advance(click, conversion):
            nxt = model.next_state(state, slates, click, conversion)
            return nxt, model.leave_prob(nxt)

        response, nxt = sample_response(model.predict(state, slates), generator, MNL, None, advance)
    """
    click_prob, click, conversion = draw_response(predicted, generator, choice, available)
    nxt, leave_prob = advance(click, conversion)
    response = Response(click_prob=click_prob, click=click, conversion_prob=predicted.conversion_prob,
                        conversion=conversion, rating=predicted.rating, leave_prob=leave_prob,
                        values=dict(predicted.values), uncertainty=uncertainty)
    return response, nxt


def expected_response(click_prob: Tensor, predicted: Predictions, leave_prob: Tensor) -> Response:
    """The expected response (no sampling): ``click`` holds ``click_prob`` and ``conversion``
    the probability of a click followed by a conversion."""
    return Response(click_prob=click_prob, click=click_prob, conversion_prob=predicted.conversion_prob,
                    conversion=click_prob * predicted.conversion_prob, rating=predicted.rating,
                    leave_prob=leave_prob, values=dict(predicted.values))
