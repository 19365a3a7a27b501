"""Survival-aware planning with the fitted user model (``algo=planner``): a model-based baseline.

The myopic greedy baseline (``algo=greedy``) serves what the behavior model predicts is clicked
most now, which on a world with clickbait is what makes users leave. This policy is the oracle's
base rule (:mod:`recrl.algos.oracle`) with the *learned* user model in place of the true one and
the state the model infers from the observed history in place of the true state. Each step it
scores every item ``i`` by its expected reward now times the chance of staying for the rest of
the episode at the leave rate a click on it would leave behind::

    s        = behavior.encode(history)                     the model's belief about the user
    r(s, i)  = reward.expected(predicted response to i shown alone)
    stay_i   = 1 - P_leave(next_state(s, i, click=1, conversion=E[conversion]))
    score_i  = r(s, i) * stay_i ** (caution * R)            R = steps left after this one

and serves the top-``K`` items (``K`` the slate size; each item is valued as if shown alone).
``caution = 1`` is the oracle's rule; ``caution > 1`` discounts the future as if each leave rate
were that many times as high, hedging against a user model that underrates how fast bad items
drive users away (choose it on the training simulator's return, never on the ground truth).
It learns nothing beyond the behavior model, so it is a reference for the learners: a learner
that earns less than it in the ground truth uses the same simulator worse than one step of
planning does. Logs without leave labels leave the leave head at 0, and the planner is then the
myopic greedy policy.

Cost per step: one ``next_state`` of the model for every (user, item) pair, ``B x N`` rows, done
in chunks of at most ``chunk_rows`` rows.

Example::

    planner = SurvivalPlanner(ctx, caution=2.0)
    slates = planner.act(obs, explore=False)      # [B, K]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recrl.algos.fixed import FixedPolicy
from recrl.algos.nets import mask_shown, skips_shown
from recrl.loop import collect_episodes
from recrl.types import AlgoContext, Obs, RecrlError, cat_obs

MODEL_METHODS = ("encode", "score_all", "next_state", "leave_prob")


def missing_methods(model: Any) -> list[str]:
    """The methods of :data:`MODEL_METHODS` that ``model`` lacks (none: a planner can plan with it)."""
    return [m for m in MODEL_METHODS if not hasattr(model, m)]


def planner_can_run(ctx: AlgoContext) -> bool:
    """Whether :class:`SurvivalPlanner` can run in ``ctx``: catalogue items as actions and a
    behavior model with every method it needs (:data:`MODEL_METHODS`)."""
    return ctx.item_actions and not missing_methods(ctx.behavior)


class SurvivalPlanner(FixedPolicy):
    """Top-``K`` items by ``r(s, i) * P(stay | click on i) ** (caution * R)`` under the behavior
    model (see the module docstring); ``skip_shown`` never serves an item in the observed history.
    ``model``: plan with another user model with the same methods (:data:`MODEL_METHODS`) instead
    of ``ctx.behavior``, e.g. the ground truth seen from the history
    (:class:`~recrl.data.synthetic.HistoryBelief`)."""

    def __init__(self, ctx: AlgoContext, caution: float = 2.0, skip_shown: bool = True,
                 chunk_rows: int = 262_144, model: Any = None) -> None:
        super().__init__(ctx)
        model = ctx.behavior if model is None else model
        missing = missing_methods(model)
        if missing:
            raise RecrlError(f"algo=planner needs a sequential behavior model (it lacks "
                             f"{', '.join(missing)}); use behavior=gru, sasrec or mf")
        if caution < 0:
            raise RecrlError(f"algo.caution={caution} must be >= 0 (1: the oracle's rule, 0: myopic greedy)")
        if chunk_rows < 1:
            raise RecrlError(f"algo.chunk_rows={chunk_rows} must be >= 1")
        self.model, self.reward = model, ctx.reward
        self.caution, self.chunk_rows = caution, chunk_rows
        self.skip_shown = skips_shown(ctx, skip_shown)

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """``r(s, i) * stay_i ** (caution * R)`` for every item ``[B, n_items]``."""
        state = self.model.encode(obs)
        alone = self.model.score_all(state)
        remaining = (self.ctx.horizon - 1 - obs.step).clamp(min=0).to(state.dtype)
        stay = self.stay_after_click(state, alone.conversion_prob)
        scores = self.reward.expected(alone) * stay.clamp(min=1e-12) ** (self.caution * remaining[:, None])
        return mask_shown(scores, obs) if self.skip_shown else scores

    def stay_after_click(self, state: Tensor, conversion_prob: Tensor) -> Tensor:
        """``1 - P_leave`` ``[B, N]`` in the state after a click on each item shown alone (its
        conversion at its expected value)."""
        return 1.0 - leave_after_click(self.model, state, conversion_prob, self.chunk_rows)

    @torch.no_grad()
    def demonstrations(self, env: Any, n_users: int, seed: int, batch: int = 256) -> tuple[Obs, Tensor]:
        """The planner's sessions in ``env`` as demonstrations: the observation of every step a
        user was still there ``[M, ...]`` and the slate the planner served ``[M, K]``.

        ``n_users`` users (rounded up to whole batches of ``min(batch, n_users)``) play complete
        sessions from ``env.reset(batch, seed=seed + chunk)``; ``env.autoreset`` is restored.
        """
        batch = min(batch, n_users)
        autoreset, env.autoreset = env.autoreset, False
        sessions = [collect_episodes(self, env, env.reset(batch, seed=seed + chunk))
                    for chunk in range(max(1, -(-n_users // batch)))]
        env.autoreset = autoreset
        there = torch.cat([s.valid.flatten() for s in sessions]).nonzero().squeeze(1)  # one sync
        observations = cat_obs([s.flat_obs() for s in sessions])
        slates = torch.cat([s.action.flatten(0, 1) for s in sessions])
        return observations.index(there), slates[there]


def leave_after_click(model: Any, state: Tensor, conversion_prob: Tensor, chunk_rows: int) -> Tensor:
    """``model``'s probability ``[B, N]`` of leaving after a click on each item shown alone, its
    conversion at ``conversion_prob`` ``[B, N]``: the model's own batched
    ``leave_prob_after_click`` where it has one (the GRU's, the synthetic world's), else one
    ``next_state`` and ``leave_prob`` per (user, item) pair, in chunks of at most ``chunk_rows``."""
    fast = getattr(model, "leave_prob_after_click", None)
    if fast is not None:
        return fast(state, conversion_prob, chunk_rows)
    b, n = conversion_prob.shape
    users = max(1, chunk_rows // n)
    items = torch.arange(n, device=state.device)
    leave = []
    for start in range(0, b, users):
        chunk = state[start:start + users]
        m = chunk.shape[0]
        after = model.next_state(chunk.repeat_interleave(n, 0), items.repeat(m)[:, None],
                                 torch.ones(m * n, 1, device=state.device),
                                 conversion_prob[start:start + users].reshape(-1, 1))
        leave.append(model.leave_prob(after).view(m, n))
    return torch.cat(leave)


class MixedModel:
    """A planner's user model made of two: each item's response now (click, conversion, rating:
    what the reward reads) from ``responses``, the leaving after it from ``leaving``. Each part
    keeps its own state, estimated from the same history. With one part fitted and the other the
    ground truth (:class:`~recrl.data.synthetic.HistoryBelief`) it shows which part of a fitted
    simulator costs a policy its return (``scripts/simulator_fits.py``).

    Example::

        model = MixedModel(responses=behavior, leaving=HistoryBelief(world, env.choice))
        planner = SurvivalPlanner(ctx, caution=2.0, model=model)
    """

    def __init__(self, responses: Any, leaving: Any) -> None:
        for part in (responses, leaving):
            missing = missing_methods(part)
            if missing:
                raise RecrlError(f"a planner's user model lacks {', '.join(missing)}: "
                                 f"{type(part).__name__} cannot be one part of a mixed model")
        self.responses, self.leaving = responses, leaving
        self.width: int | None = None  # columns of the responses part's state, set by encode

    def encode(self, obs: Obs) -> Tensor:
        """Both parts' states from ``obs``'s history, side by side ``[B, S_r + S_l]``."""
        first = self.responses.encode(obs)
        self.width = first.shape[-1]
        return torch.cat([first, self.leaving.encode(obs).to(first.dtype)], -1)

    def split(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """The responses part's and the leaving part's states."""
        if self.width is None:
            raise RecrlError("MixedModel.encode must run before its states can be read")
        return state[..., :self.width], state[..., self.width:]

    def score_all(self, state: Tensor) -> Any:
        """Each item's expected response shown alone ``[B, N]``, from the responses part."""
        return self.responses.score_all(self.split(state)[0])

    def leave_prob_after_click(self, state: Tensor, conversion: Tensor, chunk_rows: int = 262_144) -> Tensor:
        """The leaving part's probability ``[B, N]`` of leaving after a click on each item."""
        return leave_after_click(self.leaving, self.split(state)[1], conversion, chunk_rows)

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Both parts' states after ``slates`` and the response to them."""
        first, second = self.split(state)
        return torch.cat([self.responses.next_state(first, slates, click, conversion),
                          self.leaving.next_state(second, slates, click, conversion).to(first.dtype)], -1)

    def leave_prob(self, state: Tensor) -> Tensor:
        """The leaving part's probability ``[B]`` of leaving now."""
        return self.leaving.leave_prob(self.split(state)[1])
