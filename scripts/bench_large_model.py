"""Benchmark PPO with a large policy backbone: updates/s, acting speed and memory per backbone.

Builds the synthetic world's environment (``--items`` items, one-item slates, history 10,
horizon 20: ``conf/env/default.yaml``; the user model as ``scripts/bench_env.py`` builds it)
and, for each backbone of ``--backbones``, PPO (``conf/algo/ppo.yaml``: 4 epochs of
minibatches of 256 user-steps, Adam, ``skip_shown``) with that backbone:

- ``mlp``: the default position-wise MLP encoder (``dim=32 hidden=128``);
- ``small``: the SASRec-style transformer (``encoder=transformer dim=64 layers=2 heads=2``);
- ``large``: the transformer at ``behavior=sasrec_large``'s size (``dim=256 layers=4 heads=4``).

One rollout of ``--users`` users over the horizon is collected once with uniformly random
slates and every backbone updates on that same rollout, so each PPO update
(``update(rollout)``: the epochs x minibatches of one rollout) does the same number of gradient
steps for every backbone. Every backbone is built and warmed up (one ``act``, one update)
first; then ``--repeats`` rounds each time one update and ``--act-calls`` act calls of every
backbone in turn, so load from other jobs on a shared machine falls on all backbones alike.
Reported per backbone: PPO updates/s (the best round's update, with its process CPU time over
its wall time: well below the thread count, the run waited for a core), acting user-steps/s
(``act(obs, explore=True)`` on ``--users`` observations with full histories, in grad mode as
the training loop calls it; the best round), the parameter count (policy and value head; the
item table, ``items x dim``, is most of it) and the peak memory of building the policy and of
the warm-up's act and update (the timed updates repeat the same work): on CUDA the growth of
``torch.cuda.max_memory_allocated``, on the CPU the growth of the peak resident set, reset per
backbone through ``/proc/self/clear_refs`` where Linux allows, else ``ru_maxrss``
(``scripts/bench_env.py``'s ``PeakMemory``).

Machines differ in speed by up to 8x, so the figures to compare across machines are the ones
measured in the same run:

- ``update_time_vs_mlp``: a backbone's update time over the MLP backbone's (the MLP is always
  measured, first, as the reference; its value is 1.0), and ``acting_time_vs_mlp`` likewise;
- ``share_of_bound``: updates/s over the arithmetic bound, the rate if each update's FLOPs ran
  at the machine's big-matmul rate (``matmul_gflops``: float32 1024 x 1024 ``torch.mm``, the
  faster of a measurement before and one after the backbones, as other jobs only slow it). The
  FLOPs of an update are counted, not estimated: PyTorch's ``FlopCounterMode`` over the warm-up
  update (matrix products and attention, forward and backward; elementwise work such as
  LayerNorm, GELU, softmax and Adam is not counted, so the bound is optimistic).

``--compare old.json`` prints, per backbone in both runs, the change in updates/s and in the
update time relative to the MLP (read the second across machines).

    python scripts/bench_large_model.py --items 10000 --threads 2
    python scripts/bench_large_model.py --device cuda --users 1024 --out bench_large_model_cuda.json
    python scripts/bench_large_model.py --backbones small large --compare bench_large_model.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from recrl.algos.ppo import PPO
from recrl.algos.random import RandomPolicy
from recrl.benchmark import (
    MATMUL_SIZE,
    MatmulRate,
    add_malloc_option,
    apply_malloc_option,
    bench_device,
    count_flops,
    share_of_bound,
    sync,
)
from recrl.buffer import Rollout
from recrl.config import build, group_option
from recrl.env.simulator import RecEnv
from recrl.loop import collect_episodes
from recrl.report import write_text_atomic
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import PeakMemory, machine_info, make_env  # a sibling script

BACKBONES: dict[str, dict] = {
    "mlp": {"encoder": "mlp", "dim": 32, "hidden": 128},
    "small": {"encoder": "transformer", "dim": 64, "layers": 2, "heads": 2},
    "large": {"encoder": "transformer", "dim": 256, "layers": 4, "heads": 4},  # behavior=sasrec_large's size
}
REFERENCE = "mlp"  # the backbone every other one's time is divided by
WORLD_TOPICS = 10  # the synthetic world's topics (conf/dataset/synthetic.yaml)
MEMORY_NOTES = {"cuda.max_memory_allocated": "growth of torch.cuda.max_memory_allocated",
                "VmHWM": "growth of the peak resident set (VmHWM, reset per backbone)",
                "ru_maxrss": "growth of the process's peak resident set (ru_maxrss, never reset)"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=list(BACKBONES),
                        help=f"{REFERENCE!r} is always measured too, first, as the reference")
    parser.add_argument("--items", type=int, default=10_000, help="catalogue size N")
    parser.add_argument("--users", type=int, default=256, help="users per rollout (and per act call)")
    parser.add_argument("--history", type=int, default=10, help="observation history length")
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed updates (and acting runs); the best is kept")
    parser.add_argument("--act-calls", type=int, default=5, help="act calls per timed acting run")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:1 | auto (cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU ops)")
    parser.add_argument("--seed", type=int, default=0)
    add_malloc_option(parser)
    parser.add_argument("--out", type=Path, default=Path("bench_large_model.json"))
    parser.add_argument("--compare", type=Path, default=None, metavar="OLD_JSON",
                        help="a previous run's JSON: print the change in updates/s and in the update time "
                             "relative to the MLP for the backbones in both")
    return parser.parse_args(argv)


def context(env: RecEnv, device: torch.device, seed: int) -> AlgoContext:
    """The algorithm context of ``env``: no logged data, no behavior model, click reward."""
    return AlgoContext(n_items=env.n_items, slate_size=env.slate_size, history_len=env.history_len,
                       horizon=env.horizon, device=device, seed=seed,
                       item_popularity=torch.zeros(env.n_items, device=device), behavior=None,
                       reward=ClickReward())


def build_ppo(backbone: str, ctx: AlgoContext) -> PPO:
    """PPO as ``conf/algo/ppo.yaml`` configures it, with the backbone ``backbone`` (:data:`BACKBONES`)."""
    node = group_option("algo", "ppo")
    for key, value in BACKBONES[backbone].items():
        node[key] = value
    return build(node)(ctx=ctx)


def fixed_rollout(env: RecEnv, ctx: AlgoContext, users: int, seed: int) -> tuple[Rollout, Obs]:
    """One horizon of ``users`` users shown uniformly random slates (as PPO collects: whole
    episodes, no autoreset) and the observations after it (full histories), to act on."""
    env.autoreset = False
    rollout = collect_episodes(RandomPolicy(ctx), env, env.reset(users, seed=seed))
    return rollout, env.observe()


def parameter_count(algo: PPO) -> int:
    """Parameters of the policy and the value head (each tensor once)."""
    unique = {id(p): p for p in [*algo.policy.parameters(), *algo.value.parameters()]}
    return sum(p.numel() for p in unique.values())


def prime(ctx: AlgoContext, rollout: Rollout, obs: Obs) -> None:
    """Build, act with and update the reference backbone once, unmeasured: what the first
    measurement would otherwise pay alone (config composition, lazily loaded kernels, the
    allocator's first arenas) is paid here, so the peaks compare."""
    algo = build_ppo(REFERENCE, ctx)
    algo.act(obs, explore=True)
    algo.update(rollout)


def prepare(backbone: str, ctx: AlgoContext, rollout: Rollout, obs: Obs,
            device: torch.device) -> tuple[PPO, dict]:
    """PPO with ``backbone``, warmed up (one ``act`` and one update on ``rollout``, the update's
    FLOPs counted), and its row so far: size, parameters, FLOPs per update and the peak memory
    of building it and of the warm-up (the timed updates repeat the same work)."""
    with PeakMemory(device) as mem:
        algo = build_ppo(backbone, ctx)
        algo.act(obs, explore=True)
        stats: dict = {}
        flops = count_flops(lambda: stats.update(algo.update(rollout)))
    steps = int(stats.get("train/minibatch_steps", 0))
    size = {k: BACKBONES[backbone].get(k) for k in ("encoder", "dim", "layers", "heads")}
    return algo, {"backbone": backbone, **size, "n_items": ctx.n_items, "users": obs.batch_size,
                  "params": parameter_count(algo), "valid_rows": int(rollout.valid.sum()),
                  "minibatch_steps": steps, "flops_per_update": flops, "peak_bytes": mem.peak,
                  "memory_method": mem.method}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall and process CPU seconds of one call of ``fn``."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def bench_all(algos: dict[str, PPO], rows: dict[str, dict], rollout: Rollout, obs: Obs,
              args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Time ``args.repeats`` rounds; each round times one update on ``rollout`` and
    ``args.act_calls`` act calls on ``obs`` of every backbone in turn, so load from other jobs
    falls on all of them alike. Each row gets the best round's figures."""
    updates: dict[str, list[tuple[float, float]]] = {name: [] for name in algos}
    acting: dict[str, list[float]] = {name: [] for name in algos}
    for _ in range(args.repeats):
        for name, algo in algos.items():
            updates[name].append(timed(lambda algo=algo: algo.update(rollout), device))
            acting[name].append(timed(lambda algo=algo: [algo.act(obs, explore=True)
                                                          for _ in range(args.act_calls)], device)[0])
    results = []
    for name, row in rows.items():
        update_s, cpu_s = min(updates[name])
        results.append({**row, "update_s": update_s, "updates_per_s": 1.0 / update_s,
                        "median_update_s": sorted(t for t, _ in updates[name])[len(updates[name]) // 2],
                        # host CPU seconds (all threads) of the fastest update over its wall time: on the
                        # CPU, well below the thread count means the process waited for a core
                        "update_cpu_per_wall": cpu_s / update_s,
                        "ms_per_minibatch_step": 1e3 * update_s / max(row["minibatch_steps"], 1),
                        "acting_user_steps_per_s": obs.batch_size * args.act_calls / min(acting[name])})
    return results


def add_ratios(rows: list[dict], gflops: float) -> list[dict]:
    """Each row with its update and acting time over the reference backbone's (:data:`REFERENCE`,
    the first row) and the share of the arithmetic bound its updates/s reach."""
    ref = next(r for r in rows if r["backbone"] == REFERENCE)
    return [{**r, "update_time_vs_mlp": r["update_s"] / ref["update_s"],
             "acting_time_vs_mlp": ref["acting_user_steps_per_s"] / r["acting_user_steps_per_s"],
             "bound_updates_per_s": gflops * 1e9 / r["flops_per_update"] if r["flops_per_update"] else None,
             "share_of_bound": share_of_bound(r["updates_per_s"], r["flops_per_update"], gflops)}
            for r in rows]


def compare_results(new: list[dict], old: list[dict]) -> list[dict]:
    """For backbones in both runs at the same catalogue size and users (in ``new``'s order):
    updates/s of each and their change ``new / old``; the update time relative to the MLP of
    each and its change."""
    old_by_key = {(r["backbone"], r["n_items"], r["users"]): r for r in old}
    rows = []
    for r in new:
        o = old_by_key.get((r["backbone"], r["n_items"], r["users"]))
        if o is None:
            continue
        rows.append({"backbone": r["backbone"], "old_updates_per_s": o["updates_per_s"],
                     "new_updates_per_s": r["updates_per_s"],
                     "speed_change": r["updates_per_s"] / o["updates_per_s"],
                     "old_update_time_vs_mlp": o["update_time_vs_mlp"],
                     "new_update_time_vs_mlp": r["update_time_vs_mlp"],
                     "ratio_change": r["update_time_vs_mlp"] / o["update_time_vs_mlp"]})
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(console: Console, rows: list[dict], info: dict, args: argparse.Namespace) -> None:
    """The results table, ratios first, and its footnote."""
    r0 = rows[0]
    table = Table(title=f"PPO per backbone, N={r0['n_items']:,} items, {r0['users']} users x horizon "
                        f"{args.horizon} ({r0['valid_rows']:,} valid rows, {r0['minibatch_steps']} minibatch "
                        f"steps per update), on {info['device_name']} ({info['threads']} threads)")
    for col in ("backbone", "update time / MLP", "share of bound", "updates/s", "ms/minibatch step",
                "CPU/wall", "acting time / MLP", "acting user-steps/s", "GFLOP/update", "params", "peak MB"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in rows:
        size = "" if r["encoder"] == "mlp" else f" d{r['dim']} L{r['layers']} H{r['heads']}"
        table.add_row(f"{r['backbone']} ({r['encoder']}{size})", f"{r['update_time_vs_mlp']:.2f}",
                      _fmt(r["share_of_bound"], ".3g"), f"{r['updates_per_s']:.3g}",
                      f"{r['ms_per_minibatch_step']:,.1f}", f"{r['update_cpu_per_wall']:.2f}",
                      f"{r['acting_time_vs_mlp']:.2f}",
                      f"{r['acting_user_steps_per_s']:,.0f}", f"{r['flops_per_update'] / 1e9:,.1f}",
                      f"{r['params']:,}", f"{r['peak_bytes'] / 1e6:,.1f}")
    console.print(table)
    method = MEMORY_NOTES.get(r0["memory_method"], r0["memory_method"])
    console.print(f"update = one PPO update(rollout), best of {args.repeats} rounds after a warm-up; "
                  f"share of bound = updates/s x counted FLOPs (FlopCounterMode: matmuls and attention, "
                  f"no elementwise) / matmul {info['matmul_gflops']:,.1f} GFLOP/s; acting = act(obs, "
                  f"explore=True), best of {args.repeats} x {args.act_calls} calls; CPU/wall = process CPU s "
                  f"/ wall s of the best update (below the thread count: waiting for a core); peak MB = "
                  f"{method} over building the policy and the warm-up's act and update", highlight=False)


def print_comparison(console: Console, rows: list[dict], old_path: Path, old_machine: dict,
                     machine: dict) -> None:
    """The table of :func:`compare_results` against ``old_path``, under both runs' matmul speeds."""
    old_gflops, new_gflops = old_machine.get("matmul_gflops"), machine.get("matmul_gflops")
    console.print(f"compare with {old_path}: matmul {_fmt(old_gflops, ',.1f')} -> {_fmt(new_gflops, ',.1f')} "
                  f"GFLOP/s; old on {old_machine.get('device_name', '?')}, {old_machine.get('threads', '?')} "
                  f"threads", highlight=False)
    table = Table(title="change new / old: updates/s (machine-dependent) and update time / MLP "
                        "(compare this one across machines)")
    for col in ("backbone", "old updates/s", "new updates/s", "new/old", "old time / MLP",
                "new time / MLP", "ratio new/old"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for c in rows:
        table.add_row(c["backbone"], f"{c['old_updates_per_s']:.3g}", f"{c['new_updates_per_s']:.3g}",
                      f"{c['speed_change']:.2f}", f"{c['old_update_time_vs_mlp']:.2f}",
                      f"{c['new_update_time_vs_mlp']:.2f}", f"{c['ratio_change']:.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> dict:
    """Measure every backbone, print the table, write the JSON; returns what it wrote."""
    args = parse(argv)
    kept_memory = apply_malloc_option(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = bench_device(args.device)
    old = json.loads(args.compare.read_text()) if args.compare is not None else None
    console = Console(width=None if sys.stdout.isatty() else 180)  # a piped table keeps its columns
    rate = MatmulRate(device)
    console.print(f"matmul: {rate.sample():,.1f} GFLOP/s (float32 torch.mm {MATMUL_SIZE}x{MATMUL_SIZE}, "
                  f"best of 5, {torch.get_num_threads()} threads on {device})", highlight=False)
    env = make_env("synthetic", args.items, 1, WORLD_TOPICS, device, args.history, args.horizon, lean=True)
    ctx = context(env, device, args.seed)
    rollout, obs = fixed_rollout(env, ctx, args.users, args.seed)
    prime(ctx, rollout, obs)
    names = [REFERENCE, *(b for b in dict.fromkeys(args.backbones) if b != REFERENCE)]
    algos, rows = {}, {}
    for name in names:
        algos[name], rows[name] = prepare(name, ctx, rollout, obs, device)
        r = rows[name]
        console.print(f"  {name:>6}: {r['params']:,} params, {r['flops_per_update'] / 1e9:,.1f} GFLOP per "
                      f"update ({r['minibatch_steps']} minibatch steps), peak "
                      f"{r['peak_bytes'] / 1e6:,.1f} MB", highlight=False)
    results = bench_all(algos, rows, rollout, obs, args, device)
    rate.sample()  # again: other jobs make it slower, never faster
    results = add_ratios(results, rate.best)
    info = {**machine_info(device), **rate.summary(), "matmul_size": MATMUL_SIZE,
            "keep_freed_memory": kept_memory}
    print_table(console, results, info, args)
    comparison = None
    if old is not None:
        comparison = compare_results(results, old["results"])
        print_comparison(console, comparison, args.compare, old.get("machine", {}), info)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "compare")}
    settings.update(device=str(device), backbones=names, sizes={n: BACKBONES[n] for n in names},
                    slate_size=1, world_topics=WORLD_TOPICS)
    note = ("one fixed rollout of `users` users x `horizon` steps (uniformly random slates) for every "
            "backbone; update_s: one PPO update(rollout) (conf/algo/ppo.yaml: epochs x minibatches), best "
            "of `repeats` rounds (each times every backbone in turn) after a warm-up; update_time_vs_mlp = "
            "update_s / the mlp backbone's (same run); acting_user_steps_per_s: users x act_calls / seconds "
            "of act(obs, explore=True), best round; acting_time_vs_mlp = mlp's acting speed / this one's; "
            "update_cpu_per_wall: process CPU s / wall s of the best update (below the threads: waiting "
            "for a core); matmul_gflops: the faster of before and after the backbones; flops_per_update: "
            "FlopCounterMode over the warm-up update (matmuls and attention, forward and backward; "
            "elementwise not counted); bound_updates_per_s = matmul_gflops * 1e9 / flops_per_update, "
            "share_of_bound = updates_per_s / bound; params: policy and value head; peak_bytes: "
            + MEMORY_NOTES.get(results[0]["memory_method"], results[0]["memory_method"])
            + " over building the policy and its warm-up act and update (environment and rollout excluded)")
    out = {"results": results, "machine": info, "settings": settings, "note": note}
    if comparison is not None:
        out["comparison"] = {"old": str(args.compare), "old_machine": old.get("machine", {}),
                             "rows": comparison}
    write_text_atomic(args.out, json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
