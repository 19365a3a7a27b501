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
        fast = getattr(self.model, "leave_prob_after_click", None)
        if fast is not None:  # the model's own batched form (the GRU's)
            return 1.0 - fast(state, conversion_prob, self.chunk_rows)
        b, n = conversion_prob.shape
        users = max(1, self.chunk_rows // n)
        items = torch.arange(n, device=state.device)
        stay = []
        for start in range(0, b, users):
            chunk = state[start:start + users]
            m = chunk.shape[0]
            after = self.model.next_state(chunk.repeat_interleave(n, 0), items.repeat(m)[:, None],
                                          torch.ones(m * n, 1, device=state.device),
                                          conversion_prob[start:start + users].reshape(-1, 1))
            stay.append((1.0 - self.model.leave_prob(after)).view(m, n))
        return torch.cat(stay)

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
