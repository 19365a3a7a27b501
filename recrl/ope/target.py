"""What the estimators need to know about the target policy and the behavior model at each
logged row: the target's probability of the logged item, and the model's expected rewards.

Per logged row ``i`` with observation ``x_i`` and logged item ``a_i``:

- ``p_target``: ``pi(a_i | x_i)`` from the policy's ``action_probs`` (first slot), smoothed as
  ``(1 - epsilon) pi + epsilon / n_items`` when ``epsilon > 0``;
- ``q_logged``, ``v_target``: the behavior model's expected *immediate* reward of ``a_i`` and
  of the target's item, ``sum_a pi(a|x_i) q(x_i, a)`` (each item's reward as if shown alone):
  the model of the per-step DM and DR;
- ``q_model``, ``v_model``: the model's *long-term* values, the discounted return from row ``i``
  to the end of the episode when the user is served ``a_i`` (``q``) or the target's item
  (``v``) now and the target's slates afterwards (to the horizon where the logged user left,
  else over the rest of the logged session: :attr:`~recrl.ope.sessions.LoggedSessions.remaining`),
  averaged over ``rollouts`` simulated
  continuations in an environment over the behavior model started from the logged history
  (:meth:`recrl.env.simulator.RecEnv.start_from`): the model of the sequential DM and DR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recrl.env.simulator import RecEnv
from recrl.ope.sessions import LoggedSessions
from recrl.types import Obs, Policy, RecrlError, Reward

ROLLOUT_USERS = 16384  # simulated users per rollout batch (bounds memory)


@dataclass(frozen=True)
class TargetTerms:
    """Per-row ``[N]`` float64 arrays (see the module docstring); the long-term ones are
    ``None`` without a model environment."""

    p_target: np.ndarray
    q_logged: np.ndarray
    v_target: np.ndarray
    q_model: np.ndarray | None = None
    v_model: np.ndarray | None = None


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def action_probs(policy: Policy, obs: Obs, n_items: int, epsilon: float = 0.0) -> Tensor:
    """``[B, n_items]`` the target's probability of serving each item (first slot of its
    ``action_probs``), smoothed with ``epsilon``."""
    if not hasattr(policy, "action_probs"):
        raise RecrlError(f"{type(policy).__name__} gives no action_probs(obs): off-policy evaluation "
                         "needs the probability of each item under the policy")
    probs = policy.action_probs(obs)[:, 0, :].double()
    return probs if epsilon == 0.0 else (1.0 - epsilon) * probs + epsilon / n_items


@torch.no_grad()
def immediate_terms(policy: Policy, sessions: LoggedSessions, behavior: object, reward: Reward,
                    epsilon: float = 0.0, chunk: int = 4096) -> TargetTerms:
    """``p_target``, ``q_logged`` and ``v_target`` of every logged row, ``chunk`` rows at a time."""
    steps = sessions.steps
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in range(0, len(steps), chunk):
        rows = steps.index(torch.arange(start, min(start + chunk, len(steps)), device=steps.device))
        obs, logged = rows.transitions.obs, rows.transitions.action[:, :1]
        probs = action_probs(policy, obs, behavior.n_items, epsilon)
        q_all = reward.expected(behavior.score_all(behavior.encode(obs))).double()
        parts.append((probs.gather(1, logged)[:, 0], q_all.gather(1, logged)[:, 0], (probs * q_all).sum(1)))
    p, q, v = (torch.cat(cols) for cols in zip(*parts, strict=True))
    return TargetTerms(p_target=_numpy(p), q_logged=_numpy(q), v_target=_numpy(v))


@torch.no_grad()
def rollout_return(policy: Policy, env: RecEnv, obs: Obs, state: Tensor, first: Tensor | None,
                   gamma: float, seed: int, steps: Tensor | None = None) -> Tensor:
    """``[B]`` discounted return of users continued from ``obs`` (model state ``state``): served
    ``first`` ``[B, K]`` now (the policy's slate when ``None``), then the policy's slates, for at
    most ``steps`` ``[B]`` steps each (``None``: to the episode's end)."""
    env.start_from(obs, state, seed)
    slates = policy.act(obs, explore=False) if first is None else first
    total = torch.zeros(obs.batch_size, dtype=torch.float64, device=env.device)
    discount = 1.0
    # a fixed number of steps, no host sync per step: users who left earn 0 (as in run_episodes)
    for k in range(env.horizon if steps is None else min(env.horizon, int(steps.max()))):
        current, reward, _, _ = env.step(slates)
        if steps is not None:
            reward = reward * (k < steps)
        total += discount * reward.double()
        discount *= gamma
        slates = policy.act(current, explore=False)
    return total


@torch.no_grad()
def model_terms(policy: Policy, sessions: LoggedSessions, behavior: object, env: RecEnv, gamma: float,
                rollouts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q_model, v_model)`` ``[N]``: long-term values from ``rollouts`` continuations per row."""
    if rollouts < 1:
        raise RecrlError(f"ope.rollouts must be >= 1, got {rollouts}")
    steps = sessions.steps
    chunk = max(1, ROLLOUT_USERS // rollouts)
    q_parts, v_parts = [], []
    for start in range(0, len(steps), chunk):
        rows = steps.index(torch.arange(start, min(start + chunk, len(steps)), device=steps.device))
        repeat = torch.arange(len(rows), device=steps.device).repeat_interleave(rollouts)
        obs = rows.transitions.obs.index(repeat)
        state = behavior.encode(rows.transitions.obs)[repeat]  # each history replayed once
        logged = rows.transitions.action[repeat]
        limit = sessions.remaining[start:start + len(rows)][repeat]
        q = rollout_return(policy, env, obs, state, logged, gamma, seed + start, limit)
        v = rollout_return(policy, env, obs, state, None, gamma, seed + start, limit)  # common random numbers
        q_parts.append(q.view(-1, rollouts).mean(1))
        v_parts.append(v.view(-1, rollouts).mean(1))
    return _numpy(torch.cat(q_parts)), _numpy(torch.cat(v_parts))


def target_terms(policy: Policy, sessions: LoggedSessions, behavior: object, reward: Reward,
                 env: RecEnv | None = None, gamma: float = 1.0, epsilon: float = 0.0, rollouts: int = 4,
                 seed: int = 0) -> TargetTerms:
    """Every per-row term of ``policy`` on ``sessions`` (the long-term ones when ``env``, an
    environment over ``behavior``, is given)."""
    terms = immediate_terms(policy, sessions, behavior, reward, epsilon)
    if env is None:
        return terms
    q_model, v_model = model_terms(policy, sessions, behavior, env, gamma, rollouts, seed)
    return TargetTerms(p_target=terms.p_target, q_logged=terms.q_logged, v_target=terms.v_target,
                       q_model=q_model, v_model=v_model)
