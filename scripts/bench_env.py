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

    python scripts/bench_env.py --threads 1 --out bench_env.json
    python scripts/bench_env.py --device cuda --batches 4096 65536 1048576 --out bench_env_cuda.json
    python scripts/bench_env.py --profile --models synthetic --items 10000 --batches 1024 --slates 1
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
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from recrl.behavior.ensemble import BehaviorEnsemble, OwnMemberSimulator
from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior
from recrl.behavior.mf import MFBehavior
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.report import cpu_model
from recrl.rewards import ClickReward

MODELS = ("synthetic", "gru", "mf", "gru_ensemble", "gru_ensemble_all")
ENSEMBLE = 5  # members of ``gru_ensemble`` and ``gru_ensemble_all`` (behavior.ensemble=5)


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


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
             history: int, horizon: int) -> RecEnv:
    model = build_model(model_name, n_items, dim, str(device))
    return RecEnv(model, ClickReward(), horizon=horizon, slate_size=slate, history_len=history,
                  autoreset=True, device=device)


def bench_one(model_name: str, n_items: int, batch: int, slate: int, args: argparse.Namespace) -> dict:
    """User-steps/s (best of ``args.repeats`` timed runs of ``args.steps`` steps) and peak memory."""
    device = torch.device(args.device)
    with PeakMemory(device) as mem:
        env = make_env(model_name, n_items, slate, args.dim, device, args.history, args.horizon)
        gen = torch.Generator(device).manual_seed(0)
        env.reset(batch, seed=0)

        def run(steps: int) -> None:
            for _ in range(steps):
                actions = torch.randint(0, n_items, (batch, slate), device=device, generator=gen)
                env.step(actions)

        run(args.warmup)
        times, cpu_times = [], []
        for _ in range(args.repeats):
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


def profile_one(model_name: str, n_items: int, batch: int, slate: int, args: argparse.Namespace) -> None:
    """Print the top ops of ``torch.profiler`` over ``args.steps`` steps of one configuration."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    env = make_env(model_name, n_items, slate, args.dim, device, args.history, args.horizon)
    gen = torch.Generator(device).manual_seed(0)
    env.reset(batch, seed=0)

    def run(steps: int) -> None:
        for _ in range(steps):
            env.step(torch.randint(0, n_items, (batch, slate), device=device, generator=gen))

    run(args.warmup)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(args.steps)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile: model={model_name} N={n_items:,} B={batch:,} K={slate} on {device}, "
          f"{args.steps} steps, {torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))


def machine_info(device: torch.device) -> dict:
    """Versions, threads and the device's name."""
    cpu = cpu_model()
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": cpu, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu}
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
    parser.add_argument("--profile", action="store_true",
                        help="profile the first configuration of the grid instead of benchmarking")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("bench_env.json"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but CUDA is not available here")
    grid = [(m, n, b, k) for m in args.models for n in args.items for b in args.batches for k in args.slates]
    mode = torch.inference_mode if args.inference_mode else contextlib.nullcontext
    if args.profile:
        with mode():
            profile_one(*grid[0], args)
        return
    console = Console(width=None if sys.stdout.isatty() else 130)  # a piped table keeps its columns
    results = []
    with mode():
        for cfg in grid:
            results.append(bench_one(*cfg, args))
            r = results[-1]
            console.print(f"  {r['model']:>12} N={r['n_items']:>7,} B={r['batch']:>6,} K={r['slate']:>2}: "
                          f"{r['user_steps_per_s']:>13,.0f} user-steps/s", highlight=False)
    info = machine_info(device)
    table = Table(title=f"RecEnv user-steps/s, random actions, autoreset, d={args.dim}, "
                        f"history {args.history}, on {info['device_name']} ({info['threads']} threads, "
                        f"{'inference' if args.inference_mode else 'grad'} mode, "
                        f"best of {args.repeats} x {args.steps} steps)")
    for col in ("model", "N items", "B users", "K", "user-steps/s", "ms/step", "CPU ms/step", "peak MB"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["model"], f"{r['n_items']:,}", f"{r['batch']:,}", str(r["slate"]),
                      f"{r['user_steps_per_s']:,.0f}", f"{r['ms_per_step']:.3f}",
                      f"{r['cpu_ms_per_step']:.3f}", f"{r['peak_bytes'] / 1e6:.1f}")
    console.print(table)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "profile", "profile_rows")}
    note = ("user-steps/s = B * steps / seconds (best of repeats); actions drawn on the device with "
            "torch.randint each step (K>1: independent draws, items may repeat in a slate); peak = "
            "growth of the peak resident set (CPU, after gc and malloc_trim) or of allocated CUDA "
            "memory over building the model and env and running the steps")
    args.out.write_text(json.dumps({"results": results, "machine": info, "settings": settings, "note": note},
                                   indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
