"""Config checking and instantiation: every group node is validated against its class.

Each config group node has a ``_target_`` class. Before anything runs, every key of the node
is checked against that class's constructor: unknown keys and values of the wrong type become a
one-line :class:`~recrl.types.RecrlError` naming the key, so ``trainer.steps=abc`` fails at once
instead of deep inside training.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from recrl.types import RecrlError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RENAMED_KEYS = {"eval.select_on": "trainer.select_by"}
"""Config keys that moved: old dotted key -> new one (a one-line hint on the command line; saved
runs' configs are migrated by :func:`migrate_renamed_keys`)."""


def migrate_renamed_keys(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every key of :data:`RENAMED_KEYS` moved to its new place (where that is not
    set already); in place, returns ``cfg``."""
    for old, new in RENAMED_KEYS.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is None or leaf not in node:
            continue
        with open_dict(cfg):
            value = node.pop(leaf)
            if OmegaConf.select(cfg, new) is None:
                OmegaConf.update(cfg, new, value, force_add=True)
    return cfg


def demonstrated_budget(demonstrations: Any, candidates: Any, with_them: int, without_them: int) -> int:
    """The training steps of a learner that may learn from the planner's demonstrations: the
    ``${demonstrated_budget:${algo.demonstrations},${algo.candidates},1500,6000}`` of
    ``conf/algo_trainer/ppo.yaml``. ``with_them`` where it takes demonstrations
    (``algo.demonstrations`` a number of users or ``auto``), ``without_them`` where it does not
    (``0``, or ``auto`` with ``algo.candidates``, which turns the automatic ones off): PPO
    reaches its return within the first 500 steps with them and needs 6,000 without them."""
    # the learner's own rule (imported here: the config module stays free of torch until it is used)
    from recrl.algos.demonstrations import demonstrations_taken

    return int(with_them if demonstrations_taken(demonstrations, candidates) != 0 else without_them)


OmegaConf.register_new_resolver("demonstrated_budget", demonstrated_budget, replace=True)

VALUE_CHECKED = ("trainer", "eval", "ope", "search")
"""Groups whose classes are cheap to build and check their values in the constructor, so
:func:`validate` builds them once (a wrong value fails before any data is read)."""
GROUPS = ("dataset", "behavior", "env", "reward", "algo", "trainer", "eval", "ope", "search")


Rule = tuple[str, Callable[[float], bool]]
UNIT: Rule = ("in [0, 1]", lambda v: 0 <= v <= 1)
UNIT_OPEN_ABOVE: Rule = ("in [0, 1)", lambda v: 0 <= v < 1)
UNIT_OPEN_BELOW: Rule = ("in (0, 1]", lambda v: 0 < v <= 1)
POSITIVE: Rule = ("> 0", lambda v: v > 0)
NON_NEGATIVE: Rule = (">= 0", lambda v: v >= 0)
AT_LEAST_ONE: Rule = (">= 1", lambda v: v >= 1)
RANGES: dict[str, dict[str, Rule]] = {
    "algo": {
        **dict.fromkeys(("gamma", "lam", "epsilon_start", "epsilon_end", "threshold",
                         "priority_alpha", "priority_beta"), UNIT),
        "tau": UNIT_OPEN_BELOW,
        "average": UNIT_OPEN_ABOVE,
        **dict.fromkeys(("lr", "clip", "grad_clip", "priority_eps", "weight_cap", "target_kl",
                         "value_clip"), POSITIVE),
        **dict.fromkeys(("entropy_coef", "value_coef", "kl_coef", "alpha", "v", "logit_reg",
                         "choice_coef", "prior_count", "caution", "demo_caution", "demo_weight",
                         "demo_margin", "demonstrations", "demo_decay_steps", "candidates",
                         "epsilon_decay_steps", "beta_warmup"), NON_NEGATIVE),
        **dict.fromkeys(("dim", "hidden", "heads", "layers", "epochs", "minibatch_size",
                         "target_update", "demo_batch", "chunk_rows", "topk", "n_steps", "n_step"),
                        AT_LEAST_ONE),
    },
    "behavior": {**dict.fromkeys(("dim", "hidden", "heads", "layers", "window"), AT_LEAST_ONE),
                 **dict.fromkeys(("dropout", "id_dropout"), UNIT_OPEN_ABOVE)},
    "behavior.training": {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "patience": NON_NEGATIVE,
                          "softmax_negatives": NON_NEGATIVE,
                          **dict.fromkeys(("batch_size", "max_len"), AT_LEAST_ONE)},
    "dataset": {  # the synthetic world's knobs, and KuaiRand's watch-ratio threshold
        **dict.fromkeys(("n_items", "n_users", "n_topics", "horizon"), AT_LEAST_ONE),
        **dict.fromkeys(("clickbait_share", "logging_epsilon", "boredom_decay",
                         "satisfaction_decay"), UNIT),
        **dict.fromkeys(("valid_share", "test_share"), UNIT_OPEN_ABOVE),
        "interest_drift": NON_NEGATIVE,
        **dict.fromkeys(("logging_temperature", "watch_ratio_threshold"), POSITIVE),
    },
}
"""The range of each config key that has one, by config node: a key means the same in every
class of its group that takes it, so ``algo.gamma=1.5`` is refused before anything runs,
whatever the algorithm. ``None`` (off) always passes; rules of one class's own (C51's support)
are its ``check_keys`` (see :func:`check_node`); every ``trainer`` key is checked by its class
(:data:`VALUE_CHECKED` groups are built by :func:`validate`), and so are the rest of an
algorithm's keys, when it is built."""


def check_ranges(cfg: DictConfig) -> None:
    """Refuse, in one line, a number of ``cfg`` outside its key's range in :data:`RANGES`."""
    for path, rules in RANGES.items():
        node = OmegaConf.select(cfg, path)
        if not OmegaConf.is_dict(node):
            continue
        for key, (allowed, within) in rules.items():
            values = node.get(key)
            for value in values if OmegaConf.is_list(values) else [values]:  # layer widths
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not within(value):
                    raise RecrlError(f"{path}.{key}={values} must be {allowed}")


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a config ``value`` fits the annotation ``hint`` (ints pass as floats)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) or OmegaConf.is_list(value)
    if origin is dict:
        return isinstance(value, dict) or OmegaConf.is_dict(value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _hint_name(hint: Any) -> str:
    """``int``, ``list[str]``, or ``one of 'a', 'b'`` for a ``Literal``."""
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_node(node: DictConfig, path: str) -> None:
    """Check the keys and value types of one ``_target_`` node against its constructor, then the
    class's own rules among its keys where it has them: ``cls.check_keys(keys)``, given every
    constructor default overridden by the node's values (e.g. C51's support, ``DQN.check_keys``),
    the same rules its constructor applies, so they fail before any data is read."""
    target = node.get("_target_")
    if target is None:
        raise RecrlError(f"{path}: missing _target_ (each config group file names one class)")
    try:
        cls = get_class(target)
    except Exception as err:
        raise RecrlError(f"{path}._target_={target!r} cannot be imported") from err
    signature = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    params = {n: p for n, p in signature.parameters.items() if n != "self"}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in node:
        if str(key).startswith("_"):
            continue
        if key not in params and not takes_kwargs:
            valid = ", ".join(n for n in params if n not in ("ctx",))
            raise RecrlError(f"unknown key {path}.{key} for {target}; valid keys: {valid}")
        if OmegaConf.is_dict(node[key]) and "_target_" in node[key]:
            check_node(node[key], f"{path}.{key}")  # a nested component, e.g. dataset.preprocess
            continue
        value = OmegaConf.to_object(node[key]) if OmegaConf.is_config(node[key]) else node[key]
        hint = hints.get(key, inspect.Parameter.empty)
        if not _type_ok(value, hint):
            raise RecrlError(f"{path}.{key}={value!r} is not a valid {_hint_name(hint)}")
    check_keys = getattr(cls, "check_keys", None)
    if check_keys is not None:
        defaults = {n: p.default for n, p in params.items() if p.default is not p.empty}
        check_keys({**defaults, **OmegaConf.to_container(node, resolve=True)})


def validate(cfg: DictConfig) -> None:
    """Resolve the whole config and check every group node and the top-level seed."""
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:
        raise RecrlError(f"config does not resolve: {str(err).splitlines()[0]}") from err
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecrlError(f"seed={seed!r} is not a valid int")
    for group in GROUPS:
        if group in cfg:
            check_node(without_ensemble(cfg[group]) if group == "behavior" else cfg[group], group)
    check_ranges(cfg)
    check_ensemble_needs(cfg)
    for name in cfg.get("eval", {}).get("baselines", []):
        if name not in algo_options():
            raise RecrlError(f"eval.baselines: {name!r} is not an algo; options: {', '.join(algo_options())}")
    for group in VALUE_CHECKED:
        if group in cfg:
            build(cfg[group])  # their constructors check values: fail before anything runs


PESSIMISM_NEEDS_ENSEMBLE = ("env.pessimism penalises the disagreement of a behavior ensemble; set "
                            "behavior.ensemble=5 (or more than 1), or turn the penalties off")
HELD_OUT_NEEDS_ENSEMBLE = ("trainer.select_by=held_out_member needs behavior.ensemble >= 3 (two members "
                           "to train in, one held out); use trainer.select_by=simulator")


def check_ensemble_needs(cfg: DictConfig) -> None:
    """Refuse, before any data is read or model fitted, settings that need a larger behavior
    ensemble than ``behavior.ensemble`` asks for: MOPO's penalty and MOReL's halting read the
    members' disagreement (2 or more), selection in a held-out member needs 3 or more."""
    size = OmegaConf.select(cfg, "behavior.ensemble", default=1)
    node = OmegaConf.select(cfg, "env.pessimism")
    if OmegaConf.is_dict(node) and build(node).uses_uncertainty and size < 2:
        raise RecrlError(PESSIMISM_NEEDS_ENSEMBLE)
    if OmegaConf.select(cfg, "trainer.select_by") == "held_out_member" and size < 3:
        raise RecrlError(HELD_OUT_NEEDS_ENSEMBLE)


def without_ensemble(behavior: DictConfig) -> DictConfig:
    """The behavior node without ``ensemble`` (how many models to fit, read by
    :func:`recrl.stages.build_behavior`, not a constructor argument), after checking it."""
    size = behavior.get("ensemble", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise RecrlError(f"behavior.ensemble={size!r} must be a whole number >= 1 (1: a single model)")
    return OmegaConf.masked_copy(behavior, [k for k in behavior if k != "ensemble"])


def algo_options() -> list[str]:
    """Names of the ``algo`` config group's options."""
    return sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))


def build(node: DictConfig, **runtime: Any) -> Any:
    """Instantiate a checked group node, passing values known only at run time. A
    :class:`RecrlError` of the class's constructor (a value it refuses) comes out as itself,
    not wrapped in Hydra's multi-line ``InstantiationException``."""
    try:
        return instantiate(node, **runtime)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, RecrlError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise RecrlError(str(cause)) from err


def compose_config(config_name: str | None, overrides: list[str],
                   return_hydra_config: bool = False) -> DictConfig:
    """Hydra's composition of ``conf/<config_name>.yaml`` (``None``: only the overrides) with
    ``overrides``; inside a running Hydra job through that job's config loader, elsewhere from
    :data:`CONF_DIR`. Composition errors propagate as Hydra raises them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def group_option(group: str, name: str) -> DictConfig:
    """The node of ``conf/<group>/<name>.yaml`` as Hydra composes it, its own ``defaults``
    applied (``algo/c51`` extends ``algo/dqn``, datasets take a ``preprocess`` option)."""
    return compose_config(None, [f"+{group}={name}"])[group]


def build_algo_by_name(name: str, **runtime: Any) -> Any:
    """Instantiate ``conf/algo/<name>.yaml`` (used for the evaluation baselines)."""
    node = group_option("algo", name)
    check_node(node, f"algo/{name}")
    return build(node)(**runtime)
