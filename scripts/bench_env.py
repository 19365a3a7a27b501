"""Benchmark the batched environment: user-steps/s of :class:`~recrl.env.simulator.RecEnv`.

Random actions (drawn on the device each step with the device's own generator) are shown to
``B`` users of a user model with embedding width ``d`` (``gru``: GRU state of width ``d``;
``gru_ensemble``: an ensemble of 5 such GRUs, ``behavior.ensemble=5``, as the simulator steps
it by default, each user's own member alone; ``gru_ensemble_all``: the same ensemble with every
member stepped for every user, what the pessimism terms that read the members' disagreement
(MOPO, MOReL) cost; ``mf``: ``d``-dimensional user vectors; ``synthetic``: the built-in world's
ground truth with ``d`` topics), with autoreset, over a grid of catalogue sizes ``N`` and slate
sizes ``K``. For ``K > 1`` a slate's items are drawn independently (a slate may repeat an item:
the environment does not require distinct items, and drawing them costs nothing that the
environment does).
Steps run in plain grad mode, as in the training loop (``--inference-mode`` to compare). Each
configuration reports the best of ``--repeats`` timed runs (other jobs on a shared machine make
runs slower, never faster) and its host CPU time, so time spent waiting for a core shows. Prints
a table and writes JSON; ``--profile`` prints the top ops of the first configuration instead.

Machines differ in speed by up to 8x, so absolute user-steps/s compare badly across runs; each run
therefore also measures, in the same process, on the same device and thread count, numbers to
divide by:

- **matmul throughput** (``machine.matmul_gflops``): GFLOP/s of a float32 ``torch.mm`` of two
  1024 x 1024 matrices (``2 * 1024**3`` FLOPs), best of 5 timed calls after one warm-up, sampled
  at the start and again before every timed run (``recrl.benchmark.MatmulRate``); the best sample
  is the rate every share divides by, as the runs' own best-of times come from the machine's
  quiet spells too (``machine.matmul_gflops_lowest`` and ``machine.matmul_samples`` say how much
  it moved). It is printed under the table.
- **plain-PyTorch reference step** (``reference_user_steps_per_s``, ``ratio_to_reference`` =
  recrl user-steps/s / reference user-steps/s), for ``gru`` and ``gru_ensemble`` (each user steps
  one GRU of width ``d`` in both; other models show "-" and store ``null``). The reference is the
  least arithmetic a GRU simulator step needs, written directly with no recrl code, under
  ``torch.no_grad`` (as the user models respond): per step, draw random actions ``[B, K]`` with
  ``torch.randint`` (as the benchmark does for the environment), gather their embeddings
  ``[B, K, d]`` from an ``N x d`` table, score the shown items with the state (``B x K`` dot
  products, one ``bmm``), take the multinomial-logit probabilities over the ``K`` items and a
  no-click option of utility 0 (``softmax`` over ``[B, K + 1]``), draw one choice per user with
  ``torch.multinomial``, and update the ``B x d`` state with a ``torch.nn.GRUCell(d, d)`` on the
  mean of the shown items' embeddings. It has none of the environment's bookkeeping (history,
  autoreset, rewards, leaving) nor the model's other heads (event layer, conversion, rating,
  leave), so the ratio is the share of the time recrl spends on the bare arithmetic; unlike the
  absolute speed, it moves little from machine to machine.
- **arithmetic bound** (``bound_user_steps_per_s``, ``share_of_bound`` = user-steps/s / bound),
  for the same models: a GRU step costs ``flops_per_user_step = 12 d^2 + 2 K d`` FLOPs (GRU cell:
  3 gates x (``d x d`` input + ``d x d`` hidden) multiply-adds = ``6 d^2`` multiply-adds, 2 FLOPs
  each; the ``K`` logits: ``K d`` multiply-adds; the elementwise gate math, softmax and draw,
  ``O(d + K)``, are not counted), and ``bound = matmul FLOP/s / flops_per_user_step``, the speed
  if every step ran at the machine's big-matmul rate (small ``B x d`` products do not reach it).

``--acting`` also times the **acting loop** of a trained-size policy: each step the default
DQN's network (``conf/algo/dqn.yaml``, untrained: speed does not depend on the weights) scores
the whole catalogue for every user and serves its top ``K`` (``act(obs, explore=False)``:
averaged weights, history masked), then the environment steps. It reports the loop's
user-steps/s, its FLOPs per user-step as PyTorch counts them (``FlopCounterMode``: the matrix
products of the policy and the user model), the share of the arithmetic bound those FLOPs
give at the matmul rate (``acting_share_of_bound``; at large ``N`` the ``B x d`` by ``d x N``
scoring product dominates, and the loop should run near the bound) and its speed over the
environment's alone (``acting_over_env``), and the rate of its main product, the scoring of
every item, alone as a share of the big-matmul rate (``scoring_share_of_matmul``: with a
width of ``dim + 2`` its shape does not reach the square product's rate, and at large ``N``
the loop cannot run nearer its bound than that share). Where greedy acting searches each user's
best items inside the product instead (``recrl.kernels.best_dot``: a CPU with the native kernel
built, from ``nets.FUSED_SEARCH_ITEMS`` items, slates of up to ``nets.FUSED_MAX_SLATE`` items),
``fused_search_share_of_matmul`` is that kernel's rate alone (its FLOPs: the product's and the
items' biases; ``machine.native_search`` says ``built (avx512bf16)``, ``built (avx512)``,
``built (avx2)`` or why not). The ``avx512bf16`` build searches by bfloat16 factors, two
multiply-adds an instruction, and proves its answer in float32 (README "A search fused into the
product"), so its rate and the loop's share of the float32 bound can pass 1 (``RECRL_NATIVE=avx512``
times the float32 build); ``acting_rechecked_share`` is the share of users it searched again.

``--acting-algo NAME`` times another algorithm's default network instead of DQN's, and
``--acting-explore`` acts as training does (``explore=True``: DQN's epsilon-greedy, a
policy-gradient learner's draw from its softmax over the catalogue).

``--compile`` times the step (and with ``--acting`` the policy's ``act``) compiled as
``trainer.compile=true`` compiles it (``--compile-mode``; the warm-up steps pay the compile).
``--lean`` builds the environments as training does (``RecEnv(lean=True)``): the behavior
models skip the outputs the click reward does not read (rating, user signals).

``--compare old.json`` prints, for the configurations in both runs, the change in user-steps/s
(new / old) and in the ratio to the reference (new ratio / old ratio): across machines, read the
second, as the first mostly measures the machines.

    python scripts/bench_env.py --threads 1 --out bench_env.json
    python scripts/bench_env.py --threads 1 --compare bench_env_old.json --out bench_env.json
    python scripts/bench_env.py --device cuda --batches 4096 65536 1048576 --out bench_env_cuda.json
    python scripts/bench_env.py --device cuda --compile --items 10000 --batches 1048576 --slates 1
    python scripts/bench_env.py --threads 2 --acting --models gru --items 100 10000 --batches 1000 --slates 1
    python scripts/bench_env.py --profile --models synthetic --items 10000 --batches 1024 --slates 1
    python scripts/bench_env.py --threads 2 --lean --acting --acting-algo ppo --acting-explore --models gru \
        --items 1000 10000 --batches 1024 --slates 1
    python scripts/bench_env.py --profile --acting --compile --threads 2 --lean --models gru \
        --items 10000 --batches 1024 --slates 1 --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from recrl import kernels
from recrl.algos.dqn import DQN
from recrl.algos.nets import ScoreBlock, chunk_rows, scores_by_item, searches_fused
from recrl.behavior.ensemble import BehaviorEnsemble, OwnMemberSimulator
from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior
from recrl.behavior.mf import MFBehavior
from recrl.benchmark import (
    MATMUL_SIZE,
    MatmulRate,
    add_malloc_option,
    apply_malloc_option,
    bench_device,
    best_seconds,
    count_flops,
    share_of_bound,
    sync,
)
from recrl.compile import COMPILE_MODES, compile_env_step, compile_function, compile_mode
from recrl.config import build, group_option
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.fileio import write_text_atomic
from recrl.report import cpu_model
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Policy

MODELS = ("synthetic", "gru", "mf", "gru_ensemble", "gru_ensemble_all")
ENSEMBLE = 5  # members of ``gru_ensemble`` and ``gru_ensemble_all`` (behavior.ensemble=5)
REFERENCE_MODELS = ("gru", "gru_ensemble")  # one GRU of width d per user: the reference step applies


def build_model(name: str, n_items: int, dim: int, device: str, mf_users: int = 10_000):
    """An (untrained: throughput does not depend on the weights) user model of width ``dim``."""
    if name == "gru":
        return GRUBehavior(n_items=n_items, dim=dim, hidden=dim, device=device).eval()
    if name in ("gru_ensemble", "gru_ensemble_all"):
        members = [GRUBehavior(n_items=n_items, dim=dim, hidden=dim, device=device,
                               training=TrainingSettings(seed=k)) for k in range(ENSEMBLE)]
        ensemble = BehaviorEnsemble(members).eval()
        return ensemble if name == "gru_ensemble_all" else OwnMemberSimulator(ensemble)
    if name == "mf":
        return MFBehavior(n_items=n_items, dim=dim, n_users=mf_users, device=device).eval()
    if name == "synthetic":
        return SyntheticWorld(n_items=n_items, n_users=10, n_topics=dim, seed=0).to(device)
    raise SystemExit(f"unknown model {name!r}; use any of {', '.join(MODELS)}")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``: return freed heap memory to the system (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory growth over a block: resident set on CPU, allocated bytes on CUDA.

    On Linux the peak resident set (VmHWM) is reset by writing ``5`` to ``/proc/self/clear_refs``,
    so each configuration gets its own peak; elsewhere ``ru_maxrss`` (the process's peak so far,
    which can only under-report a later, smaller configuration) is used.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()  # hand freed heap back, so this block's allocations show as growth
        self.method = "ru_maxrss"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            pass
        self.before = (_status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.method = "cuda.max_memory_allocated"
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.before
            return
        peak = _status_kb("VmHWM") if self.method == "VmHWM" else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak = max(peak * 1024 - self.before, 0)


def make_env(model_name: str, n_items: int, slate: int, dim: int, device: torch.device,
             history: int, horizon: int, lean: bool = False) -> RecEnv:
    """The environment of one configuration (click reward; ``lean``: as training builds it)."""
    model = build_model(model_name, n_items, dim, str(device))
    return RecEnv(model, ClickReward(), horizon=horizon, slate_size=slate, history_len=history,
                  autoreset=True, device=device, lean=lean)


def bench_one(model_name: str, n_items: int, batch: int, slate: int, args: argparse.Namespace,
              between: Callable[[], Any] | None = None) -> dict:
    """User-steps/s (best of ``args.repeats`` timed runs of ``args.steps`` steps) and peak memory;
    ``between`` runs untimed before each timed run (:class:`~recrl.benchmark.MatmulRate`'s sample)."""
    device = torch.device(args.device)
    with PeakMemory(device) as mem:
        env = make_env(model_name, n_items, slate, args.dim, device, args.history, args.horizon, args.lean)
        gen = torch.Generator(device).manual_seed(0)
        env.reset(batch, seed=0)
        forget_compiled(args)
        step = compiled_step(env, args)

        def run(steps: int) -> None:
            for _ in range(steps):
                actions = torch.randint(0, n_items, (batch, slate), device=device, generator=gen)
                step(actions)

        run(args.warmup)
        times, cpu_times = [], []
        for _ in range(args.repeats):
            if between is not None:
                between()
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            run(args.steps)
            sync(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    best = min(times)
    return {"model": model_name, "n_items": n_items, "batch": batch, "slate": slate,
            "user_steps_per_s": batch * args.steps / best,
            "ms_per_step": 1e3 * best / args.steps,
            "median_user_steps_per_s": batch * args.steps / sorted(times)[len(times) // 2],
            # host CPU seconds (all threads) per step of the fastest run: with one thread, far
            # below ms_per_step means the process waited for a core (other jobs on the machine)
            "cpu_ms_per_step": 1e3 * cpu_times[times.index(best)] / args.steps,
            "peak_bytes": mem.peak, "memory_method": mem.method}


def compiled(function: Callable[..., Any], args: argparse.Namespace, owner: Any = None) -> Callable[..., Any]:
    """``function`` itself, or with ``--compile`` its ``torch.compile`` form in ``--compile-mode``
    (as ``trainer.compile`` compiles it; the first calls, in the warm-up, compile)."""
    if not args.compile:
        return function
    return compile_function(function, compile_mode(args.compile_mode), owner)


def compiled_step(env: RecEnv, args: argparse.Namespace) -> Callable[..., Any]:
    """``env.step``, with ``--compile`` over its compiled arithmetic (the method
    ``trainer.compile`` compiles, :data:`recrl.compile.ENV_HOT_PATH`; the step's random numbers
    are drawn before it)."""
    if args.compile:
        compile_env_step(env, compile_mode(args.compile_mode))
    return env.step


def forget_compiled(args: argparse.Namespace) -> None:
    """With ``--compile``, drop the graphs compiled for the grid's earlier configurations: a
    training run compiles for its one size, and a recompile for a second size would trace the
    shapes as dynamic (slower code than the run would get)."""
    if args.compile:
        torch._dynamo.reset()


def gru_step_flops(dim: int, slate: int) -> int:
    """FLOPs per user-step of a GRU simulator step: ``12 d^2`` (GRU cell, 3 gates x 2 ``d x d``
    products, a multiply-add being 2 FLOPs) ``+ 2 K d`` (the ``K`` shown items' logits)."""
    return 12 * dim * dim + 2 * slate * dim


def reference_gru_step(n_items: int, batch: int, slate: int, dim: int, device: torch.device,
                       seed: int = 0):
    """A plain-PyTorch GRU simulator step (no recrl code) as a closure ``run(steps)``: random actions,
    their embeddings, ``B x K`` logits, MNL probabilities with a no-click option, a multinomial
    draw and a ``GRUCell(d, d)`` update of the ``B x d`` state (see the module docstring)."""
    gen = torch.Generator(device).manual_seed(seed)
    table = torch.randn(n_items, dim, device=device, generator=gen) / dim**0.5
    cell = torch.nn.GRUCell(dim, dim, device=device)
    h = torch.zeros(batch, dim, device=device)
    outside = torch.zeros(batch, 1, device=device)

    def run(steps: int) -> Tensor:
        nonlocal h
        with torch.no_grad():
            for _ in range(steps):
                actions = torch.randint(0, n_items, (batch, slate), device=device, generator=gen)
                emb = table[actions]                                      # [B, K, d]
                logits = torch.bmm(emb, h.unsqueeze(-1)).squeeze(-1)      # [B, K]
                probs = torch.softmax(torch.cat([outside, logits], 1), 1)  # no-click option first
                choice = torch.multinomial(probs, 1, generator=gen)       # [B, 1]; 0: no click
                h = cell(emb.mean(1), h)
        return choice

    return run


def bench_reference(n_items: int, batch: int, slate: int, args: argparse.Namespace) -> float:
    """User-steps/s of :func:`reference_gru_step` (best of ``args.repeats`` runs of ``args.steps``)."""
    device = torch.device(args.device)
    run = reference_gru_step(n_items, batch, slate, args.dim, device)
    run(args.warmup)
    return batch * args.steps / best_seconds(lambda: run(args.steps), device, args.repeats)


def add_reference(result: dict, args: argparse.Namespace) -> dict:
    """``result`` with the reference step's speed, the ratio to it and the FLOPs per user-step
    (``None`` for models outside ``REFERENCE_MODELS``)."""
    keys = ("reference_user_steps_per_s", "ratio_to_reference", "flops_per_user_step")
    if result["model"] not in REFERENCE_MODELS:
        return {**result, **dict.fromkeys(keys)}
    reference = bench_reference(result["n_items"], result["batch"], result["slate"], args)
    speed = result["user_steps_per_s"]
    flops = gru_step_flops(args.dim, result["slate"])
    return {**result, **dict(zip(keys, (reference, speed / reference, flops), strict=True))}


def add_shares(result: dict, gflops: float) -> dict:
    """``result`` with every figure that divides by the matmul rate ``gflops`` (the run's best
    sample, known once the grid is done): the step's arithmetic bound and the shares of it
    (``None`` without a reference), and with ``--acting`` the loop's share of its bound and its
    products' rates as shares of the matmul rate (``None`` where not measured)."""
    flops = result["flops_per_user_step"]
    shared: dict[str, float | None] = dict.fromkeys(
        ("bound_user_steps_per_s", "share_of_bound", "reference_share_of_bound"))
    if flops is not None:
        reference = result["reference_user_steps_per_s"]
        shared = {"bound_user_steps_per_s": gflops * 1e9 / flops,
                  "share_of_bound": share_of_bound(result["user_steps_per_s"], flops, gflops),
                  "reference_share_of_bound": share_of_bound(reference, flops, gflops)}
    if "acting_user_steps_per_s" in result:
        def of_matmul(rate: float | None) -> float | None:
            return None if rate is None else rate / gflops

        shared |= {"acting_share_of_bound": share_of_bound(result["acting_user_steps_per_s"],
                                                           result["acting_flops_per_user_step"], gflops),
                   "scoring_share_of_matmul": of_matmul(result["scoring_gflops"]),
                   "fused_search_share_of_matmul": of_matmul(result["fused_search_gflops"])}
    return {**result, **shared}


def acting_policy(n_items: int, slate: int, history: int, horizon: int, device: torch.device,
                  algo: str = "dqn") -> Policy:
    """The default network of ``algo`` (``conf/algo/<algo>.yaml``; untrained: speed does not
    depend on the weights) for a catalogue of ``n_items``: what a trained policy costs to act
    with."""
    node = group_option("algo", algo)
    if "demonstrations" in node:
        node.demonstrations = 0  # no planner sessions to record before acting
    ctx = AlgoContext(n_items=n_items, slate_size=slate, history_len=history, horizon=horizon, device=device,
                      seed=0, item_popularity=torch.zeros(n_items, device=device), behavior=None,
                      reward=ClickReward())
    return build(node)(ctx=ctx)


class ActingLoop:
    """The acting loop of one configuration: each step the policy of ``--acting-algo`` acts
    (``explore=--acting-explore``) on the observations and the environment steps; ``compile``
    swaps both for their compiled forms as ``--compile`` asks."""

    def __init__(self, model_name: str, n_items: int, batch: int, slate: int,
                 args: argparse.Namespace) -> None:
        device = torch.device(args.device)
        self.env = make_env(model_name, n_items, slate, args.dim, device, args.history, args.horizon,
                            args.lean)
        self.policy = acting_policy(n_items, slate, args.history, args.horizon, device, args.acting_algo)
        self.explore = args.acting_explore
        self.obs = self.env.reset(batch, seed=0)
        self.act, self.step = self.policy.act, self.env.step

    def compile(self, args: argparse.Namespace) -> None:
        """Act and step compiled (with ``--compile``; otherwise unchanged)."""
        self.act, self.step = compiled(self.policy.act, args, self.policy), compiled_step(self.env, args)

    def run(self, steps: int) -> None:
        """``steps`` steps of acting and stepping."""
        for _ in range(steps):
            self.obs = self.step(self.act(self.obs, explore=self.explore))[0]


def bench_acting(result: dict, args: argparse.Namespace, between: Callable[[], Any] | None = None) -> dict:
    """``result`` with the acting loop's speed: each step the default DQN (``--acting-algo``:
    another algorithm's network) scores the whole catalogue and serves its top ``K``
    (``act(obs, explore=False)``, averaged weights, history masked; ``--acting-explore``:
    ``explore=True``, as in training: epsilon-greedy, or a policy-gradient learner's draw from
    its softmax), then the environment steps; its FLOPs per user-step (counted), its speed over
    the environment's alone (``acting_over_env``), and the GFLOP/s of its scoring product and of
    the fused search alone (DQN; :func:`add_shares` divides them by the matmul rate). ``between``
    runs untimed before each timed run."""
    device = torch.device(args.device)
    n_items, batch = result["n_items"], result["batch"]
    loop = ActingLoop(result["model"], n_items, batch, result["slate"], args)
    # counted eagerly (same FLOPs: compiled graphs run under FlopCounterMode are slower after
    # it), after one step that builds what acting reuses (the policy's first-layer tables)
    loop.run(1)
    flops = count_flops(lambda: loop.run(1)) / batch
    forget_compiled(args)
    loop.compile(args)
    loop.run(args.warmup)
    speed = batch * args.steps / best_seconds(lambda: loop.run(args.steps), device, args.repeats, between)
    rechecked = kernels.search_counts()["searched_again"]
    loop.run(args.steps)
    rechecked_share = (kernels.search_counts()["searched_again"] - rechecked) / (batch * args.steps)
    policy = loop.policy
    dqn = isinstance(policy, DQN)
    scoring = scoring_gflops(policy, batch, device, args.repeats, between) if dqn else None
    fused = fused_search_gflops(policy, batch, device, args.repeats, between) if dqn else None
    return {**result, "acting_algo": args.acting_algo, "acting_explore": args.acting_explore,
            "acting_user_steps_per_s": speed, "acting_flops_per_user_step": flops,
            "acting_over_env": speed / result["user_steps_per_s"], "acting_rechecked_share": rechecked_share,
            "scoring_gflops": scoring, "fused_search_gflops": fused}


def gflops_of(once: Callable[[], object], flops: float, device: torch.device, repeats: int,
              between: Callable[[], Any] | None = None, times: int = 10) -> float:
    """GFLOP/s of ``once`` (``flops`` FLOPs a call): the best of ``repeats`` timings of ``times``
    calls, after one warm-up (``between``: untimed, before each timing)."""
    def run() -> None:
        for _ in range(times):
            once()

    run()
    return flops * times / best_seconds(run, device, repeats, between) / 1e9


def random_state(policy: DQN, batch: int, device: torch.device) -> Tensor:
    """An encoded state ``[batch, dim]`` for ``policy``'s Q-network (speed does not depend on it)."""
    return torch.randn(batch, policy.q.item_out.embedding_dim, device=device)


def scoring_gflops(policy: DQN, batch: int, device: torch.device, repeats: int,
                   between: Callable[[], Any] | None = None) -> float:
    """GFLOP/s of the acting loop's main product alone: ``batch`` users' factors by every
    item's (``[rows x D] @ [D x N]``, in the row blocks :func:`~recrl.algos.nets.top_k_by_chunks`
    scores at a time, into one reused block, item-major where acting writes it so:
    :func:`~recrl.algos.nets.scores_by_item`). Its shape (``D`` = dim + 2 is small) sets how
    near the big-matmul rate the loop can run at large ``N``."""
    users, items = (t.detach() for t in policy.q.factors(random_state(policy, batch, device)))
    n_items = items.shape[0]
    rows = min(chunk_rows(batch, n_items, device), batch)
    # written in place and in the layout acting writes
    block = ScoreBlock().take(rows, n_items, like=users, item_major=scores_by_item(n_items, device))

    def score() -> None:
        for start in range(0, batch, rows):
            chunk = users[start:start + rows]
            torch.mm(chunk, items.T, out=block[:chunk.shape[0]])

    return gflops_of(score, 2 * batch * users.shape[1] * n_items, device, repeats, between)


def fused_search_gflops(policy: DQN, batch: int, device: torch.device, repeats: int,
                        between: Callable[[], Any] | None = None) -> float | None:
    """GFLOP/s of the search fused into the product alone (:func:`recrl.kernels.best_dot` on the
    policy's ranking factors: ``batch`` users by every item, each user's top ``K`` items, no
    scores written), where greedy acting takes it (:func:`~recrl.algos.nets.searches_fused`);
    else ``None``. Near 1 of the matmul rate, the loop's bound is within reach."""
    users, items, bias = (t.detach() for t in policy.q.ranking_factors(random_state(policy, batch, device)))
    k = policy.ctx.slate_size
    if not searches_fused(users, items, k):
        return None
    none = torch.zeros(batch, 0, dtype=torch.int64)
    flops = (2 * users.shape[1] + 1) * batch * items.shape[0]
    return gflops_of(lambda: kernels.best_dot(users, items, bias, none, k), flops, device, repeats, between)


def config_key(result: dict) -> tuple:
    """The configuration a result row measured: model, N, B, K."""
    return result["model"], result["n_items"], result["batch"], result["slate"]


def compare_results(new: list[dict], old: list[dict]) -> list[dict]:
    """For configurations in both runs (in ``new``'s order): user-steps/s of each and their change
    ``new / old``; the ratios to the reference and their change (``None`` where a run has none)."""
    old_by_key = {config_key(r): r for r in old}
    rows = []
    for r in new:
        o = old_by_key.get(config_key(r))
        if o is None:
            continue
        new_ratio, old_ratio = r.get("ratio_to_reference"), o.get("ratio_to_reference")
        rows.append({"model": r["model"], "n_items": r["n_items"], "batch": r["batch"], "slate": r["slate"],
                     "old_user_steps_per_s": o["user_steps_per_s"],
                     "new_user_steps_per_s": r["user_steps_per_s"],
                     "speed_change": r["user_steps_per_s"] / o["user_steps_per_s"],
                     "old_ratio_to_reference": old_ratio, "new_ratio_to_reference": new_ratio,
                     "ratio_change": new_ratio / old_ratio if new_ratio and old_ratio else None})
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_comparison(console: Console, rows: list[dict], old_path: Path, old_machine: dict,
                     machine: dict) -> None:
    """The table of :func:`compare_results` against ``old_path``, under both runs' matmul speeds."""
    old_gflops, new_gflops = old_machine.get("matmul_gflops"), machine.get("matmul_gflops")
    console.print(f"compare with {old_path}: matmul {_fmt(old_gflops, ',.1f')} -> {_fmt(new_gflops, ',.1f')} "
                  f"GFLOP/s (x{_fmt(new_gflops / old_gflops if old_gflops else None, '.2f')}); old on "
                  f"{old_machine.get('device_name', '?')}, {old_machine.get('threads', '?')} threads",
                  highlight=False)
    table = Table(title="change new / old: user-steps/s (machine-dependent) and ratio to the reference "
                        "(compare this one across machines)")
    for col in ("model", "N items", "B users", "K", "old user-steps/s", "new user-steps/s", "new/old",
                "old ratio", "new ratio", "ratio new/old"):
        table.add_column(col, justify="right")
    for c in rows:
        table.add_row(c["model"], f"{c['n_items']:,}", f"{c['batch']:,}", str(c["slate"]),
                      f"{c['old_user_steps_per_s']:,.0f}", f"{c['new_user_steps_per_s']:,.0f}",
                      f"{c['speed_change']:.2f}", _fmt(c["old_ratio_to_reference"], ".3f"),
                      _fmt(c["new_ratio_to_reference"], ".3f"), _fmt(c["ratio_change"], ".2f"))
    console.print(table)


def profile_one(model_name: str, n_items: int, batch: int, slate: int, args: argparse.Namespace) -> None:
    """Print the top ops of ``torch.profiler`` over ``args.steps`` steps of one configuration:
    the environment's steps on random slates, or with ``--acting`` the acting loop's (the
    default DQN's ``act`` then the step); with ``--compile`` compiled as the benchmark compiles
    them, the warm-up steps compiling."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    if args.acting:
        loop = ActingLoop(model_name, n_items, batch, slate, args)
        loop.compile(args)
        run = loop.run
    else:
        env = make_env(model_name, n_items, slate, args.dim, device, args.history, args.horizon, args.lean)
        gen = torch.Generator(device).manual_seed(0)
        env.reset(batch, seed=0)
        step = compiled_step(env, args)

        def run(steps: int) -> None:
            for _ in range(steps):
                step(torch.randint(0, n_items, (batch, slate), device=device, generator=gen))

    run(args.warmup)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        run(args.steps)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile: model={model_name} N={n_items:,} B={batch:,} K={slate} on {device}, "
          f"{args.steps} steps{' of acting' if args.acting else ''}"
          f"{', compiled' if args.compile else ''}, {torch.get_num_threads()} threads")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=args.profile_rows))


def print_progress(console: Console, r: dict, acting: bool) -> None:
    """One configuration's line as the grid runs (its shares against the best matmul rate so far;
    the table at the end divides by the run's best)."""
    scoring = _fmt(r.get("scoring_share_of_matmul"), ".2f")
    fused = r.get("fused_search_share_of_matmul")
    searched = "" if fused is None else f", the search fused into it {fused:.2f}"
    if acting and kernels.variant() == "avx512bf16":
        searched += f"; users searched again in float32 {r['acting_rechecked_share']:.2%}"
    line = (f", acting {r['acting_user_steps_per_s']:,.0f} ({r['acting_share_of_bound']:.3g} of its bound; "
            f"its scoring product alone {scoring} of the matmul rate{searched})" if acting else "")
    console.print(f"  {r['model']:>12} N={r['n_items']:>7,} B={r['batch']:>6,} K={r['slate']:>2}: "
                  f"{r['user_steps_per_s']:>13,.0f} user-steps/s, ratio to reference "
                  f"{_fmt(r['ratio_to_reference'], '.3f')}{line}", highlight=False)


def machine_info(device: torch.device) -> dict:
    """Versions, threads and the device's name."""
    cpu = cpu_model()
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": cpu, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "native_search": kernels.status()}
    return info


def main() -> None:
    """Run the grid, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU ops)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--items", type=int, nargs="*", default=[100, 10_000, 100_000], help="N")
    parser.add_argument("--batches", type=int, nargs="*", default=[1024, 4096], help="B users")
    parser.add_argument("--slates", type=int, nargs="*", default=[1, 10], help="K")
    parser.add_argument("--dim", type=int, default=64, help="embedding width d")
    parser.add_argument("--history", type=int, default=10, help="observation history length")
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--inference-mode", action="store_true",
                        help="step under torch.inference_mode (default: grad mode, as the training loop)")
    parser.add_argument("--lean", action="store_true",
                        help="step as training does: only the outputs the click reward reads "
                             "(RecEnv(lean=True))")
    parser.add_argument("--acting", action="store_true",
                        help="also time the acting loop: the default DQN's network picks each slate, "
                             "then the env steps")
    parser.add_argument("--acting-algo", default="dqn",
                        help="--acting: the algorithm whose default network acts (conf/algo/<name>.yaml)")
    parser.add_argument("--acting-explore", action="store_true",
                        help="--acting: act(obs, explore=True) as in training (epsilon-greedy; a "
                             "policy-gradient learner samples from its softmax)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the env step (and with --acting the policy's act) as "
                             "trainer.compile does; the warm-up steps compile")
    parser.add_argument("--compile-mode", default="auto", choices=COMPILE_MODES,
                        help="auto: inductor's default; reduce-overhead: CUDA graphs on a GPU")
    parser.add_argument("--profile", action="store_true",
                        help="profile the first configuration of the grid instead of benchmarking "
                             "(with --acting the acting loop, with --compile compiled)")
    parser.add_argument("--profile-rows", type=int, default=25)
    add_malloc_option(parser)
    parser.add_argument("--out", type=Path, default=Path("bench_env.json"))
    parser.add_argument("--compare", type=Path, default=None, metavar="OLD_JSON",
                        help="a previous run's JSON: print the change in user-steps/s and in the ratio "
                             "to the reference for the configurations in both")
    args = parser.parse_args()
    kept_memory = apply_malloc_option(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = bench_device(args.device)
    grid = [(m, n, b, k) for m in args.models for n in args.items for b in args.batches for k in args.slates]
    mode = torch.inference_mode if args.inference_mode else contextlib.nullcontext
    if args.profile:
        with mode():
            profile_one(*grid[0], args)
        return
    old = json.loads(args.compare.read_text()) if args.compare is not None else None
    console = Console(width=None if sys.stdout.isatty() else 150)  # a piped table keeps its columns
    rate = MatmulRate(device)
    console.print(f"matmul: {rate.sample():,.1f} GFLOP/s at the start (float32 torch.mm "
                  f"{MATMUL_SIZE}x{MATMUL_SIZE}, best of 5, {torch.get_num_threads()} threads on {device}; "
                  "sampled again before every timed run)", highlight=False)
    results = []
    with mode():
        for cfg in grid:
            r = add_reference(bench_one(*cfg, args, between=rate.sample), args)
            if args.acting:
                r = bench_acting(r, args, between=rate.sample)
            results.append(r)
            print_progress(console, add_shares(r, rate.best), args.acting)
    gflops = rate.best
    results = [add_shares(r, gflops) for r in results]
    info = {**machine_info(device), **rate.summary(), "matmul_size": MATMUL_SIZE,
            "keep_freed_memory": kept_memory}
    table = Table(title=f"RecEnv user-steps/s, random actions, autoreset, d={args.dim}, "
                        f"history {args.history}, on {info['device_name']} ({info['threads']} threads, "
                        f"{'inference' if args.inference_mode else 'grad'} mode, "
                        f"{'compiled, ' + args.compile_mode + ' mode, ' if args.compile else ''}"
                        f"best of {args.repeats} x {args.steps} steps)")
    acting_columns = ("acting user-steps/s", "acting share of bound", "acting / env",
                      "scoring / matmul rate", "fused search / matmul rate") if args.acting else ()
    for col in ("model", "N items", "B users", "K", "user-steps/s", "ref user-steps/s", "ratio",
                "bound", "share of bound", *acting_columns, "ms/step", "CPU ms/step", "peak MB"):
        table.add_column(col, justify="right")
    for r in results:
        acting_cells = ((f"{r['acting_user_steps_per_s']:,.0f}", _fmt(r["acting_share_of_bound"], ".3g"),
                         f"{r['acting_over_env']:.3f}", _fmt(r["scoring_share_of_matmul"], ".2f"),
                         _fmt(r["fused_search_share_of_matmul"], ".2f"))
                        if args.acting else ())
        table.add_row(r["model"], f"{r['n_items']:,}", f"{r['batch']:,}", str(r["slate"]),
                      f"{r['user_steps_per_s']:,.0f}", _fmt(r["reference_user_steps_per_s"], ",.0f"),
                      _fmt(r["ratio_to_reference"], ".3f"), _fmt(r["bound_user_steps_per_s"], ",.0f"),
                      _fmt(r["share_of_bound"], ".3g"), *acting_cells, f"{r['ms_per_step']:.3f}",
                      f"{r['cpu_ms_per_step']:.3f}", f"{r['peak_bytes'] / 1e6:.1f}")
    console.print(f"matmul {gflops:,.1f} GFLOP/s (the best of {len(rate.samples)} samples, the lowest "
                  f"{min(rate.samples):,.1f}; every share below divides by the best); "
                  f"ratio = user-steps/s / plain-PyTorch reference GRU step's; "
                  f"bound = matmul FLOP/s / (12 d^2 + 2 K d) FLOPs per user-step", highlight=False)
    console.print(table)
    comparison = None
    if old is not None:
        comparison = compare_results(results, old["results"])
        print_comparison(console, comparison, args.compare, old.get("machine", {}), info)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "profile", "profile_rows", "compare")}
    note = ("user-steps/s = B * steps / seconds (best of repeats); actions drawn on the device with "
            "torch.randint each step (K>1: independent draws, items may repeat in a slate); peak = "
            "growth of the peak resident set (CPU, after gc and malloc_trim) or of allocated CUDA "
            "memory over building the model and env and running the steps; matmul_gflops: float32 "
            "torch.mm of 1024x1024, best of 5, sampled at the start and before every timed run, the best "
            "sample (matmul_gflops_lowest the lowest, matmul_samples how many); "
            "reference_user_steps_per_s: the plain-PyTorch GRU step "
            "(bench_env.py's docstring), ratio_to_reference = user_steps_per_s / it; bound_user_steps_per_s "
            "= matmul FLOP/s / flops_per_user_step (12 d^2 + 2 K d), share_of_bound = user_steps_per_s / "
            "bound; null for models without a reference; --acting: acting_user_steps_per_s of the default "
            "DQN's (acting_algo's) act(explore=False) (explore=acting_explore) + env.step loop, "
            "acting_flops_per_user_step (FlopCounterMode), "
            "acting_share_of_bound, acting_over_env = acting / env-only user-steps/s, "
            "acting_rechecked_share: the share of acting's users whose search the bfloat16 build "
            "(machine.native_search built (avx512bf16)) could not prove and ran again in float32, "
            "scoring_gflops: GFLOP/s of the scoring product alone (DQN only), scoring_share_of_matmul = "
            "scoring_gflops / matmul_gflops, fused_search_gflops the same of the native search fused into "
            "the product, "
            "fused_search_share_of_matmul = fused_search_gflops / matmul_gflops "
            "(recrl.kernels.best_dot; null where acting does not take it, machine.native_search says why)")
    out = {"results": results, "machine": info, "settings": settings, "note": note}
    if comparison is not None:
        out["comparison"] = {"old": str(args.compare), "old_machine": old.get("machine", {}),
                             "rows": comparison}
    write_text_atomic(args.out, json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
