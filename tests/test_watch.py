"""Watch (dwell) responses: the synthetic world's, the behavior models' watch head, ``reward=watch``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import refused_in_process, run_recrl

from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior
from recrl.behavior.mf import MFBehavior
from recrl.data.preprocess import log_frame
from recrl.data.synthetic import SyntheticWorld
from recrl.types import Interactions

ROOT = Path(__file__).resolve().parent.parent
TABULAR = ROOT / "tests" / "fixtures" / "tabular"
N_ITEMS = 6


def test_synthetic_watch_by_hand_and_clickbait_is_barely_watched() -> None:
    world = SyntheticWorld(n_items=200, n_users=10, clickbait_share=0.3, seed=0)
    g = torch.Generator().manual_seed(0)
    state = world.initial_state(64, g)
    state[:, world.n_topics + 1:] = torch.rand(64, world.n_topics, generator=g)  # some boredom
    items = torch.arange(200).expand(64, -1)
    watch = world.watch(state, items)
    user, item = 3, 17
    affinity = float(state[user, :world.n_topics] @ world.item_emb[item])
    boredom = float(state[user, world.n_topics + 1 + int(world.topic[item])])
    want = 1.0 / (1.0 + np.exp(-(4.0 * (float(world.quality[item]) - 0.5) + 1.5 * affinity - 0.3 * boredom)))
    assert float(watch[user, item]) == pytest.approx(want, rel=1e-5)
    bait = world.is_bait > 0
    assert float(watch[:, bait].mean()) < 0.7 * float(watch[:, ~bait].mean())
    # the logs carry the watch of clicked rows only
    log = world.load().interactions.train
    assert log["watch"].notna().equals(log["click"] > 0)
    assert log["watch"].between(0.0, 1.0).all() or log["watch"].isna().any()


def _watch_log(with_watch: bool) -> Interactions:
    """Every item clicked; item ``i`` is watched ``0.2 * i`` (the answer the head must learn)."""
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(40) for t, i in enumerate(rng.integers(0, N_ITEMS, 10))]
    frame = pd.DataFrame(rows, columns=["user", "item", "time"]).assign(click=1.0)
    if with_watch:
        frame["watch"] = 0.2 * frame["item"]
    log = log_frame(frame)
    last = log["time"] == 9
    return Interactions(train=log[~last].reset_index(drop=True), valid=log[last].reset_index(drop=True),
                        items=pd.DataFrame(index=range(N_ITEMS)), n_users=40, n_items=N_ITEMS)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("model_class", [GRUBehavior, MFBehavior])
def test_behavior_models_learn_each_items_watch(model_class: type, seed: int) -> None:
    """At the start of a session and after a step (the GRU learns its start state from the
    sessions' first rows, the rest from the later ones)."""
    settings = TrainingSettings(lr=1e-2, epochs=60, patience=60, max_len=10, batch_size=8, seed=seed)
    model = model_class(n_items=N_ITEMS, n_users=40, dim=8, training=settings)
    model.fit(_watch_log(with_watch=True))
    assert bool(model.watch_known)
    slates = torch.arange(N_ITEMS).expand(4, -1)
    state = model.initial_state(4, torch.Generator().manual_seed(0))
    for _ in range(2):
        response, after = model.respond(state, slates, torch.Generator().manual_seed(1))
        torch.testing.assert_close(response.watch, 0.2 * slates.float(), atol=0.15, rtol=0.0)
        torch.testing.assert_close(model.score_all(state).watch, response.watch)
        state = after


def test_a_model_fitted_without_watch_values_predicts_nan() -> None:
    model = GRUBehavior(n_items=N_ITEMS, dim=8, training=TrainingSettings(epochs=1, max_len=10))
    model.fit(_watch_log(with_watch=False))
    assert not bool(model.watch_known)
    state = model.initial_state(2, torch.Generator().manual_seed(0))
    assert model.score_all(state).watch.isnan().all()


def _recrl(*args: str, tmp: Path, cache: Path | None = None) -> subprocess.CompletedProcess:
    return run_recrl(*args, f"hydra.run.dir={tmp / 'run'}", cwd=tmp, cache=cache or tmp / "cache")


def test_train_with_the_watch_reward_end_to_end(tmp_path: Path, shared_cache: Path) -> None:
    proc = _recrl("train", "experiment=smoke", "reward=watch", tmp=tmp_path, cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for env in ("simulator", "ground_truth"):
        stats = report["evaluation"][env][report["algo"]]
        # the return is the episode's watch: the same figure the watch column sums up
        assert stats["return"]["mean"] == pytest.approx(stats["watch"]["mean"], rel=1e-5)
        assert stats["watch"]["mean"] > 0


def test_watch_reward_on_data_without_watch_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "experiment=smoke", "reward=watch", "dataset=csv", f"dataset.root={TABULAR}",
            "dataset.path=valid.csv", "+dataset.columns.click=clicked",
            "dataset.preprocess.min_user_interactions=1", "dataset.preprocess.min_item_interactions=1"]
    lines = refused_in_process(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                               monkeypatch=monkeypatch, capsys=capsys)
    assert len(lines) == 1, lines
    assert "reward=watch needs watch (dwell) values" in lines[0] and "dataset.columns.watch" in lines[0]
    assert not (tmp_path / "run" / "report.json").exists()
