"""The model-based planner's sessions as demonstrations for a learner (``algo.demonstrations``).

Before training, a learner that takes demonstrations records ``users`` users' complete
sessions of :class:`~recrl.algos.planner.SurvivalPlanner` (the oracle's survival-aware rule on
the fitted behavior model; on the ground truth's own dynamics, seen from the history, for the
copy that ``eval.train_in_ground_truth`` trains there: :meth:`PlannerDemonstrations.plan_on`)
in its own training environment, then draws a batch of their steps
for every update: DQN, C51 and SlateQ for DQfD's large-margin loss (:func:`margin_loss`), the
softmax policies (PPO, A2C, REINFORCE) for DAPG's log-likelihood term
(:mod:`recrl.algos.actor_critic`).

References:
    Hester et al. Deep Q-learning from Demonstrations. AAAI 2018.
    Rajeswaran et al. Learning Complex Dexterous Manipulation with Deep Reinforcement Learning
    and Demonstrations. RSS 2018 (DAPG).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from recrl.algos.nets import linear_decay
from recrl.algos.planner import SurvivalPlanner, planner_can_run
from recrl.types import AlgoContext, Obs, RecrlError

logger = logging.getLogger(__name__)
DEMO_SEED_OFFSET = 7919  # demonstration users differ from the training users of the same seed
AUTO_DEMO_BATCHES = 2     # algo.demonstrations=auto: this many batches of training users (512 by default)
AUTO_DEMO_ROWS = 262_144  # ... and at most this many (user, item) model steps a step (512 users x 500 items)


def demonstrations_taken(demonstrations: int | str, candidates: int) -> int | str:
    """``algo.demonstrations`` as a learner applies it: ``auto`` with ``algo.candidates`` is 0
    (the planner's items may lie outside the candidates); anything else as given."""
    return 0 if candidates and demonstrations == "auto" else demonstrations


def demonstration_users(ctx: AlgoContext, demonstrations: int | str) -> int:
    """How many users' planner sessions to record (``algo.demonstrations``).

    ``auto``: :data:`AUTO_DEMO_BATCHES` batches of training users (``trainer.n_users``; 512 users
    by default) where the planner can run (a behavior model that can step a user's state, as
    every recrl behavior model can, and catalogue items as actions), else 0 (a wrapped gymnasium
    environment, ``env=gym``); fewer on large catalogues, whose planner steps every user after
    every item: at most :data:`AUTO_DEMO_ROWS` ``// n_items`` users (at least one). A number:
    that many, and an error where the planner cannot run; 0: off.
    """
    if demonstrations == "auto":
        users = min(AUTO_DEMO_BATCHES * ctx.train_users, AUTO_DEMO_ROWS // ctx.n_items)
        return max(1, users) if planner_can_run(ctx) else 0
    if isinstance(demonstrations, bool) or not isinstance(demonstrations, int):
        raise RecrlError(f"algo.demonstrations={demonstrations!r}: use auto, 0 (off) or a number of users")
    if demonstrations > 0 and not planner_can_run(ctx):
        raise RecrlError(f"algo.demonstrations={demonstrations} records sessions of the model-based planner, "
                         "which needs catalogue items as actions and a behavior model that steps a user's "
                         "state (not env=gym); set algo.demonstrations=0")
    return demonstrations


class PlannerDemonstrations:
    """The planner's recorded steps and how strongly a learner is pulled toward them.

    ``users`` (``algo.demonstrations``: a number, ``auto`` or 0) users' sessions are recorded by
    :meth:`record`; :meth:`sample` draws ``batch`` of their steps (observation and the planner's
    slate); :meth:`weight` is the loss weight after a number of updates, ``weight`` decayed
    linearly to 0 over ``decay_steps`` updates when that is > 0.

    Example::

        demos = PlannerDemonstrations(ctx, "auto", weight=1.0, batch=128, decay_steps=0,
                                      caution=2.0, skip_shown=True)
        demos.record(env, seed=0)                    # before training
        obs, slates = demos.sample(generator)        # [128, ...], [128, K]
    """

    def __init__(self, ctx: AlgoContext, users: int | str, weight: float, batch: int, decay_steps: int,
                 caution: float, skip_shown: bool) -> None:
        self.ctx, self.users = ctx, demonstration_users(ctx, users)
        if min(self.users, weight, decay_steps) < 0 or batch < 1:
            raise RecrlError("algo.demonstrations, demo_weight and demo_decay_steps must be >= 0 and "
                             "algo.demo_batch >= 1")
        self.base_weight, self.batch, self.decay_steps = weight, batch, decay_steps
        self.caution, self.skip_shown = caution, skip_shown
        self.data: tuple[Obs, Tensor] | None = None  # (observations, planner slates) once recorded
        self.model: Any = None  # the user model the planner plans with; None: the behavior model

    def plan_on(self, model: Any) -> None:
        """Record with a planner on ``model`` instead of the fitted behavior model (the ground
        truth's own dynamics when the learner trains there: ``eval.train_in_ground_truth``)."""
        self.model = model

    def record(self, env: Any, seed: int) -> None:
        """Record the planner's sessions in ``env`` (nothing when ``users`` is 0)."""
        if self.users:
            planner = SurvivalPlanner(self.ctx, caution=self.caution, skip_shown=self.skip_shown,
                                      model=self.model)
            logger.info("recording %d users' sessions of the planner on %s as demonstrations", self.users,
                        type(planner.model).__name__)
            self.data = planner.demonstrations(env, self.users, seed + DEMO_SEED_OFFSET)

    def weight(self, updates: int) -> float:
        """The loss weight after ``updates`` updates (0 before :meth:`record` or when off)."""
        if self.data is None:
            return 0.0
        if not self.decay_steps:
            return self.base_weight
        return linear_decay(self.base_weight, 0.0, self.decay_steps, updates)

    def sample(self, generator: torch.Generator) -> tuple[Obs, Tensor]:
        """``batch`` recorded steps drawn uniformly: observations and the planner's slates ``[batch, K]``."""
        if self.data is None:
            raise RecrlError("no demonstrations recorded: call record(env, seed) before training")
        observations, slates = self.data
        rows = torch.randint(0, slates.shape[0], (self.batch,), device=slates.device, generator=generator)
        return observations.index(rows), slates[rows]


def check_margin(margin: float) -> float:
    """``algo.demo_margin``, checked (it must be >= 0)."""
    if margin < 0:
        raise RecrlError(f"algo.demo_margin={margin} must be >= 0")
    return margin


def margin_loss(values: Tensor, allowed: Tensor, shown: Tensor, margin: float) -> Tensor:
    """DQfD's large-margin loss (Hester et al. 2018), a scalar: ``mean_k`` of the top-``K``
    ``Q(s, a) + margin * [a not demonstrated]`` minus the demonstrated slate's mean ``Q``, averaged
    over the rows.

    ``values`` ``[B, N]``: the learner's (differentiable) value of serving each item; ``allowed``:
    the same with the items it may not serve at ``-inf`` (the rivals; the demonstrated items are
    rivals in any case); ``shown`` ``[B, K]``: the planner's slates. It is 0 once every
    demonstrated item is valued at least ``margin`` above every other allowed one.
    """
    demonstrated = values.gather(1, shown)
    rivals = allowed.scatter(1, shown, demonstrated)
    bonus = torch.full_like(values, margin).scatter_(1, shown, 0.0)
    rival = (rivals + bonus).topk(shown.shape[1], dim=1).values.mean(1)
    return (rival - demonstrated.mean(1)).mean()
