"""Train a Stable-Baselines3 PPO agent on recrl's simulated users (``RecGymEnv``).

Stable-Baselines3 is not a recrl dependency; without it this script says how to install it and
exits 0. With it, PPO trains on the synthetic world through ``recrl.env.gym.RecGymEnv`` and the
script prints its mean return next to a uniformly random policy's, over the same seeded users.

Example::

    pip install stable-baselines3
    python scripts/sb3_example.py --steps 20000 --episodes 300
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import torch

from recrl.data.synthetic import SyntheticWorld
from recrl.env.gym import RecGymEnv
from recrl.rewards import ClickReward


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options.

    Example::

        args = parse_args(["--steps", "5000"])
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000, help="PPO environment steps")
    p.add_argument("--episodes", type=int, default=300, help="evaluation episodes per policy")
    p.add_argument("--n-items", type=int, default=20)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--history-len", type=int, default=4)
    p.add_argument("--n-envs", type=int, default=8, help="parallel envs for PPO's rollouts")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_env(args: argparse.Namespace) -> gymnasium.Env:
    """A one-user env over a small synthetic world (the same world for any call with ``args``).

    The dict observation is flattened to one vector for SB3's ``MlpPolicy`` (``step`` one-hot):
    SB3's ``MultiInputPolicy`` cannot take it as is, as it keeps one module per key in an
    ``nn.ModuleDict``, where the key ``items`` collides with ``ModuleDict.items``.

    Example::

        env = make_env(parse_args([]))
    """
    world = SyntheticWorld(n_items=args.n_items, n_users=100, horizon=args.horizon, seed=args.seed)
    env = RecGymEnv(world, ClickReward(), horizon=args.horizon, slate_size=1, history_len=args.history_len)
    return gymnasium.wrappers.FlattenObservation(env)


def mean_return(env: gymnasium.Env, act: Callable[[dict[str, Any]], Any], episodes: int, seed: int) -> float:
    """Mean episode return of ``act`` over ``episodes`` users seeded ``seed, seed + 1, ...``.

    Example::

        mean_return(env, lambda obs: env.action_space.sample(), episodes=100, seed=10_000)
    """
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main(argv: list[str] | None = None) -> int:
    """Train PPO if Stable-Baselines3 is installed; print its mean return and a random policy's.

    Example::

        main(["--steps", "5000", "--episodes", "100"])
    """
    args = parse_args(argv)
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        print("stable-baselines3 is not installed: `pip install stable-baselines3` to run this example")
        return 0
    torch.set_num_threads(1)  # tiny networks: more threads only add synchronisation on few cores
    start = time.perf_counter()
    train_env = make_vec_env(lambda: make_env(args), n_envs=args.n_envs, seed=args.seed)
    model = PPO("MlpPolicy", train_env, n_steps=256, batch_size=256, gamma=0.95, seed=args.seed,
                verbose=0, device="cpu")
    model.learn(total_timesteps=args.steps)
    seconds = time.perf_counter() - start
    env, eval_seed = make_env(args), 10_000 + args.seed
    env.action_space.seed(args.seed)
    ppo = mean_return(env, lambda obs: model.predict(obs, deterministic=True)[0], args.episodes, eval_seed)
    rand = mean_return(env, lambda obs: env.action_space.sample(), args.episodes, eval_seed)
    print(f"PPO ({args.steps} steps, {seconds:.0f} s): mean return {ppo:.2f} over {args.episodes} users; "
          f"random policy: {rand:.2f} (horizon {args.horizon}, {args.n_items} items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
