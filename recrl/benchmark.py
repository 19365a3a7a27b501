"""What the ``scripts/bench_*.py`` benchmarks share: honest timing and the numbers to divide by.

Machines differ in speed by up to 8x, so a benchmark states, next to its absolute speed,
figures measured in the same process on the same device and thread count: the machine's big
matrix-product throughput (:func:`matmul_gflops`; :class:`MatmulRate` samples it between a
benchmark's timed runs, so that a slow spell of a shared machine at the start cannot lower it),
the FLOPs a step really performs (counted by
PyTorch's own :class:`~torch.utils.flop_counter.FlopCounterMode`, :func:`count_flops`) and so the
share of the arithmetic bound a step reaches (:func:`share_of_bound`). A benchmark's process
keeps freed memory as every ``recrl`` job does (:func:`add_malloc_option`), so that it times the
steps a run takes, not glibc's page faults.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from recrl.memory import keep_freed_memory

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


class MatmulRate:
    """The big-matmul rate of :func:`matmul_gflops`, sampled again whenever :meth:`sample` is
    called (a benchmark calls it between its timed runs: :func:`best_seconds`'s ``between``) and
    summarised by the best sample, the rate of the machine's quiet spells, which is what the
    timed runs' best-of also measures. A rate measured once at the start of a long benchmark
    on a shared machine can fall in a slow spell and make every later share of the bound look
    better than it is (an ad-hoc check on a 2-core AMD EPYC: 103 GFLOP/s at one start, 196-201
    at four others).

    Example::

        rate = MatmulRate(torch.device("cpu"))
        rate.sample()
        seconds = best_seconds(run, device, 5, between=rate.sample)
        share = share_of_bound(steps / seconds, flops_per_step, rate.best)
    """

    def __init__(self, device: torch.device, size: int = MATMUL_SIZE, repeats: int = 5) -> None:
        self.device, self.size, self.repeats = device, size, repeats
        self.samples: list[float] = []

    def sample(self) -> float:
        """Measure the rate now (GFLOP/s), keep it, and return it."""
        rate = matmul_gflops(self.device, self.size, self.repeats)
        self.samples.append(rate)
        return rate

    @property
    def best(self) -> float:
        """The highest rate sampled (GFLOP/s); samples one first if there is none."""
        return max(self.samples) if self.samples else self.sample()

    def summary(self) -> dict[str, float | int]:
        """The best, lowest and number of samples, for a benchmark's JSON."""
        return {"matmul_gflops": self.best, "matmul_gflops_lowest": min(self.samples),
                "matmul_samples": len(self.samples)}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``, as PyTorch counts them (matrix products and convolutions,
    forward and backward; elementwise work is not counted, so the bound it gives is optimistic)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int,
                 between: Callable[[], Any] | None = None) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (other jobs on a shared machine make calls
    slower, never faster); ``between``, if given, runs untimed before each call (e.g.
    :meth:`MatmulRate.sample`, so the rate a share divides by is sampled over the same spell)."""
    best = math.inf
    for _ in range(repeats):
        if between is not None:
            between()
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


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """``--glibc-malloc``: time with glibc's own malloc thresholds instead of the kept memory of a
    ``recrl`` job (``trainer.keep_freed_memory=true``, the default; :mod:`recrl.memory`)."""
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's malloc thresholds (a recrl job raises them, "
                             "trainer.keep_freed_memory=true; recrl/memory.py); default: as a job")


def apply_malloc_option(args: argparse.Namespace) -> bool:
    """Keep freed memory in this process unless ``--glibc-malloc`` was given; whether it is kept
    (for the benchmark's JSON: ``machine.keep_freed_memory``)."""
    return False if args.glibc_malloc else keep_freed_memory()
