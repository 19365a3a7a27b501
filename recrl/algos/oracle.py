"""The oracle: a reference policy that sees the true user state and plans with the true dynamics.

It is not a learner and not something a real recommender could run; it exists so that every
report on the synthetic world can say how much of the achievable return a policy reaches
("share of the oracle"). Evaluation builds it for the ground-truth environment only, where the
user model is the world itself (see :class:`recrl.data.synthetic.SyntheticWorld`).

Each step, for each user, with ``s`` the user's true state and ``R`` the steps left in the
episode (model-predictive control with rollouts, Bertsekas' rollout algorithm):

1. **Base policy** (cheap, myopic but survival-aware): score every item by its expected reward
   times the probability of *staying* for the rest of the episode at the leave rate that a click
   on it would leave behind, ``b(s, i) = r(s, i) * (1 - leave_after_click(s, i)) ** R``. This
   alone avoids clickbait (high click probability, then users leave).
2. **Candidates**: the ``candidates`` best items by ``b``.
3. **Lookahead**: each candidate is valued by a mean-field rollout of the base policy in the
   true model over the rest of the episode: clicks replaced by their probabilities, the state
   moved by the expected clicks, and the chance of still being there multiplied step by step::

       Q(s, i) = r(s, i) + sum_{h >= 1} P(still there at h) * r(s_h, base(s_h))

4. **Act**: the top-``K`` candidates by ``Q`` (``K`` = slate size; the first slate of a
   rollout is the candidate followed by the base policy's best other items).

The rollout algorithm improves on its base policy whenever the lookahead values are exact; the
mean-field approximation makes that approximate (the tests check that the lookahead beats the
base policy on the default world). Leave rules of the environment (``env.boredom``,
``env.satisfaction``) and ``env.no_repeat`` are not modelled.

Example::

    oracle = Oracle(world, ClickReward(), env, candidates=8)
    stats = run_episodes(oracle, env, 1000, seed=12345)
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from recrl.env.choice import ChoiceModel
from recrl.types import RecrlError, Response, Reward


class PlanningModel(Protocol):
    """What the oracle needs of a user model: expected responses without sampling and the
    state update (the synthetic world provides both)."""

    n_items: int

    def expected_response(self, state: Tensor, slates: Tensor | None, choice: ChoiceModel) -> Response:
        """Expected response to ``slates`` ``[B, K]`` or to every item alone (``None``)."""
        ...

    def update(self, state: Tensor, slates: Tensor, click: Tensor) -> Tensor:
        """Next state after ``click`` ``[B, K]`` (probabilities allowed: the mean-field step)."""
        ...


class StateEnv(Protocol):
    """The environment the oracle reads: the true user states and the slate size."""

    state: Tensor
    horizon: int
    slate_size: int
    choice: ChoiceModel


def can_plan(model: Any) -> bool:
    """Whether ``model`` gives what the oracle plans with (the synthetic world does)."""
    return hasattr(model, "expected_response") and hasattr(model, "update")


class Oracle:
    """Rollout-MPC over the true state and dynamics (see the module docstring).

    ``lookahead=False`` acts with the base policy alone (for the comparison the reports make).
    """

    mode = "none"

    def __init__(self, model: PlanningModel, reward: Reward, env: StateEnv, candidates: int = 8,
                 lookahead: bool = True) -> None:
        if not can_plan(model):
            raise RecrlError("the oracle needs a user model it can plan with (the synthetic world)")
        if candidates < env.slate_size:
            raise RecrlError(f"oracle: candidates={candidates} must be >= the slate size {env.slate_size}")
        self.model, self.reward, self.env = model, reward, env
        self.candidates, self.lookahead = candidates, lookahead

    def base_scores(self, state: Tensor, remaining: Tensor) -> Tensor:
        """``r(s, i) * P(stay | click on i) ** remaining`` for every item ``[B, N]``."""
        alone = self.model.expected_response(state, None, self.env.choice)
        stay = (1.0 - alone.leave_prob).clamp(min=1e-12)
        return self.reward.expected(alone) * stay ** remaining[:, None].to(stay.dtype)

    def base_slates(self, state: Tensor, remaining: Tensor) -> Tensor:
        """The base policy's slates ``[B, K]``."""
        return self.base_scores(state, remaining).topk(self.env.slate_size, dim=1).indices

    def _expected_step(self, state: Tensor, slates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Expected reward ``[B]``, mean-field next state and probability of staying ``[B]``."""
        resp = self.model.expected_response(state, slates, self.env.choice)
        return (self.reward.expected(resp).sum(1), self.model.update(state, slates, resp.click),
                1.0 - resp.leave_prob)

    def _first_slates(self, scores: Tensor, candidates: Tensor) -> Tensor:
        """``[B * M, K]``: each candidate followed by the best other items by ``scores``."""
        k = self.env.slate_size
        head = candidates.reshape(-1, 1)
        if k == 1:
            return head
        others = scores.topk(k, dim=1).indices.repeat_interleave(candidates.shape[1], 0)  # [B*M, K]
        # drop the candidate from the others if it is there, else the last of them
        order = torch.argsort((others == head).to(torch.int8), dim=1, stable=True)
        return torch.cat([head, others.gather(1, order)[:, :k - 1]], 1)

    @torch.no_grad()
    def act(self, obs: Any, explore: bool = False) -> Tensor:
        """Slates ``[B, K]`` for the environment's current users."""
        state = self.env.state
        remaining = (self.env.horizon - 1 - obs.step).clamp(min=0)
        scores = self.base_scores(state, remaining)
        if not self.lookahead:
            return scores.topk(self.env.slate_size, dim=1).indices
        b, m = state.shape[0], min(self.candidates, scores.shape[1])
        candidates = scores.topk(m, dim=1).indices  # [B, M]
        rows = state.repeat_interleave(m, 0)
        rows_left = remaining.repeat_interleave(m, 0)
        value, rows, alive = self._expected_step(rows, self._first_slates(scores, candidates))
        for h in range(int(remaining.max())):
            reward, rows, stay = self._expected_step(rows, self.base_slates(rows, rows_left - h - 1))
            live = alive * (rows_left > h).to(alive.dtype)
            value = value + live * reward
            alive = alive * stay
        best = value.view(b, m).topk(self.env.slate_size, dim=1).indices
        return candidates.gather(1, best)

    def update(self, batch: Any) -> dict[str, float]:
        """The oracle does not learn."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
