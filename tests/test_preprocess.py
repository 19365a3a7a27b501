"""Tests for recrl.data.preprocess (cleaning, k-core, id maps, splits) and recrl.data.cache on tiny
hand-made logs whose expected results were worked out by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recrl.data.cache import load_splits, save_splits
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.types import LOG_COLUMNS, Interactions, RecrlError, Splits

ALL_TRAIN = {"split": "random", "valid_share": 0.0, "test_share": 0.0}


def make_log(rows: list[tuple[Any, ...]], columns: tuple[str, ...] = ("user", "item", "time")
             ) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def triples(frame: pd.DataFrame, fields: tuple[str, ...] = ("user", "item", "time")) -> list[tuple[Any, ...]]:
    return [tuple(int(v) if isinstance(v, np.integer) else v for v in row)
            for row in frame[list(fields)].itertuples(index=False)]


def raw_triples(splits: Splits, frame: pd.DataFrame) -> set[tuple[Any, Any, int]]:
    """The rows of ``frame`` with dense ids mapped back to raw ids."""
    return {(splits.user_ids[u], splits.item_ids[i], int(t))
            for u, i, t in frame[["user", "item", "time"]].itertuples(index=False)}


def everything(splits: Splits) -> pd.DataFrame:
    inter = splits.interactions
    return pd.concat([inter.train, inter.valid, splits.test], ignore_index=True)


# ---------------------------------------------------------------------- cleaning
def test_implicit_threshold_derives_clicks_and_keeps_ratings() -> None:
    log = make_log([(1, 10, 1, 5.0), (1, 11, 2, 3.0), (2, 10, 1, 4.0), (2, 11, 2, 1.0)],
                   ("user", "item", "time", "rating"))
    splits = Preprocessing(implicit_threshold=4, **ALL_TRAIN)(RawLog(log=log))
    train = splits.interactions.train
    assert train["click"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert train["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert not splits.interactions.positive_only
    assert train["click"].dtype == np.float32 and train["conversion"].tolist() == [0.0] * 4
    with pytest.raises(RecrlError, match="implicit_threshold is set but the data has no ratings"):
        Preprocessing(implicit_threshold=4)(RawLog(log=make_log([(1, 10, 1)])))


DUPES = make_log([(1, 10, 1, 1.0), (1, 10, 1, 2.0), (1, 10, 5, 3.0), (1, 11, 2, 4.0), (2, 10, 3, 5.0)],
                 ("user", "item", "time", "rating"))


@pytest.mark.parametrize(("dedupe", "expected", "removed"), [
    ("exact", [(0, 0, 1, 2.0), (0, 1, 2, 4.0), (0, 0, 5, 3.0), (1, 0, 3, 5.0)], 1),
    ("user_item", [(0, 1, 2, 4.0), (0, 0, 5, 3.0), (1, 0, 3, 5.0)], 2),
    ("none", [(0, 0, 1, 1.0), (0, 0, 1, 2.0), (0, 1, 2, 4.0), (0, 0, 5, 3.0), (1, 0, 3, 5.0)], 0),
])
def test_dedupe_modes(dedupe: str, expected: list[tuple[Any, ...]], removed: int) -> None:
    splits = Preprocessing(dedupe=dedupe, **ALL_TRAIN)(RawLog(log=DUPES))
    assert triples(splits.interactions.train, ("user", "item", "time", "rating")) == expected
    assert splits.meta["duplicates_removed"] == removed


def test_k_core_repeats_until_stable() -> None:
    # pass 1 drops user 4 (one row); then item 3 has one row left, then user 3 has one row left
    log = make_log([(1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 2, 2), (3, 2, 1), (3, 3, 2), (4, 3, 1)])
    user_n, item_n = (log[c].map(log[c].value_counts()) for c in ("user", "item"))
    assert len(log[(user_n >= 2) & (item_n >= 2)]) == 6  # a single pass is not enough
    splits = Preprocessing(min_user_interactions=2, min_item_interactions=2, **ALL_TRAIN)(RawLog(log=log))
    assert splits.user_ids.tolist() == [1, 2] and splits.item_ids.tolist() == [1, 2]
    assert triples(splits.interactions.train) == [(0, 0, 1), (0, 1, 2), (1, 0, 1), (1, 1, 2)]
    assert splits.meta["rows_after_filtering"] == 4 and splits.meta["rows_read"] == 7


def test_empty_after_filtering_and_bad_settings_raise() -> None:
    with pytest.raises(RecrlError, match="no interactions left after filtering"):
        Preprocessing(min_user_interactions=5)(RawLog(log=make_log([(1, 1, 1), (1, 2, 2)])))
    with pytest.raises(RecrlError, match="no interactions left after filtering"):
        Preprocessing()(RawLog(log=make_log([])))
    with pytest.raises(RecrlError, match=r"split='chronological': use one of leave_last_out, temporal"):
        Preprocessing(split="chronological")
    with pytest.raises(RecrlError, match=r"dedupe='all'"):
        Preprocessing(dedupe="all")
    with pytest.raises(RecrlError, match="sum below 1"):
        Preprocessing(valid_share=0.5, test_share=0.5)
    with pytest.raises(RecrlError, match="split=given but this dataset has no test file"):
        Preprocessing(split="given")(RawLog(log=make_log([(1, 1, 1)])))
    with pytest.raises(RecrlError, match="has no 'item' column"):
        Preprocessing()(RawLog(log=pd.DataFrame({"user": [1]})))


def test_rows_without_time_keep_file_order() -> None:
    log = pd.DataFrame({"user": ["b", "a", "b"], "item": ["x", "y", "y"]})
    splits = Preprocessing(**ALL_TRAIN)(RawLog(log=log))
    assert splits.user_ids.tolist() == ["a", "b"] and splits.item_ids.tolist() == ["x", "y"]
    assert triples(splits.interactions.train) == [(0, 1, 0), (1, 0, 0), (1, 1, 1)]
    assert splits.interactions.positive_only  # no clicks, no threshold: every row is a positive


# ---------------------------------------------------------------------- splits
# user 10: 4 rows, user 20: 2 rows, user 30: 3 rows; given out of time order
LEAVE_LAST = make_log([(10, 4, 40), (20, 1, 5), (10, 1, 10), (30, 2, 7), (10, 3, 30), (30, 1, 8),
                       (10, 2, 20), (20, 2, 6), (30, 3, 9)])


def test_leave_last_out_holds_out_each_long_users_last_two_rows() -> None:
    splits = Preprocessing(split="leave_last_out")(RawLog(log=LEAVE_LAST))
    inter = splits.interactions
    assert raw_triples(splits, inter.train) == {(10, 1, 10), (10, 2, 20), (20, 1, 5), (20, 2, 6), (30, 2, 7)}
    assert raw_triples(splits, inter.valid) == {(10, 3, 30), (30, 1, 8)}
    assert raw_triples(splits, splits.test) == {(10, 4, 40), (30, 3, 9)}
    # sorted by user, then time
    assert triples(inter.train) == [(0, 0, 10), (0, 1, 20), (1, 0, 5), (1, 1, 6), (2, 1, 7)]


def test_test_rows_are_never_reachable_from_interactions() -> None:
    log = pd.concat([LEAVE_LAST, LEAVE_LAST.iloc[[0]]], ignore_index=True)  # a repeat of a test row
    splits = Preprocessing(split="leave_last_out")(RawLog(log=log))
    assert not hasattr(splits.interactions, "test")
    assert "test" not in {f.name for f in dataclasses.fields(Interactions)}
    seen = raw_triples(splits, splits.interactions.train) | raw_triples(splits, splits.interactions.valid)
    assert not seen & raw_triples(splits, splits.test)
    assert len(splits.test) == 2


def test_temporal_split_is_a_global_time_cut() -> None:
    log = make_log([(u, 100 + t, t) for t, u in enumerate([1, 2, 1, 3, 2, 1, 3, 2, 1, 3], start=1)])
    splits = Preprocessing(split="temporal", valid_share=0.1, test_share=0.2)(RawLog(log=log))
    assert sorted(splits.interactions.train["time"]) == [1, 2, 3, 4, 5, 6, 7]
    assert splits.interactions.valid["time"].tolist() == [8]
    assert sorted(splits.test["time"]) == [9, 10]


def test_random_split_shares_are_approximately_right() -> None:
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 300, 6000), rng.integers(0, 200, 6000)
    log = make_log(list(zip(users, items, range(6000), strict=True)))
    splits = Preprocessing(split="random", valid_share=0.1, test_share=0.2, seed=3)(RawLog(log=log))
    n = len(everything(splits))
    assert n == 6000
    assert abs(len(splits.interactions.valid) / n - 0.1) < 0.02
    assert abs(len(splits.test) / n - 0.2) < 0.02
    again = Preprocessing(split="random", valid_share=0.1, test_share=0.2, seed=3)(RawLog(log=log))
    pd.testing.assert_frame_equal(splits.test, again.test)  # seeded


def test_user_split_keeps_each_user_whole() -> None:
    log = make_log([(u, (u * 7 + k) % 50, k) for u in range(400) for k in range(5)])
    splits = Preprocessing(split="user", valid_share=0.2, test_share=0.2)(RawLog(log=log))
    parts = [set(f["user"]) for f in (splits.interactions.train, splits.interactions.valid, splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 400
    assert abs(len(parts[2]) / 400 - 0.2) < 0.07 and abs(len(parts[1]) / 400 - 0.2) < 0.07
    for frame in (splits.interactions.train, splits.interactions.valid, splits.test):
        assert (frame.groupby("user").size() == 5).all()


def given_raw(randomized: bool) -> RawLog:
    log = make_log([(u, i, t) for u in (1, 2, 3) for t, i in enumerate((10, 11, 12))])
    test = make_log([(1, 12, 100), (3, 10, 101), (9, 10, 102), (2, 99, 103)])  # user 9 / item 99 unknown
    return RawLog(log=log, test=test, test_is_randomized=randomized)


def test_given_split_uses_the_provided_test_log() -> None:
    splits = Preprocessing(split="given", valid_share=0.0)(given_raw(randomized=False))
    assert raw_triples(splits, splits.test) == {(1, 12, 100), (3, 10, 101)}
    assert len(splits.interactions.train) == 9 and splits.interactions.valid.empty
    assert splits.ground_truth is None
    assert splits.meta["test_rows_without_training_user_or_item"] == 2


def test_ground_truth_comes_only_from_a_randomized_test_log() -> None:
    splits = Preprocessing(split="given", valid_share=0.0)(given_raw(randomized=True))
    gt = splits.ground_truth
    assert gt is not None and gt.n_items == splits.interactions.n_items
    assert raw_triples(splits, pd.concat([gt.train, gt.valid])) == {(1, 12, 100), (3, 10, 101)}


def test_ground_truth_is_never_built_from_non_randomized_rows() -> None:
    raw = given_raw(randomized=True)
    splits = Preprocessing(split="temporal", test_share=0.2)(raw)
    if splits.ground_truth is not None:
        gt = pd.concat([splits.ground_truth.train, splits.ground_truth.valid])
        assert raw_triples(splits, gt) <= {tuple(r) for r in raw.test.itertuples(index=False)}


@pytest.mark.parametrize("split", ["leave_last_out", "temporal", "random", "user"])
def test_id_maps_lead_back_to_raw_ids(split: str) -> None:
    log = make_log([(f"u{k % 7}", 1000 + (k * 13) % 11, k) for k in range(60)])
    splits = Preprocessing(split=split)(RawLog(log=log))
    assert raw_triples(splits, everything(splits)) == {tuple(r) for r in log.itertuples(index=False)}
    for frame in (splits.interactions.train, splits.interactions.valid, splits.test):
        assert tuple(frame.columns) == LOG_COLUMNS
        for u, i, t in frame[["user", "item", "time"]].itertuples(index=False):
            raw = log[(log["time"] == t)].iloc[0]
            assert splits.user_ids[u] == raw["user"] and splits.item_ids[i] == raw["item"]
    assert splits.user_ids.tolist() == sorted(set(log["user"]))


# ---------------------------------------------------------------------- cache
def rich_splits() -> Splits:
    fields = ("user", "item", "time", "rating", "watch")
    log = make_log([("a", 2, 1, 4.0, 1.5), ("a", 3, 2, 2.0, 0.5), ("a", 2, 3, 5.0, 2.5),
                    ("b", 3, 1, 1.0, 0.1), ("b", 4, 2, 3.0, 0.0), ("b", 2, 3, 4.0, 1.0)], fields)
    test = make_log([("a", 4, 9, 5.0, 1.0), ("b", 3, 9, 2.0, 0.3)], fields)
    items = pd.DataFrame({"title": ["two", "three", "four"]}, index=[2, 3, 4])
    users = pd.DataFrame({"age": [30, 40]}, index=["a", "b"])
    raw = RawLog(log=log, items=items, users=users, test=test, test_is_randomized=True, skipped_rows=2,
                 meta={"name": "toy", "files": ["x.csv"]})
    return Preprocessing(split="given", implicit_threshold=3, valid_share=0.2)(raw)


def test_cache_round_trip_keeps_every_table_and_the_meta(tmp_path: Path) -> None:
    splits = rich_splits()
    save_splits(tmp_path / "entry", splits)
    back = load_splits(tmp_path / "entry")
    for name in ("train", "valid", "items"):
        pd.testing.assert_frame_equal(getattr(back.interactions, name), getattr(splits.interactions, name))
    pd.testing.assert_frame_equal(back.test, splits.test)
    assert back.ground_truth is not None and splits.ground_truth is not None
    pd.testing.assert_frame_equal(back.ground_truth.train, splits.ground_truth.train)
    pd.testing.assert_frame_equal(back.ground_truth.valid, splits.ground_truth.valid)
    assert back.users is not None and splits.users is not None
    pd.testing.assert_frame_equal(back.users, splits.users)
    assert back.user_ids.tolist() == ["a", "b"] and back.item_ids.tolist() == [2, 3, 4]
    assert back.meta == splits.meta and back.meta["skipped_rows"] == 2
    inter, orig = back.interactions, splits.interactions
    assert (inter.n_users, inter.n_items) == (orig.n_users, orig.n_items)
    assert inter.positive_only == orig.positive_only


def test_cache_keeps_row_counts_of_tables_without_columns(tmp_path: Path) -> None:
    splits = Preprocessing(**ALL_TRAIN)(RawLog(log=make_log([(1, 1, 1), (1, 2, 2), (2, 3, 1)])))
    save_splits(tmp_path / "entry", splits)
    assert load_splits(tmp_path / "entry").interactions.items.shape == (3, 0)


@pytest.mark.parametrize("text", ['{"format": 1, "n_users"', "", "\x00\x01"])
def test_corrupt_meta_json_is_a_recrl_error(tmp_path: Path, text: str) -> None:
    save_splits(tmp_path / "entry", rich_splits())
    (tmp_path / "entry" / "meta.json").write_text(text)
    with pytest.raises(RecrlError, match=r"cache entry .*entry is unreadable .*delete it to rebuild"):
        load_splits(tmp_path / "entry")


def test_meta_json_from_another_format_is_a_recrl_error(tmp_path: Path) -> None:
    save_splits(tmp_path / "entry", rich_splits())
    meta = json.loads((tmp_path / "entry" / "meta.json").read_text())
    (tmp_path / "entry" / "meta.json").write_text(json.dumps({**meta, "format": 999}))
    with pytest.raises(RecrlError, match="written by another recrl version; delete it to rebuild"):
        load_splits(tmp_path / "entry")


@pytest.mark.parametrize("damage", ["list", "no_keys", "no_train"])
def test_damaged_cache_entry_is_a_recrl_error(tmp_path: Path, damage: str) -> None:
    entry = tmp_path / "entry"
    save_splits(entry, rich_splits())
    if damage == "no_train":
        (entry / "train.parquet").unlink()
    else:
        (entry / "meta.json").write_text("[]" if damage == "list" else '{"format": 1}')
    with pytest.raises(RecrlError):
        load_splits(entry)


def test_cache_keeps_numpy_numbers_in_meta_as_numbers(tmp_path: Path) -> None:
    splits = Preprocessing(**ALL_TRAIN)(RawLog(log=make_log([(1, 1, 1)]), skipped_rows=np.int64(3)))
    save_splits(tmp_path / "entry", splits)
    assert load_splits(tmp_path / "entry").meta["skipped_rows"] == 3


def test_side_table_with_repeated_ids_is_not_a_crash() -> None:
    items = pd.DataFrame({"title": ["one", "uno"]}, index=[1, 1])
    try:
        splits = Preprocessing(**ALL_TRAIN)(RawLog(log=make_log([(1, 1, 1)]), items=items))
    except RecrlError:
        return
    assert len(splits.interactions.items) == 1
