"""How much of the oracle a policy can reach without the true user state: hand-written references.

On the synthetic world the oracle (:class:`recrl.algos.oracle.Oracle`) reads each user's true
state. A learner sees only the history of shown items and clicks. This script evaluates, in the
ground truth and on the same users as every report (``eval.seed``, ``eval.episodes``), policies
that are given the world's *item* truth but no user state, to bound what the learners can reach:

- ``quality_first``: no user information at all: the highest-quality non-clickbait item not yet
  shown in the history (the same order for every user).
- ``estimated_state``: the oracle's base policy (expected reward x probability of staying) on a
  state *estimated from the history* with the world's true item vectors and dynamics: interest =
  the normalised sum of the clicked items' vectors, satisfaction and topic boredom replayed from
  the observed steps (the first step, with no clicks, falls back to quality).
- ``state_without_interest``: the same with the interest estimate at zero (satisfaction and
  boredom only): the rule without personalisation.
- ``estimated_topics``: the same with the interest estimated from the clicked items' *topics*
  alone (the normalised count of clicks per topic, scaled by :data:`TOPIC_SHRINK`), the part of
  an item a learner is told by the item table, without the item vectors' within-topic part.
- ``truth_planner``: :class:`~recrl.algos.planner.SurvivalPlanner` on the ground truth seen from
  the history (:class:`~recrl.data.synthetic.HistoryBelief`: ``estimated_state``'s estimate) at
  the run's ``algo.demo_caution`` (2): the planner whose sessions a learner trained in the ground
  truth takes as demonstrations (``eval.train_in_ground_truth``).

All of them read the world's item tables (quality, clickbait, item vectors), which no learner is given,
so they are references for the analysis, not algorithms. Prints a table and writes JSON.

    python scripts/reference_policies.py --out reference_policies.json
    python scripts/reference_policies.py -- dataset.n_items=200
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import Tensor

from recrl.algos.nets import mask_shown
from recrl.algos.oracle import Oracle
from recrl.algos.planner import SurvivalPlanner
from recrl.algos.random import RandomPolicy
from recrl.cli import compose_checked
from recrl.data.synthetic import HistoryBelief, SyntheticWorld, clicked_interest, estimate_state
from recrl.env.simulator import RecEnv
from recrl.logs import console_logging
from recrl.metrics.online import run_episodes
from recrl.report import cpu_model, write_text_atomic
from recrl.stages import Stages, build_stages
from recrl.types import Obs, RecrlError, Reward


def topic_means(vectors: Tensor, topic: Tensor) -> Tensor:
    """The mean of ``vectors`` ``[N, D]`` over the rows of each row's topic ``[N]``: what an item
    table that names each item's topic says of its vector."""
    topics = int(topic.max()) + 1
    sums = torch.zeros(topics, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    counts = torch.bincount(topic, minlength=topics).clamp(min=1).to(vectors.dtype)
    return (sums.index_add_(0, topic, vectors) / counts[:, None])[topic]


class QualityFirst:
    """The best non-clickbait items by quality, in the same order for everyone (skips shown items)."""

    mode = "none"

    def __init__(self, world: SyntheticWorld) -> None:
        self.world = world
        self.score = world.quality - 10.0 * world.is_bait

    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """Top item ``[B, 1]``."""
        scores = self.score.expand(obs.batch_size, -1)
        return mask_shown(scores, obs).topk(1, dim=1).indices


class EstimatedState:
    """The oracle's base policy on a user state estimated from the observed history."""

    mode = "none"

    def __init__(self, world: SyntheticWorld, reward: Reward, env: RecEnv) -> None:
        self.world, self.env = world, env
        self.base = Oracle(world, reward, env, lookahead=False)

    def estimate(self, obs: Obs) -> Tensor:
        """``[interest | satisfaction | boredom]`` of :func:`estimate_state`, with this rule's
        interest estimate."""
        return estimate_state(obs, self.world, self.interest)

    def interest(self, items: Tensor, clicked: Tensor) -> Tensor:
        """The interest estimate ``[B, T]`` (:func:`clicked_interest`)."""
        return clicked_interest(self.world, items, clicked)

    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """Top unseen item ``[B, 1]`` by the base policy's score under the estimate."""
        remaining = (self.env.horizon - 1 - obs.step).clamp(min=0)
        scores = self.base.base_scores(self.estimate(obs), remaining)
        return mask_shown(scores, obs).topk(1, dim=1).indices


class StateWithoutInterest(EstimatedState):
    """:class:`EstimatedState` without its interest estimate (set to zero): the same rule reading
    only satisfaction and topic boredom, so it serves everyone alike except for what they tire of
    and how satisfied they are: what the oracle's rule earns without personalising."""

    def interest(self, items: Tensor, clicked: Tensor) -> Tensor:
        """No interest estimate: zeros ``[B, T]``."""
        return clicked.new_zeros(clicked.shape[0], self.world.n_topics)


TOPIC_SHRINK = 0.5  # of the topic-level interest estimate: the best of 1.0 / 0.7 / 0.5 / 0.3 in the
                   # default world's ground truth (6.17 / 6.48 / 6.54 / 6.55): a reference, tuned


class EstimatedTopics(EstimatedState):
    """:class:`EstimatedState` with the interest read from the clicked items' topics only
    (``TOPIC_SHRINK`` x the unit vector of clicks per topic): what the rule earns knowing each
    item's topic, as the item table tells a learner, but not its vector within the topic."""

    def interest(self, items: Tensor, clicked: Tensor) -> Tensor:
        """``TOPIC_SHRINK`` x the unit vector of clicks per topic ``[B, T]``."""
        topics = F.one_hot(self.world.topic[items], self.world.n_topics).to(clicked.dtype)
        return TOPIC_SHRINK * F.normalize((topics * clicked.unsqueeze(-1)).sum(1), dim=1)


def synthetic_run(overrides: list[str], what: str) -> tuple[DictConfig, Stages, SyntheticWorld, RecEnv]:
    """The config, stages, true world and a ground-truth environment of ``recrl train overrides``
    on CPU; exits with a message (``what`` needs ...) unless the world is synthetic with slates of
    one, and with the one-line error ``recrl train`` would print for a wrong key or value or a
    missing dataset."""
    try:
        cfg = compose_checked("train", ["trainer.device=cpu", *overrides])
        stages = build_stages(cfg, torch.device("cpu"))
    except RecrlError as err:
        sys.exit(f"error: {err}")
    world = stages.ground_truth
    if not isinstance(world, SyntheticWorld) or cfg.env.slate_size != 1:
        sys.exit(f"{what} need dataset=synthetic and env.slate_size=1")
    return cfg, stages, world, stages.make_env(world)


def main() -> None:
    """Evaluate the references, print the table and write the JSON."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reference_policies.json"))
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --")
    args = parser.parse_args()
    cfg, stages, world, env = synthetic_run(args.overrides, "reference policies")
    policies = {"random": RandomPolicy(stages.ctx), "quality_first": QualityFirst(world),
                "estimated_state": EstimatedState(world, stages.reward, env),
                "state_without_interest": StateWithoutInterest(world, stages.reward, env),
                "estimated_topics": EstimatedTopics(world, stages.reward, env),
                "truth_planner": SurvivalPlanner(stages.ctx, caution=cfg.algo.get("demo_caution", 2.0),
                                                 model=HistoryBelief(world, env.choice)),
                "oracle": Oracle(world, stages.reward, env, candidates=cfg.eval.oracle_candidates)}
    rows = {}
    for name, policy in policies.items():
        summary = run_episodes(policy, env, cfg.eval.episodes, seed=cfg.eval.seed,
                               batch_size=cfg.eval.batch_size).summary()
        rows[name] = {k: summary[k]["mean"] for k in ("return", "coverage", "same_top_item")}
        rows[name]["return_ci95"] = summary["return"]["ci95"]
    oracle = rows["oracle"]["return"]
    table = Table(title=f"ground truth, {cfg.eval.episodes} users (eval.seed={cfg.eval.seed})")
    for column in ("policy", "return", "share of oracle", "coverage", "same top item"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, r in rows.items():
        r["oracle_share"] = r["return"] / oracle
        table.add_row(name, f"{r['return']:.3f} ± {r['return_ci95']:.3f}", f"{r['oracle_share']:.0%}",
                      f"{r['coverage']:.3f}", f"{r['same_top_item']:.3f}")
    Console().print(table)
    facts = {"torch": torch.__version__, "python": platform.python_version(), "overrides": args.overrides,
             "cpu": cpu_model()}
    write_text_atomic(args.out, json.dumps({"facts": facts, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
