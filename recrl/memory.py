"""Keeping freed memory in the process (glibc's ``mallopt``), so that a training step's large
temporaries reuse pages already mapped instead of faulting in fresh ones.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above its mmap
threshold (128 KB at first, adapting up to 32 MB) with fresh ``mmap`` pages and gives freed
memory at the top of its heap back to the system above its trim threshold, so a step that
allocates and frees the same ten-megabyte logits every minibatch pays about 2,500 page faults
for each of them, every time. :func:`keep_freed_memory` raises both thresholds: blocks up to
:data:`MMAP_THRESHOLD` come from the heap and freed memory stays there for the next step, at
the cost of the process keeping its high-water mark of memory. The PyTorch CPU tuning guide
recommends swapping the allocator (jemalloc, tcmalloc) for the same reason; this needs nothing
installed. A no-op (``False``) where the C library has no ``mallopt`` (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from omegaconf import OmegaConf

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h parameter numbers
C_INT_MAX = (1 << 31) - 1  # mallopt takes a C int: ctypes wraps larger values silently (1 << 32 -> 0)
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GB from the heap (glibc may cap it: 32 MB is tried next)
TRIM_THRESHOLD = C_INT_MAX  # freed heap memory kept up to 2 GB
TOP_PAD = 1 << 26  # the heap grows 64 MB at a time (untouched pages cost nothing)


def keep_freed_memory_as_configured(cfg: Any) -> bool:
    """A job's ``trainer.keep_freed_memory`` (absent: off): keep freed memory where it is on;
    whether it is kept (the CLI for every job, ``scripts/bench_algos.py`` as the job would)."""
    return bool(OmegaConf.select(cfg, "trainer.keep_freed_memory", default=False)) and keep_freed_memory()


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring);
    whether the C library took them."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mapped = any(mallopt(M_MMAP_THRESHOLD, size) == 1 for size in (MMAP_THRESHOLD, 32 << 20))
    return mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_TOP_PAD, TOP_PAD) == 1
