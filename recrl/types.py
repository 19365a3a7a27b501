"""The contracts between recrl's stages: small typed containers and Protocols.

Every stage talks to the next through these types only: batched tensors on one device,
never a shared config dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.env.signals import SIGNALS


class RecrlError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2."""


class Pruned(Exception):
    """A hyperparameter search's pruner stopped this run early (its periodic ``eval/return``
    was below the median of earlier trials at the same step); not a failure."""


def _map_tensors(obj: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor field of a dataclass, returning a new instance."""
    return replace(obj, **{f.name: fn(getattr(obj, f.name)) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), Tensor)})


@dataclass(frozen=True)
class Obs:
    """What a policy sees of a batch of users: their recent history, nothing latent.

    Attributes:
        items: ``[B, L, K]`` item ids of the last ``L`` slates shown (``n_items`` = padding),
            oldest first.
        clicks: ``[B, L, K]`` 1.0 where the shown item was clicked.
        step: ``[B]`` steps already taken in the current episode.
        features: optional ``[B, F]`` real-valued observation of environments that have one
            (a gymnasium env wrapped by :class:`recrl.env.gym.GymAdapter`); ``None`` for
            recommendation environments, whose users are latent.

    Example::

        obs = Obs(items=torch.full((2, 4, 1), 10), clicks=torch.zeros(2, 4, 1),
                  step=torch.zeros(2, dtype=torch.long))
    """

    items: Tensor
    clicks: Tensor
    step: Tensor
    features: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of users in the batch."""
        return self.items.shape[0]

    def index(self, idx: Tensor) -> Obs:
        """Rows ``idx`` of every field."""
        return _map_tensors(self, lambda t: t[idx])

    def to(self, device: torch.device | str) -> Obs:
        """The same observation on ``device``."""
        return _map_tensors(self, lambda t: t.to(device))

    def shown_mask(self, n_items: int) -> Tensor:
        """``[B, n_items]`` booleans, true for the items in each user's history."""
        shown = self.items.reshape(self.batch_size, -1)
        mask = torch.zeros(self.batch_size, n_items + 1, dtype=torch.bool, device=shown.device)
        return mask.scatter_(1, shown, True)[:, :n_items]  # padding ids (n_items) land in the dropped column


def cat_obs(parts: list[Obs]) -> Obs:
    """The rows of several observations, in order, as one observation (``features`` kept only
    when every part has them)."""
    features = [o.features for o in parts]
    return Obs(items=torch.cat([o.items for o in parts]), clicks=torch.cat([o.clicks for o in parts]),
               step=torch.cat([o.step for o in parts]),
               features=None if any(f is None for f in features) else torch.cat(features))


@dataclass(frozen=True)
class Response:
    """How a batch of users responded to a batch of slates ``[B, K]``.

    Probabilities are what the user model believed; ``click``/``conversion`` are the sampled
    outcomes. Under the multinomial-logit choice model at most one item per slate is clicked.

    Attributes:
        click_prob: ``[B, K]`` probability that each slate item is the one clicked.
        click: ``[B, K]`` sampled clicks (0/1 floats).
        conversion_prob: ``[B, K]`` probability of a conversion given a click on the item.
        conversion: ``[B, K]`` sampled conversions (0 where not clicked).
        rating: ``[B, K]`` expected rating (1..5) given a click on the item.
        leave_prob: ``[B]`` probability that the user leaves after this step.
        values: ``{signal: [B, K]}`` the expected value of each user signal the model knows
            (:mod:`recrl.env.signals`) given a click on the item, NaN where it was never
            learned; e.g. ``watch`` in the data's unit (KuaiRand: play time / video duration;
            the synthetic world: share of the item consumed).
        uncertainty: ``[B, K]`` how much the members of a behavior-model ensemble disagree about
            each item's click probability (their standard deviation); ``None`` for a single model
            or the ground truth.
    """

    click_prob: Tensor
    click: Tensor
    conversion_prob: Tensor
    conversion: Tensor
    rating: Tensor
    leave_prob: Tensor
    values: Mapping[str, Tensor] = field(default_factory=dict)
    uncertainty: Tensor | None = None

    def value(self, signal: str) -> Tensor:
        """The expected ``signal`` ``[B, K]`` given a click (a one-line error when the user model
        gives none)."""
        if signal not in self.values:
            known = ", ".join(self.values) or "none"
            raise RecrlError(f"the user model gives no {signal!r} values (it gives: {known})")
        return self.values[signal]

    @property
    def watch(self) -> Tensor:
        """The expected watch (dwell) ``[B, K]`` given a click: ``value("watch")``."""
        return self.value("watch")


@dataclass(frozen=True)
class StepInfo:
    """Extra per-step results of :meth:`Env.step`.

    Attributes:
        response: the users' response to the actions.
        terminated: ``[B]`` the user left.
        truncated: ``[B]`` the episode reached the horizon.
        was_alive: ``[B]`` the user was in an episode before this step (rows that were not
            carry zero reward and must be ignored by learners).
    """

    response: Response
    terminated: Tensor
    truncated: Tensor
    was_alive: Tensor


@dataclass(frozen=True)
class Transition:
    """A batch of environment transitions, the unit stored in replay and rollout buffers."""

    obs: Obs
    action: Tensor  # [B, K] long
    reward: Tensor  # [B]
    next_obs: Obs
    done: Tensor  # [B] float, 1.0 where the episode ended at this step
    valid: Tensor  # [B] float, 1.0 where the row is a real transition
    # [B, K] the sampled clicks on ``action`` (the response's ``click``), where the collecting loop
    # recorded them (the off-policy loop does); None: read them from ``next_obs`` if needed
    click: Tensor | None = None

    def index(self, idx: Tensor) -> Transition:
        """Rows ``idx`` of every field."""
        return Transition(obs=self.obs.index(idx), action=self.action[idx],
                          reward=self.reward[idx], next_obs=self.next_obs.index(idx),
                          done=self.done[idx], valid=self.valid[idx],
                          click=None if self.click is None else self.click[idx])


LOG_HEAD = ("user", "item", "time", "click", "conversion", "rating")
LOG_TAIL = ("leave", "propensity")


def log_columns() -> tuple[str, ...]:
    """The columns of a log: :data:`LOG_HEAD`, one per registered signal, :data:`LOG_TAIL`."""
    return (*LOG_HEAD, *SIGNALS, *LOG_TAIL)


LOG_COLUMNS = log_columns()  # with the built-in signals (watch); log_columns() adds later registrations


@dataclass
class Interactions:
    """What training code may see: the training and validation rows of a logged dataset.

    Each log is a DataFrame with one row per shown item, sorted by ``user`` then ``time``, with
    the columns of :func:`log_columns`: dense ``user``/``item`` ids (``0..n-1``), an integer
    ``time`` that orders a user's rows, ``click`` and ``conversion`` (0/1), ``rating`` (NaN
    where unknown), one column per user signal (:mod:`recrl.env.signals`; ``watch``: watch time
    or dwell of the row, NaN where unknown), ``leave`` (1 on the row after which the user left,
    NaN when the data does not say) and ``propensity`` (the logging policy's probability of the
    item, NaN if unknown).
    ``items`` is indexed by item id (features, genres, titles). The held-out test rows are not
    here by construction: they live in :class:`Splits` next to this object.
    ``positive_only`` marks logs of positive events only (no shown-but-ignored rows), where
    a click model needs sampled negatives.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    items: pd.DataFrame
    n_users: int
    n_items: int
    positive_only: bool = False

    def item_popularity(self) -> np.ndarray:
        """Clicks per item over the training rows (length ``n_items``)."""
        pop = np.bincount(self.train["item"].to_numpy(), weights=self.train["click"].to_numpy(),
                          minlength=self.n_items)
        return pop.astype(np.float64)


@dataclass
class Splits:
    """A prepared dataset: the training view, the held-out test rows and bookkeeping.

    Attributes:
        interactions: train + validation rows, the only part training code receives.
        test: held-out rows (same columns), used by evaluation only.
        ground_truth: an optional second log for a ground-truth user model (e.g. Coat's
            randomized exposures), used by evaluation only.
        user_ids, item_ids: raw ids indexed by dense id (the maps back).
        meta: facts for reports (name, source checksums, skipped rows, ...).
    """

    interactions: Interactions
    test: pd.DataFrame
    ground_truth: Interactions | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    users: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class UserModel(Protocol):
    """A batched model of users: the ground-truth world or a fitted behavior model.

    State is an opaque tensor ``[B, S]`` so the environment can store and reset it in place.
    A model whose ``respond`` draws only through :func:`recrl.env.response.sample_response` may
    set ``pre_drawable = True``: the environment then draws a step's random numbers at once
    (:class:`recrl.env.noise.PreDrawn`, passed as ``generator``) so a compiled step is one graph.
    A model that can do per-item work once for fixed weights may define ``frozen()``, returning
    an object whose ``respond`` gives the same responses: the environment takes one at every
    reset and steps it (:class:`recrl.behavior.gru.FrozenGRU`); where the step runs compiled it
    asks for ``frozen(compiled=True)``, a snapshot that may also keep what only compiled steps
    read.
    """

    n_items: int

    def initial_state(self, n_users: int, generator: torch.Generator) -> Tensor:
        """Fresh user states ``[n_users, S]``."""
        ...

    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator,
                choice: Any = None, available: Tensor | None = None) -> tuple[Response, Tensor]:
        """Sampled responses of users in ``state`` to ``slates`` ``[B, K]`` and their next state.

        ``choice`` (a :class:`recrl.env.choice.Choice`) turns click utilities into the clicked
        slot; items where ``available`` ``[B, K]`` is false are never clicked.
        ``Response.leave_prob`` is the probability of leaving after this step.
        """
        ...


@runtime_checkable
class Env(Protocol):
    """A batched environment the trainer and the evaluation drive: ``B`` users (or copies of a
    gymnasium environment) step together on one device.

    :class:`recrl.env.simulator.RecEnv` (over a user model) and
    :class:`recrl.env.gym.GymAdapter` (over gymnasium environments) satisfy it. Rows whose
    episode ended stay finished (``alive`` false, reward 0) until :meth:`reset`, unless
    ``autoreset`` replaces them in place by fresh ones on the same step.
    """

    n_items: int
    slate_size: int
    history_len: int
    horizon: int
    device: torch.device
    generator: torch.Generator
    autoreset: bool
    alive: Tensor

    def reset(self, n_users: int, seed: int | None = None) -> Obs:
        """Start ``n_users`` episodes; ``seed`` re-seeds the environment's generator."""
        ...

    def observe(self) -> Obs:
        """The current observation (copies: stored observations never change)."""
        ...

    def step(self, slates: Tensor) -> tuple[Obs, Tensor, Tensor, StepInfo]:
        """Show ``slates`` ``[B, K]``; return ``(obs, reward [B], done [B], info)``."""
        ...


class Reward(Protocol):
    """Turns a response into a scalar reward per user.

    A reward that reads user signals (:attr:`Response.values`) names them in a ``signals``
    attribute (a tuple; none when absent): they are checked against the logs before anything
    is fitted.
    """

    def __call__(self, response: Response) -> Tensor:
        """Realised reward ``[B]`` from sampled outcomes."""
        ...

    def expected(self, response: Response) -> Tensor:
        """Expected immediate reward ``[B, K]`` of each slate item under the model."""
        ...


@runtime_checkable
class Policy(Protocol):
    """Anything that recommends: ``act`` maps observations to slates ``[B, K]``."""

    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Slates of item ids ``[B, K]`` for the users in ``obs``."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """A policy that can rank the whole catalogue: the scores its greedy slate is the top of
    (``-inf`` for items it would never serve), so it can serve top-k lists of any length."""

    def scores(self, obs: Obs) -> Tensor:
        """Item scores ``[B, n_items]``, higher first."""
        ...


@runtime_checkable
class Algorithm(Policy, Protocol):
    """A policy that learns.

    ``mode`` tells the training loop how to feed it: ``"off_policy"`` (replay of single
    transitions), ``"on_policy"`` (whole episodes collected with the current policy),
    ``"online"`` (each step's transitions as they arrive: bandits), ``"offline"`` (batches of
    the logged data in its ``dataset`` attribute, no environment interaction) or ``"none"`` (a
    fixed baseline that never updates). An algorithm may also define ``prepare(env, seed)``,
    which the training loop calls once with its environment before the first step (DQN records
    the planner's demonstrations there). Every algorithm also gives ``action_probs(obs)``, the
    per-slot distribution ``[B, K, n_items]`` of the slates it serves in evaluation
    (:mod:`recrl.algos.probs`), which off-policy evaluation weighs logged items by.
    """

    mode: str

    def update(self, batch: Any) -> dict[str, float]:
        """One learning step on ``batch``; returns scalar diagnostics."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimizer, counters."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        ...


@dataclass(frozen=True)
class AlgoContext:
    """Run-time facts every algorithm is built with (filled in by ``train.py``).

    Attributes:
        n_items: catalogue size.
        slate_size: items per recommendation ``K``.
        history_len: slates of history in an observation ``L``.
        horizon: maximum episode length.
        device: where tensors live.
        seed: seed for the algorithm's own random numbers.
        item_popularity: ``[n_items]`` clicks per item in the training logs.
        behavior: the fitted behavior model (for model-based baselines such as greedy).
        reward: the reward function being optimised.
        obs_features: width ``F`` of :attr:`Obs.features` (0: observations have none).
        interactions: the training logs (train and valid rows, never test) that offline
            algorithms learn from (``None`` for gymnasium envs).
        item_actions: the actions are catalogue items (recommendation environments, with or
            without observation features); ``False`` for a wrapped gymnasium environment, whose
            actions are moves that may repeat.
        train_users: users per training environment step (``trainer.n_users``), what an
            algorithm can size work before training by (e.g. DQN's demonstrations).
        cache_dir: where stages built before training are cached (``cache_dir``; ``None``: not
            cached), e.g. a pretrained policy (``algo.init_from=pretrain``).
        data_key: what identifies the training data (part of such cache keys).
    """

    n_items: int
    slate_size: int
    history_len: int
    horizon: int
    device: torch.device
    seed: int
    item_popularity: Tensor
    behavior: Any
    reward: Any
    obs_features: int = 0
    interactions: Interactions | None = None
    item_actions: bool = True
    train_users: int = 256
    cache_dir: str | None = None
    data_key: str = ""
