"""What the ``scripts/bench_*.py`` benchmarks share: honest timing and the numbers to divide by.

Machines differ in speed by up to 8x, so a benchmark states, next to its absolute speed,
figures measured in the same process on the same device and thread count: the machine's big
matrix-product throughput (:func:`matmul_gflops`), the FLOPs a step really performs (counted by
PyTorch's own :class:`~torch.utils.flop_counter.FlopCounterMode`, :func:`count_flops`) and so the
share of the arithmetic bound a step reaches (:func:`share_of_bound`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

MATMUL_SIZE = 1024


def bench_device(name: str) -> torch.device:
    """A benchmark's ``--device``: ``auto`` is CUDA when available, else the CPU; an explicit CUDA
    device must exist (else the script stops with one line)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}, but CUDA is not available here")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``torch.mm`` of two ``size x size`` matrices on ``device`` at the current
    thread count: ``2 size^3`` FLOPs over the best of ``repeats`` timed calls (after one warm-up)."""
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen)
    b = torch.randn(size, size, device=device, generator=gen)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b, out=out), device, repeats) / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``, as PyTorch counts them (matrix products and convolutions,
    forward and backward; elementwise work is not counted, so the bound it gives is optimistic)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (other jobs on a shared machine make calls
    slower, never faster)."""
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def share_of_bound(per_second: float, flops_each: int, gflops: float) -> float | None:
    """``per_second`` over the arithmetic bound: the rate if each unit's ``flops_each`` FLOPs ran
    at the machine's big-matmul rate ``gflops`` (``None`` when nothing is counted)."""
    if flops_each <= 0:
        return None
    return per_second / (gflops * 1e9 / flops_each)


def rate_text(per_second: float) -> str:
    """A rate for a table: whole numbers with thousands separators from 100 on, three significant
    digits below (an update every few seconds reads 0.312, not 0)."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"
