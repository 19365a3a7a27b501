"""Native CPU kernels that PyTorch lacks, compiled on first use.

:func:`best_dot`: each user's highest-scoring items of a factorised scorer (``users @ items.T``),
made and searched in registers tile by tile, so that the ``[users x N]`` scores are never
written to memory (``best_dot.c``; README "A search fused into the product"). Greedy acting
over a large catalogue spends as much time writing and re-reading its scores as making them;
this kernel does the product alone at the matrix-multiply rate.

The C source is compiled once per source, compiler and instruction set with the machine's C
compiler (``$CC``, else ``cc``; :data:`FLAGS` and the build's, :data:`VARIANTS`) into
``$RECRL_KERNEL_DIR`` (default ``~/.cache/recrl/kernels``), written atomically, and loaded with
:mod:`ctypes`; its OpenMP threads are PyTorch's own (the library resolves ``libgomp.so.1`` to
the copy PyTorch loaded). The build is the widest the CPU runs, as PyTorch and the library
itself (``best_dot_runs_here``) report it: ``avx512bf16`` (AVX-512 with the bfloat16 dot
product: the search by rounded factors, proven exact or searched again, twice the multiply-adds
per instruction), ``avx512``, else ``avx2`` (the vector width of most laptops and desktops).
All three answer with the same items. ``RECRL_NATIVE=avx512`` or ``avx2`` asks for a narrower
build. Where the CPU has none, there is no compiler, the build fails, or ``RECRL_NATIVE=0``,
:func:`best_dot_ready` is false and callers take their PyTorch path (:func:`unavailable_reason`
says why; :func:`status` says which build runs or why none does).

Example::

    from recrl.kernels import best_dot, best_dot_ready

    if best_dot_ready():
        best = best_dot(users, items, None, excluded, 10)  # [B, 10]: top 10 of users @ items.T
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.flop_counter
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("best_dot.c")
# -fno-strict-aliasing: the BF16 build reads its bfloat16 pairs, written as 32-bit integers, as floats
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-fno-strict-aliasing"]
#: the builds, widest first: the flags of each and the PyTorch CPU capabilities that run it
VARIANTS = {"avx512bf16": (["-mavx512f", "-mfma", "-mavx512bf16", "-DRECRL_BF16"], ("AVX512",)),
            "avx512": (["-mavx512f", "-mfma"], ("AVX512",)),
            "avx2": (["-mavx2", "-mfma", "-DRECRL_AVX2"], ("AVX512", "AVX2"))}
SMALL_WORK = 1 << 16  # user-item pairs below which one thread scores them (threads cost more)

def kernel_dir() -> Path:
    """Where compiled kernels are kept: ``$RECRL_KERNEL_DIR``, else ``~/.cache/recrl/kernels``."""
    return Path(os.environ.get("RECRL_KERNEL_DIR") or Path.home() / ".cache" / "recrl" / "kernels")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc")


def _build(compiler: str, variant: str) -> Path:
    """The compiled library of ``variant``'s path, building it first if this source, compiler
    and variant have none."""
    flags = [*FLAGS, *VARIANTS[variant][0]]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + " ".join(flags).encode()).hexdigest()[:16]
    target = kernel_dir() / f"best_dot-{variant}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", partial],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"{compiler} exited with {done.returncode}: {last}")
        os.replace(partial, target)  # parallel builders each write their own file; one wins
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.cache
def _memcmp() -> Callable[..., int] | None:
    """The C library's ``memcmp`` (the one the process already runs on), or ``None`` where
    :mod:`ctypes` cannot reach it."""
    try:
        memcmp = ctypes.CDLL(None).memcmp
    except (OSError, TypeError, AttributeError):
        return None
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    memcmp.restype = ctypes.c_int
    return memcmp


def same_bytes(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bytes (same shape and dtype): contiguous CPU
    tensors by the C library's ``memcmp``, about four times faster than ``torch.equal`` at a
    10,000-item table; anything else by ``torch.equal``, which compares values (``-0.0``
    equals ``0.0``, NaN equals nothing). A tensor and its copy are the same bytes."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    memcmp = _memcmp()
    if memcmp and a.device.type == b.device.type == "cpu" and a.is_contiguous() and b.is_contiguous():
        return memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0
    return torch.equal(a, b)


@functools.cache
def load_variant(variant: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library of one build (:data:`VARIANTS`) and ``None``, or ``None`` and the
    reason it cannot run here (tests compare the builds a CPU runs; acting takes
    :func:`_load`'s)."""
    compiler, capability = _compiler(), torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        reason = f"an {platform.machine()} CPU (the kernel is AVX-512 or AVX2)"
    elif capability not in VARIANTS[variant][1]:
        reason = f"a CPU without {variant.upper()} (PyTorch reports {capability})"
    elif compiler is None:
        reason = "no C compiler ($CC or cc)"
    else:
        try:
            library = ctypes.CDLL(str(_build(compiler, variant)))
        except OSError as error:
            reason = f"the build failed: {error}"
        else:
            library.best_dot_runs_here.restype = ctypes.c_int
            library.best_dot_rechecked.restype = ctypes.c_int64
            library.best_dot_rounded.restype = ctypes.c_int64
            if not library.best_dot_runs_here():
                return None, f"a CPU without the {variant.upper()} instructions"
            pointer, size = ctypes.c_void_p, ctypes.c_int64
            library.best_dot.argtypes = [pointer, pointer, pointer, size, size, size, pointer, size,
                                         size, pointer, ctypes.c_int]
            library.best_dot.restype = ctypes.c_int
            return library, None
    return None, reason


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None, str | None]:
    """The library acting uses, its variant and ``None``; or ``None``, ``None`` and the reason
    there is none. ``RECRL_NATIVE``: ``0`` none, a build's name (``avx512``, ``avx2``) that
    build, else the widest the CPU runs."""
    wanted = os.environ.get("RECRL_NATIVE", "1").lower()
    if wanted == "0":
        reason = "RECRL_NATIVE=0"
    elif wanted not in ("1", *VARIANTS):
        reason = f"RECRL_NATIVE={wanted!r} (use 0, 1 or one of {', '.join(VARIANTS)})"
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        # auto: the builds this CPU runs, widest first; where it runs none, the narrowest
        # build's refusal says why
        names = ([name for name, (_, runs_on) in VARIANTS.items() if capability in runs_on]
                 or [list(VARIANTS)[-1]]) if wanted == "1" else [wanted]
        reason = None
        for name in names:
            library, why = load_variant(name)
            if library is not None:
                return library, name, None
            reason = reason or why  # the widest build's refusal
    log.info("native best_dot unavailable (%s): greedy acting uses the PyTorch path", reason)
    return None, None, reason


def _library() -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` (the reason in :func:`unavailable_reason`)."""
    return _load()[0]


def variant() -> str | None:
    """Which build acting runs (``avx512bf16``, ``avx512``, ``avx2``), or ``None`` where none does."""
    return _load()[1]


def status() -> str:
    """For reports: ``built (<variant>)``, or why no build runs here."""
    return f"built ({variant()})" if best_dot_ready() else str(unavailable_reason())


def search_counts() -> dict[str, int]:
    """The users this process's kernel searched by rounded factors (``rounded_users``: the
    ``avx512bf16`` build, from its threshold of items on) and of them the ones it could not
    prove and searched again in float32 (``searched_again``), since it loaded; both 0 for the
    other builds and without a kernel. For reports and benchmarks."""
    library = _library()
    if library is None:
        return {"rounded_users": 0, "searched_again": 0}
    return {"rounded_users": int(library.best_dot_rounded()),
            "searched_again": int(library.best_dot_rechecked())}


def best_dot_ready() -> bool:
    """Whether :func:`best_dot` runs the native kernel here (built and loaded on first call; a
    compiled graph keeps the answer as a constant: :func:`recrl.compile.keep_eager`)."""
    return _library() is not None


def unavailable_reason() -> str | None:
    """Why the native kernel is not used here, or ``None`` where it is."""
    return _load()[2]


@torch.library.custom_op("recrl::best_dot", mutates_args=())
def best_dot(users: Tensor, items: Tensor, bias: Tensor | None, excluded: Tensor, top: int = 1) -> Tensor:
    """The indices ``[B, top]`` of each user's ``top`` highest scores ``users @ items.T + bias``
    (``[B, D]`` by ``[N, D]``, plus ``bias`` ``[N]`` where given; float32 on the CPU), best
    first, skipping each user's ``excluded`` items (``[B, S]`` ids; ids of ``N`` or more, such
    as padding, are ignored; ``S`` may be 0). Of equal scores the earlier item comes first
    (``max``'s rule for one item). The scores are summed in the kernel's own order, so where two
    items' scores differ by float32 rounding alone the order may differ from another product's.
    Inputs with a non-finite value or large enough for a score to overflow, a user with fewer
    than ``top`` items left (and a kernel out of memory, or none built:
    :func:`best_dot_ready`) take the PyTorch path: ``max`` for one item (NaN counting highest,
    item 0 where every item is excluded), ``topk`` for more."""
    return search_with(_library(), users, items, bias, excluded, top)


def search_with(library: ctypes.CDLL | None, users: Tensor, items: Tensor, bias: Tensor | None,
                excluded: Tensor, top: int = 1) -> Tensor:
    """:func:`best_dot` by ``library`` (one of :func:`load_variant`'s; ``None``: the PyTorch
    path)."""
    users, items = users.contiguous(), items.contiguous()
    bias = None if bias is None else bias.contiguous()
    excluded = excluded.to(torch.int64).contiguous()
    if library is None:
        return _best_by_product(users, items, bias, excluded, top)
    (batch, dim), n_items = users.shape, items.shape[0]
    best = torch.empty(batch, top, dtype=torch.int64)
    threads = 1 if batch * n_items < SMALL_WORK else torch.get_num_threads()
    status = library.best_dot(users.data_ptr(), items.data_ptr(),
                              None if bias is None else bias.data_ptr(), batch, dim, n_items,
                              excluded.data_ptr() if excluded.shape[1] else None, excluded.shape[1],
                              top, best.data_ptr(), threads)
    return best if status == 0 else _best_by_product(users, items, bias, excluded, top)


@best_dot.register_fake
def _(users: Tensor, items: Tensor, bias: Tensor | None, excluded: Tensor, top: int = 1) -> Tensor:
    return users.new_empty(users.shape[0], top, dtype=torch.int64)


def _best_by_product(users: Tensor, items: Tensor, bias: Tensor | None, excluded: Tensor,
                     top: int) -> Tensor:
    """:func:`best_dot`'s answer by PyTorch's product and ``max`` (``topk`` for more than one)."""
    scores = users @ items.T if bias is None else torch.addmm(bias, users, items.T)
    valid = excluded < scores.shape[1]
    rows = torch.arange(scores.shape[0])[:, None].expand_as(excluded)
    scores[rows[valid], excluded[valid]] = float("-inf")
    return scores.max(1).indices[:, None] if top == 1 else scores.topk(top, dim=1).indices


@torch.utils.flop_counter.register_flop_formula(torch.ops.recrl.best_dot)
def _best_dot_flops(users_shape, items_shape, bias_shape, *args, out_shape=None, **kwargs) -> int:
    """The product's multiply-adds, as ``mm`` counts them, and the bias's adds (the search's
    comparisons are not counted, as ``max``'s are not)."""
    scores = users_shape[0] * items_shape[0]
    return 2 * scores * users_shape[1] + (0 if bias_shape is None else scores)
