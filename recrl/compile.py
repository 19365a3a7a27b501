"""``trainer.compile=true``: ``torch.compile`` of the training loop's hot paths.

Three functions run every environment step: the policy's ``act``, the environment's ``step``
and the learner's ``update``. :func:`compile_hot_paths` replaces each, on the objects of one
run, by its compiled form (``torch.compile``: TorchDynamo captures the tensor operations,
TorchInductor fuses them into generated kernels, C++ on a CPU and Triton on a GPU; on a GPU the
``reduce-overhead`` mode replays the captured kernels as CUDA graphs, since the shapes of a
training run do not change). Python-side work the compiler cannot capture (random draws from an
explicit generator, the replay's bookkeeping) runs as before between the captured graphs, so
the numbers are the same up to floating-point rounding: the compiled kernels may sum in another
order (``tests/test_compile.py`` holds them to the eager ones).

The first calls compile (seconds to a minute, more on a slow CPU); the compiled code stays
for the rest of the run, the final evaluation included. What it buys depends on the device and
the sizes: measure with ``scripts/bench_algos.py --compile`` before turning it on (README,
"Performance").
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

HOT_PATHS = (("algorithm", "act"), ("algorithm", "update"), ("environment", "step"))


def keep_eager() -> None:
    """Leave out of every compiled graph the functions whose Python scalars change at each call
    (weight averaging's step size, :func:`recrl.algos.nets.lerp_weights`): traced, each value
    would be a constant of a new graph. Done here, at the first compile, so that a run without
    ``trainer.compile`` never imports the compiler (two seconds of start-up)."""
    from recrl.algos import nets

    if not getattr(nets.lerp_weights, "_recrl_eager", False):
        eager = torch.compiler.disable(nets.lerp_weights)
        eager._recrl_eager = True
        nets.lerp_weights = eager


def compile_mode(device: torch.device) -> str:
    """``reduce-overhead`` (CUDA graphs) on a GPU, inductor's default mode elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_hot_paths(algo: Any, env: Any, device: torch.device) -> list[str]:
    """Replace ``algo.act``, ``algo.update`` and ``env.step`` by their ``torch.compile`` forms,
    on these objects only (the classes are untouched); returns what was compiled
    (``"algorithm.act"``, ...). Algorithms without an ``update`` (fixed policies) keep theirs."""
    keep_eager()
    owners = {"algorithm": algo, "environment": env}
    mode = compile_mode(device)
    compiled = []
    for owner, method in HOT_PATHS:
        target = owners[owner]
        function = getattr(target, method, None)
        if function is None or getattr(target, "mode", None) == "none" or method in vars(target):
            continue  # nothing to compile, a fixed policy, or compiled already (a second fit)
        # dynamic=None: a value that changes between calls (the exploration rate, an averaging
        # step, a batch size) becomes a graph input after its first change instead of a
        # constant that recompiles the graph at every call
        setattr(target, method, torch.compile(function, mode=mode, dynamic=None))
        compiled.append(f"{owner}.{method}")
    logger.info("trainer.compile: %s compiled (mode %s); the first steps compile", ", ".join(compiled), mode)
    return compiled
