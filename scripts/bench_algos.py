"""Benchmark the algorithms: update speed and time to reward on one world.

Builds the run's stages once from ``recrl train`` overrides (data, fitted or cached behavior
model, ground truth), then trains each algorithm for ``--steps`` trainer steps and every
``--eval-every`` steps scores it in the ground-truth environment (``--eval-episodes`` episodes,
not counted in the training time). Reports per algorithm: updates/s and user-steps/s of training
alone, the final ground-truth return, and the time to reward: training seconds until the
ground-truth return first reached the myopic greedy baseline's (``--target greedy``) or a fixed
value (``--target 3.0``); ``-`` when it never did. On the synthetic world it also evaluates the
oracle (:class:`recrl.algos.oracle.Oracle`) on the same users and reports each algorithm's final
share of the oracle's return and the environment steps until it first reached half of it.
Prints a table and writes JSON.

    python scripts/bench_algos.py --out bench_algos.json
    python scripts/bench_algos.py --algos dqn ppo cql --steps 3000 --device cuda -- env.slate_size=1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

from recrl.algos.oracle import Oracle, can_plan
from recrl.config import CONF_DIR, algo_options, build_algo_by_name, validate
from recrl.logs import console_logging
from recrl.loop import Trainer
from recrl.metrics.online import run_episodes
from recrl.report import write_text_atomic
from recrl.stages import build_stages


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="*", default=None, help="default: every algo option")
    parser.add_argument("--steps", type=int, default=3000, help="trainer steps per algorithm")
    parser.add_argument("--n-users", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-episodes", type=int, default=256)
    parser.add_argument("--target", default="greedy", help="'greedy' or a ground-truth return")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_algos.json"))
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --")
    return parser.parse_args()


def ground_truth_return(policy, env, episodes: int, seed: int) -> float:
    """Mean ground-truth return of ``policy`` (no exploration)."""
    return float(run_episodes(policy, env, episodes, seed=seed).returns.mean())


def bench_one(name: str, stages, args: argparse.Namespace, target: float, oracle: float | None) -> dict:
    """Train ``name`` and time it; evaluation time is excluded from the training time."""
    algo = build_algo_by_name(name, ctx=stages.ctx)
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

    trainer = Trainer(steps=args.steps, n_users=args.n_users, eval_every=args.eval_every,
                      eval_episodes=args.eval_episodes, log_every=10**9, checkpoint_every=10**9,
                      learning_starts=min(1000, args.steps * args.n_users // 4), device=args.device,
                      progress=False)
    stats = trainer.fit(algo, stages.training_env(), evaluate=evaluate, log=log,
                        save=lambda tag, step: None, seed=args.seed)
    train_s = max(stats.seconds - eval_time[0], 1e-9)
    reached = next((t for t, ret in curve if ret >= target), None)
    final = curve[-1][1] if curve else float("nan")
    half = None if oracle is None else next(
        (step for step, (_, ret) in zip(steps_at, curve, strict=False) if ret >= oracle / 2), None)
    return {"algo": name, "mode": algo.mode, "steps": stats.env_steps, "updates": stats.updates,
            "train_s": train_s, "updates_per_s": stats.updates / train_s,
            "user_steps_per_s": (stats.user_steps / train_s) if algo.mode != "offline" else None,
            "final_return": final, "time_to_target_s": reached,
            "oracle_share": None if oracle is None else final / oracle, "steps_to_half_oracle": half}


def main() -> None:
    """Run the benchmark, print the table and write the JSON."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"trainer.device={args.device}", *args.overrides])
    validate(cfg)
    stages = build_stages(cfg, torch.device(args.device))
    if stages.ground_truth is None:
        sys.exit("this dataset has no ground-truth environment; use dataset=synthetic or coat")
    names = args.algos or [a for a in algo_options() if a not in {"random", "popular", "greedy"}]
    gt_env = stages.make_env(stages.ground_truth)
    greedy_policy = build_algo_by_name("greedy", ctx=stages.ctx)
    greedy = ground_truth_return(greedy_policy, gt_env, args.eval_episodes, seed=10_000)
    target = greedy if args.target == "greedy" else float(args.target)
    oracle = (ground_truth_return(Oracle(stages.ground_truth, stages.reward, gt_env), gt_env,
                                  args.eval_episodes, seed=10_000) if can_plan(stages.ground_truth) else None)
    rows = [bench_one(name, stages, args, target, oracle) for name in names]
    title = f"algorithms, {args.steps} steps x {args.n_users} users, target return {target:.3f}"
    if oracle is not None:
        title += f", oracle {oracle:.3f}"
    table = Table(title=title)
    for column in ("algo", "mode", "updates/s", "user-steps/s", "final GT return", "time to target (s)",
                   "share of oracle", "steps to 50% of oracle"):
        table.add_column(column, justify="left" if column in ("algo", "mode") else "right")
    for r in rows:
        reached = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        user_steps = "-" if r["user_steps_per_s"] is None else f"{r['user_steps_per_s']:,.0f}"
        share = "-" if r["oracle_share"] is None else f"{r['oracle_share']:.0%}"
        half = "-" if r["steps_to_half_oracle"] is None else f"{r['steps_to_half_oracle']:,}"
        table.add_row(r["algo"], r["mode"], f"{r['updates_per_s']:,.0f}", user_steps,
                      f"{r['final_return']:.3f}", reached, share, half)
    Console().print(table)
    facts = {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
             "threads": torch.get_num_threads(), "overrides": args.overrides, "greedy_return": greedy,
             "target": target, "oracle_return": oracle, "steps": args.steps, "n_users": args.n_users,
             "cpu": platform.processor() or platform.machine()}
    write_text_atomic(args.out, json.dumps({"facts": facts, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
