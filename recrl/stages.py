"""The stages of a run that do not learn during RL training: the data, the behavior model
(fitted or restored from the cache), the ground truth and the algorithms' run-time context, and
the environments built over them (``recrl train``, ``recrl eval`` and the Python API share them)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import recrl
from recrl.behavior.ensemble import BehaviorEnsemble, OwnMemberSimulator
from recrl.behavior.features import build_item_features, item_categories
from recrl.behavior.fit import TrainingSettings
from recrl.cachelock import build_once
from recrl.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from recrl.config import HELD_OUT_NEEDS_ENSEMBLE, PESSIMISM_NEEDS_ENSEMBLE, build, without_ensemble
from recrl.env.pessimism import LoggedPolicyEntropy, Pessimism
from recrl.env.signals import SIGNALS, Signal
from recrl.env.simulator import RecEnv
from recrl.types import AlgoContext, Interactions, RecrlError, Splits

logger = logging.getLogger(__name__)


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

    def make_env(self, model: Any, pessimistic: bool = False, own_member: bool = True,
                 lean: bool = False) -> RecEnv:
        """A fresh environment of the configured shape over ``model``; ``env.pessimism`` applies
        only where ``pessimistic`` (training in the learned simulator). An ensemble steps every
        member for every user only where a pessimism term reads their disagreement or
        ``own_member`` is false; elsewhere each user's own member alone
        (:class:`~recrl.behavior.ensemble.OwnMemberSimulator`). ``lean``: only the outputs the
        reward reads are computed (training; see :class:`~recrl.env.simulator.RecEnv`)."""
        pessimism = self.pessimism if pessimistic else None
        if (own_member and isinstance(model, BehaviorEnsemble)
                and not (pessimism is not None and pessimism.uses_uncertainty)):
            model = OwnMemberSimulator(model)
        return build(self.cfg.env)(model=model, reward=self.reward, item_categories=self.item_categories,
                                   device=self.device, pessimism=pessimism, lean=lean)

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

    def model_env(self) -> RecEnv:
        """An environment over the behavior model itself (every ensemble member mixed, no
        pessimism) whose states are the model's encoding of a history (``model.encode``): what
        off-policy evaluation continues logged sessions in."""
        return self.make_env(self.behavior, own_member=False)

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

    def training_env(self, select_by: str = "simulator") -> RecEnv:
        """An environment for training: the simulator, with ``env.pessimism``; with
        ``select_by="held_out_member"`` without the ensemble's last member."""
        needs_ensemble = self.pessimism is not None and self.pessimism.uses_uncertainty
        if needs_ensemble and not isinstance(self.behavior, BehaviorEnsemble):
            raise RecrlError(PESSIMISM_NEEDS_ENSEMBLE)
        model = self.behavior
        if select_by == "held_out_member":
            model = BehaviorEnsemble(self._held_out_split()[0])
        return self.make_env(model, pessimistic=True, lean=True)

    def selection_env(self, select_by: str) -> RecEnv:
        """Where the training-time evaluations that pick ``best.pt`` run (``trainer.select_by``): a
        fresh training simulator, or the ensemble's held-out last member (no pessimism)."""
        if select_by == "held_out_member":
            return self.make_env(self._held_out_split()[1])
        return self.training_env()

    def _held_out_split(self) -> tuple[list[Any], Any]:
        """The ensemble's members for training and the held-out last one."""
        if not isinstance(self.behavior, BehaviorEnsemble) or self.behavior.size < 3:
            raise RecrlError(HELD_OUT_NEEDS_ENSEMBLE)
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


@dataclass
class GymStages:
    """A run on a gymnasium environment (``env=gym``): no dataset, no behavior model."""

    cfg: DictConfig
    device: torch.device
    ctx: AlgoContext

    def build_algo(self, node: DictConfig) -> Any:
        """Instantiate an algorithm node with the run-time context."""
        return build(node)(ctx=self.ctx)

    def training_env(self, select_by: str = "simulator") -> Any:
        """A fresh adapter over the configured gymnasium environment."""
        return build(self.cfg.env)(device=self.device)

    def selection_env(self, select_by: str) -> Any:
        """The training-time evaluations run in another fresh adapter (there is no ensemble)."""
        if select_by != "simulator":
            raise RecrlError(f"trainer.select_by={select_by} needs logged data (not in gym runs); "
                             "use trainer.select_by=simulator")
        return self.training_env()

    def saved_state(self) -> dict[str, Any]:
        """Nothing besides the algorithm."""
        return {}


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
    """Fit ``behavior`` or load it from the cache keyed by the data, the behavior config and role.

    Parallel jobs missing the same entry fit it once: one fits under the entry's lock, the others
    wait and load its file (:func:`recrl.cachelock.build_once`); ``"cached"`` in the report says
    which this call did."""
    node = cfg.behavior if cfg.behavior.get("ensemble", 1) > 1 else without_ensemble(cfg.behavior)
    key = hashlib.sha256(f"{data_key}|{role}|{config_hash(node)}".encode()).hexdigest()[:16]
    path = Path(cfg.cache_dir) / "behavior" / f"{role}-{key}.pt"
    report, cached = build_once(path, f"{role} behavior model",
                                lambda: _load_cached_behavior(behavior, path, role),
                                lambda: _fit_and_cache_behavior(behavior, interactions, path))
    return {**report, "cached": cached}


def _load_cached_behavior(behavior: Any, path: Path, role: str) -> dict[str, Any] | None:
    """Load the cached model at ``path`` into ``behavior`` and return its fit report; ``None`` (and
    ``behavior`` untouched) when there is no file or it does not load."""
    if not path.is_file():
        return None
    fresh = copy.deepcopy(behavior.state_dict())
    try:
        cached = load_checkpoint(path, map_location=behavior.device)
        behavior.load_state_dict(cached["state_dict"])
        behavior.eval()
        logger.info("%s behavior model: cache hit %s", role, path)
        return dict(cached["report"])
    except (RecrlError, RuntimeError, KeyError) as err:
        # a failed load_state_dict has already copied every matching tensor: start from scratch
        behavior.load_state_dict(fresh)
        logger.warning("behavior cache %s unusable (%s); refitting", path, err)
        return None


def _fit_and_cache_behavior(behavior: Any, interactions: Interactions, path: Path) -> dict[str, Any]:
    """Fit ``behavior``, write it with its report to the cache file ``path`` atomically, and return
    the report."""
    report = behavior.fit(interactions).to_dict()
    save_checkpoint(path, {"state_dict": behavior.state_dict(), "report": report})
    return report


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
                      train_users=cfg.trainer.n_users, cache_dir=str(cfg.cache_dir), data_key=data_key)
    return Stages(cfg=cfg, device=device, dataset=dataset, splits=splits,
                  behavior=behavior, behavior_report=behavior_report, reward=reward, ctx=ctx,
                  ground_truth=ground_truth_model(cfg, dataset, splits, device, data_key))


def check_reward_data(cfg: DictConfig, reward: Any, interactions: Interactions, what: str) -> None:
    """Every user signal the reward declares (its ``signals``) must be registered and have values
    in the logs: say so in one line before anything is fitted."""
    train = interactions.train
    for name in getattr(reward, "signals", ()):
        if name not in SIGNALS:
            raise RecrlError(f"reward={reward.name} reads the signal {name!r}, which is not registered "
                             f"(registered: {', '.join(SIGNALS) or 'none'}; see recrl.env.signals.register)")
        if name not in train or not train[name].notna().any():
            raise RecrlError(missing_signal(SIGNALS[name], reward.name, what, cfg))


def missing_signal(signal: Signal, reward: str, what: str, cfg: DictConfig) -> str:
    """The message for logs without values of a signal the reward ``reward`` needs."""
    source = cfg.dataset.get("_target_", "?").rsplit(".", 1)[-1]
    shipped = "".join(f"dataset={name}, " for name in signal.datasets)
    hint = f"{shipped}or " if shipped else ""
    return (f"reward={reward} needs {signal.description} values, but the {what} ({source}) has none; "
            f"use data with them ({hint}dataset.columns.{signal.name}=<column> for a CSV) or another reward")


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
    (``behavior.ensemble=1``, ``behavior.item_ids=true``, ``behavior.recency=false``,
    ``behavior.click_profile=false``), for a ground truth fitted from data."""
    yardstick = cfg.copy()
    with open_dict(yardstick):
        yardstick.behavior.ensemble = 1
        for key, default in (("item_ids", True), ("recency", False), ("click_profile", False)):
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
