"""Offline next-item ranking of behavior models: the task built from splits, and its metrics."""

from __future__ import annotations

import math

import pandas as pd
import torch

from recrl.behavior.offline import next_item_task, offline_ranking
from recrl.data.preprocess import log_frame
from recrl.types import Interactions, Obs, Response, Splits

N_ITEMS = 6


def log(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    return log_frame(pd.DataFrame(rows, columns=["user", "item", "time", "click"]))


def splits() -> Splits:
    train = log([(0, 0, 1, 1.0), (0, 1, 2, 0.0), (1, 2, 1, 1.0), (2, 3, 1, 1.0)])
    valid = log([(0, 2, 3, 1.0), (1, 3, 2, 1.0)])
    # user 0's first clicked test item is 4 (time 5); user 1 never clicks in test; user 2 clicks 5
    test = log([(0, 3, 4, 0.0), (0, 4, 5, 1.0), (1, 1, 3, 0.0), (2, 5, 2, 1.0)])
    inter = Interactions(train=train, valid=valid, items=pd.DataFrame(index=range(N_ITEMS)), n_users=3,
                         n_items=N_ITEMS)
    return Splits(interactions=inter, test=test)


def test_task_histories_targets_and_seen_items() -> None:
    task = next_item_task(splits(), history_len=3)
    assert task is not None
    assert task.targets.tolist() == [4, 5]  # users 0 and 2; user 1 has no clicked test row
    # user 0: last 3 rows before time 5 are items 1, 2, 3 (oldest first); user 2: item 3 then padding
    assert task.obs.items[:, :, 0].tolist() == [[1, 2, 3], [N_ITEMS, N_ITEMS, 3]]
    assert task.obs.clicks[:, :, 0].tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert [sorted(s.tolist()) for s in task.seen] == [[0, 1, 2, 3], [3]]


class FixedScores:
    """A stand-in model whose click scores ignore the history."""

    device = torch.device("cpu")

    def __init__(self, scores: list[float]) -> None:
        self.scores = torch.tensor(scores)

    def encode(self, obs: Obs, users: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(obs.batch_size, 1)

    def score_all(self, state: torch.Tensor) -> Response:
        prob = self.scores.expand(state.shape[0], -1)
        zeros = torch.zeros(state.shape[0])
        return Response(click_prob=prob, click=prob, conversion_prob=prob, conversion=prob, rating=prob,
                        leave_prob=zeros, values={"watch": prob})


def test_full_ranking_excludes_seen_items() -> None:
    # user 0 (target 4 scores 0.6, seen 0-3): the only other candidate, 5, scores 0.3 -> rank 0
    #   (item 3 scores 0.9 but was seen, so it is excluded)
    # user 2 (target 5 scores 0.3, seen 3): items 0 (0.5) and 4 (0.6) score higher -> rank 2
    model = FixedScores([0.5, 0.1, 0.2, 0.9, 0.6, 0.3])
    result = offline_ranking(model, splits(), history_len=3, ks=(1, 2), n_negatives=1)
    full = result["full"]
    assert full["hr@1"] == 0.5 and full["hr@2"] == 0.5
    assert math.isclose(full["ndcg@2"], 0.5)
    assert math.isclose(full["mrr"], (1 + 1 / 3) / 2)
    sampled = result["sampled-1"]  # user 0 has one unseen negative (5, scored lower): always a hit
    assert sampled["n_users"] == 2 and sampled["hr@1"] >= 0.5
    assert "sampled-2" not in offline_ranking(model, splits(), history_len=3, n_negatives=2)


def test_no_clicked_test_rows_gives_no_task() -> None:
    data = splits()
    data.test["click"] = 0.0
    assert next_item_task(data, history_len=3) is None
    assert offline_ranking(FixedScores([0.0] * N_ITEMS), data) == {}


def test_early_stopping_on_validation_ndcg() -> None:
    from recrl.behavior.fit import TrainingSettings
    from recrl.behavior.gru import GRUBehavior
    from recrl.data.synthetic import SyntheticWorld

    data = SyntheticWorld(n_items=20, n_users=200, n_topics=2, horizon=6, seed=2).load().interactions
    settings = TrainingSettings(epochs=3, patience=3, early_stopping="ndcg@10")
    model = GRUBehavior(n_items=20, dim=8, hidden=16, training=settings)
    report = model.fit(data)
    assert report.early_stopping == "ndcg@10" and 0.0 <= report.valid_ndcg10 <= 1.0
    assert 1 <= report.best_epoch <= report.epochs


def test_unknown_early_stopping_is_a_clear_error() -> None:
    import pytest

    from recrl.behavior.fit import TrainingSettings
    from recrl.types import RecrlError

    with pytest.raises(RecrlError, match=r"behavior\.training\.early_stopping='auc'"):
        TrainingSettings(early_stopping="auc")


def test_negative_sampler_resamples_and_respects_padding() -> None:
    from recrl.behavior.fit import NegativeSampler, session_tensors
    from recrl.types import Interactions

    frame = log([(0, 1, 1, 1.0), (0, 2, 2, 1.0), (1, 1, 1, 1.0)])
    inter = Interactions(train=frame, valid=frame.iloc[:0], items=pd.DataFrame(index=range(N_ITEMS)),
                         n_users=2, n_items=N_ITEMS, positive_only=True)
    batch = session_tensors(frame, N_ITEMS, negatives=True)
    for how in ("uniform", "popularity"):
        sampler = NegativeSampler(inter, how, torch.Generator().manual_seed(0))
        first, second = sampler(batch).negative, sampler(batch).negative
        assert first[1, 1] == N_ITEMS and second[1, 1] == N_ITEMS  # user 1's padded step
        assert bool((first[batch.item < N_ITEMS] < N_ITEMS).all())
    many = NegativeSampler(inter, "popularity", torch.Generator().manual_seed(0))
    draws = torch.cat([many(batch).negative[batch.item < N_ITEMS] for _ in range(2000)])
    freq = torch.bincount(draws, minlength=N_ITEMS).float() / len(draws)
    # counts + 1 smoothing: item 1 seen twice (weight 3), item 2 once (2), others 1; total 9
    assert abs(float(freq[1]) - 3 / 9) < 0.02 and abs(float(freq[0]) - 1 / 9) < 0.02
