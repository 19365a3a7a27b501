"""MovieLens loaders: hand-written fixtures (exact rows) and the real files in ../shared/data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from recrl.data.movielens import MovieLens1M, MovieLens100K
from recrl.data.preprocess import Preprocessing
from recrl.types import RecrlError

FIXTURES = Path(__file__).parent / "fixtures" / "movielens"
SHARED = Path(os.environ.get("RECRL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not found in {SHARED}")
KEEP_ALL = Preprocessing(split="random", valid_share=0.0, test_share=0.0)


def test_ml100k_fixture_rows_ids_and_side_tables() -> None:
    splits = MovieLens100K(root=str(FIXTURES / "ml-100k"),
                           preprocess=Preprocessing(split="random", valid_share=0.0, test_share=0.0,
                                                    implicit_threshold=4)).load()
    train = splits.interactions.train
    assert splits.user_ids.tolist() == [22, 186, 196] and splits.item_ids.tolist() == [242, 302, 377]
    # rows sorted by dense user then time: (22,377,1) (186,302,3) (196,242,3) (196,302,5)
    assert train[["user", "item"]].values.tolist() == [[0, 2], [1, 1], [2, 0], [2, 1]]
    assert train["rating"].tolist() == [1.0, 3.0, 3.0, 5.0]
    assert train["click"].tolist() == [0.0, 0.0, 0.0, 1.0]  # rating >= 4
    assert train["time"].tolist() == [878887116, 891717742, 881250949, 881250950]
    items = splits.interactions.items
    assert items["title"].tolist() == ["Kolya (1996)", "L.A. Confidential (1997)", "Heavyweights (1994)"]
    assert items["genres"].tolist() == ["Comedy", "Crime|Mystery|Thriller", "Children's|Comedy"]
    assert splits.users["occupation"].tolist() == ["writer", "executive", "writer"]


def test_ml100k_leave_last_out_keeps_short_histories_in_train() -> None:
    splits = MovieLens100K(root=str(FIXTURES / "ml-100k"),
                           preprocess=Preprocessing(split="leave_last_out")).load()
    # no user has 3 rows (user 196 has 2), so leave-last-out keeps every row in train
    assert len(splits.test) == 0 and len(splits.interactions.train) == 4


@pytest.mark.parametrize("ratings_file", ["ratings.dat", "ratings.dat.gz"])
def test_ml1m_fixture_parses_double_colons_plain_and_gzipped(ratings_file: str) -> None:
    splits = MovieLens1M(root=str(FIXTURES / "ml-1m"), ratings_file=ratings_file, preprocess=KEEP_ALL).load()
    train = splits.interactions.train
    assert splits.item_ids.tolist() == [661, 1193, 3951]
    assert train[["user", "item", "rating"]].values.tolist() == [[0, 1, 5.0], [0, 0, 3.0], [1, 1, 4.0],
                                                                  [1, 2, 2.0]]
    assert splits.interactions.items["title"].tolist()[1] == "One Flew Over the Cuckoo's Nest (1975)"
    assert splits.users["age"].tolist() == [1, 56]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    root.mkdir()
    shutil.copy(FIXTURES / "bad" / "u.data", root / "u.data")
    with pytest.raises(RecrlError, match=r"u\.data:2: malformed line .*'186\\t302\\tthree\\t891717742'"):
        MovieLens100K(root=str(root), preprocess=KEEP_ALL).load()
    splits = MovieLens100K(root=str(root), preprocess=KEEP_ALL, on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == 1 and len(splits.interactions.train) == 2


def test_ml1m_malformed_double_colon_line(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "bad" / "ratings.dat", tmp_path / "ratings.dat")
    with pytest.raises(RecrlError, match=r"ratings\.dat:2: malformed line .*'1::661'"):
        MovieLens1M(root=str(tmp_path), preprocess=KEEP_ALL, side_information=False).load()


def test_ratings_outside_1_to_5_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t3\t100\n1\t3\t9\t101\n")
    with pytest.raises(RecrlError, match=r"rating 9\.0 on data row 2 is outside 1\.\.5"):
        MovieLens100K(root=str(tmp_path), preprocess=KEEP_ALL).load()


@needs_shared
def test_real_ml100k_counts() -> None:
    dataset = MovieLens100K(root=str(SHARED / "ml-100k"), preprocess=KEEP_ALL)
    splits = dataset.load()
    assert splits.meta["rows_read"] == 100_000
    assert (splits.interactions.n_users, splits.interactions.n_items) == (943, 1_682)
    assert len(splits.interactions.train) == 100_000
    assert splits.interactions.items["title"].iloc[0] == "Toy Story (1995)"
    assert np.bincount(splits.interactions.train["rating"].astype(int))[1:].tolist() == [
        6_110, 11_370, 27_145, 34_174, 21_201]


@needs_shared
def test_real_ml1m_subset_counts() -> None:
    dataset = MovieLens1M(root=str(SHARED / "ml-1m"), preprocess=KEEP_ALL,
                          ratings_file="partial/ratings.users0001-2999.dat.gz")
    raw = dataset.read()
    assert len(raw.log) == 487_650 and len(raw.users) == 6_040 and len(raw.items) == 3_883
    assert raw.log["user"].nunique() == 2_999 and raw.log["item"].nunique() == 3_615
    assert (raw.users["gender"] == "M").sum() == 4_331
    assert any("é" in title for title in raw.items["title"])  # latin-1 decoded
