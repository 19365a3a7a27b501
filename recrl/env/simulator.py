"""Batched recommendation environment over any :class:`~recrl.types.UserModel`.

All users of a batch step together on one device: one call of the user model per step, the
observation history updated in place, no Python loop over users and no host round trip. Only
the shown slates are scored each step; the one ``[users x items]`` table (``no_repeat``'s
"already shown" flags) is allocated at reset, never per step. A user model with ``frozen()``
(the GRU) is stepped through the snapshot it returns, taken at every reset: its per-item work
(every item's head and input vectors through the fixed weights) is done there once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recrl.env.choice import Choice
from recrl.env.leave import BoredomRule, LeaveRule, SatisfactionRule
from recrl.env.noise import PreDrawn, RandomSource, uniform
from recrl.env.pessimism import Pessimism
from recrl.types import Obs, RecrlError, Reward, StepInfo, UserModel


class RecEnv:
    """Sessions of ``n_users`` users with a user model, a reward and a leave model.

    A user's episode ends when they leave (sampled from the model's leave probability, or by a
    leave rule: ``boredom``, ``satisfaction``) or after ``horizon`` steps. With ``autoreset`` a
    finished user is replaced by a fresh one in the same row so the batch stays full (the
    returned observation is then the new user's first); without it the row stays finished
    (``alive`` false, zero reward) until :meth:`reset`. ``choice`` is how a user picks from the
    slate (``mnl`` or ``cascade``); with ``no_repeat`` a user ignores items already shown in
    the episode. ``pessimism`` (:class:`~recrl.env.pessimism.Pessimism`) penalises steps an
    ensemble user model is unsure about. ``lean`` (training environments): a user model that
    supports it computes only the optional outputs the reward reads (``reward.outputs``: the
    rating, user signals), the others are NaN in the responses; evaluation environments compute
    everything.

    Example::

        env = RecEnv(world, ClickReward(), horizon=20, slate_size=1, history_len=10)
        obs = env.reset(n_users=1024, seed=0)
        obs, reward, done, info = env.step(torch.randint(0, n_items, (1024, 1)))
    """

    def __init__(self, model: UserModel, reward: Reward, horizon: int = 20, slate_size: int = 1,
                 history_len: int = 10, autoreset: bool = False, choice: Choice | None = None,
                 no_repeat: bool = False, boredom: BoredomRule | None = None,
                 satisfaction: SatisfactionRule | None = None, item_categories: Tensor | None = None,
                 pessimism: Pessimism | None = None, device: torch.device | str = "cpu",
                 lean: bool = False) -> None:
        if horizon < 1 or slate_size < 1 or history_len < 1:
            raise RecrlError("env: horizon, slate_size and history_len must all be >= 1")
        if slate_size > model.n_items:
            raise RecrlError(f"env.slate_size={slate_size} exceeds the catalogue ({model.n_items} items)")
        self.model, self.reward = model, reward
        self.horizon, self.slate_size, self.history_len = horizon, slate_size, history_len
        self.autoreset, self.no_repeat = autoreset, no_repeat
        self.choice = choice or Choice()
        self.device = torch.device(device)
        self.n_items = model.n_items
        self.generator = torch.Generator(self.device)
        self.compiled = False  # whether transition runs compiled (expect_compiled)
        if boredom is not None:
            if item_categories is None:
                raise RecrlError("env.boredom needs item categories (built from the dataset's item table)")
            boredom.bind(item_categories)
        self.rules: list[LeaveRule] = [r for r in (boredom, satisfaction) if r is not None]
        self.pessimism = pessimism if pessimism is not None and pessimism.active else None
        # lean: a user model that can leave out the optional outputs the reward does not read
        # is asked for those it reads only
        outputs = getattr(reward, "outputs", None)
        lean = lean and outputs is not None and getattr(model, "lean_outputs", False)
        self.respond_options = {"heads": frozenset(outputs)} if lean else {}
        remembered = (history_len + 1) * slate_size  # the history and this step's slate
        if self.pessimism is not None and self.pessimism.entropy_bonus > 0 \
                and self.pessimism.entropy_window > remembered:
            raise RecrlError(f"env.pessimism.entropy_window={self.pessimism.entropy_window} exceeds the "
                             f"{remembered} items the environment remembers ((history_len + 1) x slate_size)")

    def reset(self, n_users: int, seed: int | None = None) -> Obs:
        """Start ``n_users`` fresh sessions; ``seed`` re-seeds the environment's generator."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.responder = self._snapshot()
        self.state = self.model.initial_state(n_users, self.generator)
        self.items = torch.full((n_users, self.history_len, self.slate_size), self.n_items,
                                dtype=torch.long, device=self.device)
        self.clicks = torch.zeros(n_users, self.history_len, self.slate_size, device=self.device)
        self.t = torch.zeros(n_users, dtype=torch.long, device=self.device)
        self.alive = torch.ones(n_users, dtype=torch.bool, device=self.device)
        self.shown = (torch.zeros(n_users, self.n_items, dtype=torch.bool, device=self.device)
                      if self.no_repeat else None)
        self._all_alive = True
        for rule in self.rules:
            rule.reset(n_users, self.device)
        return self.observe()

    def _snapshot(self) -> UserModel:
        """What steps the users: the model's snapshot where it can precompute its per-item work
        for fixed weights (``frozen``), else the model itself."""
        frozen = getattr(self.model, "frozen", None)
        if frozen is None:
            return self.model
        return frozen(compiled=True) if self.compiled else frozen()

    def expect_compiled(self) -> None:
        """From now on :meth:`transition` runs compiled (``trainer.compile``): the model's
        snapshot is retaken (and at every reset) with what only a compiled step reads."""
        self.compiled = True
        if hasattr(self, "responder"):
            self.responder = self._snapshot()

    def start_from(self, obs: Obs, state: Tensor, seed: int | None = None) -> Obs:
        """Continue sessions from observed histories instead of fresh users: ``obs`` gives each
        user's history and step, ``state`` ``[B, S]`` the user model's state after that history
        (e.g. ``model.encode(obs)``). Users already at the horizon start finished; leave rules
        start counting afresh; with ``no_repeat`` the observed items count as shown."""
        expected = (self.history_len, self.slate_size)
        if tuple(obs.items.shape[1:]) != expected:
            raise RecrlError(f"env.start_from expects histories of shape [B, {expected[0]}, {expected[1]}], "
                             f"got {tuple(obs.items.shape)}")
        self.reset(obs.batch_size, seed)
        self.state = state.to(self.device)
        self.items, self.clicks = obs.items.to(self.device).clone(), obs.clicks.to(self.device).clone()
        self.t = obs.step.to(self.device).clone()
        self.alive = self.t < self.horizon
        self._all_alive = False
        if self.shown is not None:
            self.shown = obs.shown_mask(self.n_items).to(self.device)
        return self.observe()

    def observe(self) -> Obs:
        """The current observation (copies, so stored observations never change)."""
        return Obs(items=self.items.clone(), clicks=self.clicks.clone(), step=self.t.clone())

    def step(self, slates: Tensor) -> tuple[Obs, Tensor, Tensor, StepInfo]:
        """Show ``slates`` ``[B, K]``; return ``(obs, reward [B], done [B], info)``.

        The step's random numbers are drawn first (:meth:`draw`), then :meth:`transition` does
        the arithmetic: compiled (``trainer.compile``), that is one graph."""
        if slates.shape != (self.state.shape[0], self.slate_size):
            raise RecrlError(f"env.step expects slates of shape {(self.state.shape[0], self.slate_size)}, "
                             f"got {tuple(slates.shape)}")
        return self.transition(slates, *self.draw())

    def draw(self) -> tuple[RandomSource, Tensor | None]:
        """A step's random numbers, in the order the step uses them: the response's and the
        leave draws (at once, :class:`~recrl.env.noise.PreDrawn`, when the user model draws
        only through :func:`~recrl.env.response.sample_response`: ``pre_drawable``; else the
        generator itself, and ``None``), then the fresh users that replace finished ones
        (autoreset)."""
        n_users = self.state.shape[0]
        if not getattr(self.model, "pre_drawable", False):
            return self.generator, None  # the model and restart() draw as they go
        # the choice (one per user), the conversions (one per slot), leaving (one per user)
        source = PreDrawn(self.generator, n_users * (self.slate_size + 2), self.device)
        fresh = self.model.initial_state(n_users, self.generator) if self.autoreset else None
        return source, fresh

    def transition(self, slates: Tensor, source: RandomSource,
                   fresh: Tensor | None) -> tuple[Obs, Tensor, Tensor, StepInfo]:
        """:meth:`step`'s arithmetic given its random numbers (:meth:`draw`)."""
        # Known on the host without a sync: after reset, and for as long as finished users are
        # replaced (autoreset), every row is in an episode, so the "keep finished rows as they
        # were" selections below would copy every row and are skipped. (``alive`` is only ever
        # replaced by this class, never written in place.)
        all_alive = self._all_alive
        was_alive = self.alive.clone()
        available = None
        if self.shown is not None:
            seen = self.shown.gather(1, slates)
            available = ~seen
            self.shown.scatter_(1, slates, seen | was_alive[:, None])
        response, next_state = self.responder.respond(self.state, slates, source, choice=self.choice,
                                                      available=available, **self.respond_options)
        live = was_alive.to(response.click.dtype)
        reward = self.reward(response)
        halted = None
        if self.pessimism is not None:
            recent = None
            if self.pessimism.entropy_bonus > 0:
                recent = torch.cat([self.items.flatten(1), slates], 1)
            reward, halted = self.pessimism.apply(reward, response, recent)
        reward = reward * live
        left = uniform(tuple(self.t.shape), self.device, source) < response.leave_prob
        if isinstance(source, PreDrawn):
            source.check_used()
        if halted is not None:
            left = left | halted
        self.t = self.t + was_alive.long()
        for rule in self.rules:
            left = left | rule.step(slates, response, self.t)
        terminated = was_alive & left
        truncated = was_alive & ~left & (self.t >= self.horizon)
        done = terminated | truncated
        # the history shifts left by one slate: new tensors, so the previous ones (and any
        # observation) are never written to
        items = torch.cat([self.items[:, 1:], slates[:, None]], 1)
        clicks = torch.cat([self.clicks[:, 1:], response.click[:, None]], 1)
        if all_alive or next_state is self.state:  # where(keep, x, x) is x
            state = next_state
        else:
            state = torch.where(was_alive[:, None], next_state, self.state)
        if not all_alive:
            keep = was_alive[:, None, None]
            items = torch.where(keep, items, self.items)
            clicks = torch.where(keep, clicks, self.clicks)
        self.state, self.items, self.clicks = state, items, clicks
        self.alive = was_alive & ~done
        if self.autoreset:
            self.restart(done, fresh)
        self._all_alive = all_alive and self.autoreset
        info = StepInfo(response=response, terminated=terminated, truncated=truncated,
                        was_alive=was_alive)
        return self.observe(), reward, done, info

    def restart(self, rows: Tensor, fresh: Tensor | None = None) -> None:
        """Replace finished users (``rows`` true) by fresh ones (``fresh``: their start states,
        drawn here when not given), without a host sync.

        The history tensors are never handed out (observations are copies), so they are reset
        in place.
        """
        if fresh is None:
            fresh = self.model.initial_state(rows.shape[0], self.generator)
        self.state = torch.where(rows[:, None], fresh, self.state)
        self.items.masked_fill_(rows[:, None, None], self.n_items)
        self.clicks.masked_fill_(rows[:, None, None], 0.0)
        self.t = self.t.masked_fill(rows, 0)
        self.alive = self.alive | rows
        if self.shown is not None:
            self.shown &= ~rows[:, None]
        for rule in self.rules:
            rule.restart(rows)
