"""Tests for recrl.checkpoint: atomic saves, safe loads, run-folder resolution."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from recrl.algos.dqn import DQN
from recrl.algos.learner_state import LearnerState
from recrl.checkpoint import FORMAT_VERSION, load_checkpoint, resolve_checkpoint, save_checkpoint
from recrl.config import CONF_DIR, build, validate
from recrl.rewards import ClickReward
from recrl.stages import build_behavior, fit_behavior
from recrl.types import AlgoContext, Obs, RecrlError


class Foreign:
    """A picklable class that a weights-only load must refuse."""

    def __init__(self) -> None:
        self.x = 1


def payload() -> dict:
    return {"step": 7, "name": "dqn", "ratio": 0.25, "flag": True, "nothing": None,
            "weights": torch.arange(6.0).reshape(2, 3),
            "nested": {"a": {"b": [torch.tensor([1, 2, 3]), 1.5, "x"]},
                       "ids": torch.zeros(2, dtype=torch.long)},
            "generator": torch.Generator().manual_seed(3).get_state()}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "last.pt"  # parent folders are created
    save_checkpoint(path, payload())
    got = load_checkpoint(path)
    assert got["format"] == FORMAT_VERSION
    scalars = (got["step"], got["name"], got["ratio"], got["flag"], got["nothing"])
    assert scalars == (7, "dqn", 0.25, True, None)
    assert torch.equal(got["weights"], torch.arange(6.0).reshape(2, 3))
    inner = got["nested"]["a"]["b"]
    assert torch.equal(inner[0], torch.tensor([1, 2, 3])) and inner[1:] == [1.5, "x"]
    assert got["nested"]["ids"].dtype == torch.long
    assert torch.equal(got["generator"], payload()["generator"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left


def test_overwrite_replaces_previous(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_algorithm_state_survives_a_checkpoint(tmp_path: Path) -> None:
    ctx = AlgoContext(n_items=10, slate_size=2, history_len=2, horizon=4, device=torch.device("cpu"), seed=0,
                      item_popularity=torch.zeros(10), behavior=None, reward=ClickReward())
    algo = DQN(ctx, dim=4, hidden=8)
    obs = Obs(torch.randint(0, 11, (5, 2, 2)), torch.zeros(5, 2, 2), torch.zeros(5, dtype=torch.long))
    algo.act(obs, explore=True)
    save_checkpoint(tmp_path / "last.pt", {"algo": algo.state_dict()})
    other = DQN(dataclasses.replace(ctx, seed=1), dim=4, hidden=8)
    other.load_state_dict(load_checkpoint(tmp_path)["algo"])  # weights-only load is enough
    assert torch.equal(other.act(obs, explore=True), algo.act(obs, explore=True))
    assert torch.equal(other.act(obs, explore=False), algo.act(obs, explore=False))


def test_resolve_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RecrlError, match="does not exist"):
        resolve_checkpoint(run)
    run.mkdir()
    with pytest.raises(RecrlError, match=r"no checkpoint in .*checkpoints/last\.pt"):
        resolve_checkpoint(run)
    (run / "last.pt").write_bytes(b"")
    assert resolve_checkpoint(run) == run / "last.pt"  # a folder holding last.pt
    save_checkpoint(run / "checkpoints" / "last.pt", {"step": 3})
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.pt"  # a run folder
    assert resolve_checkpoint(str(run)) == run / "checkpoints" / "last.pt"
    best = run / "checkpoints" / "best.pt"
    save_checkpoint(best, {"step": 1})
    assert resolve_checkpoint(best) == best  # a file is itself
    assert load_checkpoint(run)["step"] == 3
    assert load_checkpoint(best)["step"] == 1


def test_corrupt_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(RecrlError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    good = tmp_path / "good.pt"
    save_checkpoint(good, payload())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RecrlError, match="cannot read checkpoint"):
        load_checkpoint(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(RecrlError, match="cannot read checkpoint"):
        load_checkpoint(empty)


def test_non_recrl_file_raises(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)  # a torch file without the format tag
    with pytest.raises(RecrlError, match="not a recrl checkpoint"):
        load_checkpoint(plain)
    torch.save([1, 2, 3], plain)
    with pytest.raises(RecrlError, match="not a recrl checkpoint"):
        load_checkpoint(plain)
    torch.save({"format": FORMAT_VERSION + 1}, plain)
    with pytest.raises(RecrlError, match="not a recrl checkpoint"):
        load_checkpoint(plain)


def test_foreign_objects_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    save_checkpoint(path, {"obj": Foreign()})  # saving pickles anything picklable ...
    with pytest.raises(RecrlError, match="cannot read checkpoint"):
        load_checkpoint(path)  # ... but loading is weights-only


def test_failed_save_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(path, {"step": 2, "fn": lambda x: x})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temp file was removed
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(tmp_path / "new.pt", {"fn": lambda x: x})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # nothing half-written


def test_an_unusable_behavior_cache_is_refitted_from_scratch(tmp_path: Path) -> None:
    """A cached model that does not load (e.g. saved by another version with extra heads) must not
    leave its matching tensors behind: the refit starts from the fresh initialisation and gives
    exactly the model a clean fit gives."""
    overrides = ["experiment=smoke", f"cache_dir='{tmp_path}'", "trainer.device=cpu", "dataset.n_users=200"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    interactions = build(cfg.dataset).load().interactions
    clean = build_behavior(cfg, interactions, torch.device("cpu"))
    fit_behavior(cfg, clean, interactions, "key")
    (cached,) = (tmp_path / "behavior").glob("simulator-*.pt")
    payload = load_checkpoint(cached)
    state = payload["state_dict"]
    payload["state_dict"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    payload["state_dict"]["extra_head.weight"] = torch.zeros(2)  # makes the strict load fail
    save_checkpoint(cached, payload)
    refit = build_behavior(cfg, interactions, torch.device("cpu"))
    report = fit_behavior(cfg, refit, interactions, "key")
    assert report["cached"] is False
    for name, value in clean.state_dict().items():
        assert torch.equal(value, refit.state_dict()[name]), name


class ToyLearner(LearnerState):
    """A learner with one network, two counters and a generator, all drawn from ``seed``."""

    networks = ("net",)
    counters = ("acted_steps", "updates")

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.1)
        self.net(torch.ones(1, 3)).sum().backward()
        self.optimizer.step()  # so the optimizer has moments to restore
        self.acted_steps, self.updates = seed, 10 * seed
        self.generator = torch.Generator().manual_seed(seed)


def test_learner_state_is_keyed_by_attribute_and_restores_everything() -> None:
    source, target = ToyLearner(1), ToyLearner(2)
    state = source.state_dict()
    assert set(state) == {"net", "optimizer", "acted_steps", "updates", "generator"}
    target.load_state_dict(state)
    assert torch.equal(target.net.weight, source.net.weight) and torch.equal(target.net.bias, source.net.bias)
    assert (target.acted_steps, target.updates) == (1, 10)
    assert torch.equal(target.optimizer.state_dict()["state"][0]["exp_avg"],
                       source.optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(4, generator=target.generator), torch.rand(4, generator=source.generator))
