"""The Python API (recrl.api): train and reload runs, serve policies on raw item ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recrl import api
from recrl.types import Obs, RecrlError

SMOKE = ["experiment=smoke", "trainer.device=cpu", "eval.baselines=[random]", "eval.oracle=false"]


class FixedScores:
    """A scorer whose item scores are given: item ``i`` scores ``weights[i]``, plus 10 for every
    clicked history item's successor (so the answer depends on the history)."""

    mode = "none"

    def __init__(self, weights: list[float]) -> None:
        self.weights = torch.tensor(weights)
        self.seen: Obs | None = None

    def scores(self, obs: Obs) -> torch.Tensor:
        self.seen = obs
        n = len(self.weights)
        scores = self.weights.expand(obs.batch_size, n).clone()
        clicked = obs.items[..., 0].clamp(max=n - 1) + 1
        bonus = torch.zeros_like(scores).scatter_add_(1, clicked.clamp(max=n - 1), 10 * obs.clicks[..., 0])
        return scores + bonus

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return self.scores(obs).topk(1, dim=1).indices


class SlateOnly:
    """A policy that only serves slates (no ranking of the catalogue)."""

    mode = "none"

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return torch.full((obs.batch_size, 2), 1, dtype=torch.long)


def string_catalogue(algo: object, slate_size: int = 1) -> api.Recommender:
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    return api.Recommender(algo, n_items=5, history_len=3, slate_size=slate_size, horizon=20, item_ids=ids)


def test_recommend_maps_raw_ids_both_ways_and_ranks_by_the_policy_scores() -> None:
    algo = FixedScores([0.5, 0.4, 0.3, 0.2, 0.1])
    rec = string_catalogue(algo)
    # user 0 clicked "b" (dense 1): its successor "c" gets +10; user 1 has no history
    assert rec.recommend([["b"], []], k=3) == [["c", "a", "b"], ["a", "b", "c"]]
    obs = algo.seen
    assert obs is not None and obs.items.shape == (2, 3, 1)
    assert obs.items[0, :, 0].tolist() == [5, 5, 1]          # padded on the left, newest last
    assert obs.clicks[0, :, 0].tolist() == [0.0, 0.0, 1.0] and obs.step.tolist() == [1, 0]
    # shown but not clicked: no bonus
    assert rec.recommend([["b"]], k=2, clicks=[[0]]) == [["a", "b"]]
    # only the last history_len steps are observed
    rec.recommend([["a", "b", "c", "d"]], k=1)
    assert algo.seen is not None and algo.seen.items[0, :, 0].tolist() == [1, 2, 3]


def test_recommend_rejects_bad_input_with_one_line() -> None:
    rec = string_catalogue(FixedScores([0.5, 0.4, 0.3, 0.2, 0.1]))
    with pytest.raises(RecrlError, match=r"item 'zz' is not in this run's catalogue \(5 items\)"):
        rec.recommend([["a", "zz"]])
    assert rec.recommend([["zz"]], k=1, unknown="skip") == [["a"]]
    with pytest.raises(RecrlError, match=r"clicks\[0\] has 2 steps but histories\[0\] has 1"):
        rec.recommend([["a"]], clicks=[[1, 0]])
    with pytest.raises(RecrlError, match="k=0"):
        rec.recommend([["a"]], k=0)
    slates = string_catalogue(SlateOnly(), slate_size=2)
    assert slates.recommend([[["a", "b"]]]) == [["b", "b"]]
    with pytest.raises(RecrlError, match="does not rank the catalogue; ask for k=2"):
        slates.recommend([["a"]], k=5)
    with pytest.raises(RecrlError, match="holds 3 items; this policy's slates hold 2"):
        slates.recommend([[["a", "b", "c"]]])


def test_train_then_load_gives_the_same_policy_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          shared_cache: Path) -> None:
    monkeypatch.setenv("RECRL_CACHE_DIR", str(shared_cache))
    run = api.train([*SMOKE, "algo=dqn"], run_dir=tmp_path / "run")
    assert run.run_dir == tmp_path / "run" and (run.run_dir / "report.json").is_file()
    assert (run.run_dir / "checkpoints" / "last.pt").is_file()
    assert set(run.report["evaluation"]["ground_truth"]) >= {"dqn", "random"}
    assert run.config.algo._target_ == "recrl.algos.dqn.DQN" and run.behavior is not None
    histories = [[3, 17, 42], [5], []]
    served = run.policy.recommend(histories, k=4)
    assert [len(row) for row in served] == [4, 4, 4]
    assert all(0 <= item < 500 for row in served for item in row)
    assert not set(served[0]) & {3, 17, 42}  # algo.skip_shown: never the history's items
    again = api.load(run.run_dir)
    assert again.report == run.report and again.run_dir == run.run_dir
    assert again.policy.recommend(histories, k=4) == served
    assert again.policy.recommend(histories) == [row[:1] for row in served]  # k = slate size


def test_train_reports_a_bad_override_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match=r"unknown option algo=dqnn; valid options for algo: .*dqn"):
        api.train(["algo=dqnn"], run_dir=tmp_path / "run")
    with pytest.raises(RecrlError, match=r"unknown key algo\.lrr"):
        api.train(["algo.lrr=0.1"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_load_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match="does not exist"):
        api.load(tmp_path / "nowhere")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RecrlError, match=r"has no checkpoints/best\.pt"):
        api.load(tmp_path / "run", checkpoint="best")


def test_a_run_on_a_csv_log_serves_its_raw_item_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The id maps of prepared data are applied both ways: string item ids in and out."""
    monkeypatch.setenv("RECRL_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"item-{int(i):02d}", t, int(rng.integers(1, 6)))
            for u in range(40) for t, i in enumerate(rng.choice(15, size=6, replace=False))]
    lines = ["user_id,item_id,timestamp,rating"] + [",".join(map(str, row)) for row in rows]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = ["dataset=csv", f"dataset.root={tmp_path}", "dataset.path=log.csv",
            "dataset.preprocess.min_user_interactions=1", "dataset.preprocess.min_item_interactions=1",
            "dataset.preprocess.implicit_threshold=4"]
    run = api.train([*SMOKE, "algo=dqn", *data], run_dir=tmp_path / "run")
    catalogue = {f"item-{i:02d}" for i in range(15)}
    served = run.policy.recommend([["item-03", "item-07"], []], k=4)
    assert [len(row) for row in served] == [4, 4]
    assert set(served[0]) | set(served[1]) <= catalogue
    assert not set(served[0]) & {"item-03", "item-07"}  # skip_shown, on raw ids
    with pytest.raises(RecrlError, match="'item-99' is not in this run's catalogue"):
        run.policy.recommend([["item-99"]])
    assert api.load(run.run_dir).policy.recommend([["item-03", "item-07"], []], k=4) == served
