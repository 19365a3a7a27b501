"""Where a learner loses against the oracle: in what it observes, or in how it optimises.

On the synthetic world, trains the run's algorithm (``algo=...``, its config and budget as in
``eval.train_in_ground_truth``) in the ground truth, for each seed, twice:

- ``history``: the normal observation, the last ``L`` slates and their clicks;
- ``true_state``: the same observation plus each user's true latent state (topic interest,
  satisfaction, topic boredom; ``--state-parts`` keeps some of them) as
  :attr:`recrl.types.Obs.features`, which no deployed recommender has;
- ``topic_profile`` (with ``--variants``): the same observation plus a hand-made summary of it,
  the user's clicked topics (counts, unit norm) and shown topics (counts decayed at the world's
  boredom decay): what a learner could read of interest and boredom from the history, spelled
  out, so a gain over ``history`` means the learner fails to encode its history;
- ``estimated_state`` (with ``--variants``): the same observation plus the inputs of the
  reference rule that earns 65% of the oracle (``scripts/reference_policies.py``, the world's
  item truth: interest = the normalised sum of the clicked items' true vectors, satisfaction and
  boredom replayed from the observed steps), so a learner that gains nothing from it cannot use
  even an exact estimate of what the history says about the user.

All are scored in the ground truth on the evaluation users (``eval.seed``, ``eval.episodes``)
next to the oracle. A learner that gains a lot from the true state is limited by inferring the
user from the history (the observation and its encoding); one that does not is limited by its
optimisation (exploration, credit assignment, the policy class). A second table profiles what
each policy serves, per step of a session still running: the served item's affinity with the
user's true interest (personalisation), its quality and the clickbait share (retention), the
clicks per step and the session length. Prints both tables and writes JSON.

    python scripts/learner_diagnosis.py --seeds 0 1 2 -- algo=dqn
    python scripts/learner_diagnosis.py --out diagnosis_ppo.json -- algo=ppo
    python scripts/learner_diagnosis.py --seeds 0 --state-parts interest -- algo=dqn
    python scripts/learner_diagnosis.py --seeds 0 1 --variants history topic_profile -- algo=dqn
    python scripts/learner_diagnosis.py --seeds 0 1 2 3 4 --variants history estimated_state true_state \
        -- algo.demonstrations=0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor

from recrl.algos.oracle import Oracle
from recrl.config import CONF_DIR, build, validate
from recrl.data.synthetic import SyntheticWorld, estimate_state
from recrl.env.simulator import RecEnv
from recrl.evaluate import Evaluation, oracle_summary
from recrl.logs import console_logging
from recrl.metrics.online import run_episodes
from recrl.metrics.stats import mean_ci, set_seed
from recrl.report import cpu_model, write_text_atomic
from recrl.stages import Stages, build_stages
from recrl.train import train_in_ground_truth
from recrl.types import Obs, StepInfo

VARIANTS = ("history", "true_state", "topic_profile", "estimated_state")
STATE_PARTS = ("interest", "satisfaction", "boredom")


def state_columns(world: SyntheticWorld, parts: Sequence[str]) -> Tensor:
    """Columns of the world's state row ``[interest | satisfaction | boredom]`` that hold ``parts``."""
    t = world.n_topics
    spans = {"interest": range(t), "satisfaction": range(t, t + 1), "boredom": range(t + 1, 2 * t + 1)}
    return torch.tensor([c for part in STATE_PARTS if part in parts for c in spans[part]],
                        device=world.device)


class TrueStateEnv:
    """A synthetic-world :class:`RecEnv` whose observations also carry every user's true state.

    ``obs.features`` ``[B, S]`` is the ``parts`` of the world's state row ``[interest |
    satisfaction | boredom]`` after the step; every other attribute is the wrapped environment's,
    read and written (the training loop and the evaluation switch ``autoreset``).
    """

    def __init__(self, env: RecEnv, world: SyntheticWorld, parts: Sequence[str] = STATE_PARTS) -> None:
        columns = state_columns(world, parts)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "obs_features", int(columns.numel()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def _with_state(self, obs: Obs) -> Obs:
        return dataclasses.replace(obs, features=self.env.state[:, self.columns])

    def reset(self, n_users: int, seed: int | None = None) -> Obs:
        """Reset the wrapped environment; observations with the true state."""
        return self._with_state(self.env.reset(n_users, seed=seed))

    def step(self, slates: Tensor) -> tuple[Obs, Tensor, Tensor, StepInfo]:
        """Step the wrapped environment; observations with the true state."""
        obs, reward, done, info = self.env.step(slates)
        return self._with_state(obs), reward, done, info


class HistoryFeatureEnv(TrueStateEnv):
    """A synthetic-world :class:`RecEnv` whose observations also carry features computed from the
    observed history alone: ``obs.features`` = :data:`HISTORY_FEATURES` ``[variant](obs, world)``
    (``topic_profile``: ``[B, 2 T]``; ``estimated_state``: ``[B, 2 T + 1]``)."""

    def __init__(self, env: RecEnv, world: SyntheticWorld, variant: str) -> None:
        features, width = HISTORY_FEATURES[variant]
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "world", world)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "obs_features", width(world))

    def _with_state(self, obs: Obs) -> Obs:
        return dataclasses.replace(obs, features=self.features(obs, self.world))


def topic_profile(obs: Obs, world: SyntheticWorld) -> Tensor:
    """The :class:`TopicProfileEnv` features ``[B, 2 T]`` of ``obs`` (padding slots count nothing)."""
    steps = obs.items.shape[1]
    topics = torch.cat([world.topic, world.topic.new_zeros(1)])[obs.items]          # [B, L, K]
    real = (obs.items < world.n_items).to(torch.float32)
    onehot = torch.nn.functional.one_hot(topics, world.n_topics).float() * real.unsqueeze(-1)
    clicked = (onehot * obs.clicks.unsqueeze(-1)).sum((1, 2))
    ages = torch.arange(steps - 1, -1, -1, device=obs.items.device, dtype=torch.float32)  # oldest first
    weights = (world.boredom_decay ** ages).view(1, steps, 1, 1)
    shown = (onehot * weights).sum((1, 2))
    return torch.cat([clicked / clicked.norm(dim=1, keepdim=True).clamp(min=1.0), shown], 1)


Features = Callable[[Obs, SyntheticWorld], Tensor]
HISTORY_FEATURES: dict[str, tuple[Features, Callable[[SyntheticWorld], int]]] = {
    "topic_profile": (topic_profile, lambda world: 2 * world.n_topics),
    "estimated_state": (estimate_state, lambda world: 2 * world.n_topics + 1),  # the 65% rule's inputs
}


@torch.no_grad()
def served_profile(policy: Any, env: Any, world: SyntheticWorld, episodes: int,
                   seed: int) -> dict[str, float]:
    """Means over the served steps of ``episodes`` users (no exploration) of the served item's
    ``affinity`` with the user's true interest, its ``quality`` and ``clickbait`` flag, and the
    ``clicks`` per step; ``length``: steps per session."""
    obs = env.reset(episodes, seed=seed)
    totals = torch.zeros(5, device=world.device)
    for _ in range(env.horizon):
        slates = policy.act(obs, explore=False)
        live = env.alive.float()
        interest = env.state[:, :world.n_topics]
        affinity = torch.einsum("bt,bkt->bk", interest, world.item_emb[slates]).mean(1)
        quality, bait = world.quality[slates].mean(1), world.is_bait[slates].mean(1)
        obs, _, _, info = env.step(slates)
        clicks = info.response.click.sum(1)
        totals += torch.stack([affinity * live, quality * live, bait * live, clicks * live, live]).sum(1)
    steps = float(totals[4])
    names = ("affinity", "quality", "clickbait", "clicks")
    return {**{name: float(totals[i]) / steps for i, name in enumerate(names)}, "length": steps / episodes}


@dataclasses.dataclass
class TrueStateStages(Stages):
    """The run's stages, except that every environment observes the true state's ``parts``."""

    parts: Sequence[str] = STATE_PARTS
    variant: str = "true_state"

    def make_env(self, model: Any, pessimistic: bool = False) -> TrueStateEnv:
        """A :class:`TrueStateEnv` (or, for the history-feature variants, a
        :class:`HistoryFeatureEnv`) over the configured environment."""
        env = super().make_env(model, pessimistic)
        if self.variant in HISTORY_FEATURES:
            return HistoryFeatureEnv(env, model, self.variant)
        return TrueStateEnv(env, model, self.parts)


def train_variant(cfg: Any, stages: Stages, variant: str, seed: int,
                  parts: Sequence[str] = STATE_PARTS) -> tuple[Any, Any]:
    """The algorithm trained in the ground truth (:func:`recrl.train.train_in_ground_truth`) with
    one observation ``variant``, and a ground-truth environment to evaluate it in."""
    ctx = dataclasses.replace(stages.ctx, seed=seed)
    if variant == "history":
        run = dataclasses.replace(stages, ctx=ctx)
    else:
        world = stages.ground_truth
        width = (HISTORY_FEATURES[variant][1](world) if variant in HISTORY_FEATURES
                 else int(state_columns(world, parts).numel()))
        fields = {f.name: getattr(stages, f.name) for f in dataclasses.fields(Stages)}
        run = TrueStateStages(**{**fields, "ctx": dataclasses.replace(ctx, obs_features=width)}, parts=parts,
                              variant=variant)
    set_seed(seed)
    seeded = OmegaConf.merge(cfg, {"seed": seed})
    algo = train_in_ground_truth(seeded, run, build(cfg.trainer), build(cfg.eval))
    if algo is None:
        sys.exit(f"{cfg.algo._target_} does not learn by acting; diagnose an online learner")
    return algo, run.make_env(run.ground_truth)


def parse() -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("learner_diagnosis.json"))
    parser.add_argument("--state-parts", nargs="+", choices=STATE_PARTS, default=list(STATE_PARTS),
                        help="which parts of the true state the true_state variant observes")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["history", "true_state"],
                        help="observations to train with (topic_profile: the history's topic summary; "
                             "estimated_state: the 65%% reference rule's inputs)")
    parser.add_argument("overrides", nargs="*", help="recrl train overrides after --")
    return parser.parse_args()


def main() -> None:
    """Train every variant for every seed, print the table and write the JSON."""
    console_logging()  # the stages' messages (behavior fit or cache hit) on the console
    args = parse()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.device=cpu", "trainer.progress=false", *args.overrides])
    validate(cfg)
    stages = build_stages(cfg, torch.device("cpu"))
    if not isinstance(stages.ground_truth, SyntheticWorld):
        sys.exit("the diagnosis needs dataset=synthetic (a ground truth with a readable user state)")
    evaluation: Evaluation = build(cfg.eval)
    oracle_env = stages.make_env(stages.ground_truth)
    oracle = float(oracle_summary(cfg, stages, oracle_env, evaluation)["return"]["mean"])
    world = stages.ground_truth
    variants = list(dict.fromkeys(args.variants))
    returns: dict[str, list[float]] = {v: [] for v in variants}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    profiles: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for seed in args.seeds:
        for variant in variants:
            start = time.perf_counter()
            algo, env = train_variant(cfg, stages, variant, seed, args.state_parts)
            seconds[variant].append(time.perf_counter() - start)
            stats = run_episodes(algo, env, evaluation.episodes, evaluation.seed, evaluation.batch_size)
            returns[variant].append(float(stats.returns.mean()))
            profiles[variant].append(served_profile(algo, env, world, evaluation.episodes, evaluation.seed))
            print(f"seed {seed} {variant}: {returns[variant][-1]:.3f} ({returns[variant][-1] / oracle:.0%} "
                  f"of the oracle), {seconds[variant][-1]:.0f} s", flush=True)
    rows = {}
    table = Table(title=f"{cfg.algo._target_} trained in the ground truth, seeds {args.seeds}; "
                        f"oracle {oracle:.3f} ({evaluation.episodes} users, eval.seed={evaluation.seed})")
    for column in ("observation", "return (mean ± 95% CI over seeds)", "share of oracle", "per seed"):
        table.add_column(column, justify="left" if column == "observation" else "right")
    for variant in variants:
        mean, half = mean_ci(returns[variant])
        rows[variant] = {"return": mean, "ci95": None if math.isnan(half) else half,
                         "oracle_share": mean / oracle, "per_seed": returns[variant],
                         "train_seconds": seconds[variant]}
        table.add_row(variant, f"{mean:.3f} ± {half:.3f}", f"{mean / oracle:.0%}",
                      " ".join(f"{r:.2f}" for r in returns[variant]))
    Console().print(table)
    oracle_policy = Oracle(world, stages.reward, oracle_env, candidates=evaluation.oracle_candidates)
    profiles["oracle"] = [served_profile(oracle_policy, oracle_env, world, evaluation.episodes,
                                         evaluation.seed)]
    served = Table(title="what each policy serves (ground truth; per served step, mean over seeds)")
    for column in ("policy", "affinity", "quality", "clickbait", "clicks/step", "session length"):
        served.add_column(column, justify="left" if column == "policy" else "right")
    for name, runs in profiles.items():
        mean = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
        rows.setdefault(name, {})["served"] = mean
        served.add_row(name, *(f"{mean[k]:.3f}" for k in ("affinity", "quality", "clickbait", "clicks")),
                       f"{mean['length']:.1f}")
    Console().print(served)
    facts = {"torch": torch.__version__, "python": platform.python_version(), "overrides": args.overrides,
             "seeds": args.seeds, "state_parts": args.state_parts,
             "cpu": cpu_model(), "oracle": oracle}
    write_text_atomic(args.out, json.dumps({"facts": facts, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
