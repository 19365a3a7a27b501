"""The training loop (``trainer=default``): collect -> update -> evaluate -> checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from recrl.buffer import Replay, Rollout
from recrl.compile import compile_hot_paths
from recrl.compile import compile_mode as compile_mode_of
from recrl.logs import Progress, progress_disable
from recrl.types import Algorithm, Env, Obs, Policy, RecrlError, Transition

MetricsLogger = Callable[[int, dict[str, float]], None]
Evaluator = Callable[[], dict[str, float]]
Saver = Callable[[str, int], None]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecrlError(f"trainer.device={device} but no CUDA device is available; "
                         "use trainer.device=cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise RecrlError(f"trainer.device={device!r} is not a device name (auto, cpu, cuda, cuda:0)") from err


@dataclass
class TrainStats:
    """What the loop did: env steps, user-steps, updates, seconds, best eval return."""

    env_steps: int
    user_steps: int
    updates: int
    seconds: float
    best_eval_return: float


def collect_episodes(policy: Policy, env: Env, obs: Obs) -> Rollout:
    """One horizon of ``policy`` (exploring) from ``obs``, the users' observations after a reset."""
    steps: list[Transition] = []
    for _ in range(env.horizon):
        slates = policy.act(obs, explore=True)
        next_obs, reward, done, info = env.step(slates)
        steps.append(Transition(obs=obs, action=slates, reward=reward, next_obs=next_obs,
                                done=done.float(), valid=info.was_alive.float()))
        obs = next_obs
    return Rollout.stack(steps)


SELECT_BY = ("simulator", "held_out_member", "ope")
"""What picks ``best.pt``: returns in a fresh training simulator, in the behavior ensemble's
held-out member, or the off-policy estimate (``ope.column``) on the validation split's logs."""


class Trainer:
    """Runs an :class:`~recrl.types.Algorithm` against an :class:`~recrl.types.Env` (a
    ``RecEnv`` or a ``GymAdapter``).

    Off-policy algorithms step ``n_users`` users continuously (finished users are replaced) and
    learn from a replay buffer on the device; on-policy algorithms collect whole episodes of
    ``n_users`` users and learn from each batch; online algorithms (bandits) step users
    continuously and learn from each step's transitions as they arrive; offline algorithms never
    touch the environment during training: each step is one update on ``batch_size`` rows of
    the logged data they were built with (``algo.dataset``, a
    :class:`~recrl.algos.logged.LoggedSteps`). The budget ``steps`` counts environment steps
    (each is ``n_users`` user-steps), or updates for offline algorithms. Scalars stay on the
    device between log points. ``progress``: a tqdm bar on stderr, ``"auto"`` only when stderr is
    a terminal, ``True`` always, ``False`` never; the start, every evaluation and the end are
    logged (``recrl.loop``) either way. ``compile``: ``torch.compile`` the policy's ``act``, the
    environment's ``step`` and the learner's ``update`` first (:mod:`recrl.compile`), in
    ``compile_mode`` (``auto``: inductor's default; ``reduce-overhead``: CUDA graphs on a GPU).
    ``threads``: PyTorch's CPU threads for the job (``None``: PyTorch's default, every core), so
    parallel sweep jobs share a machine without oversubscribing it (applied by the CLI at the
    start of each job, before any data is read). ``keep_freed_memory``: freed memory stays in the
    process for the next step's temporaries instead of going back to the system
    (:mod:`recrl.memory`; applied by the CLI at the start of each job).

    Example::

        trainer = Trainer(steps=2000, n_users=64)
        stats = trainer.fit(algo, env, evaluate=lambda: {...}, log=logger.log, save=saver)
    """

    def __init__(self, steps: int = 3000, n_users: int = 64, batch_size: int = 256,
                 updates_per_step: int = 1, learning_starts: int = 1000,
                 buffer_size: int = 100_000, eval_every: int = 500, eval_episodes: int = 256,
                 log_every: int = 100, checkpoint_every: int = 1000,
                 device: str = "auto", progress: Progress = "auto", select_by: str = "simulator",
                 compile: bool = False, compile_mode: str = "auto",
                 threads: int | None = None, keep_freed_memory: bool = True) -> None:
        if steps < 0 or n_users < 1 or batch_size < 1 or eval_episodes < 1:
            raise RecrlError("trainer: steps must be >= 0; n_users, batch_size, eval_episodes >= 1")
        if threads is not None and threads < 1:
            raise RecrlError(f"trainer.threads={threads}: use a whole number >= 1, or null for "
                             "PyTorch's default")
        cadences = {"updates_per_step": (updates_per_step, 0), "learning_starts": (learning_starts, 0),
                    "eval_every": (eval_every, 1), "log_every": (log_every, 1),
                    "checkpoint_every": (checkpoint_every, 1)}
        for key, (value, least) in cadences.items():
            if value < least:
                raise RecrlError(f"trainer.{key}={value} must be >= {least}")
        if buffer_size < n_users:
            raise RecrlError(f"trainer.buffer_size={buffer_size} must hold at least one step of "
                             f"trainer.n_users={n_users} transitions")
        self.steps, self.n_users, self.batch_size = steps, n_users, batch_size
        self.updates_per_step, self.learning_starts = updates_per_step, learning_starts
        self.buffer_size, self.eval_every, self.eval_episodes = buffer_size, eval_every, eval_episodes
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        progress_disable(progress)  # checks the value
        self.device_name, self.progress = device, progress
        if select_by not in SELECT_BY:
            raise RecrlError(f"trainer.select_by={select_by!r}: use one of {', '.join(SELECT_BY)}")
        self.select_by = select_by
        compile_mode_of(compile_mode)  # checks the value
        self.compile, self.compile_mode = compile, compile_mode
        self.threads = threads  # keep_freed_memory, like threads, is applied by the CLI per job

    @property
    def device(self) -> torch.device:
        """The resolved device."""
        return resolve_device(self.device_name)

    def fit(self, algo: Algorithm, env: Env, *, evaluate: Evaluator, log: MetricsLogger,
            save: Saver, seed: int = 0, start_step: int = 0) -> TrainStats:
        """Train ``algo`` for ``steps`` environment steps; evaluate, log and save on cadence.

        ``start_step`` > 0 continues a resumed run: the environment starts fresh users without
        re-seeding its generator (restored from the checkpoint), the replay buffer starts empty.
        """
        start = time.perf_counter()
        name = type(algo).__name__
        if algo.mode == "none" or self.steps == 0:
            logger.info("training %s: nothing to train (%s)", name,
                        "trainer.steps=0" if self.steps == 0 else "a fixed policy")
            save("last", 0)
            return TrainStats(0, 0, 0, time.perf_counter() - start, float("nan"))
        prepare = getattr(algo, "prepare", None)
        if prepare is not None:  # e.g. DQN recording demonstrations in the training environment
            prepare(env, seed)
        if self.compile:
            compile_hot_paths(algo, env, self.compile_mode)
        run = {"off_policy": self._off_policy, "on_policy": self._on_policy, "online": self._online,
               "offline": self._offline}[algo.mode]
        best = float("-inf")
        env_steps, updates = start_step, 0
        unit = "updates on logged data" if algo.mode == "offline" else f"env steps of {self.n_users} users"
        logger.info("training %s (%s) for %d %s on %s%s", name, algo.mode.replace("_", "-"), self.steps, unit,
                    self.device, f", resuming at step {start_step}" if start_step else "")
        bar = tqdm(total=self.steps, initial=start_step, desc=f"train {name}",
                   disable=progress_disable(self.progress), leave=False)
        next_eval, next_ckpt, next_log = (start_step + every for every in
                                          (self.eval_every, self.checkpoint_every, self.log_every))
        for done_steps, n_updates, metrics in run(algo, env, seed, start_step):
            bar.update(done_steps - env_steps)
            env_steps, updates = done_steps, updates + n_updates
            if env_steps >= next_log and metrics:
                log(env_steps, {k: float(v) for k, v in metrics.items()})
                next_log += self.log_every
            if env_steps >= next_eval or env_steps >= self.steps:
                scores = evaluate()
                log(env_steps, scores)
                if scores["eval/return"] > best:
                    best = scores["eval/return"]
                    save("best", env_steps)
                logger.info("step %d/%d: eval/return %.4f (best %.4f)", env_steps, self.steps,
                            scores["eval/return"], best)
                next_eval += self.eval_every
            if env_steps >= next_ckpt:
                save("last", env_steps)
                next_ckpt += self.checkpoint_every
        bar.close()
        save("last", env_steps)
        user_steps = (env_steps - start_step) * self.n_users
        seconds = time.perf_counter() - start
        logger.info("training %s done: %d steps, %d updates in %.1fs; best eval/return %.4f", name,
                    env_steps, updates, seconds, best)
        return TrainStats(env_steps, user_steps, updates, seconds, best)

    def _off_policy(self, algo: Algorithm, env: Env, seed: int, start_step: int = 0):
        """Yield ``(env_steps, updates, metrics)`` after every step of continuous collection.

        The algorithm's own replay (its ``make_replay(capacity, env)``: n-step, prioritized; a
        uniform one-step :class:`~recrl.buffer.Replay` when it has none) receives every step;
        each update gets a sample drawn with the run's progress and hands its priorities back.
        """
        env.autoreset = True
        make_replay = getattr(algo, "make_replay", None)
        replay = (make_replay(self.buffer_size, env) if make_replay is not None
                  else Replay.for_env(self.buffer_size, env))
        generator = torch.Generator(env.device).manual_seed(seed + start_step)
        obs = env.reset(self.n_users, seed=seed if start_step == 0 else None)
        episode_return = torch.zeros(self.n_users, device=env.device)
        finished = torch.zeros(2, device=env.device)  # sum of returns, count of episodes
        for step in range(start_step + 1, self.steps + 1):
            slates = algo.act(obs, explore=True)
            next_obs, reward, done, info = env.step(slates)
            transition = Transition(obs=obs, action=slates, reward=reward, next_obs=next_obs,
                                    done=done.float(), valid=info.was_alive.float(),
                                    click=info.response.click)
            replay.add(transition)
            episode_return += reward
            finished += torch.stack([(episode_return * done).sum(), done.sum()])
            episode_return = episode_return * ~done
            obs = next_obs
            metrics: dict[str, torch.Tensor | float] = {}
            n_updates = 0
            if len(replay) >= self.learning_starts:
                for _ in range(self.updates_per_step):
                    metrics = algo.update(replay.sample(self.batch_size, generator, step / self.steps))
                    n_updates += 1
            if step % self.log_every == 0:
                metrics = dict(metrics)
                metrics["train/episode_return"] = finished[0] / finished[1].clamp(min=1)
                finished.zero_()
            yield step, n_updates, metrics

    def _online(self, algo: Algorithm, env: Env, seed: int, start_step: int = 0):
        """Yield after every step; the algorithm learns from that step's transitions at once."""
        env.autoreset = True
        obs = env.reset(self.n_users, seed=seed if start_step == 0 else None)
        for step in range(start_step + 1, self.steps + 1):
            slates = algo.act(obs, explore=True)
            next_obs, reward, done, info = env.step(slates)
            metrics = algo.update(Transition(obs=obs, action=slates, reward=reward, next_obs=next_obs,
                                             done=done.float(), valid=info.was_alive.float()))
            obs = next_obs
            yield step, 1, metrics

    def _offline(self, algo: Algorithm, env: Env, seed: int, start_step: int = 0):
        """Yield after every update on a batch of logged steps; the environment is not used."""
        dataset = algo.dataset
        generator = torch.Generator(dataset.device).manual_seed(seed + start_step)
        for step in range(start_step + 1, self.steps + 1):
            yield step, 1, algo.update(dataset.sample(self.batch_size, generator))

    def _on_policy(self, algo: Algorithm, env: Env, seed: int, start_step: int = 0):
        """Yield after each batch of complete episodes collected with the current policy."""
        env.autoreset = False
        env_steps, first = start_step, start_step == 0
        while env_steps < self.steps:
            obs = env.reset(self.n_users, seed=seed if first else None)
            first = False
            rollout = collect_episodes(algo, env, obs)
            metrics = dict(algo.update(rollout))
            metrics["train/episode_return"] = rollout.reward.sum(0).mean()
            env_steps += env.horizon
            yield env_steps, 1, metrics
