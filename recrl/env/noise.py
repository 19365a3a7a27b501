"""A step's random numbers drawn in one call, before the step's arithmetic.

A simulator step draws three sets of uniforms (the choice, the conversions, leaving). Drawn from
an explicit ``torch.Generator`` inside the step, each draw splits a ``torch.compile``d step into
separate graphs with eager work between them. :class:`PreDrawn` draws them all at once outside
the compiled code and hands them out in order, so the step's arithmetic is one graph.

On a CPU generator the numbers are the same as three separate draws (the Mersenne Twister hands
out one number per element, in order), so every seed's results are unchanged; on a CUDA
generator (Philox, which advances by whole blocks per call) the stream differs from separate
draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recrl.types import RecrlError


class PreDrawn:
    """``count`` uniforms in [0, 1) drawn from ``generator`` at once; :meth:`uniform` hands
    out the next ``shape``'s worth, in order.

    Example::

        draws = PreDrawn(generator, count=3 * n_users, device="cpu")
        u = draws.uniform((n_users, 1))       # the first n_users numbers
    """

    def __init__(self, generator: torch.Generator, count: int, device: torch.device | str) -> None:
        self.values = torch.rand(count, device=device, generator=generator)
        self.used = 0

    def uniform(self, shape: tuple[int, ...]) -> Tensor:
        """The next ``prod(shape)`` numbers as a ``shape`` tensor."""
        n = math.prod(shape)
        if self.used + n > self.values.shape[0]:
            drawn = self.values.shape[0]
            raise RecrlError(f"PreDrawn: asked for {self.used + n} uniforms, {drawn} were drawn")
        out = self.values[self.used:self.used + n].view(shape)
        self.used += n
        return out

    def check_used(self) -> None:
        """Fail when fewer numbers were used than drawn (the count did not match the draws)."""
        if self.used != self.values.shape[0]:
            raise RecrlError(f"PreDrawn: {self.values.shape[0]} uniforms drawn, {self.used} used")


RandomSource = torch.Generator | PreDrawn


def uniform(shape: tuple[int, ...], device: torch.device | str, source: RandomSource) -> Tensor:
    """Uniforms in [0, 1) of ``shape``: from ``source``'s pre-drawn numbers or drawn from it."""
    if isinstance(source, PreDrawn):
        return source.uniform(shape)
    return torch.rand(shape, device=device, generator=source)
