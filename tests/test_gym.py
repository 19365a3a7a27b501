"""Tests for recrl.env.gym: recrl's env as gymnasium Env / VectorEnv, and gymnasium envs as recrl's.

The learning tests train recrl's DQN through :class:`recrl.loop.Trainer` on a 5-armed bandit
defined here (arm 3 pays 1, the others 0; the greedy policy must pick arm 3) and on a contextual
bandit whose paying arm is given by the observation (learnable only through ``Obs.features``,
which the replay buffer stores). CartPole gets shape and autoreset checks only (learning it
reliably takes longer than a unit test).
"""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from recrl.algos.dqn import DQN
from recrl.algos.nets import HistoryEncoder
from recrl.data.synthetic import SyntheticWorld
from recrl.env.gym import GymAdapter, RecGymEnv, RecVectorEnv
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.metrics.online import run_episodes
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs, RecrlError, Transition

N_ITEMS, K, L, H, B = 15, 3, 4, 5, 6
ARMS, BEST, LENGTH = 5, 3, 3


def world(leave_bias: float = -3.0) -> SyntheticWorld:
    """``leave_bias`` -30: nobody leaves (episodes truncate); +30: everybody leaves after one step."""
    return SyntheticWorld(n_items=N_ITEMS, n_users=10, n_topics=3, horizon=H, leave_bias=leave_bias, seed=0)


def gym_env(k: int = K, leave_bias: float = -3.0, **kwargs) -> RecGymEnv:
    return RecGymEnv(world(leave_bias), ClickReward(), horizon=H, slate_size=k, history_len=L, **kwargs)


def vec_env(leave_bias: float = -3.0, horizon: int = H, **kwargs) -> RecVectorEnv:
    return RecVectorEnv(world(leave_bias), ClickReward(), num_envs=B, horizon=horizon, slate_size=K,
                        history_len=L, **kwargs)


def distinct_slates(gen: torch.Generator, b: int = B) -> torch.Tensor:
    return torch.rand(b, N_ITEMS, generator=gen).topk(K, dim=1).indices


class Bandit(gymnasium.Env):
    """``ARMS`` arms, arm ``BEST`` pays 1, the others 0; ``LENGTH`` pulls per episode; noise obs."""

    def __init__(self, length: int = LENGTH) -> None:
        self.length = length
        self.action_space = spaces.Discrete(ARMS)
        self.observation_space = spaces.Box(0.0, 1.0, (2,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.random(2, dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        obs = self.np_random.random(2, dtype=np.float32)
        return obs, float(action == BEST), self.t >= self.length, False, {}


# ----------------------------------------------------------------------------- RecGymEnv
@pytest.mark.parametrize("k", [1, K])
def test_rec_gym_env_passes_gymnasium_check_env(k: int) -> None:
    env = gym_env(k)
    assert isinstance(env.action_space, spaces.Discrete if k == 1 else spaces.MultiDiscrete)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=True)


def test_rec_gym_env_observations_info_and_seeded_trajectory() -> None:
    env = gym_env(leave_bias=-30.0)
    obs, info = env.reset(seed=7)
    assert obs in env.observation_space and info == {}
    assert obs["slates"].shape == (L, K) and bool((obs["slates"] == N_ITEMS).all()) and obs["step"] == 0
    actions = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6, 7, 8])]
    first = [env.step(a) for a in actions]
    env.reset(seed=7)
    again = [env.step(a) for a in actions]
    rec = RecEnv(world(-30.0), ClickReward(), horizon=H, slate_size=K, history_len=L)
    rec.reset(1, seed=7)
    for (o1, r1, te1, tr1, i1), (o2, r2, *_), a in zip(first, again, actions, strict=True):
        np.testing.assert_array_equal(o1["slates"], o2["slates"])
        assert r1 == r2 and isinstance(r1, float) and isinstance(te1, bool) and isinstance(tr1, bool)
        assert set(i1) == {"click", "conversion", "rating", "watch"} and i1["click"].shape == (K,)
        _, reward, _, rinfo = rec.step(torch.as_tensor(a)[None])  # same seed -> same draws as RecEnv
        assert r1 == float(reward[0]) and np.array_equal(i1["click"], rinfo.response.click[0].numpy())
        assert not (te1 or tr1)
    assert sum(r for _, r, *_ in first) > 0  # the comparison saw clicks


def test_rec_gym_env_terminated_means_left_and_truncated_means_horizon() -> None:
    env = gym_env(leave_bias=30.0)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(np.array([0, 1, 2]))
    assert terminated and not truncated
    env = gym_env(leave_bias=-30.0)
    env.reset(seed=0)
    flags = [env.step(np.array([0, 1, 2]))[2:4] for _ in range(H)]
    assert flags == [(False, False)] * (H - 1) + [(False, True)]


def test_rec_gym_env_errors_are_one_line() -> None:
    env = gym_env(duplicates="error")
    with pytest.raises(RecrlError, match="reset") as err:
        env.step(np.array([0, 1, 2]))
    env.reset(seed=0)
    with pytest.raises(RecrlError, match="repeats an item") as err:
        env.step(np.array([1, 1, 2]))
    assert "\n" not in str(err.value)
    with pytest.raises(RecrlError, match=r"0\.\.14"):
        env.step(np.array([0, 1, N_ITEMS]))
    gym_env().reset(seed=0)  # duplicates are allowed by default: every action-space element is valid
    allowed = gym_env()
    allowed.reset(seed=0)
    allowed.step(np.array([1, 1, 2]))


# ----------------------------------------------------------------------------- RecVectorEnv
def test_vector_env_spaces_shapes_and_dtypes_match_gymnasium_batching() -> None:
    envs = vec_env()
    sync = SyncVectorEnv([lambda: gym_env() for _ in range(B)])
    assert envs.single_observation_space == sync.single_observation_space
    assert envs.single_action_space == sync.single_action_space
    assert envs.observation_space == sync.observation_space and envs.action_space == sync.action_space
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    assert obs in envs.observation_space and info == {}
    envs.action_space.seed(0)
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs in envs.observation_space
    assert obs["slates"].shape == (B, L, K) and obs["slates"].dtype == np.int64
    assert obs["clicks"].shape == (B, L, K) and obs["clicks"].dtype == np.float32
    assert obs["step"].shape == (B,) and obs["step"].dtype == np.int64
    assert reward.shape == (B,) and reward.dtype == np.float32
    assert terminated.dtype == truncated.dtype == np.bool_ and terminated.shape == (B,)
    assert info["click"].shape == (B, K) and info["_click"].all()
    with pytest.raises(RecrlError, match=r"0\.\.14"):
        envs.step(np.full((B, K), N_ITEMS))
    with pytest.raises(RecrlError, match="one int"):
        envs.reset(seed=[0, 1])


def test_vector_env_is_deterministic_given_a_seed() -> None:
    def rollout(seed: int) -> list[np.ndarray]:
        envs = vec_env()
        envs.reset(seed=seed)
        gen = torch.Generator().manual_seed(0)
        return [envs.step(distinct_slates(gen).numpy())[1] for _ in range(8)]

    assert all(np.array_equal(a, b) for a, b in zip(rollout(3), rollout(3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(rollout(3), rollout(4), strict=True))


def test_vector_env_next_step_autoreset() -> None:
    envs = vec_env(leave_bias=-30.0, horizon=2)
    envs.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    envs.step(distinct_slates(gen))
    obs, _, terminated, truncated, _ = envs.step(distinct_slates(gen))
    assert truncated.all() and not terminated.any() and (obs["step"] == 2).all()  # final observation
    obs, reward, terminated, truncated, info = envs.step(distinct_slates(gen))
    assert (obs["step"] == 0).all() and (obs["slates"] == N_ITEMS).all()  # reset step: action ignored
    assert (reward == 0).all() and not (terminated | truncated).any() and not info["_click"].any()
    obs, *_ = envs.step(distinct_slates(gen))
    assert (obs["step"] == 1).all()


def test_vector_env_same_step_autoreset_equals_recenv_autoreset() -> None:
    envs = vec_env(autoreset_mode=AutoresetMode.SAME_STEP)
    rec = RecEnv(world(), ClickReward(), horizon=H, slate_size=K, history_len=L, autoreset=True)
    envs.reset(seed=1)
    rec.reset(B, seed=1)
    gen, ended = torch.Generator().manual_seed(0), 0
    for _ in range(12):
        slates = distinct_slates(gen)
        obs, reward, terminated, truncated, info = envs.step(slates.numpy())
        robs, rreward, *_ = rec.step(slates)
        np.testing.assert_array_equal(reward, rreward.numpy())
        np.testing.assert_array_equal(obs["slates"], robs.items.numpy())
        done = terminated | truncated
        np.testing.assert_array_equal(info["_final_obs"], done)
        assert (obs["step"][done] == 0).all() and (info["final_obs"]["step"][done] > 0).all()
        ended += int(done.sum())
    assert ended > 0


def test_vector_env_works_with_gymnasium_episode_statistics() -> None:
    envs = gymnasium.wrappers.vector.RecordEpisodeStatistics(vec_env(leave_bias=-30.0, horizon=3))
    envs.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        *_, info = envs.step(distinct_slates(gen).numpy())
    assert info["_episode"].all() and (info["episode"]["l"] == 3).all()


def test_vector_env_torch_output_stays_on_device() -> None:
    envs = vec_env(output="torch")
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs["slates"], torch.Tensor) and obs["slates"].device == envs.rec.device
    obs, reward, terminated, truncated, info = envs.step(distinct_slates(torch.Generator()))
    assert all(isinstance(x, torch.Tensor) for x in (obs["clicks"], reward, terminated, truncated,
                                                     info["click"]))
    assert reward.shape == (B,) and obs["slates"].shape == (B, L, K)
    with pytest.raises(RecrlError, match="actions"):
        envs.step(torch.zeros(B, K + 1, dtype=torch.long))


# ----------------------------------------------------------------------------- GymAdapter
def bandit_context(obs_features: int = 0) -> AlgoContext:
    return AlgoContext(n_items=ARMS, slate_size=1, history_len=2, horizon=LENGTH,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(ARMS),
                       behavior=None, reward=None, obs_features=obs_features)


def test_gym_adapter_dqn_learns_the_best_arm_through_the_trainer() -> None:
    env = GymAdapter(f"{__name__}:Bandit", history_len=2, horizon=LENGTH)
    assert (env.n_items, env.slate_size, env.obs_features, env.horizon) == (ARMS, 1, 2, LENGTH)
    algo = DQN(bandit_context(), epsilon_decay_steps=200, target_update=50, gamma=0.5)
    never = 10**9
    trainer = Trainer(steps=400, n_users=16, batch_size=64, learning_starts=100, eval_every=never,
                      log_every=never, checkpoint_every=never, progress=False, device="cpu")
    trainer.fit(algo, env, evaluate=lambda: {"eval/return": 0.0}, log=lambda step, metrics: None,
                save=lambda tag, step: None)
    picks = algo.act(env.reset(200, seed=1), explore=False)
    assert float((picks == BEST).float().mean()) >= 0.9
    stats = run_episodes(algo, env, n_episodes=200, seed=1)
    assert float(stats.returns.mean()) >= 0.9 * LENGTH and (stats.lengths == LENGTH).all()


class ContextBandit(gymnasium.Env):
    """The observation is a one-hot arm id; that arm pays 1, the others 0; ``LENGTH`` pulls."""

    def __init__(self) -> None:
        self.action_space = spaces.Discrete(ARMS)
        self.observation_space = spaces.Discrete(ARMS)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.t, self.arm = 0, int(self.np_random.integers(ARMS))
        return self.arm, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        self.t += 1
        reward = float(action == self.arm)
        self.arm = int(self.np_random.integers(ARMS))
        return self.arm, reward, self.t >= LENGTH, False, {}


def test_gym_adapter_dqn_learns_from_observation_features() -> None:
    env = GymAdapter(f"{__name__}:ContextBandit", history_len=2, horizon=LENGTH)
    assert env.obs_features == ARMS  # Discrete observations arrive one-hot
    ctx = AlgoContext(n_items=ARMS, slate_size=1, history_len=2, horizon=LENGTH, device=torch.device("cpu"),
                      seed=0, item_popularity=torch.zeros(ARMS), behavior=None, reward=None,
                      obs_features=ARMS)
    algo = DQN(ctx, epsilon_decay_steps=300, target_update=50, gamma=0.0)
    never = 10**9
    trainer = Trainer(steps=800, n_users=16, batch_size=64, learning_starts=100, eval_every=never,
                      log_every=never, checkpoint_every=never, progress=False, device="cpu")
    trainer.fit(algo, env, evaluate=lambda: {"eval/return": 0.0}, log=lambda step, metrics: None,
                save=lambda tag, step: None)
    stats = run_episodes(algo, env, n_episodes=200, seed=1)
    assert float(stats.returns.mean()) >= 0.9 * LENGTH  # random play earns LENGTH / ARMS


def test_gym_adapter_on_cartpole_shapes_autoreset_and_dqn_with_features() -> None:
    env = GymAdapter("CartPole-v1", history_len=3, autoreset=True)
    assert (env.n_items, env.obs_features, env.horizon) == (2, 4, 500)
    obs = env.reset(8, seed=0)
    assert obs.features.shape == (8, 4) and obs.features.dtype == torch.float32
    assert obs.items.shape == (8, 3, 1) and bool((obs.items == 2).all())
    algo = DQN(AlgoContext(n_items=2, slate_size=1, history_len=3, horizon=500, device=torch.device("cpu"),
                           seed=0, item_popularity=torch.zeros(2), behavior=None, reward=None,
                           obs_features=4), epsilon_decay_steps=10)
    ended = 0
    for _ in range(40):  # always pushing right topples the pole within ~10 steps
        slates = torch.ones(8, 1, dtype=torch.long)
        next_obs, reward, done, info = env.step(slates)
        assert reward.shape == done.shape == (8,) and bool(info.was_alive.all()) and bool(env.alive.all())
        assert torch.equal(next_obs.step[done], torch.zeros(int(done.sum()), dtype=torch.long))
        ended += int(done.sum())
        batch = Transition(obs=obs, action=slates, reward=reward, next_obs=next_obs, done=done.float(),
                           valid=info.was_alive.float())
        obs = next_obs
    assert ended >= 8
    assert algo.act(obs, explore=True).shape == (8, 1)
    assert np.isfinite(float(algo.update(batch)["train/loss"]))


def test_gym_adapter_without_autoreset_keeps_finished_copies_finished() -> None:
    env = GymAdapter(Bandit, history_len=2, horizon=2, env_kwargs={"length": 5})
    env.reset(4, seed=0)
    pulls = torch.full((4, 1), BEST)
    _, reward, done, _ = env.step(pulls)
    assert reward.tolist() == [1.0] * 4 and not bool(done.any())
    obs, _, done, info = env.step(pulls)  # our horizon (2) truncates before the env's length (5)
    assert bool(done.all()) and bool(info.truncated.all()) and not bool(env.alive.any())
    assert obs.items[:, :, 0].tolist() == [[BEST, BEST]] * 4 and obs.clicks.sum().item() == 8.0
    _, reward, done, info = env.step(pulls)
    assert reward.tolist() == [0.0] * 4 and not bool(done.any()) and not bool(info.was_alive.any())


def test_encoder_needs_features_when_configured() -> None:
    enc = HistoryEncoder(n_items=ARMS, history_len=2, slate_size=1, horizon=3, features=2)
    obs = Obs(items=torch.full((3, 2, 1), ARMS), clicks=torch.zeros(3, 2, 1),
              step=torch.zeros(3, dtype=torch.long))
    with pytest.raises(RecrlError, match="features"):
        enc(obs)
    assert enc(Obs(obs.items, obs.clicks, obs.step, torch.rand(3, 2))).shape == (3, 32)
    assert obs.index(torch.tensor([0, 2])).features is None and obs.to("cpu").features is None


@pytest.mark.parametrize("spec, message", [
    ("NoSuchEnv-v0", "NoSuchEnv"),
    ("no_such_module_xyz:Env", "cannot import module"),
    ("Pendulum-v1", "not Discrete"),
    ("builtins:dict", "not a gymnasium.Env"),
])
def test_gym_adapter_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(RecrlError, match=message) as err:
        GymAdapter(spec, horizon=10)
    assert "\n" not in str(err.value)


def test_cli_trains_and_reevaluates_on_a_gymnasium_env(tmp_path) -> None:
    # imported here: the run imports this module as tests.test_gym, without tests/ on its path
    import json
    import subprocess
    from pathlib import Path

    from tiny import run_recrl

    root = Path(__file__).resolve().parent.parent
    run = tmp_path / "run"

    def recrl(*args: str) -> subprocess.CompletedProcess:
        proc = run_recrl(*args, cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    recrl("train", "env=gym", "env.id=tests.test_gym:Bandit", "env.horizon=3", "experiment=smoke", "algo=dqn",
          f"hydra.run.dir={run}", f"cache_dir={tmp_path / 'cache'}")
    report = json.loads((run / "report.json").read_text())
    assert set(report["evaluation"]["gym"]) == {"dqn", "random"} and report["env"] == "tests.test_gym:Bandit"
    assert report["evaluation"]["gym"]["random"]["episode_length"]["mean"] == 3.0
    recrl("eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'eval'}")
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again["evaluation"]["gym"]["dqn"]["return"] == report["evaluation"]["gym"]["dqn"]["return"]
