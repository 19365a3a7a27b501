"""SASRec against popularity on the real Beauty file (slow: one short CPU fit, about a minute)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recrl.behavior.fit import TrainingSettings
from recrl.behavior.offline import offline_ranking
from recrl.behavior.sasrec import SASRecBehavior
from recrl.data.preprocess import Preprocessing
from recrl.data.sequence import S3RecSequences

pytestmark = pytest.mark.slow


def beauty_root() -> Path:
    folder = Path(os.environ.get("RECRL_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
    root = folder / "seq" / "s3rec"
    if not (root / "Beauty.txt").is_file():
        pytest.skip(f"Beauty.txt not found under {root} (set RECRL_SHARED_DATA to the shared data folder)")
    return root


def test_sasrec_beats_popularity_on_beauty(tmp_path: Path) -> None:
    splits = S3RecSequences(root=str(beauty_root()), file="Beauty.txt", dataset_name="beauty",
                            cache_dir=str(tmp_path), preprocess=Preprocessing(split="leave_last_out",
                                                                              dedupe="none")).load()
    inter = splits.interactions
    # 2 epochs at 6e-3: NDCG@10 3.09, 2.55 and 2.52 times popularity's for training seeds 0-2
    # (3 epochs at 3e-3: 2.84 for seed 0); the threshold is 1.5
    settings = TrainingSettings(lr=6e-3, epochs=2, patience=3, max_len=20, batch_size=128, loss="softmax",
                                early_stopping="loss")
    model = SASRecBehavior(n_items=inter.n_items, dim=32, layers=1, heads=2, window=20, dropout=0.2,
                           training=settings)
    model.fit(inter)
    ranking = offline_ranking(model, splits, history_len=20, max_users=3000, seed=0)
    sasrec, popularity = ranking["full"], ranking["popularity · full"]
    assert sasrec["ndcg@10"] > 1.5 * popularity["ndcg@10"], ranking
    assert sasrec["hr@10"] > popularity["hr@10"], ranking
