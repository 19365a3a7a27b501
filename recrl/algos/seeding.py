"""Seeding an algorithm's own random numbers: its initial weights come from a stream seeded
with ``ctx.seed``, and building it leaves torch's global random state as it was."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

Init = TypeVar("Init", bound=Callable[..., None])


@contextlib.contextmanager
def own_random_stream(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block torch's global generator (and ``device``'s, on a GPU) starts from
    ``seed``; afterwards it is exactly as before the block. Network constructors draw their
    initial weights from the global generator: this makes an algorithm's weights a function of
    its own seed without touching anyone else's random numbers."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def seeded_init(init: Init) -> Init:
    """Decorates an algorithm's ``__init__(self, ctx, ...)``: everything it builds is drawn
    from a random stream seeded with ``ctx.seed`` (:func:`own_random_stream`), so building an
    algorithm leaves the global random state untouched."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        ctx = kwargs["ctx"] if "ctx" in kwargs else args[0]
        with own_random_stream(ctx.seed, ctx.device):
            init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
