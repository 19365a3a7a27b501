"""``trainer.compile=true``: ``torch.compile`` of the training loop's hot paths.

Three functions run every environment step: the policy's ``act``, the environment's ``step``
and the learner's ``update``. :func:`compile_hot_paths` replaces each, on the objects of one
run, by its compiled form (``torch.compile``: TorchDynamo captures the tensor operations,
TorchInductor fuses them into generated kernels, C++ on a CPU and Triton on a GPU).
Python-side work the compiler cannot capture (random draws from an
explicit generator, the replay's bookkeeping) runs as before between the captured graphs, so
the numbers are the same up to floating-point rounding: the compiled kernels may sum in another
order (``tests/test_compile.py`` holds them to the eager ones).

The first calls compile (seconds to a minute, more on a slow CPU); the compiled code stays
for the rest of the run, the final evaluation included. What it buys depends on the device and
the sizes: measure with ``scripts/bench_algos.py --compile`` before turning it on (README,
"Performance").

``trainer.compile_mode`` picks ``torch.compile``'s mode. ``auto`` is inductor's default mode on
every device, chosen from measurements on an H200 (README, "Performance"): CUDA graphs
(``reduce-overhead``) ran the environment step at half the speed of the default mode with 1,024
users (its random draws split it into several graphs) and 7% slower with a million, and DQN's
training with them took 103 s for the first 1,000 of its 2,000 steps, the default mode's 42 s
for all of them (compiling included). They stay available: their outputs, and the tensors a
compiled method binds to its object (the environment's state), are cloned after each call
(:func:`owning_outputs`), because a CUDA graph writes every replay's outputs into the same
memory.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from recrl.types import RecrlError

logger = logging.getLogger(__name__)

#: the environment's method ``trainer.compile`` compiles: ``step`` draws the random numbers and
#: then calls ``transition``, the arithmetic, which compiles to one graph
ENV_HOT_PATH = "transition"
#: what ``trainer.compile`` compiles
HOT_PATHS = (("algorithm", "act"), ("algorithm", "update"), ("environment", ENV_HOT_PATH))


def keep_eager() -> None:
    """Leave out of every compiled graph the functions whose Python scalars change at each call
    (weight averaging's step size, :func:`recrl.algos.nets.lerp_weights`): traced, each value
    would be a constant of a new graph; likewise the encoder's check of its cached first-layer
    tables (:class:`recrl.algos.nets.SlotTables`). Done here, at the first compile, so that a
    run without ``trainer.compile`` does not import the compiler for it (about a second of
    start-up; in torch 2.13 constructing ``torch.optim.Adam`` imports TorchDynamo anyway, so
    of the runs without ``trainer.compile`` only those without a gradient learner save it)."""
    from recrl import kernels
    from recrl.algos import nets

    # a Python bool (whether the native search is built): the graph keeps it as a constant
    torch.compiler.assume_constant_result(kernels.best_dot_ready)
    nets.lerp_weights = _eager(nets.lerp_weights)
    # the table check compares weights with a copy (Python booleans): a graph would hold one
    # answer; eager, the graph after it gets the tables (or None) as inputs
    nets.SlotTables.lookup = _eager(nets.SlotTables.lookup)


def _eager(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` kept out of compiled graphs (``torch.compiler.disable``), once."""
    if getattr(function, "_recrl_eager", False):
        return function
    eager = torch.compiler.disable(function)
    eager._recrl_eager = True
    return eager


#: ``trainer.compile_mode`` values: ``auto`` or one of ``torch.compile``'s modes
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(requested: str = "auto") -> str:
    """The ``torch.compile`` mode: ``requested`` unless it is ``auto``, which means inductor's
    ``default`` on every device (the module docstring says why)."""
    if requested not in COMPILE_MODES:
        raise RecrlError(f"trainer.compile_mode={requested!r}: use one of {', '.join(COMPILE_MODES)}")
    return "default" if requested == "auto" else requested


def uses_cuda_graphs(mode: str) -> bool:
    """Whether ``torch.compile``'s ``mode`` replays CUDA graphs (on a GPU)."""
    return mode in ("reduce-overhead", "max-autotune")


def own(value: Any) -> Any:
    """``value`` with every tensor in it (inside tuples, lists, dicts and dataclasses) cloned."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(own(v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(own(v) for v in value)
    if isinstance(value, dict):
        return {k: own(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: own(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def owning_outputs(function: Callable[..., Any], owner: Any = None) -> Callable[..., Any]:
    """``function`` whose outputs are copies the caller owns, and likewise the tensors it binds
    to attributes of ``owner`` (an environment's state, alive flags and history). CUDA graphs
    write every call's outputs into the same memory, so the next call would overwrite a slate, an
    observation or a state the loop still holds (the replay buffer stores the previous
    observation after the next step; the environment reads its state back at the next step)."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        before = dict(vars(owner)) if owner is not None else {}
        result = own(function(*args, **kwargs))
        if owner is not None:
            for name, value in list(vars(owner).items()):
                if isinstance(value, torch.Tensor) and value is not before.get(name):
                    setattr(owner, name, value.clone())
        return result

    return call


def compile_function(function: Callable[..., Any], mode: str, owner: Any = None) -> Callable[..., Any]:
    """``torch.compile(function)`` in ``mode`` (resolved: not ``auto``), its outputs (and the
    tensors it binds to ``owner``'s attributes) owned by the caller where the mode replays CUDA
    graphs (:func:`owning_outputs`). What must stay out of every graph is kept out first
    (:func:`keep_eager`)."""
    # dynamic=None: a value that changes between calls (the exploration rate, an averaging
    # step, a batch size) becomes a graph input after its first change instead of a
    # constant that recompiles the graph at every call
    keep_eager()
    compiled = torch.compile(function, mode=mode, dynamic=None)
    return owning_outputs(compiled, owner) if uses_cuda_graphs(mode) else compiled


def compile_env_step(env: Any, mode: str) -> None:
    """Replace ``env``'s step arithmetic (:data:`ENV_HOT_PATH`) by its compiled form in ``mode``
    (resolved) and tell the environment (``env.expect_compiled``, where it has one), so that its
    user model's snapshot keeps what only a compiled step reads."""
    setattr(env, ENV_HOT_PATH, compile_function(getattr(env, ENV_HOT_PATH), mode, env))
    expect = getattr(env, "expect_compiled", None)
    if expect is not None:
        expect()


def compile_hot_paths(algo: Any, env: Any, mode: str = "auto") -> list[str]:
    """Replace ``algo.act``, ``algo.update`` and ``env.step`` by their ``torch.compile`` forms
    (``mode``: see :func:`compile_mode`), on these objects only (the classes are untouched);
    returns what was compiled (``"algorithm.act"``, ...). Algorithms without an ``update``
    (fixed policies) keep theirs."""
    owners = {"algorithm": algo, "environment": env}
    mode = compile_mode(mode)
    compiled = []
    for owner, method in HOT_PATHS:
        target = owners[owner]
        function = getattr(target, method, None)
        if function is None or getattr(target, "mode", None) == "none" or method in vars(target):
            continue  # nothing to compile, a fixed policy, or compiled already (a second fit)
        if method == ENV_HOT_PATH:
            compile_env_step(target, mode)
        else:
            setattr(target, method, compile_function(function, mode, target))
        compiled.append(f"{owner}.{method}")
    logger.info("trainer.compile: %s compiled (mode %s); the first steps compile", ", ".join(compiled), mode)
    return compiled
