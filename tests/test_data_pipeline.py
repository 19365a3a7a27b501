"""The whole pipeline on the real datasets in ../shared/data, and the no-test-leak guarantee."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny import refused_in_process, run_recrl

from recrl.behavior.gru import GRUBehavior
from recrl.config import CONF_DIR
from recrl.stages import build_stages

SHARED = Path(os.environ.get("RECRL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not found in {SHARED}")


def recrl(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return run_recrl(*args, cwd=tmp, cache=tmp / "cache", timeout=600, RECRL_DATA_DIR=str(SHARED))


@needs_shared
@pytest.mark.parametrize(("dataset", "users", "envs"), [
    ("ml100k", 943, {"simulator"}),
    ("coat", 290, {"simulator", "ground_truth"}),
    ("beauty", 22_363, {"simulator"}),
    ("ml1m_subset", 2_999, {"simulator"}),
])
def test_train_smoke_on_real_data(tmp_path: Path, dataset: str, users: int, envs: set[str]) -> None:
    run = tmp_path / "run"
    # Beauty's 22,363 users: one epoch of the user model is enough to check the pipeline
    fit = ["behavior.training.epochs=1"] if dataset == "beauty" else []
    proc = recrl("train", f"dataset={dataset}", "experiment=smoke", f"hydra.run.dir={run}", *fit,
                 tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert set(report["evaluation"]) == envs | {"ope"}  # propensities estimated where the data has none
    assert report["data"]["users"] == users
    assert report["evaluation"]["simulator"][report["algo"]]["return"]["n"] == 64
    assert (run / "checkpoints" / "last.pt").is_file()
    assert report["fidelity"]["validation"]["rows"] > 0 and (run / "plots" / "calibration.png").is_file()
    if dataset == "coat":  # the biased-log model scored on all 4,640 randomized exposures
        assert report["fidelity"]["randomized"]["rows"] == 4_640
    protocols = {"full", "sampled-100"}
    assert set(report["offline"]) <= protocols | {f"popularity · {p}" for p in protocols}
    assert "full" in report["offline"] and "popularity · full" in report["offline"]


@needs_shared
def test_data_info_and_prepare(tmp_path: Path) -> None:
    proc = recrl("data", "prepare", "dataset=ml100k", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "943" in proc.stdout and "1,682" in proc.stdout and "100,000" in proc.stdout
    assert "miss" in proc.stdout and "prepared:" in proc.stdout
    again = recrl("data", "info", "dataset=ml100k", tmp=tmp_path)
    assert again.returncode == 0 and "hit" in again.stdout


def test_missing_dataset_fails_before_any_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    env_dir = tmp_path / "empty"
    monkeypatch.setenv("RECRL_DATA_DIR", str(env_dir))
    [line] = refused_in_process("train", "dataset=ml100k", cwd=tmp_path, monkeypatch=monkeypatch,
                                capsys=capsys)
    assert str(env_dir / "ml-100k") in line and "recrl data download ml100k" in line
    assert not (tmp_path / "outputs").exists()


@needs_shared
def test_training_code_never_sees_test_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The behavior model is fitted on exactly the train + valid rows; no test row reaches it."""
    seen = []
    original = GRUBehavior.fit

    def spy(self, interactions):
        seen.append(interactions)
        return original(self, interactions)

    monkeypatch.setattr(GRUBehavior, "fit", spy)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=ml100k", "experiment=smoke", f"data_dir={SHARED}",
                                          f"cache_dir={tmp_path}", "behavior.training.epochs=1"])
    stages = build_stages(cfg, torch.device("cpu"))
    assert len(seen) == 1 and not hasattr(seen[0], "test")
    test = stages.splits.test
    keys = ["user", "item", "time"]
    fitted = pd.concat([seen[0].train, seen[0].valid])[keys]
    assert len(test) == 943 and fitted.merge(test[keys], on=keys).empty
    # leave-last-out: each user's test row is later than all of that user's training rows
    last_fit = fitted.groupby("user")["time"].max()
    assert (test.set_index("user")["time"] >= last_fit.reindex(test["user"]).to_numpy()).all()
