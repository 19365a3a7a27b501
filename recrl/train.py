"""``train(cfg)``: logs -> behavior model -> simulator -> algorithm -> evaluation -> report."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

import recrl
from recrl.algos.oracle import Oracle, can_plan
from recrl.behavior.ensemble import BehaviorEnsemble, OwnMemberSimulator
from recrl.behavior.features import build_item_features, item_categories
from recrl.behavior.fidelity import fidelity_report
from recrl.behavior.fit import TrainingSettings
from recrl.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from recrl.config import build, build_algo_by_name, validate, without_ensemble
from recrl.env.pessimism import LoggedPolicyEntropy, Pessimism
from recrl.env.simulator import RecEnv
from recrl.evaluate import Evaluation, add_oracle_share
from recrl.metrics.stats import set_seed
from recrl.report import (
    RunLogger,
    plot_learning_curves,
    print_report_table,
    write_json_atomic,
    write_report,
)
from recrl.types import AlgoContext, Interactions, RecrlError, Splits

console = Console(stderr=True)


@dataclass
class Stages:
    """The built stages of a run that do not learn during RL training."""

    cfg: DictConfig
    device: torch.device
    dataset: Any
    splits: Splits
    behavior: Any
    behavior_report: dict[str, Any]
    reward: Any
    ctx: AlgoContext
    ground_truth: Any = None

    @functools.cached_property
    def item_categories(self) -> torch.Tensor | None:
        """Item category codes for the boredom leave rule (``None`` when it is off)."""
        if not self.cfg.env.get("boredom"):
            return None
        inter, column = self.splits.interactions, self.cfg.env.boredom.get("category_column")
        return item_categories(inter.items, inter.n_items, column)

    def make_env(self, model: Any, pessimistic: bool = False) -> RecEnv:
        """A fresh environment of the configured shape over ``model``; ``env.pessimism`` applies
        only where ``pessimistic`` (training in the learned simulator). An ensemble steps every
        member for every user only where a pessimism term reads their disagreement; elsewhere
        each user's own member alone (:class:`~recrl.behavior.ensemble.OwnMemberSimulator`)."""
        pessimism = self.pessimism if pessimistic else None
        if isinstance(model, BehaviorEnsemble) and not (pessimism is not None and pessimism.uses_uncertainty):
            model = OwnMemberSimulator(model)
        return build(self.cfg.env)(model=model, reward=self.reward, item_categories=self.item_categories,
                                   device=self.device, pessimism=pessimism)

    @functools.cached_property
    def pessimism(self) -> Pessimism | None:
        """``env.pessimism`` (``None`` without the node), with its DORL entropy table counted on
        the training logs when it has that term; it holds no per-episode state, so training
        environments share it."""
        node = self.cfg.env.get("pessimism")
        if node is None:
            return None
        pessimism = build(node)
        if pessimism.entropy_bonus > 0:
            inter = self.splits.interactions
            categories = item_categories(inter.items, inter.n_items, pessimism.category_column)
            pessimism.bind(LoggedPolicyEntropy.fit(inter.train, categories, pessimism.entropy_window)
                           .to(self.device))
        return pessimism

    def eval_envs(self) -> dict[str, RecEnv]:
        """The training simulator (without pessimism: what it predicts) and, when the data gives
        one, the ground-truth environment."""
        envs = {"simulator": self.make_env(self.behavior)}
        if self.ground_truth is not None:
            envs["ground_truth"] = self.make_env(self.ground_truth)
        return envs

    def build_algo(self, node: DictConfig) -> Any:
        """Instantiate an algorithm node with the run-time context."""
        return build(node)(ctx=self.ctx)

    def training_env(self, select_on: str = "simulator") -> RecEnv:
        """An environment for training: the simulator, with ``env.pessimism``; with
        ``select_on="held_out_member"`` without the ensemble's last member."""
        needs_ensemble = self.pessimism is not None and self.pessimism.uses_uncertainty
        if needs_ensemble and not isinstance(self.behavior, BehaviorEnsemble):
            raise RecrlError("env.pessimism penalises the disagreement of a behavior ensemble; set "
                             "behavior.ensemble=5 (or more than 1), or turn the penalties off")
        model = self.behavior
        if select_on == "held_out_member":
            model = BehaviorEnsemble(self._held_out_split()[0])
        return self.make_env(model, pessimistic=True)

    def selection_env(self, select_on: str) -> RecEnv:
        """Where the training-time evaluations that pick ``best.pt`` run (``eval.select_on``): a
        fresh training simulator, or the ensemble's held-out last member (no pessimism)."""
        if select_on == "held_out_member":
            return self.make_env(self._held_out_split()[1])
        return self.training_env()

    def _held_out_split(self) -> tuple[list[Any], Any]:
        """The ensemble's members for training and the held-out last one."""
        if not isinstance(self.behavior, BehaviorEnsemble) or self.behavior.size < 3:
            raise RecrlError("eval.select_on=held_out_member needs behavior.ensemble >= 3 (two members to "
                             "train in, one held out); use eval.select_on=simulator")
        members = list(self.behavior.members)
        return members[:-1], members[-1]

    def saved_state(self) -> dict[str, Any]:
        """What checkpoints keep besides the algorithm: the fitted behavior model."""
        return {"behavior": self.behavior.state_dict()}

    @functools.cached_property
    def diversity_categories(self) -> torch.Tensor | None:
        """Item category codes for the per-session diversity metric (``None`` when the item
        table has no categorical column)."""
        inter = self.splits.interactions
        try:
            return item_categories(inter.items, inter.n_items)
        except RecrlError:
            return None

    def report(self, algo: Any, algo_name: str, run_dir: Path,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The final evaluation of ``algo``, the ``extra`` policies and the baselines, with the
        behavior sections."""
        return final_evaluation(self.cfg, self, algo, algo_name, run_dir, extra)


@dataclass
class GymStages:
    """A run on a gymnasium environment (``env=gym``): no dataset, no behavior model."""

    cfg: DictConfig
    device: torch.device
    ctx: AlgoContext

    def build_algo(self, node: DictConfig) -> Any:
        """Instantiate an algorithm node with the run-time context."""
        return build(node)(ctx=self.ctx)

    def training_env(self, select_on: str = "simulator") -> Any:
        """A fresh adapter over the configured gymnasium environment."""
        return build(self.cfg.env)(device=self.device)

    def selection_env(self, select_on: str) -> Any:
        """The training-time evaluations run in another fresh adapter (there is no ensemble)."""
        if select_on != "simulator":
            raise RecrlError(f"eval.select_on={select_on} needs a behavior ensemble (not in gym runs)")
        return self.training_env()

    def saved_state(self) -> dict[str, Any]:
        """Nothing besides the algorithm."""
        return {}

    def report(self, algo: Any, algo_name: str, run_dir: Path,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """``algo`` and the ``random`` baseline evaluated on the environment (``extra``: none here)."""
        evaluation: Evaluation = build(self.cfg.eval)
        policies = {algo_name: algo}
        if algo_name != "random":
            policies["random"] = build_algo_by_name("random", ctx=self.ctx)
        results = evaluation.run(policies, {"gym": self.training_env()})
        return {"task": "train", "algo": algo_name, "env": str(self.cfg.env.id),
                **run_facts(self.cfg, run_dir, self.device), "evaluation": results}


def is_gym(cfg: DictConfig) -> bool:
    """Whether the run's environment is a wrapped gymnasium environment (``env=gym``)."""
    return str(cfg.env.get("_target_", "")).endswith("GymAdapter")


def gym_stages(cfg: DictConfig, device: torch.device) -> GymStages:
    """The context of a run on a gymnasium environment, read off one adapter instance."""
    env = build(cfg.env)(device=device)
    ctx = AlgoContext(n_items=env.n_items, slate_size=1, history_len=env.history_len, horizon=env.horizon,
                      device=device, seed=cfg.seed, item_popularity=torch.zeros(env.n_items),
                      behavior=None, reward=None, obs_features=env.obs_features, item_actions=False,
                      train_users=cfg.trainer.n_users)
    env.close()
    return GymStages(cfg=cfg, device=device, ctx=ctx)


def config_hash(*nodes: DictConfig) -> str:
    """Stable short hash of resolved config nodes (cache keys)."""
    blob = json.dumps([OmegaConf.to_container(n, resolve=True) for n in nodes], sort_keys=True)
    return hashlib.sha256(f"{recrl.__version__}|{blob}".encode()).hexdigest()[:16]


def data_fingerprint(cfg: DictConfig, dataset: Any) -> str:
    """What identifies the prepared data: its cache entry, or the dataset config (synthetic)."""
    folder = getattr(dataset, "last_load", {}).get("folder")
    return Path(folder).name if folder else config_hash(cfg.dataset)


def fit_behavior(cfg: DictConfig, behavior: Any, interactions: Interactions, data_key: str,
                 role: str = "simulator") -> dict[str, Any]:
    """Fit ``behavior`` or load it from the cache keyed by the data, the behavior config and role."""
    node = cfg.behavior if cfg.behavior.get("ensemble", 1) > 1 else without_ensemble(cfg.behavior)
    key = hashlib.sha256(f"{data_key}|{role}|{config_hash(node)}".encode()).hexdigest()[:16]
    path = Path(cfg.cache_dir) / "behavior" / f"{role}-{key}.pt"
    if path.is_file():
        fresh = copy.deepcopy(behavior.state_dict())
        try:
            cached = load_checkpoint(path, map_location=behavior.device)
            behavior.load_state_dict(cached["state_dict"])
            behavior.eval()
            console.print(f"[dim]{role} behavior model: cache hit {path}[/dim]")
            return {**cached["report"], "cached": True}
        except (RecrlError, RuntimeError, KeyError) as err:
            # a failed load_state_dict has already copied every matching tensor: start from scratch
            behavior.load_state_dict(fresh)
            console.print(f"[yellow]behavior cache {path} unusable ({err}); refitting[/yellow]")
    report = behavior.fit(interactions).to_dict()
    save_checkpoint(path, {"state_dict": behavior.state_dict(), "report": report})
    return {**report, "cached": False}


def build_behavior(cfg: DictConfig, interactions: Interactions, device: torch.device) -> Any:
    """An unfitted behavior model sized for ``interactions``, with the item content it asked for
    (``behavior.features``: side-table attributes and/or cached text embeddings); with
    ``behavior.ensemble=K > 1`` an ensemble of ``K`` such models, member ``k`` seeded with
    ``behavior.training.seed + k`` (:class:`recrl.behavior.ensemble.BehaviorEnsemble`)."""
    features = build_item_features(cfg.behavior.get("features", ()), interactions.items,
                                   interactions.n_items, cfg.cache_dir)
    size = cfg.behavior.get("ensemble", 1)
    factory = build(without_ensemble(cfg.behavior))
    runtime = {"n_items": interactions.n_items, "n_users": interactions.n_users, "item_features": features,
               "device": str(device)}
    if size == 1:
        return factory(**runtime)
    settings = factory.keywords.get("training") or TrainingSettings()
    members = [factory(**runtime, training=dataclasses.replace(settings, seed=settings.seed + k))
               for k in range(size)]
    return BehaviorEnsemble(members)


def build_stages(cfg: DictConfig, device: torch.device,
                 behavior_state: dict[str, Any] | None = None) -> Stages:
    """Load the data and fit (or restore) the behavior model; nothing here touches test users."""
    dataset = build(cfg.dataset)
    splits = dataset.load()
    interactions = splits.interactions  # the only part of the data the fitting code sees
    data_key = data_fingerprint(cfg, dataset)
    reward = build(cfg.reward)
    check_reward_data(cfg, reward, interactions, "training log")
    behavior = build_behavior(cfg, interactions, device)
    if behavior_state is None:
        behavior_report = fit_behavior(cfg, behavior, interactions, data_key)
    else:
        behavior.load_state_dict(behavior_state)
        behavior.eval()
        behavior_report = {}
    ctx = AlgoContext(n_items=interactions.n_items, slate_size=cfg.env.slate_size,
                      history_len=cfg.env.history_len, horizon=cfg.env.horizon, device=device,
                      seed=cfg.seed, item_popularity=torch.as_tensor(interactions.item_popularity()),
                      behavior=behavior, reward=reward, interactions=interactions,
                      train_users=cfg.trainer.n_users)
    return Stages(cfg=cfg, device=device, dataset=dataset, splits=splits,
                  behavior=behavior, behavior_report=behavior_report, reward=reward, ctx=ctx,
                  ground_truth=ground_truth_model(cfg, dataset, splits, device, data_key))


def check_reward_data(cfg: DictConfig, reward: Any, interactions: Interactions, what: str) -> None:
    """A watch reward needs logs with watch values: say so before anything is fitted."""
    if not getattr(reward, "needs_watch", False):
        return
    if "watch" not in interactions.train or not interactions.train["watch"].notna().any():
        source = cfg.dataset.get("_target_", "?").rsplit(".", 1)[-1]
        raise RecrlError(f"reward={reward.name} needs watch (dwell) values, but the {what} ({source}) has "
                         "none; use data with watch times (dataset=kuairand, dataset=synthetic, or "
                         "dataset.columns.watch=<column> for a CSV) or another reward")


def ground_truth_model(cfg: DictConfig, dataset: Any, splits: Splits, device: torch.device,
                       data_key: str) -> Any:
    """The evaluation-only user model: the behavior model of a saved run (``eval.ground_truth``),
    the synthetic world's true one, or a behavior model fitted on randomized exposures (e.g.
    Coat's random test set; always a single model with item ids, also with ``behavior.ensemble
    > 1`` or ``behavior.item_ids=false``); ``None`` otherwise."""
    if cfg.eval.get("ground_truth"):
        return behavior_from_checkpoint(cfg.eval.ground_truth, splits.interactions, device)
    if hasattr(dataset, "ground_truth"):
        return dataset.ground_truth(device)
    if splits.ground_truth is None:
        return None
    check_reward_data(cfg, build(cfg.reward), splits.ground_truth, "ground-truth log")
    yardstick = yardstick_model(cfg)  # the ground truth stays the same whatever the simulator is
    model = build_behavior(yardstick, splits.ground_truth, device)
    fit_behavior(yardstick, model, splits.ground_truth, data_key, role="ground_truth")
    return model


def yardstick_model(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the behavior model's simulator-only options at their defaults
    (``behavior.ensemble=1``, ``behavior.item_ids=true``, ``behavior.recency=false``), for a ground
    truth fitted from data."""
    yardstick = cfg.copy()
    with open_dict(yardstick):
        yardstick.behavior.ensemble = 1
        for key, default in (("item_ids", True), ("recency", False)):
            if key in yardstick.behavior:
                yardstick.behavior[key] = default
    return yardstick


def behavior_from_checkpoint(where: str, interactions: Interactions, device: torch.device) -> Any:
    """The fitted behavior model saved in a run's checkpoint (a run folder or a ``.pt``), for the
    same prepared data as this run (same item ids)."""
    path = resolve_checkpoint(where)
    payload = load_checkpoint(path, map_location=device)
    saved = OmegaConf.create(payload.get("config", ""))
    if "behavior" not in saved or "behavior" not in payload:
        raise RecrlError(f"eval.ground_truth={where}: {path} holds no behavior model (use a recrl train run)")
    model = build_behavior(saved, interactions, device)
    try:
        model.load_state_dict(payload["behavior"])
    except RuntimeError as err:
        raise RecrlError(f"eval.ground_truth={where}: its behavior model does not fit this run's data "
                         f"({interactions.n_items} items, {interactions.n_users} users); it must come from "
                         "a run on the same dataset and preprocessing") from err
    return model.eval()


def final_evaluation(cfg: DictConfig, stages: Stages, algo: Any, algo_name: str,
                     run_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the trained policy, the ``extra`` policies and every baseline in every
    environment; in a ground truth the oracle can plan in, add the oracle row and every
    policy's share of it."""
    evaluation: Evaluation = build(cfg.eval)
    policies = {algo_name: algo, **(extra or {})}
    for name in evaluation.baselines:
        if name != algo_name:
            policies[name] = build_algo_by_name(name, ctx=stages.ctx)
    envs = stages.eval_envs()
    results = evaluation.run(policies, envs, stages.diversity_categories)
    if evaluation.oracle and "ground_truth" in envs and can_plan(stages.ground_truth):
        results["ground_truth"]["oracle"] = oracle_summary(cfg, stages, envs["ground_truth"], evaluation)
        add_oracle_share(results)
    return {"task": "train", "algo": algo_name, "reward": type(stages.reward).__name__,
            **behavior_sections(cfg, stages, evaluation, envs, run_dir, policy=algo), "evaluation": results}


def oracle_summary(cfg: DictConfig, stages: Stages, env: RecEnv, evaluation: Evaluation) -> dict[str, Any]:
    """The oracle's evaluation in the ground truth (:class:`recrl.algos.oracle.Oracle`), cached
    under ``cache_dir/oracle`` by everything it depends on (world, environment, reward, evaluation
    users, device): a sweep over algorithms and seeds computes it once."""
    settings = OmegaConf.create({"episodes": evaluation.episodes, "seed": evaluation.seed,
                                 "batch_size": evaluation.batch_size, "device": str(stages.device),
                                 "candidates": evaluation.oracle_candidates})
    path = Path(cfg.cache_dir) / "oracle" / f"{config_hash(cfg.dataset, cfg.env, cfg.reward, settings)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            console.print(f"[yellow]oracle cache {path} unreadable; recomputing[/yellow]")
    console.print("[dim]evaluating the oracle in the ground truth (cached afterwards)[/dim]")
    oracle = Oracle(stages.ground_truth, stages.reward, env, candidates=evaluation.oracle_candidates)
    summary = evaluation.summary(oracle, env, stages.diversity_categories)
    write_json_atomic(path, summary)
    return summary


def train_in_ground_truth(cfg: DictConfig, stages: Stages, trainer: Any, evaluation: Evaluation,
                          log: Callable[[int, dict[str, float]], None] | None = None) -> Any | None:
    """``eval.train_in_ground_truth=true`` (research only): the run's algorithm trained with the
    same config, seed and budget in the ground-truth environment instead of the simulator. It
    shows what the learner can find when the simulator is not in the way. ``None`` for
    algorithms that never act during training (offline, baselines). ``log`` receives its
    training metrics (``eval/return``: in the ground truth), keys prefixed with
    ``trained_in_ground_truth/``."""
    if stages.ground_truth is None:
        raise RecrlError("eval.train_in_ground_truth=true needs a dataset with a ground truth "
                         "(dataset=synthetic, or coat with its randomized test set)")
    algo = stages.build_algo(cfg.algo)
    if algo.mode in ("none", "offline"):
        console.print(f"[dim]eval.train_in_ground_truth: {cfg.algo._target_} learns from logs only; "
                      "skipped[/dim]")
        return None
    env, check_env = stages.make_env(stages.ground_truth), stages.make_env(stages.ground_truth)
    console.print("[dim]training the same algorithm in the ground truth (eval.train_in_ground_truth)[/dim]")
    def check() -> dict[str, float]:
        return {"eval/return": evaluation.mean_return(algo, check_env, trainer.eval_episodes)}

    def prefixed(step: int, metrics: dict[str, float]) -> None:
        if log is not None:
            log(step, {f"trained_in_ground_truth/{key}": value for key, value in metrics.items()})

    trainer.fit(algo, env, evaluate=check, log=prefixed, save=lambda tag, step: None, seed=cfg.seed)
    return algo


def behavior_sections(cfg: DictConfig, stages: Stages, evaluation: Evaluation, envs: dict[str, RecEnv],
                      run_dir: Path, policy: Any = None) -> dict[str, Any]:
    """Run facts and everything a report says about the data and the behavior model: its fit,
    offline ranking on the test users and simulator fidelity (also on the slates of the trained
    ``policy``, when given)."""
    fidelity = fidelity_report(stages.behavior, stages.splits, envs.get("ground_truth"),
                               ground_truth_is_true_model=hasattr(stages.dataset, "ground_truth")
                               and not cfg.eval.get("ground_truth"),
                               plot=run_dir / "plots" / "calibration.png", policy=policy)
    return {**run_facts(cfg, run_dir, stages.device), "data": data_summary(stages.splits),
            "behavior": stages.behavior_report,
            "offline": evaluation.offline(stages.behavior, stages.splits,
                                          history_len=getattr(stages.behavior, "max_len", 50)),
            "fidelity": fidelity}


def run_facts(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Run directory, seed, device, resolved config and versions: the head of every report."""
    return {"run_dir": str(run_dir), "seed": int(cfg.seed), "device": str(device),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "versions": {"recrl": recrl.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}}


def evaluate_behavior(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """``recrl eval behavior-only``: fit (or load from the cache) the behavior model and report
    its fit, offline ranking and simulator fidelity; no RL training."""
    t0 = time.perf_counter()
    validate(cfg)
    set_seed(cfg.seed)
    stages = build_stages(cfg, build(cfg.trainer).device)
    t_fit = time.perf_counter()
    evaluation: Evaluation = build(cfg.eval)
    report = {"task": "behavior", **behavior_sections(cfg, stages, evaluation, stages.eval_envs(), run_dir)}
    report["timings"] = {"behavior_fit_s": t_fit - t0, "eval_s": time.perf_counter() - t_fit,
                         "total_s": time.perf_counter() - t0}
    write_report(run_dir, report)
    print_report_table(report)
    return report


def data_summary(splits: Splits) -> dict[str, Any]:
    """Sizes and preparation facts of the data, for reports."""
    inter = splits.interactions
    return {**{k: v for k, v in splits.meta.items() if isinstance(v, (int, float, str))},
            "users": inter.n_users, "items": inter.n_items, "train_rows": len(inter.train),
            "valid_rows": len(inter.valid), "test_rows": len(splits.test),
            "positive_only": inter.positive_only}


RESUME_FIXED = ("dataset", "behavior", "env", "reward", "algo")


def resume_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """The checkpoint named by ``resume`` (run folder or ``.pt``), checked against this run's
    config: data, behavior model, environment, reward and algorithm must be the same."""
    payload = load_checkpoint(cfg.resume)
    saved = OmegaConf.create(payload.get("config", ""))
    for key in RESUME_FIXED:
        if key not in saved or OmegaConf.to_container(saved[key], resolve=True) != OmegaConf.to_container(
                cfg[key], resolve=True):
            raise RecrlError(f"resume={cfg.resume}: its {key} settings differ from this run's; only trainer, "
                             "eval and seed settings may change when resuming")
    return payload


def restore_training_state(payload: dict[str, Any], algo: Any, env: Any) -> None:
    """Weights, optimizer, counters and random-number streams of a checkpoint (algorithm,
    global torch RNG and the training environment's generator)."""
    try:
        algo.load_state_dict(payload["algo"])
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise RecrlError(f"resume: the checkpoint does not fit the algorithm: {first}") from err
    torch.set_rng_state(payload["torch_rng"].cpu())
    env.generator.set_state(payload["env_rng"].cpu())


def train(cfg: DictConfig, run_dir: Path, algo_name: str) -> dict[str, Any]:
    """Run the whole pipeline for one configuration and write the run folder."""
    t0 = time.perf_counter()
    validate(cfg)
    set_seed(cfg.seed)
    trainer = build(cfg.trainer)
    resumed = resume_checkpoint(cfg) if cfg.get("resume") else None
    stages = (gym_stages(cfg, trainer.device) if is_gym(cfg)
              else build_stages(cfg, trainer.device, behavior_state=resumed and resumed["behavior"]))
    t_fit = time.perf_counter()
    algo = stages.build_algo(cfg.algo)
    evaluation: Evaluation = build(cfg.eval)
    select_on = evaluation.select_on
    train_env, check_env = stages.training_env(select_on), stages.selection_env(select_on)
    if resumed is not None:
        restore_training_state(resumed, algo, train_env)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def save(tag: str, step: int) -> None:
        save_checkpoint(run_dir / "checkpoints" / f"{tag}.pt",
                        {"algo": algo.state_dict(), **stages.saved_state(),
                         "step": step, "config": config_yaml, "algo_name": algo_name,
                         "run_dir": str(run_dir), "recrl_version": recrl.__version__,
                         "torch_rng": torch.get_rng_state(),
                         "env_rng": train_env.generator.get_state()})

    def check() -> dict[str, float]:
        return {"eval/return": evaluation.mean_return(algo, check_env, trainer.eval_episodes)}

    logger = RunLogger(run_dir)
    try:
        stats = trainer.fit(algo, train_env, evaluate=check, log=logger.log, save=save, seed=cfg.seed,
                            start_step=int(resumed["step"]) if resumed else 0)
        t_train = time.perf_counter()
        extra = {}
        if evaluation.train_in_ground_truth and not is_gym(cfg):
            in_truth = train_in_ground_truth(cfg, stages, trainer, evaluation, log=logger.log)
            if in_truth is not None:
                extra["trained_in_ground_truth"] = in_truth
    finally:
        logger.close()
    report = stages.report(algo, algo_name, run_dir, extra)
    report["training"] = {"env_steps": stats.env_steps, "user_steps": stats.user_steps,
                          "updates": stats.updates, "best_eval_return": stats.best_eval_return,
                          "user_steps_per_s": stats.user_steps / max(stats.seconds, 1e-9)}
    report["timings"] = {"behavior_fit_s": t_fit - t0, "train_s": t_train - t_fit,
                         "eval_s": time.perf_counter() - t_train, "total_s": time.perf_counter() - t0}
    plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "plots" / "learning_curve.png")
    write_report(run_dir, report)
    print_report_table(report)
    return report
