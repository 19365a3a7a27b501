"""Gymnasium adapters, both ways.

- :class:`RecGymEnv` (one user, a ``gymnasium.Env``) and :class:`RecVectorEnv` (``B`` users in
  one batched :class:`~recrl.env.simulator.RecEnv`, a ``gymnasium.vector.VectorEnv``) expose a
  recrl user model + reward to external libraries (Stable-Baselines3, Tianshou, CleanRL-style code).
- :class:`GymAdapter` runs ``B`` copies of any gymnasium env with a ``Discrete`` action space
  behind recrl's env interface, so recrl's algorithms (DQN, REINFORCE) and
  :class:`~recrl.loop.Trainer` train on it.

Spaces of the recommendation side (``L`` = ``history_len``, ``K`` = ``slate_size``)::

    observation  Dict(slates=Box(0, n_items, (L, K), int64),      # n_items = padding
                      clicks=Box(0, 1, (L, K), float32),
                      step=Discrete(horizon + 1))
    action       Discrete(n_items) if K == 1 else MultiDiscrete([n_items] * K)

Every element of the action space is a valid action, as gymnasium requires: a slate that repeats
an item is passed to the user model as it is (``duplicates="allow"``; under the multinomial-logit
choice a repeated item counts once per slot, which a policy can exploit). ``duplicates="error"``
rejects such slates with a :class:`~recrl.types.RecrlError` instead. Requires gymnasium >= 1.0.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from torch import Tensor

from recrl.env.signals import SIGNALS
from recrl.env.simulator import RecEnv
from recrl.types import Obs, RecrlError, Response, Reward, StepInfo, UserModel

Duplicates = Literal["allow", "error"]
_SEED_RANGE = 2**62
RESPONSE_INFO = ("click", "conversion", "rating")  # per-slot response fields in a step's info (+ signals)


def response_info(response: Response) -> dict[str, Tensor]:
    """The per-slot response fields a step's info holds: :data:`RESPONSE_INFO` and the value of
    every user signal the response carries (``watch``, ...), each ``[B, K]``."""
    return {**{key: getattr(response, key) for key in RESPONSE_INFO}, **response.values}


def rec_spaces(n_items: int, slate_size: int, history_len: int,
               horizon: int) -> tuple[spaces.Dict, spaces.Space]:
    """The single-user observation and action spaces of a recommendation env (see the module doc).

    Example::

        obs_space, act_space = rec_spaces(n_items=50, slate_size=3, history_len=4, horizon=20)
        act_space            # MultiDiscrete([50 50 50])
    """
    shape = (history_len, slate_size)
    obs_space = spaces.Dict({"slates": spaces.Box(0, n_items, shape, dtype=np.int64),
                             "clicks": spaces.Box(0.0, 1.0, shape, dtype=np.float32),
                             "step": spaces.Discrete(horizon + 1)})
    act_space = (spaces.Discrete(n_items) if slate_size == 1
                 else spaces.MultiDiscrete(np.full(slate_size, n_items, dtype=np.int64)))
    return obs_space, act_space


def _check_duplicates(slates: Tensor) -> None:
    """Raise a one-line RecrlError if any slate ``[B, K]`` repeats an item (one host sync)."""
    ordered = slates.sort(1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise RecrlError("gym env: a slate repeats an item; pass distinct items or build the env with "
                         "duplicates='allow'")


def _check_range(slates: Tensor, n_items: int) -> None:
    """Raise a one-line RecrlError if an action is outside ``0..n_items-1`` (one host sync)."""
    if bool(((slates < 0) | (slates >= n_items)).any()):
        raise RecrlError(f"gym env: actions must be item ids in 0..{n_items - 1}")


def _obs_dict(obs: Obs, to_numpy: bool) -> dict[str, Any]:
    """A recrl observation as the observation-space dict (arrays, or tensors when not ``to_numpy``)."""
    out = {"slates": obs.items, "clicks": obs.clicks, "step": obs.step}
    return {k: v.cpu().numpy() for k, v in out.items()} if to_numpy else out


def _fresh_seed(rng: np.random.Generator) -> int:
    """A seed for the torch generator drawn from gymnasium's ``np_random`` (unseeded resets)."""
    return int(rng.integers(_SEED_RANGE))


class RecGymEnv(gymnasium.Env):
    """One simulated user at a time as a ``gymnasium.Env`` (passes ``gymnasium``'s ``check_env``).

    Internally a :class:`RecEnv` with one user; ``reset(seed=s)`` seeds its generator, so the
    same seed and actions give the same trajectory (the one ``RecEnv.reset(1, seed=s)`` gives).
    ``terminated`` means the user left, ``truncated`` that the horizon was reached. ``info`` of a
    step holds the user's response per slate slot: ``click``, ``conversion`` (0/1), ``rating``
    and each user signal's value, e.g. ``watch`` (expected rating and values given a click; a
    signal is NaN where the user model has none), each a float32 array ``[K]``. Extra keyword arguments
    (``choice``, ``no_repeat``, ``boredom``, ...) go to :class:`RecEnv`.

    Example::

        world = SyntheticWorld(n_items=50, seed=0)
        env = RecGymEnv(world, ClickReward(), horizon=20, slate_size=1, history_len=4)
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, model: UserModel, reward: Reward, horizon: int = 20, slate_size: int = 1,
                 history_len: int = 10, device: torch.device | str = "cpu",
                 duplicates: Duplicates = "allow", **rec_env_kwargs: Any) -> None:
        if duplicates not in ("allow", "error"):
            raise RecrlError(f"gym env: duplicates={duplicates!r}; use 'allow' or 'error'")
        self.rec = RecEnv(model, reward, horizon=horizon, slate_size=slate_size, history_len=history_len,
                          autoreset=False, device=device, **rec_env_kwargs)
        self.duplicates = duplicates
        self.observation_space, self.action_space = rec_spaces(model.n_items, slate_size, history_len,
                                                               horizon)
        self._seeded, self._running = False, False

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start a new user's session; ``seed`` seeds the simulator (``options`` are unused)."""
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = _fresh_seed(self.np_random)
        self._seeded = self._seeded or seed is not None
        self._running = True
        return self._observation(self.rec.reset(1, seed=seed)), {}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Show the slate ``action``; return ``(obs, reward, terminated, truncated, info)``."""
        if not self._running:
            raise RecrlError("RecGymEnv.step: the episode has ended (or never started); call reset() first")
        slates = torch.as_tensor(np.asarray(action, dtype=np.int64), device=self.rec.device)
        slates = slates.reshape(1, self.rec.slate_size)
        _check_range(slates, self.rec.n_items)
        if self.duplicates == "error":
            _check_duplicates(slates)
        obs, reward, done, info = self.rec.step(slates)
        self._running = not bool(done[0])
        extra = {k: v[0].float().cpu().numpy() for k, v in response_info(info.response).items()}
        return (self._observation(obs), float(reward[0]), bool(info.terminated[0]),
                bool(info.truncated[0]), extra)

    @staticmethod
    def _observation(obs: Obs) -> dict[str, Any]:
        """The only user's observation as fresh numpy arrays and an int step."""
        return {"slates": obs.items[0].cpu().numpy(), "clicks": obs.clicks[0].cpu().numpy(),
                "step": int(obs.step[0])}


class RecVectorEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` simulated users stepped together in one batched :class:`RecEnv`.

    A ``gymnasium.vector.VectorEnv`` with the single-user spaces of :class:`RecGymEnv`
    (``single_observation_space``, ``single_action_space``) batched by
    ``gymnasium.vector.utils.batch_space``. No Python loop over users: one user-model call per step.

    Autoreset (``metadata["autoreset_mode"]``):

    - ``AutoresetMode.NEXT_STEP`` (default, gymnasium's own default, accepted by all of its
      vector wrappers): the step on which a user's episode ends returns their final observation;
      on the next step that row ignores its action and returns a fresh user's first observation
      with reward 0 and ``terminated = truncated = False``.
    - ``AutoresetMode.SAME_STEP`` (``RecEnv``'s own in-place autoreset): a finished user is
      replaced on the same step; the returned row is the fresh user's first observation and the
      final one is in ``info["final_obs"]`` (batched like the observations, valid where
      ``info["_final_obs"]``).

    ``info`` holds ``click``, ``conversion``, ``rating`` and the signals (``watch``) ``[B, K]`` with the masks
    ``_click`` ... (true on rows that took a real step). With ``output="numpy"`` (default)
    observations, rewards (float32), flags and info are numpy arrays; with ``output="torch"`` they
    are tensors on ``device`` and actions may be tensors there too, so nothing crosses to the host
    (tensor actions are not range-checked, and ``duplicates="error"`` costs one sync per step).
    Extra keyword arguments (``choice``, ``no_repeat``, ``boredom``, ...) go to :class:`RecEnv`.

    Example::

        envs = RecVectorEnv(world, ClickReward(), num_envs=64, horizon=20, slate_size=3)
        obs, info = envs.reset(seed=0)                     # obs["slates"]: [64, 10, 3] int64
        obs, rew, term, trunc, info = envs.step(envs.action_space.sample())
    """

    def __init__(self, model: UserModel, reward: Reward, num_envs: int, horizon: int = 20,
                 slate_size: int = 1, history_len: int = 10, device: torch.device | str = "cpu",
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 output: Literal["numpy", "torch"] = "numpy", duplicates: Duplicates = "allow",
                 **rec_env_kwargs: Any) -> None:
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise RecrlError(f"RecVectorEnv: autoreset_mode={mode.value}; use NextStep or SameStep")
        if output not in ("numpy", "torch") or duplicates not in ("allow", "error") or num_envs < 1:
            raise RecrlError("RecVectorEnv: output must be 'numpy' or 'torch', duplicates 'allow' or "
                             "'error', num_envs >= 1")
        self.rec = RecEnv(model, reward, horizon=horizon, slate_size=slate_size, history_len=history_len,
                          autoreset=False, device=device, **rec_env_kwargs)
        self.num_envs, self.output, self.duplicates = num_envs, output, duplicates
        self.autoreset_mode = mode
        self.metadata = {"autoreset_mode": mode, "render_modes": []}
        self.single_observation_space, self.single_action_space = rec_spaces(
            model.n_items, slate_size, history_len, horizon)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._pending: Tensor | None = None
        self._seeded = False

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start ``num_envs`` fresh sessions; ``seed`` (one int) seeds the simulator.

        ``options`` are unused.
        """
        if seed is not None and not isinstance(seed, int | np.integer):
            raise RecrlError(f"RecVectorEnv.reset: seed must be one int (one simulator runs the batch), "
                             f"got {seed!r}")
        seed = None if seed is None else int(seed)
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = _fresh_seed(self.np_random)
        self._seeded = self._seeded or seed is not None
        obs = self.rec.reset(self.num_envs, seed=seed)
        self._pending = torch.zeros(self.num_envs, dtype=torch.bool, device=self.rec.device)
        return _obs_dict(obs, self.output == "numpy"), {}

    def step(self, actions: Any) -> tuple[dict[str, Any], Any, Any, Any, dict[str, Any]]:
        """Show one slate per user; return batched ``(obs, rewards, terminations, truncations, info)``."""
        if self._pending is None:
            raise RecrlError("RecVectorEnv.step: call reset() first")
        slates = self._slates(actions)
        obs, reward, done, info = self.rec.step(slates)
        extra: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            restart, self._pending = self._pending, done
        else:
            restart = done
            extra = {"final_obs": _obs_dict(obs, False), "_final_obs": done}
        self.rec.restart(restart)
        obs = self.rec.observe()
        live = info.was_alive
        for key, value in response_info(info.response).items():
            extra[key] = torch.where(live[:, None], value, torch.zeros_like(value))
            extra[f"_{key}"] = live
        out = (_obs_dict(obs, False), reward, info.terminated, info.truncated, extra)
        return _to_numpy(out) if self.output == "numpy" else out

    def _slates(self, actions: Any) -> Tensor:
        """Actions (array or tensor ``[B]`` / ``[B, K]``) as slates ``[B, K]`` on the env's device.

        Host actions are range-checked; tensor actions are trusted (a check would cost a host sync).
        """
        if not isinstance(actions, Tensor):
            actions = np.asarray(actions)
            if actions.size and (actions.min() < 0 or actions.max() >= self.rec.n_items):
                raise RecrlError(f"RecVectorEnv.step: actions must be item ids in 0..{self.rec.n_items - 1}")
        slates = torch.as_tensor(actions, dtype=torch.long, device=self.rec.device)
        if slates.numel() != self.num_envs * self.rec.slate_size:
            raise RecrlError(f"RecVectorEnv.step expects {self.num_envs} x {self.rec.slate_size} actions, "
                             f"got shape {tuple(slates.shape)}")
        slates = slates.reshape(self.num_envs, self.rec.slate_size)
        if self.duplicates == "error":
            _check_duplicates(slates)
        return slates


def _to_numpy(data: Any) -> Any:
    """Tensors (in nested tuples/dicts) as numpy arrays on the host."""
    if isinstance(data, Tensor):
        return data.cpu().numpy()
    if isinstance(data, dict):
        return {k: _to_numpy(v) for k, v in data.items()}
    if isinstance(data, tuple):
        return tuple(_to_numpy(v) for v in data)
    return data


# ----------------------------------------------------------------------------- gymnasium -> recrl
EnvSpec = str | Callable[..., gymnasium.Env]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _env_factory(env: EnvSpec, kwargs: dict[str, Any]) -> Callable[[], gymnasium.Env]:
    """A zero-argument constructor for ``env``: a callable, ``"module:Class"`` or a registered id.

    ``"module:Name"`` where ``Name`` is not an attribute of the module falls back to gymnasium's own
    ``"module:EnvId"`` syntax (import the module, which registers ``EnvId``).
    """
    if callable(env):
        return lambda: env(**kwargs)
    if not isinstance(env, str) or not env:
        raise RecrlError(f"gym env: expected an env id or 'module:Class', got {env!r}")
    if ":" in env:
        module_name, _, attr = env.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise RecrlError(f"gym env {env!r}: cannot import module {module_name!r} "
                             f"({_one_line(err)})") from err
        target = getattr(module, attr, None)
        if callable(target):
            return lambda: target(**kwargs)
    return lambda: gymnasium.make(env, **kwargs)


def _make(factory: Callable[[], gymnasium.Env], name: str) -> gymnasium.Env:
    """Build one env, turning any construction failure into a one-line RecrlError."""
    try:
        made = factory()
    except Exception as err:  # unknown ids, bad kwargs, broken constructors: all user-facing
        raise RecrlError(f"gym env {name}: {type(err).__name__}: {_one_line(err)}") from err
    if not isinstance(made, gymnasium.Env):
        raise RecrlError(f"gym env {name}: built a {type(made).__name__}, not a gymnasium.Env")
    return made


class GymAdapter:
    """``B`` independent copies of a gymnasium env with a ``Discrete`` action space, behind
    recrl's env interface (the one :class:`RecEnv` has), so recrl's algorithms train on it.

    ``env`` is a registered id (``"CartPole-v1"``), ``"module:Class"`` (imported and called with
    ``env_kwargs``) or a callable returning an env. Action ``a`` of the ``Discrete(n)`` space is
    item ``a`` of a catalogue of ``n_items = n``, in slates of ``slate_size = 1``. Observations:
    ``items`` ``[B, L, 1]`` the last ``L`` actions (``n_items`` = padding), ``clicks`` the reward
    received after each of them, ``step`` the steps taken and ``features`` ``[B, F]`` the env's
    observation flattened by ``gymnasium.spaces.flatten`` (``F = obs_features``; one-hot for a
    ``Discrete`` observation); build the algorithm with ``AlgoContext(obs_features=F)`` to use it.
    Episodes end when the env terminates or truncates or after ``horizon`` steps (default: the
    env's ``max_episode_steps``). With ``autoreset`` finished copies restart in place on the same
    step, like ``RecEnv``; otherwise they stay finished (``alive`` false, reward 0) until
    :meth:`reset`. The envs themselves step in a Python loop on the host.

    Example::

        env = GymAdapter("CartPole-v1", history_len=4)
        obs = env.reset(n_users=8, seed=0)                 # obs.features: [8, 4]
        obs, reward, done, info = env.step(torch.zeros(8, 1, dtype=torch.long))
    """

    slate_size = 1

    def __init__(self, id: EnvSpec, history_len: int = 4, horizon: int | None = None,
                 device: torch.device | str = "cpu", autoreset: bool = False,
                 env_kwargs: dict[str, Any] | None = None) -> None:
        self.name = id if isinstance(id, str) else getattr(id, "__name__", repr(id))
        self._factory = _env_factory(id, dict(env_kwargs or {}))
        first = _make(self._factory, repr(self.name))
        if not isinstance(first.action_space, spaces.Discrete):
            raise RecrlError(f"gym env {self.name!r}: action space {first.action_space} is not Discrete; "
                             "recrl's algorithms choose items from a Discrete catalogue")
        try:
            self.obs_features = int(spaces.flatdim(first.observation_space))
        except (ValueError, NotImplementedError, TypeError) as err:
            raise RecrlError(f"gym env {self.name!r}: observation space {first.observation_space} "
                             "cannot be flattened to a vector") from err
        limit = first.spec.max_episode_steps if first.spec is not None else None
        horizon = horizon or limit
        if horizon is None or horizon < 1 or history_len < 1:
            raise RecrlError(f"gym env {self.name!r}: pass horizon >= 1 (the env sets no max_episode_steps) "
                             "and history_len >= 1")
        self.n_items, self._start = int(first.action_space.n), int(first.action_space.start)
        self.horizon, self.history_len, self.autoreset = int(horizon), history_len, autoreset
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device)
        self.envs: list[gymnasium.Env] = [first]

    def reset(self, n_users: int, seed: int | None = None) -> Obs:
        """Start ``n_users`` episodes; ``seed`` seeds copy ``i`` with ``seed + i``."""
        if seed is not None:
            self.generator.manual_seed(seed)
        while len(self.envs) < n_users:
            self.envs.append(_make(self._factory, repr(self.name)))
        self._active = self.envs[:n_users]
        firsts = [e.reset(seed=None if seed is None else seed + i)[0] for i, e in enumerate(self._active)]
        dev = self.device
        self.features = self._flat(firsts)
        self.items = torch.full((n_users, self.history_len, 1), self.n_items, dtype=torch.long, device=dev)
        self.clicks = torch.zeros(n_users, self.history_len, 1, device=dev)
        self.t = torch.zeros(n_users, dtype=torch.long, device=dev)
        self.alive = torch.ones(n_users, dtype=torch.bool, device=dev)
        return self.observe()

    def observe(self) -> Obs:
        """The current observation (copies)."""
        return Obs(items=self.items.clone(), clicks=self.clicks.clone(), step=self.t.clone(),
                   features=self.features.clone())

    def step(self, slates: Tensor) -> tuple[Obs, Tensor, Tensor, StepInfo]:
        """Take action ``slates[:, 0]`` in every live copy; return ``(obs, reward, done, info)``."""
        b = len(self._active)
        if tuple(slates.shape) != (b, 1):
            raise RecrlError(f"GymAdapter.step expects actions of shape {(b, 1)}, got {tuple(slates.shape)}")
        actions = slates[:, 0].tolist()
        if any(a < 0 or a >= self.n_items for a in actions):
            raise RecrlError(f"GymAdapter.step: actions must be in 0..{self.n_items - 1}")
        was_alive = self.alive.clone()
        live = was_alive.tolist()
        reward, term, trunc = np.zeros(b, np.float32), np.zeros(b, bool), np.zeros(b, bool)
        t_next = (self.t + was_alive.long()).tolist()
        new_obs: dict[int, Any] = {}
        for i in range(b):
            if live[i]:
                obs_i, r, te, tr, _ = self._active[i].step(actions[i] + self._start)
                reward[i], term[i] = float(r), bool(te)
                trunc[i] = not te and (bool(tr) or t_next[i] >= self.horizon)
                new_obs[i] = obs_i
        return self._advance(slates, was_alive, new_obs, reward, term, trunc)

    def _advance(self, slates: Tensor, was_alive: Tensor, new_obs: dict[int, Any], reward: np.ndarray,
                 term: np.ndarray, trunc: np.ndarray) -> tuple[Obs, Tensor, Tensor, StepInfo]:
        """Update the history of the copies that stepped, restart finished ones (``autoreset``)."""
        dev = self.device
        reward_t = torch.as_tensor(reward, device=dev)
        terminated, truncated = torch.as_tensor(term, device=dev), torch.as_tensor(trunc, device=dev)
        done = terminated | truncated
        keep = was_alive[:, None, None]
        self.items = torch.where(keep, torch.cat([self.items[:, 1:], slates[:, None].to(dev)], 1), self.items)
        self.clicks = torch.where(keep, torch.cat([self.clicks[:, 1:], reward_t[:, None, None]], 1),
                                  self.clicks)
        self.t = self.t + was_alive.long()
        self.alive = was_alive & ~done
        if self.autoreset:
            for i in np.flatnonzero(term | trunc).tolist():
                new_obs[i] = self._active[i].reset()[0]
            self._restart(done)
        if new_obs:
            rows = torch.as_tensor(sorted(new_obs), device=dev)
            self.features[rows] = self._flat([new_obs[i] for i in sorted(new_obs)])
        info = StepInfo(response=self._response(len(reward)), terminated=terminated, truncated=truncated,
                        was_alive=was_alive)
        return self.observe(), reward_t, done, info

    def _restart(self, rows: Tensor) -> None:
        r = rows[:, None, None]
        self.items = torch.where(r, torch.full_like(self.items, self.n_items), self.items)
        self.clicks = torch.where(r, torch.zeros_like(self.clicks), self.clicks)
        self.t = torch.where(rows, torch.zeros_like(self.t), self.t)
        self.alive = self.alive | rows

    def _flat(self, observations: list[Any]) -> Tensor:
        space = self.envs[0].observation_space
        flat = np.stack([spaces.flatten(space, o) for o in observations]).astype(np.float32)
        return torch.as_tensor(flat, device=self.device)

    def _response(self, b: int) -> Response:
        """A recommendation response of zeros: a gymnasium env has no clicks, conversions,
        ratings or user signals (each registered one is 0)."""
        zeros = torch.zeros(b, 1, device=self.device)
        return Response(click_prob=zeros, click=zeros, conversion_prob=zeros, conversion=zeros,
                        rating=zeros, leave_prob=torch.zeros(b, device=self.device),
                        values=dict.fromkeys(SIGNALS, zeros))

    def close(self) -> None:
        """Close every copy."""
        for env in self.envs:
            env.close()
