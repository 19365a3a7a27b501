"""Benchmark the algorithms: update speed and time to reward on one world.

Builds the run's stages once from ``recrl train`` overrides (data, fitted or cached behavior
model, ground truth), then trains each algorithm at its own default budget, the trainer
settings of ``recrl train algo=<name>`` (DQN's and C51's 1,500 steps of 1,024 users, PPO's
1,500 steps of 256 users, the others' 6,000 steps of 256 users or 6,000 updates on logged
batches: ``conf/algo_trainer/``), or at the ``--steps`` and ``--n-users``
given for all, and every ``--eval-every`` steps (default: a twelfth of the run) scores it in the
ground-truth environment (``--eval-episodes`` episodes, not counted in the training time).
Reports per algorithm: updates/s and user-steps/s of training alone, the final ground-truth
return, and the time to reward: training seconds until the ground-truth return first reached the
myopic greedy baseline's (``--target greedy``) or a fixed value (``--target 3.0``); ``-`` when
it never did. On the synthetic world it also evaluates the oracle
(:class:`recrl.algos.oracle.Oracle`) on the same users and reports each algorithm's final share
of the oracle's return and the environment steps until it first reached half of it.
Prints a table and writes JSON (each algorithm's ``curve``: every check's step, training
seconds and ground-truth return, the learning curve a budget is chosen by).

Machines differ in speed by up to 8x, so each run also measures, in the same process:

- the machine's **matmul throughput** (GFLOP/s of a 1024 x 1024 float32 ``torch.mm``; the faster
  of a measurement before and one after the training runs, as other jobs only slow it:
  ``facts.matmul_gflops``, with ``matmul_gflops_lowest``);
- a **plain-PyTorch reference update** (``reference_updates_per_s``): one double-DQN update of
  the default network's size written directly with ``torch.nn`` (an MLP over the flattened
  history of ``L`` items of width 32 and their clicks, 128 hidden units twice, a 32-wide
  state scored against an ``N x 32`` item table; Huber loss on a batch of 256 with the online
  and target networks' next-state values; backward; Adam), and for each algorithm
  ``ratio_to_reference`` = its updates/s over the reference's: a yardstick that moves little
  from machine to machine (for DQN it is the overhead over the bare arithmetic; other
  algorithms' updates do other work, so read their ratio across runs, not against 1);
- the **arithmetic bound**: the FLOPs of ``--flop-steps`` training steps (acting, environment,
  updates; counted by PyTorch's ``FlopCounterMode`` in a separate, untimed run that updates from
  the first step) per environment step, and ``share_of_bound`` = measured environment steps/s over
  ``matmul FLOP/s / FLOPs per step``.

``--compile`` trains with ``trainer.compile=true`` (the compile time is part of the training
time, as in a run). ``--compare old.json`` prints the change in updates/s and in the ratio to the
reference per algorithm.

    python scripts/bench_algos.py --out bench_algos.json                # every algorithm, own budgets
    python scripts/bench_algos.py --algos dqn ppo cql --steps 3000 --device cuda -- env.slate_size=1
    python scripts/bench_algos.py --algos dqn --n-users 256 --compile --compare bench_algos.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from recrl.algos.oracle import Oracle, can_plan
from recrl.benchmark import MatmulRate, bench_device, best_seconds, count_flops, rate_text, share_of_bound
from recrl.compile import COMPILE_MODES
from recrl.config import algo_options, build_algo_by_name, compose_config, group_option, validate
from recrl.logs import console_logging
from recrl.loop import Trainer
from recrl.memory import keep_freed_memory_as_configured
from recrl.metrics.online import run_episodes
from recrl.report import cpu_model, write_text_atomic
from recrl.stages import build_stages


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="*", default=None, help="default: every algo option")
    parser.add_argument("--steps", type=int, default=None,
                        help="trainer steps per algorithm (default: each algorithm's own, as recrl train)")
    parser.add_argument("--n-users", type=int, default=None,
                        help="users per environment step (default: each algorithm's own)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between ground-truth checks (default: a twelfth of the steps)")
    parser.add_argument("--eval-episodes", type=int, default=256)
    parser.add_argument("--target", default="greedy", help="'greedy' or a ground-truth return")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flop-steps", type=int, default=60, help="training steps whose FLOPs are counted")
    parser.add_argument("--compile", action="store_true", help="train with trainer.compile=true")
    parser.add_argument("--compile-mode", default="auto", choices=COMPILE_MODES,
                        help="trainer.compile_mode (auto: inductor's default; reduce-overhead: CUDA "
                             "graphs on a GPU)")
    parser.add_argument("--compare", type=Path, default=None, metavar="OLD_JSON",
                        help="a previous run's JSON: change in updates/s and in the ratio to the reference")
    parser.add_argument("--out", type=Path, default=Path("bench_algos.json"))
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --")
    return parser.parse_args()


def learns(name: str) -> bool:
    """Whether ``algo=<name>`` trains (every option but those of ``mode`` ``none``: the baselines,
    the planner and the supervised model's top-K only act)."""
    return get_class(group_option("algo", name)._target_).mode != "none"


def ground_truth_return(policy, env, episodes: int, seed: int) -> float:
    """Mean ground-truth return of ``policy`` (no exploration)."""
    return float(run_episodes(policy, env, episodes, seed=seed).returns.mean())


REFERENCE_BATCH, REFERENCE_DIM, REFERENCE_HIDDEN = 256, 32, 128


def reference_update(n_items: int, history: int, device: torch.device):
    """A plain-PyTorch double-DQN update of the default network's size (no recrl code) as a
    closure ``run(updates)`` (see the module docstring)."""
    gen = torch.Generator(device).manual_seed(0)
    width = history * (REFERENCE_DIM + 1) + 1

    def network() -> nn.ModuleDict:
        return nn.ModuleDict({
            "history": nn.Embedding(n_items + 1, REFERENCE_DIM),
            "mlp": nn.Sequential(nn.Linear(width, REFERENCE_HIDDEN), nn.ReLU(),
                                 nn.Linear(REFERENCE_HIDDEN, REFERENCE_HIDDEN), nn.ReLU(),
                                 nn.Linear(REFERENCE_HIDDEN, REFERENCE_DIM)),
            "out": nn.Embedding(n_items, REFERENCE_DIM)}).to(device)

    online, target = network(), network()
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-3)
    b = REFERENCE_BATCH

    def q(net: nn.ModuleDict, items: Tensor, clicks: Tensor) -> Tensor:
        slots = torch.cat([net["history"](items), clicks.unsqueeze(-1)], -1).reshape(b, -1)
        state = net["mlp"](torch.cat([slots, torch.ones(b, 1, device=device)], 1))
        return state @ net["out"].weight.T

    def run(updates: int) -> None:
        for _ in range(updates):
            items = torch.randint(0, n_items, (b, history), device=device, generator=gen)
            next_items = torch.randint(0, n_items, (b, history), device=device, generator=gen)
            clicks = torch.rand(b, history, device=device, generator=gen).round()
            action = torch.randint(0, n_items, (b, 1), device=device, generator=gen)
            reward = torch.rand(b, device=device, generator=gen)
            with torch.no_grad():
                best = q(online, next_items, clicks).argmax(1, keepdim=True)
                y = reward + 0.9 * q(target, next_items, clicks).gather(1, best).squeeze(1)
            loss = F.smooth_l1_loss(q(online, items, clicks).gather(1, action).squeeze(1), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def reference_updates_per_s(n_items: int, history: int, device: torch.device, updates: int = 200) -> float:
    """Updates/s of :func:`reference_update` (best of 3 runs of ``updates`` after a warm-up)."""
    run = reference_update(n_items, history, device)
    run(20)
    return updates / best_seconds(lambda: run(updates), device, 3)


@dataclass(frozen=True)
class Budget:
    """One algorithm's training settings in the benchmark: its ``algo`` node and the trainer's
    keys, from ``recrl train algo=<name>`` with the script's overrides (each algorithm's own
    budget shape, e.g. ``conf/algo_trainer/dqn.yaml``), unless ``--steps`` / ``--n-users`` fix
    them for every algorithm."""

    algo: DictConfig
    trainer: dict

    @property
    def steps(self) -> int:
        """Trainer steps (environment steps, or updates for the offline learners)."""
        return int(self.trainer["steps"])

    @property
    def n_users(self) -> int:
        """Users per environment step."""
        return int(self.trainer["n_users"])

    @property
    def eval_every(self) -> int:
        """Steps between the ground-truth checks."""
        return int(self.trainer["eval_every"])


TRAINER_KEYS = ("steps", "n_users", "batch_size", "updates_per_step", "learning_starts", "buffer_size")


def budget_of(name: str, args: argparse.Namespace) -> Budget:
    """``name``'s :class:`Budget`: its run config's trainer keys that shape training, with the
    command line's ``--steps``, ``--n-users`` and ``--eval-every`` where given (a twelfth of
    the steps between checks otherwise, so every algorithm is checked as often)."""
    cfg = compose_config("train", [f"trainer.device={args.device}", f"algo={name}", *args.overrides])
    validate(cfg)
    trainer = {key: cfg.trainer[key] for key in TRAINER_KEYS}
    if args.steps is not None:
        trainer["steps"] = args.steps
    if args.n_users is not None:
        trainer["n_users"] = args.n_users
        trainer["buffer_size"] = max(trainer["buffer_size"], args.n_users)
    if args.steps is not None or args.n_users is not None:  # a fixed budget: the old shared settings
        trainer["learning_starts"] = min(1000, trainer["steps"] * trainer["n_users"] // 4)
    trainer["eval_every"] = args.eval_every or max(1, trainer["steps"] // 12)
    return Budget(algo=cfg.algo, trainer=trainer)


def training_flops_per_step(name: str, stages, args: argparse.Namespace, budget: Budget) -> float:
    """FLOPs per environment step of training ``name`` (acting, environment and updates from the
    first step on; anything an algorithm does before training, such as recording
    demonstrations, excluded), counted over ``--flop-steps`` steps of a fresh copy."""
    algo = stages.build_algo(budget.algo)
    env = stages.training_env()
    if hasattr(algo, "prepare"):
        algo.prepare(env, args.seed)
        algo.prepare = lambda *_: None
    settings = {**budget.trainer, "steps": args.flop_steps, "learning_starts": budget.n_users,
                "eval_every": 10**9}
    trainer = Trainer(**settings, log_every=10**9, checkpoint_every=10**9, device=args.device,
                      progress=False)
    flops = count_flops(lambda: trainer.fit(algo, env, evaluate=lambda: {"eval/return": 0.0},
                                            log=lambda step, metrics: None, save=lambda tag, step: None,
                                            seed=args.seed))
    return flops / args.flop_steps


def bench_one(name: str, stages, args: argparse.Namespace, budget: Budget, target: float,
              oracle: float | None) -> dict:
    """Train ``name`` on ``budget`` and time it; evaluation time is excluded from the training time."""
    algo = stages.build_algo(budget.algo)
    gt_env = stages.make_env(stages.ground_truth)
    curve: list[tuple[float, float]] = []  # (training seconds, ground-truth return) per evaluation
    steps_at: list[int] = []  # environment steps of each evaluation
    eval_time = [0.0]
    start = time.perf_counter()

    def evaluate() -> dict[str, float]:
        t = time.perf_counter()
        ret = ground_truth_return(algo, gt_env, args.eval_episodes, seed=10_000)
        eval_time[0] += time.perf_counter() - t
        curve.append((time.perf_counter() - start - eval_time[0], ret))
        return {"eval/return": ret}

    def log(step: int, metrics: dict[str, float]) -> None:
        if "eval/return" in metrics:
            steps_at.append(step)

    trainer = Trainer(**budget.trainer, eval_episodes=args.eval_episodes, log_every=10**9,
                      checkpoint_every=10**9, device=args.device, progress=False, compile=args.compile,
                      compile_mode=args.compile_mode)
    stats = trainer.fit(algo, stages.training_env(), evaluate=evaluate, log=log,
                        save=lambda tag, step: None, seed=args.seed)
    train_s = max(stats.seconds - eval_time[0], 1e-9)
    reached = next((t for t, ret in curve if ret >= target), None)
    final = curve[-1][1] if curve else float("nan")
    half = None if oracle is None else next(
        (step for step, (_, ret) in zip(steps_at, curve, strict=False) if ret >= oracle / 2), None)
    return {"algo": name, "mode": algo.mode, "trainer_steps": budget.steps, "n_users": budget.n_users,
            "steps": stats.env_steps, "updates": stats.updates,
            "train_s": train_s, "updates_per_s": stats.updates / train_s,
            "user_steps_per_s": (stats.user_steps / train_s) if algo.mode != "offline" else None,
            "final_return": final, "time_to_target_s": reached,
            "oracle_share": None if oracle is None else final / oracle, "steps_to_half_oracle": half,
            "curve": [{"step": step, "train_s": t, "return": ret}
                      for step, (t, ret) in zip(steps_at, curve, strict=False)]}


def main() -> None:
    """Run the benchmark, print the table and write the JSON."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_device(args.device)  # stops in one line where the device is missing
    cfg = compose_config("train", [f"trainer.device={args.device}", *args.overrides])
    validate(cfg)
    kept_memory = keep_freed_memory_as_configured(cfg)  # as the job would
    stages = build_stages(cfg, torch.device(args.device))
    if stages.ground_truth is None:
        sys.exit("this dataset has no ground-truth environment; use dataset=synthetic or coat")
    names = args.algos or [a for a in algo_options() if learns(a)]
    gt_env = stages.make_env(stages.ground_truth)
    greedy_policy = build_algo_by_name("greedy", ctx=stages.ctx)
    greedy = ground_truth_return(greedy_policy, gt_env, args.eval_episodes, seed=10_000)
    target = greedy if args.target == "greedy" else float(args.target)
    oracle = (ground_truth_return(Oracle(stages.ground_truth, stages.reward, gt_env), gt_env,
                                  args.eval_episodes, seed=10_000) if can_plan(stages.ground_truth) else None)
    device = torch.device(args.device)
    rate = MatmulRate(device)
    reference = reference_updates_per_s(stages.ctx.n_items, stages.ctx.history_len, device)
    print(f"matmul {rate.sample():,.1f} GFLOP/s; plain-PyTorch reference DQN update {reference:,.0f} "
          f"updates/s ({torch.get_num_threads()} threads on {args.device})")
    budgets = {name: budget_of(name, args) for name in names}
    runs = [bench_one(name, stages, args, budgets[name], target, oracle) for name in names]
    rate.sample()  # again after training: a slow spell at the start cannot lower the rate
    gflops = rate.best
    rows = [with_ratios(run, stages, args, budgets[name], gflops, reference)
            for name, run in zip(names, runs, strict=True)]
    print_table(rows, args, target, oracle)
    facts = {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
             "threads": torch.get_num_threads(), "overrides": args.overrides, "greedy_return": greedy,
             "target": target, "oracle_return": oracle, "steps": args.steps, "n_users": args.n_users,
             "eval_every": args.eval_every,
             "compile": args.compile, "compile_mode": args.compile_mode, "cpu": cpu_model(),
             "keep_freed_memory": kept_memory, **rate.summary(),
             "reference_updates_per_s": reference}
    out = {"facts": facts, "rows": rows}
    if args.compare is not None:
        old = json.loads(args.compare.read_text())
        out["comparison"] = print_comparison(rows, old, args.compare)
    write_text_atomic(args.out, json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def with_ratios(row: dict, stages, args: argparse.Namespace, budget: Budget, gflops: float,
                reference: float) -> dict:
    """``row`` with the ratio of its updates/s to the reference update's and the share of the
    arithmetic bound its environment steps/s reach (FLOPs per step counted)."""
    flops = training_flops_per_step(row["algo"], stages, args, budget) if row["mode"] != "none" else 0.0
    steps_per_s = row["steps"] / row["train_s"]
    return {**row, "ratio_to_reference": row["updates_per_s"] / reference, "flops_per_step": flops,
            "share_of_bound": share_of_bound(steps_per_s, int(flops), gflops)}


def print_table(rows: list[dict], args: argparse.Namespace, target: float, oracle: float | None) -> None:
    """The results table."""
    budget = ("each algorithm's own budget" if args.steps is None and args.n_users is None
              else f"{args.steps or 'own'} steps x {args.n_users or 'own'} users")
    title = f"algorithms, {budget}, target return {target:.3f}"
    if oracle is not None:
        title += f", oracle {oracle:.3f}"
    if args.compile:
        title += f", trainer.compile=true ({args.compile_mode} mode)"
    table = Table(title=title)
    for column in ("algo", "mode", "budget (steps x users)", "updates/s", "ratio to reference",
                   "user-steps/s", "share of bound", "final GT return", "time to target (s)",
                   "share of oracle", "steps to 50% of oracle"):
        table.add_column(column, justify="left" if column in ("algo", "mode") else "right")
    for r in rows:
        reached = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        user_steps = "-" if r["user_steps_per_s"] is None else f"{r['user_steps_per_s']:,.0f}"
        share = "-" if r["oracle_share"] is None else f"{r['oracle_share']:.0%}"
        half = "-" if r["steps_to_half_oracle"] is None else f"{r['steps_to_half_oracle']:,}"
        bound = "-" if r["share_of_bound"] is None else f"{r['share_of_bound']:.3g}"
        shape = (f"{r['updates']:,} updates" if r["mode"] == "offline"
                 else f"{r['trainer_steps']:,} x {r['n_users']:,}")
        table.add_row(r["algo"], r["mode"], shape, rate_text(r["updates_per_s"]),
                      f"{r['ratio_to_reference']:.3f}", user_steps, bound, f"{r['final_return']:.3f}",
                      reached, share, half)
    Console(width=None if sys.stdout.isatty() else 180).print(table)


def print_comparison(rows: list[dict], old: dict, path: Path) -> list[dict]:
    """Per algorithm in both runs: updates/s and ratio to the reference, old and new, and their
    change (read the ratio's across machines)."""
    old_rows = {r["algo"]: r for r in old["rows"]}
    gflops = old["facts"].get("matmul_gflops", 0.0)
    table = Table(title=f"change against {path} (matmul {gflops:,.1f} GFLOP/s there)")
    for column in ("algo", "old updates/s", "new updates/s", "new/old", "old ratio", "new ratio",
                   "ratio new/old"):
        table.add_column(column, justify="left" if column == "algo" else "right")
    changes = []
    for r in rows:
        o = old_rows.get(r["algo"])
        if o is None:
            continue
        old_ratio = o.get("ratio_to_reference")
        change = {"algo": r["algo"], "speed_change": r["updates_per_s"] / o["updates_per_s"],
                  "ratio_change": r["ratio_to_reference"] / old_ratio if old_ratio else None}
        changes.append(change)
        table.add_row(r["algo"], rate_text(o["updates_per_s"]), rate_text(r["updates_per_s"]),
                      f"{change['speed_change']:.2f}", "-" if old_ratio is None else f"{old_ratio:.3f}",
                      f"{r['ratio_to_reference']:.3f}",
                      "-" if change["ratio_change"] is None else f"{change['ratio_change']:.2f}")
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    return changes


if __name__ == "__main__":
    main()
