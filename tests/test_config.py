"""Tests for recrl.config and conf/: every group file checks and instantiates; bad keys fail early."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

import recrl
from recrl.behavior.gru import GRUBehavior
from recrl.config import (
    CONF_DIR,
    GROUPS,
    RANGES,
    algo_options,
    build,
    build_algo_by_name,
    check_node,
    compose_config,
    demonstrated_budget,
    group_option,
    validate,
    without_ensemble,
)
from recrl.data.preprocess import log_frame
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Interactions, Obs, RecrlError

ALL_GROUPS = (*GROUPS, "eval")
GROUP_FILES = sorted((group, path) for group in ALL_GROUPS for path in (CONF_DIR / group).glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_every_group_has_files() -> None:
    for group in ALL_GROUPS:
        assert list((CONF_DIR / group).glob("*.yaml")), group


def algorithm_classes() -> set[str]:
    """Every algorithm class under recrl/algos that a config can build: it acts, has a training
    ``mode``, is built from the run's ``ctx`` and is no other such class's base."""
    found: dict[str, type] = {}
    for path in sorted((Path(recrl.__file__).parent / "algos").glob("*.py")):
        module = importlib.import_module(f"recrl.algos.{path.stem}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and hasattr(cls, "act") and hasattr(cls, "mode")
                    and "ctx" in inspect.signature(cls).parameters):
                found[f"{module.__name__}.{name}"] = cls
    bases = {b for cls in found.values() for b in cls.__mro__[1:]}
    return {name for name, cls in found.items() if cls not in bases}


def test_every_algorithm_class_has_a_config_and_every_config_an_algorithm() -> None:
    targets = {str(group_option("algo", name)._target_) for name in algo_options()}
    classes = algorithm_classes()
    assert {"recrl.algos.dqn.DQN", "recrl.algos.ppo.PPO"} <= classes  # the finder finds classes
    assert targets <= classes, f"configs naming no algorithm class: {targets - classes}"
    assert classes - targets == set(), f"algorithm classes without a conf/algo file: {classes - targets}"


def extended_option(group: str, name: str) -> str:
    """The option ``conf/<group>/<name>.yaml`` extends through its ``defaults`` (itself if none)."""
    defaults = OmegaConf.load(CONF_DIR / group / f"{name}.yaml").get("defaults") or []
    bases = [d for d in defaults if isinstance(d, str) and d != "_self_"]
    return extended_option(group, bases[0]) if bases else name


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "dataset" / "preprocess").glob("*.yaml")))
def test_preprocess_options_compose_into_every_dataset(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=csv", f"dataset/preprocess={name}"])
    own = OmegaConf.load(CONF_DIR / "dataset" / "preprocess" / f"{name}.yaml")
    assert cfg.dataset.preprocess == own
    check_node(cfg.dataset.preprocess, "dataset.preprocess")
    assert build(cfg.dataset.preprocess).split == own.split


def tiny_logs() -> Interactions:
    """Three short logged sessions over 20 items (what offline algorithms learn from)."""
    log = log_frame({"user": [0, 0, 1, 1, 1, 2], "item": [3, 5, 7, 3, 19, 0], "time": [0, 1, 0, 1, 2, 0],
                     "click": [1.0, 0.0, 0.0, 1.0, 1.0, 0.0], "propensity": [0.05] * 6})
    return Interactions(train=log, valid=log.iloc[:0], items=pd.DataFrame(index=range(20)), n_users=3,
                        n_items=20)


def tiny_ctx(slate_size: int = 2) -> AlgoContext:
    return AlgoContext(n_items=20, slate_size=slate_size, history_len=3, horizon=5,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.arange(20).float(),
                       behavior=GRUBehavior(n_items=20, dim=4, hidden=8), reward=ClickReward(),
                       interactions=tiny_logs())


def algo_slate_size(algo: object) -> int:
    """Offline algorithms learn from logs of single items, so they run with slates of 1."""
    target = algo.func if hasattr(algo, "func") else algo
    return 1 if getattr(target, "mode", None) == "offline" else 2


def instantiate_node(group: str, node: DictConfig) -> object:
    """Build a group node the way train.py does, passing the run-time arguments to partials."""
    obj = build(node)
    if not node.get("_partial_", False):
        return obj
    if group == "behavior":
        return obj(n_items=20, device="cpu")
    if group == "env" and node["_target_"].endswith("GymAdapter"):
        return obj(device="cpu")
    if group == "env":
        world = SyntheticWorld(n_items=20, n_users=10, n_topics=3, horizon=5)
        return obj(model=world, reward=ClickReward(), device="cpu")
    if group == "algo":
        return obj(ctx=tiny_ctx(algo_slate_size(obj)))
    raise AssertionError(f"unexpected partial node in group {group}")


@pytest.mark.parametrize(("group", "path"), GROUP_FILES, ids=[f"{g}/{p.stem}" for g, p in GROUP_FILES])
def test_group_file_checks_and_instantiates(group: str, path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # the group file's own values, without a dataset's defaults for it (conf/dataset_behavior)
        cfg = compose(config_name="train", overrides=[f"{group}={path.stem}", "~dataset_behavior"])
    OmegaConf.resolve(cfg)  # interpolations such as ${data_dir} and group defaults lists
    node = without_ensemble(cfg[group]) if group == "behavior" else cfg[group]  # ensemble: see build_behavior
    check_node(node, group)
    obj = instantiate_node(group, node)
    assert type(obj).__module__ + "." + type(obj).__name__ == node["_target_"]
    # the keys of the file reached the object (spot check on numbers and flags)
    if group == "env" and isinstance(obj, RecEnv):
        assert (obj.horizon, obj.slate_size, obj.history_len) == (node.horizon, node.slate_size,
                                                                   node.history_len)
    if group == "algo" and "gamma" in node:
        assert obj.gamma == node.gamma


def test_a_dataset_sets_its_behavior_defaults_and_overrides_still_win() -> None:
    """conf/dataset_behavior/<dataset>_<behavior>.yaml applies to that pair only; a command-line
    key wins over it and ``~dataset_behavior`` drops it."""
    def behavior(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides)).behavior

    plain = OmegaConf.load(CONF_DIR / "behavior" / "gru.yaml")
    assert (behavior().item_ids, behavior().recency) == (False, True)  # synthetic + gru
    coat = behavior("dataset=coat")
    assert (coat.item_ids, coat.recency) == (plain.item_ids, plain.recency)
    assert behavior("behavior.item_ids=true").item_ids is True
    dropped = behavior("~dataset_behavior")
    assert (dropped.item_ids, dropped.recency) == (plain.item_ids, plain.recency)
    pairs = {f"{d.stem}_{b.stem}" for d in (CONF_DIR / "dataset").glob("*.yaml")
             for b in (CONF_DIR / "behavior").glob("*.yaml")}
    for path in (CONF_DIR / "dataset_behavior").glob("*.yaml"):
        assert path.stem in pairs, f"{path.name} names no <dataset>_<behavior> pair"


def test_an_algorithm_sets_its_budget_shape_and_overrides_still_win() -> None:
    """conf/algo_trainer/<algo>.yaml applies to that algorithm only (c51 inherits dqn's algo file
    and names dqn's shape in its own; ppo has a shape of its own); a command-line key wins and
    ``~algo_trainer`` drops it."""
    def composed_with(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides))

    def trainer(*overrides: str) -> DictConfig:
        return composed_with(*overrides).trainer

    plain = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    dqn = trainer()
    assert (dqn.steps, dqn.n_users) == (1500, 1024)
    assert dqn.steps * dqn.n_users == plain.steps * plain.n_users  # the same user-steps
    # its epsilon schedule counts those steps; dropping the shape restores dqn.yaml's schedule too
    plain_epsilon = OmegaConf.load(CONF_DIR / "algo" / "dqn.yaml").epsilon_decay_steps
    assert composed_with().algo.epsilon_decay_steps * plain.steps == plain_epsilon * dqn.steps
    assert composed_with("~algo_trainer").algo.epsilon_decay_steps == plain_epsilon
    c51 = composed_with("algo=c51")
    assert (c51.trainer.steps, c51.trainer.n_users, c51.algo.epsilon_decay_steps) == (
        dqn.steps, dqn.n_users, composed_with().algo.epsilon_decay_steps)
    assert composed_with("algo=c51", "~algo_trainer").algo.epsilon_decay_steps == plain_epsilon
    for other in ("algo=slateq", "~algo_trainer", "algo=ppo ~algo_trainer"):
        got = trainer(*other.split())
        assert (got.steps, got.n_users) == (plain.steps, plain.n_users), other
    ppo = trainer("algo=ppo")  # PPO's shape: a quarter of the steps, the same users per step
    assert (ppo.steps, ppo.n_users) == (plain.steps // 4, plain.n_users)
    assert trainer("algo=ppo", "trainer.steps=6000").steps == 6000
    assert trainer("algo=ppo", "algo.demonstrations=64").steps == plain.steps // 4
    # without the planner's demonstrations PPO keeps the default's steps
    assert trainer("algo=ppo", "algo.demonstrations=0").steps == plain.steps
    assert trainer("algo=ppo", "algo.candidates=10", "algo.init_from=pretrain").steps == plain.steps
    assert (trainer("trainer.n_users=256").steps, trainer("trainer.n_users=256").n_users) == (1500, 256)
    assert trainer("experiment=smoke").steps == 60  # an experiment still sets the budget
    algos = {p.stem for p in (CONF_DIR / "algo").glob("*.yaml")}
    for path in (CONF_DIR / "algo_trainer").glob("*.yaml"):
        assert path.stem in algos, f"{path.name} names no algo option"


@pytest.mark.parametrize("name", algo_options())
def test_build_algo_by_name(name: str) -> None:
    k = algo_slate_size(build(group_option("algo", name)))
    algo = build_algo_by_name(name, ctx=tiny_ctx(k))
    obs = Obs(torch.full((3, 3, k), 20), torch.zeros(3, 3, k), torch.zeros(3, dtype=torch.long))
    slates = algo.act(obs, explore=False)
    assert slates.shape == (3, k) and bool(((slates >= 0) & (slates < 20)).all())


def varied_obs(users: int, k: int) -> Obs:
    """Histories of 3 slates over 20 items, some padded (id 20), some clicked."""
    g = torch.Generator().manual_seed(7)
    items = torch.randint(0, 21, (users, 3, k), generator=g)
    items[0] = 20  # a user with no history yet
    return Obs(items, (torch.rand(users, 3, k, generator=g) < 0.3).float(), torch.arange(users) % 5)


@pytest.mark.parametrize("name", algo_options())
def test_action_probs_are_the_evaluation_slates_distribution(name: str) -> None:
    """Every algorithm's ``action_probs`` is the distribution of ``act(obs, explore=False)``:
    each slot sums to 1 and matches the frequency of each item over 3000 draws per user."""
    algo = build_algo_by_name(name, ctx=tiny_ctx(1))
    obs = varied_obs(4, 1)
    probs = algo.action_probs(obs)
    assert probs.shape == (4, 1, 20)
    assert torch.allclose(probs.sum(-1), torch.ones(4, 1), atol=1e-5) and bool((probs >= 0).all())
    draws = 3000
    slates = algo.act(obs.index(torch.arange(4).repeat(draws)), explore=False)
    users = torch.arange(4).repeat(draws)
    counts = torch.zeros(4, 20).index_add_(0, users, F.one_hot(slates[:, 0], 20).float())
    assert (counts / draws - probs[:, 0]).abs().max() < 0.04


SLATE_ALGOS = [n for n in algo_options() if algo_slate_size(build(group_option("algo", n))) > 1]


@pytest.mark.parametrize("name", SLATE_ALGOS)
def test_action_probs_of_slates(name: str) -> None:
    """Slates of two: a deterministic evaluation slate is one-hot per slot; a sampled one has no
    closed-form per-slot probabilities and says so."""
    k = 2
    algo = build_algo_by_name(name, ctx=tiny_ctx(k))
    obs = varied_obs(4, k)
    if name == "random":
        assert torch.allclose(algo.action_probs(obs), torch.full((4, k, 20), 0.05))
        return
    try:
        probs = algo.action_probs(obs)
    except RecrlError as err:
        assert getattr(algo, "sample_in_eval", False), err
        assert "sample_in_eval=false" in str(err)
        return
    assert torch.equal(probs, F.one_hot(algo.act(obs, explore=False), 20).float())


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_train_config_composes_and_validates(experiment: str | None) -> None:
    overrides = [] if experiment is None else [f"experiment={experiment}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    for group in GROUPS:
        assert (group == "search" and group not in cfg) or "_target_" in cfg[group]  # search: when asked
    assert cfg.task == "train" and isinstance(cfg.seed, int)
    if experiment == "smoke":
        assert cfg.behavior.dim == 8 and cfg.trainer.steps == 60 and cfg.trainer.progress is False
        assert cfg.env.history_len == 4


def test_every_algo_and_reward_composes() -> None:
    rewards = sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for algo in algo_options():
            cfg = compose("train", overrides=[f"algo={algo}", "experiment=smoke"])
            validate(cfg)
            assert cfg.algo._target_.rsplit(".", 2)[-2] == extended_option("algo", algo)
        for reward in rewards:
            validate(compose("train", overrides=[f"reward={reward}"]))


def test_eval_config_composes() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["checkpoint=some/run"])
    assert cfg.task == "eval" and cfg.checkpoint == "some/run"


def dqn_node(**keys: object) -> DictConfig:
    return OmegaConf.create({"_target_": "recrl.algos.dqn.DQN", "_partial_": True, **keys})


def test_check_node_rejects_unknown_key() -> None:
    with pytest.raises(RecrlError, match=r"unknown key algo\.lrr for recrl\.algos\.dqn\.DQN") as err:
        check_node(dqn_node(lrr=0.1), "algo")
    assert "valid keys:" in str(err.value) and "lr" in str(err.value) and "ctx" not in str(err.value)


def test_check_node_rejects_wrong_types() -> None:
    with pytest.raises(RecrlError, match=r"algo\.lr='fast' is not a valid float"):
        check_node(dqn_node(lr="fast"), "algo")
    trainer = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    trainer.steps = "abc"
    with pytest.raises(RecrlError, match=r"trainer\.steps='abc' is not a valid int"):
        check_node(trainer, "trainer")
    with pytest.raises(RecrlError, match=r"algo\.dim=1\.5 is not a valid int"):
        check_node(dqn_node(dim=1.5), "algo")
    with pytest.raises(RecrlError, match=r"algo\.skip_shown='yes' is not a valid bool"):
        check_node(OmegaConf.create({"_target_": "recrl.algos.popular.PopularPolicy", "skip_shown": "yes"}),
                   "algo")
    with pytest.raises(RecrlError, match=r"eval\.baselines='random'"):
        check_node(OmegaConf.create({"_target_": "recrl.evaluate.Evaluation", "baselines": "random"}), "eval")


def test_check_node_number_rules() -> None:
    check_node(dqn_node(lr=1, gamma=1, tau=1), "algo")  # ints are accepted for float params
    check_node(dqn_node(dim=16, lr=0.5), "algo")
    with pytest.raises(RecrlError, match=r"algo\.dim=True is not a valid int"):
        check_node(dqn_node(dim=True), "algo")  # bools are not ints
    with pytest.raises(RecrlError, match=r"algo\.lr=False is not a valid float"):
        check_node(dqn_node(lr=False), "algo")
    check_node(OmegaConf.create({"_target_": "recrl.evaluate.Evaluation", "baselines": None}), "eval")
    check_node(OmegaConf.create({"_target_": "recrl.evaluate.Evaluation", "baselines": ["random"]}), "eval")


def test_check_node_needs_an_importable_target() -> None:
    with pytest.raises(RecrlError, match="missing _target_"):
        check_node(OmegaConf.create({"lr": 0.1}), "algo")
    with pytest.raises(RecrlError, match="cannot be imported"):
        check_node(OmegaConf.create({"_target_": "recrl.algos.nope.Nope"}), "algo")


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_validate_rejects_bad_values() -> None:
    with pytest.raises(RecrlError, match=r"trainer\.steps='abc'"):
        validate(composed("trainer.steps=abc"))
    with pytest.raises(RecrlError, match=r"unknown key algo\.bogus"):
        validate(composed("+algo.bogus=1"))
    with pytest.raises(RecrlError, match="seed='x' is not a valid int"):
        validate(composed("seed=x"))
    with pytest.raises(RecrlError, match="seed=True is not a valid int"):
        validate(composed("seed=true"))
    with pytest.raises(RecrlError, match="'nope' is not an algo"):
        validate(composed("eval.baselines=[random,nope]"))
    with pytest.raises(RecrlError, match="does not resolve"):
        validate(composed("+dataset.alias=${missing.key}"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["algo.gamma=1.5"], "algo.gamma=1.5 must be in [0, 1]"),
    (["algo.gamma=-0.1"], "algo.gamma=-0.1 must be in [0, 1]"),
    (["algo.lr=0"], "algo.lr=0 must be > 0"),
    (["algo.lr=-0.1"], "algo.lr=-0.1 must be > 0"),
    (["algo.tau=0"], "algo.tau=0 must be in (0, 1]"),
    (["algo.epsilon_decay_steps=-1"], "algo.epsilon_decay_steps=-1 must be >= 0"),
    (["algo.dim=0"], "algo.dim=0 must be >= 1"),
    (["algo.target_update=0"], "algo.target_update=0 must be >= 1"),
    (["algo.demonstrations=-5"], "algo.demonstrations=-5 must be >= 0"),
    # the same key holds its range in every algorithm that takes it
    (["algo=ppo", "algo.lam=2"], "algo.lam=2 must be in [0, 1]"),
    (["algo=ppo", "algo.entropy_coef=-0.01"], "algo.entropy_coef=-0.01 must be >= 0"),
    (["algo=ppo", "algo.kl_coef=-1"], "algo.kl_coef=-1 must be >= 0"),
    (["algo=reinforce", "algo.candidates=-3"], "algo.candidates=-3 must be >= 0"),
    (["algo=a2c", "algo.n_steps=0"], "algo.n_steps=0 must be >= 1"),
    (["algo=bcq", "algo.threshold=1.2"], "algo.threshold=1.2 must be in [0, 1]"),
    (["algo=planner", "algo.caution=-1"], "algo.caution=-1 must be >= 0"),
    (["algo.average=1"], "algo.average=1 must be in [0, 1)"),
    (["algo=slateq", "algo.average=-0.5"], "algo.average=-0.5 must be in [0, 1)"),
    (["algo.atoms=1"], "algo.atoms=1 must be 0 (off) or >= 2"),
    (["algo=c51", "algo.v_max=0"], "algo.v_max=0 must exceed algo.v_min=0.0"),
    # other groups
    (["behavior.dim=0"], "behavior.dim=0 must be >= 1"),
    (["behavior.training.lr=-1"], "behavior.training.lr=-1 must be > 0"),
    (["behavior.recency=false", "behavior.click_profile=true"],
     "behavior.click_profile=true is a channel of the attribute recency term"),
    (["behavior.recency_fit=learned"],
     "behavior.recency_fit='learned' is not a valid one of 'joint', 'logs'"),
    (["dataset.n_topics=0"], "dataset.n_topics=0 must be >= 1"),
    (["dataset.clickbait_share=2"], "dataset.clickbait_share=2 must be in [0, 1]"),
    (["trainer.eval_every=0"], "trainer.eval_every=0 must be >= 1"),
    (["trainer.updates_per_step=-1"], "trainer.updates_per_step=-1 must be >= 0"),
    (["behavior=deepfm", "behavior.hidden=[64,0]"], "behavior.hidden=[64, 0] must be >= 1"),
])
def test_validate_refuses_values_out_of_range(overrides: list[str], message: str) -> None:
    with pytest.raises(RecrlError, match=re.escape(message)):
        validate(composed(*overrides))


def test_range_edges_and_off_values_pass() -> None:
    validate(composed("algo.gamma=0", "algo.epsilon_end=1", "algo.tau=1", "algo.epsilon_decay_steps=0"))
    validate(composed("algo=ppo", "algo.gamma=1", "algo.lam=0", "algo.value_clip=null",
                      "algo.kl_target=null"))
    # scalar DQN ignores the C51 support; its average may be off
    validate(composed("algo.atoms=0", "algo.v_max=-1", "algo.average=0"))
    validate(composed("algo=c51", "algo.atoms=2", "algo.v_min=-1", "algo.v_max=1"))
    validate(composed("behavior.click_profile=true"))  # the synthetic world's GRU has recency on


@pytest.mark.parametrize("path", list(RANGES))
def test_every_ranged_key_is_a_parameter_of_its_group(path: str) -> None:
    """A misspelt key in the range table would check nothing: each names a constructor argument
    of at least one option of its config node."""
    params: set[str] = set()
    for option in (CONF_DIR / path.replace(".", "/")).glob("*.yaml"):
        target = OmegaConf.load(option).get("_target_")
        if target is not None:
            params |= set(inspect.signature(get_class(target).__init__).parameters)
    assert set(RANGES[path]) <= params, sorted(set(RANGES[path]) - params)


def test_validate_accepts_overrides_of_the_right_type() -> None:
    cfg = composed("trainer.steps=5", "algo=reinforce", "algo.lr=1", "reward=mix", "reward.rating=2")
    validate(cfg)
    assert cfg.trainer.steps == 5 and cfg.algo.lr == 1


@pytest.mark.parametrize("override", ["eval.episodes=abc", "+eval.bogus=1", "eval.seed=1.5"])
def test_validate_checks_the_eval_group(override: str) -> None:
    with pytest.raises(RecrlError, match=r"eval\."):
        validate(composed(override))


def test_c51_is_dqn_with_its_own_keys_and_command_line_keys_still_win() -> None:
    dqn, c51 = group_option("algo", "dqn"), group_option("algo", "c51")
    own = {"atoms": 51, "v_max": 20.0}
    assert {key: c51[key] for key in own} == own
    assert {k: v for k, v in c51.items() if k not in own} == {k: v for k, v in dqn.items() if k not in own}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["algo=c51", "algo.lr=0.01", "algo.atoms=21"])
    assert (cfg.algo.lr, cfg.algo.atoms, cfg.algo._target_) == (0.01, 21, "recrl.algos.dqn.DQN")


@pytest.mark.parametrize("name", algo_options())
def test_an_algorithm_draws_only_from_its_own_seed(name: str) -> None:
    """Building an algorithm leaves torch's global generator as it was, and its weights depend
    on ``ctx.seed`` alone, whatever state the global generator was in."""
    ctx = tiny_ctx(algo_slate_size(build(group_option("algo", name))))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = build_algo_by_name(name, ctx=ctx).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(17)  # another global state
    second = build_algo_by_name(name, ctx=ctx).state_dict()
    flat = [(a, b) for a, b in zip(tensors(first), tensors(second), strict=True)]
    assert all(torch.equal(a, b) for a, b in flat)


def tensors(state: object) -> list[torch.Tensor]:
    """Every tensor in a (nested) state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in tensors(item)]
    return []


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "search").glob("*.yaml")))
def test_every_search_composes_with_its_sweeper_and_a_valid_space(name: str) -> None:
    from recrl.search import parse_space, search_settings

    cfg = compose_config("train", [f"search={name}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("RecrlOptunaSweeper")
    validate(cfg)
    settings = search_settings(cfg)
    dims, fixed = parse_space(settings.space, [])
    assert dims and not fixed
    for dim in dims:  # every searched key exists in the composed config
        assert OmegaConf.select(cfg, dim.key) is not None, dim.key
    if name != "behavior":
        assert cfg.hydra.runtime.choices.algo == name


@pytest.mark.parametrize(("demonstrations", "candidates", "steps"),
                         [("auto", 0, 1500), (512, 0, 1500), (0, 0, 6000), ("auto", 10, 6000), (0, 10, 6000)])
def test_demonstrated_budget_follows_the_demonstrations(demonstrations, candidates, steps) -> None:
    """The short budget where the learner takes demonstrations (a number, or ``auto`` without
    ``candidates``, which turns the automatic ones off), the long one where it does not."""
    assert demonstrated_budget(demonstrations, candidates, 1500, 6000) == steps
