"""Tests for the CSV/Parquet loader (recrl.data.tabular) and the KuaiRand/KuaiRec loader on fixtures."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from tiny import refused_in_process

import recrl.data.cache
from recrl.config import CONF_DIR, build, validate
from recrl.data.kuairand import KuaiRand
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.tabular import TabularDataset, read_csv_log
from recrl.types import LOG_COLUMNS, RecrlError, Splits

FIXTURES = Path(__file__).parent / "fixtures"
TABULAR = FIXTURES / "tabular"
KUAIRAND = FIXTURES / "kuairand"
COLUMNS = {"user": "user_id", "item": "item_id", "time": "timestamp", "rating": "rating"}
VALID_COLUMNS = {**COLUMNS, "click": "clicked", "watch_ratio": "watch_ratio"}
# valid.csv as dense rows: users 9, 10, 100 -> 0, 1, 2; items 3, 7, 12 -> 0, 1, 2 (numeric order)
VALID_ROWS = [(0, 1, 100, 1.0, 5.0, 1.5), (0, 2, 150, 0.0, 1.0, 0.1), (1, 0, 200, 0.0, 2.0, 0.25),
              (1, 1, 300, 1.0, 4.0, 0.5), (2, 0, 50, 1.0, 3.0, 2.0)]
ROW_FIELDS = ["user", "item", "time", "click", "rating", "watch_ratio"]


def all_train(**kwargs: Any) -> Preprocessing:
    """Keep every row in train so that the parsed rows can be compared one by one."""
    return Preprocessing(**{"split": "random", "valid_share": 0.0, "test_share": 0.0, **kwargs})


def rows(frame: pd.DataFrame, fields: list[str] = ROW_FIELDS) -> list[tuple[Any, ...]]:
    """The frame's rows as plain tuples (NaN stays NaN; compare with ``nan_ok`` helpers below);
    floats rounded to 6 decimals so float32 columns compare with decimal literals."""
    def plain(value: Any) -> Any:
        value = value.item() if hasattr(value, "item") else value
        return round(value, 6) if isinstance(value, float) else value
    return [tuple(plain(v) for v in row) for row in frame[fields].itertuples(index=False)]


def tabular(path: str, **kwargs: Any) -> TabularDataset:
    return TabularDataset(root=str(TABULAR), path=path, **{"columns": COLUMNS, "preprocess": all_train(),
                                                            **kwargs})


def check_invariants(splits: Splits) -> None:
    inter = splits.interactions
    for frame in (inter.train, inter.valid, splits.test):
        assert tuple(frame.columns[:len(LOG_COLUMNS)]) == LOG_COLUMNS
        assert frame["user"].between(0, inter.n_users - 1).all()
        assert frame["item"].between(0, inter.n_items - 1).all()
    assert len(splits.user_ids) == inter.n_users and len(splits.item_ids) == inter.n_items


# ---------------------------------------------------------------------- parsing valid files
def test_csv_parses_into_dense_rows_in_sorted_raw_id_order() -> None:
    dataset = tabular("valid.csv", columns=VALID_COLUMNS)
    splits = dataset.load()
    check_invariants(splits)
    assert splits.user_ids.tolist() == [9, 10, 100] and splits.item_ids.tolist() == [3, 7, 12]
    assert rows(splits.interactions.train) == VALID_ROWS
    assert list(splits.interactions.train.columns) == [*LOG_COLUMNS, "watch_ratio"]
    assert splits.interactions.valid.empty and splits.test.empty
    assert not splits.interactions.positive_only
    assert splits.meta["skipped_rows"] == 0 and splits.meta["rows_read"] == 5
    assert dataset.last_load["cache"] == "disabled"


def test_csv_without_clicks_is_positive_only_and_leave_last_out_holds_out_the_last_row() -> None:
    splits = tabular("valid.csv", preprocess=Preprocessing(split="leave_last_out")).load()
    inter = splits.interactions
    assert inter.positive_only and (inter.train["click"] == 1).all()
    # every user has fewer than 3 rows: all of them stay in train
    assert len(inter.train) == 5 and inter.valid.empty and splits.test.empty


def test_csv_without_header_names_columns_by_position_and_keeps_text_ids() -> None:
    splits = tabular("no_header.tsv", sep="\t", header=False,
                     columns={"user": "0", "item": "1", "time": "2"}).load()
    assert splits.user_ids.tolist() == ["alice", "bob"] and splits.item_ids.tolist() == ["hat", "shoe"]
    assert rows(splits.interactions.train, ["user", "item", "time"]) == [(0, 0, 2), (0, 1, 3), (1, 0, 1)]


def test_item_side_table_follows_dense_item_ids() -> None:
    splits = tabular("valid.csv", item_file="items.csv").load()
    items = splits.interactions.items
    assert len(items) == 3 and list(items.columns) == ["title", "genre"]
    assert items["title"].iloc[:2].tolist() == ["Three", "Seven"]  # the repeated id 7 keeps its first row
    assert pd.isna(items["title"].iloc[2])  # item 12 has no row


def test_item_columns_pick_and_rename_features() -> None:
    renamed = {"item": "item_id", "name": "title"}
    splits = tabular("valid.csv", item_file="items.csv", item_columns=renamed).load()
    assert list(splits.interactions.items.columns) == ["name"]
    with pytest.raises(RecrlError, match=r"items\.csv: column 'nope' \(dataset\.item_columns\.name\) is not"):
        tabular("valid.csv", item_file="items.csv", item_columns={"name": "nope"}).load()


def test_quoted_fields_blank_lines_bom_and_padded_header(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text('\ufeff user_id , item_id ,timestamp\n"a,1",x,5\n\n b ,"y\nz",7.9\n', encoding="utf-8")
    table = read_csv_log(path, {"user": "user_id", "item": "item_id", "time": "timestamp"})
    assert table.frame["user"].tolist() == ["a,1", "b"] and table.frame["item"].tolist() == ["x", "y\nz"]
    assert table.frame["time"].tolist() == [5, 7]  # fractional times are floored


def test_float_ids_beyond_exact_integers_keep_their_text(tmp_path: Path) -> None:
    """Whole float ids below 2**53 are integers; a column with one at or beyond it (a float cannot
    say which integer it was) keeps every id as the file's text (found by the fuzz test)."""
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\n0,3.0,0\n0,4.0,1\n")
    assert read_csv_log(path, {"user": "u", "item": "i", "time": "t"}).frame["item"].tolist() == [3, 4]
    path.write_text("u,i,t\n0,0,0\n0,9007199254740992.0,1\n")
    table = read_csv_log(path, {"user": "u", "item": "i", "time": "t"})
    assert table.frame["item"].tolist() == ["0", "9007199254740992.0"]


def test_dates_become_unix_seconds(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\n1,2,2020-01-01 00:00:01\n1,3,2020-01-01T02:00:02+02:00\n1,4,someday\n")
    table = read_csv_log(path, {"user": "u", "item": "i", "time": "t"}, on_bad_rows="skip")
    assert table.frame["time"].tolist() == [1577836801, 1577836802] and table.skipped == 1
    with pytest.raises(RecrlError, match=r"log\.csv:4: malformed line \(time 'someday' is neither a number "
                                         r"nor an ISO 8601 date\)"):
        read_csv_log(path, {"user": "u", "item": "i", "time": "t"})
    frame = pd.DataFrame({"u": pd.array([1, 2, None], dtype="Int64"), "i": ["a", "b", "c"],
                          "t": pd.to_datetime(["2020-01-01", "2021-01-01", "2022-01-01"])})
    frame.to_parquet(tmp_path / "log.parquet")
    splits = TabularDataset(root=str(tmp_path), path="log.parquet", format="parquet", on_bad_rows="skip",
                            columns={"user": "u", "item": "i", "time": "t"}, preprocess=all_train()).load()
    expected = [(0, 0, 1577836800), (1, 1, 1609459200)]
    assert rows(splits.interactions.train, ["user", "item", "time"]) == expected
    assert splits.meta["skipped_rows"] == 1  # the row without a user


# ---------------------------------------------------------------------- malformed files
@pytest.mark.parametrize(("path", "kwargs", "message"), [
    ("wrong_fields.csv", {}, r"wrong_fields\.csv:4: malformed line \(expected 4 fields separated by ',', "
                             r"found 5\): '1,11,110,5,9'; fix the file or set dataset\.on_bad_rows=skip"),
    ("non_numeric.csv", {}, r"non_numeric\.csv:3: malformed line \(non-numeric rating 'five'\)"),
    ("semicolon.csv", {}, r"semicolon\.csv: wrong delimiter\? the header splits into 1 field with sep=',' "
                          r"but dataset\.columns maps 4 columns \(sep=';' splits it into 4\)"),
    ("renamed_columns.csv", {}, r"renamed_columns\.csv: column 'user_id' \(dataset\.columns\.user\) is not "
                                r"in the file; its columns are: uid, iid, ts, stars; fix dataset\.columns"),
    ("empty.csv", {}, r"empty\.csv is empty: expected a header line and data rows"),
    ("header_only.csv", {}, r"header_only\.csv has a header but no data rows"),
    ("valid.csv", {"columns": {**COLUMNS, "time": "stamp"}},
     r"column 'stamp' \(dataset\.columns\.time\) is not in the file; its columns are: user_id, item_id, "
     r"timestamp, rating, clicked, watch_ratio"),
    ("missing.csv", {}, r"dataset tabular: missing\.csv not found in"),
])
def test_malformed_files_fail_with_one_clear_line(path: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RecrlError, match=message) as err:
        tabular(path, **kwargs).load()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("path", "skipped", "expected"), [
    ("wrong_fields.csv", 2, [(0, 0, 100, 4.0), (1, 0, 120, 3.0), (1, 1, 130, 4.0)]),
    ("non_numeric.csv", 2, [(0, 0, 100, 4.0), (1, 1, 130, 4.0)]),
])
def test_skip_drops_and_counts_bad_rows(path: str, skipped: int, expected: list[tuple[Any, ...]]) -> None:
    splits = tabular(path, on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == skipped
    assert rows(splits.interactions.train, ["user", "item", "time", "rating"]) == expected


def test_line_numbers_count_the_header_blank_lines_and_multi_line_records(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text('user_id,item_id,timestamp\n\n1,"a\nb",3\n\n\n2,c,oops\n')
    with pytest.raises(RecrlError, match=r"log\.csv:7: malformed line \(non-numeric time 'oops'\)"):
        read_csv_log(path, {"user": "user_id", "item": "item_id", "time": "timestamp"})


@pytest.mark.parametrize(("text", "message"), [
    ("u,i,t\n1,,3\n", r":2: malformed line \(empty item id\)"),
    ("u,i,t\n1,2,\n", r":2: malformed line \(empty time\)"),
    ("u,i,t\n1,2,inf\n", r":2: malformed line \(time 'inf' is not finite\)"),
    ("u,i,t\n1,2,1e300\n", r":2: malformed line \(time out of range\)"),
    ("u,i,t\n1,2,3\n1,2\n", r":3: malformed line \(expected 3 fields separated by ',', found 2\)"),
])
def test_field_level_problems_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(text)
    with pytest.raises(RecrlError, match=message):
        read_csv_log(path, {"user": "u", "item": "i", "time": "t"})


def test_undecodable_bytes_and_bad_settings_are_recrl_errors(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"u,i\n1,\xff\xfe\n")
    with pytest.raises(RecrlError, match=r"log\.csv:2: cannot decode the line as utf-8 .*dataset\.encoding"):
        read_csv_log(path, {"user": "u", "item": "i"})
    assert read_csv_log(path, {"user": "u", "item": "i"}, encoding="latin-1").frame["item"].tolist() == ["ÿþ"]
    with pytest.raises(RecrlError, match=r"dataset\.sep=';;'"):
        TabularDataset(root=str(tmp_path), sep=";;")
    with pytest.raises(RecrlError, match=r"dataset\.format='xlsx'"):
        TabularDataset(root=str(tmp_path), format="xlsx")
    with pytest.raises(RecrlError, match=r"dataset\.encoding='klingon'"):
        TabularDataset(root=str(tmp_path), encoding="klingon")
    with pytest.raises(RecrlError, match=r"dataset\.columns has no item entry"):
        TabularDataset(root=str(tmp_path), columns={"user": "u"})


# ---------------------------------------------------------------------- propensities
# bad: 0, 1.5, -0.1, abc, inf; fine: 0.5 and the unknown "" and NaN
PROPENSITY_ROWS = ("u,i,t,prop\n1,1,1,0.5\n1,2,2,0\n1,3,3,1.5\n2,1,1,-0.1\n2,2,2,abc\n2,3,3,\n"
                   "3,1,1,NaN\n3,2,2,inf\n")
PROPENSITY_COLUMNS = {"user": "u", "item": "i", "time": "t", "propensity": "prop"}
PROPENSITY_MESSAGE = (r"log\.csv: column 'prop' \(dataset\.columns\.propensity\) has 5 row\(s\) that are "
                      r"not a probability in \(0, 1\] \(2 non-numeric, 2 not above 0, 1 above 1\); fix them, "
                      r"or leave them empty \(unknown\) to have them estimated$")


@pytest.mark.parametrize("on_bad_rows", ["error", "skip"])
def test_bad_propensities_in_a_csv_are_one_line_with_the_count(tmp_path: Path, on_bad_rows: str) -> None:
    (tmp_path / "log.csv").write_text(PROPENSITY_ROWS)
    dataset = TabularDataset(root=str(tmp_path), path="log.csv", columns=PROPENSITY_COLUMNS,
                             preprocess=all_train(), on_bad_rows=on_bad_rows)
    with pytest.raises(RecrlError, match=PROPENSITY_MESSAGE) as err:
        dataset.load()
    assert "\n" not in str(err.value)


def test_bad_propensities_in_a_malformed_csv_are_counted_too(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text(PROPENSITY_ROWS + "4,4\n")  # a short line: read line by line
    with pytest.raises(RecrlError, match=PROPENSITY_MESSAGE):
        read_csv_log(tmp_path / "log.csv", PROPENSITY_COLUMNS)


def test_unknown_propensities_stay_nan(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("u,i,t,prop\n1,1,1,0.5\n1,2,2,\n2,1,1,NaN\n2,2,2,1\n")
    splits = TabularDataset(root=str(tmp_path), path="log.csv", columns=PROPENSITY_COLUMNS,
                            preprocess=all_train()).load()
    np.testing.assert_array_equal(splits.interactions.train["propensity"], [0.5, np.nan, np.nan, 1.0])


def test_bad_propensities_in_parquet_and_raw_logs(tmp_path: Path) -> None:
    numbers = pd.DataFrame({"u": [1, 1, 2, 2], "i": [1, 2, 1, 2], "prop": [0.5, 0.0, 2.0, np.nan]})
    numbers.to_parquet(tmp_path / "n.parquet")
    columns = {"user": "u", "item": "i", "propensity": "prop"}
    with pytest.raises(RecrlError, match=r"n\.parquet: column 'prop' \(dataset\.columns\.propensity\) has 2 "
                                         r"row\(s\) .*\(1 not above 0, 1 above 1\)"):
        TabularDataset(root=str(tmp_path), path="n.parquet", format="parquet", columns=columns).load()
    numbers.assign(prop=["0.5", "x", None, "0.25"]).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(RecrlError, match=r"t\.parquet: column 'prop' .* has 1 row\(s\) .*\(1 non-numeric\)"):
        TabularDataset(root=str(tmp_path), path="t.parquet", format="parquet", columns=columns).load()
    raw = RawLog(log=pd.DataFrame({"user": [1, 2], "item": [1, 1], "propensity": [0.5, 1.01]}))
    with pytest.raises(RecrlError, match=r"^the log: column 'propensity' has 1 row\(s\) .*\(1 above 1\)"):
        all_train()(raw)


def test_cli_bad_propensities_exit_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "log.csv").write_text(PROPENSITY_ROWS)
    args = ["data", "prepare", "dataset=csv", f"data_dir={tmp_path}", f"cache_dir={tmp_path}/c",
            "dataset.path=log.csv", "dataset.columns.user=u", "dataset.columns.item=i",
            "dataset.columns.time=t", "~dataset.columns.rating", "+dataset.columns.propensity=prop"]
    lines = refused_in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert len(lines) == 1, lines
    assert re.search(PROPENSITY_MESSAGE.replace("$", ""), lines[0]), lines[0]


# ---------------------------------------------------------------------- Parquet
def test_parquet_round_trip_matches_csv(tmp_path: Path) -> None:
    frame = pd.read_csv(TABULAR / "valid.csv")
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    splits = TabularDataset(root=str(tmp_path), path="log.parquet", format="parquet", columns=VALID_COLUMNS,
                            preprocess=all_train()).load()
    assert splits.user_ids.tolist() == [9, 10, 100] and splits.item_ids.tolist() == [3, 7, 12]
    assert rows(splits.interactions.train) == VALID_ROWS


def test_parquet_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_text("not parquet at all")
    parquet = {"root": str(tmp_path), "format": "parquet", "preprocess": all_train()}
    with pytest.raises(RecrlError, match=r"junk\.parquet: not a readable Parquet file"):
        TabularDataset(path="junk.parquet", **parquet).load()
    bad = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "rating": ["4", "x"]})
    bad.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(RecrlError, match=r"p\.parquet: row 2: non-numeric rating 'x'"):
        TabularDataset(path="p.parquet", columns={**COLUMNS, "time": "user_id"}, **parquet).load()
    with pytest.raises(RecrlError, match=r"column 'timestamp' \(dataset\.columns\.time\) is not in the file; "
                                         r"its columns are: user_id, item_id, rating"):
        TabularDataset(path="p.parquet", columns=COLUMNS, **parquet).load()
    no_time = {"user": "user_id", "item": "item_id", "rating": "rating"}
    splits = TabularDataset(path="p.parquet", columns=no_time, on_bad_rows="skip", **parquet).load()
    assert splits.meta["skipped_rows"] == 1 and len(splits.interactions.train) == 1


# ---------------------------------------------------------------------- cache
def cached(root: Path, cache: Path, **kwargs: Any) -> TabularDataset:
    return TabularDataset(root=str(root), path="valid.csv", columns=VALID_COLUMNS, cache_dir=str(cache),
                          preprocess=all_train(), **kwargs)


def test_second_load_hits_the_cache_and_changed_files_miss(tmp_path: Path) -> None:
    shutil.copy(TABULAR / "valid.csv", tmp_path / "valid.csv")
    first = cached(tmp_path, tmp_path / "cache")
    a = first.load()
    second = cached(tmp_path, tmp_path / "cache")
    b = second.load()
    assert (first.last_load["cache"], second.last_load["cache"]) == ("miss", "hit")
    pd.testing.assert_frame_equal(a.interactions.train, b.interactions.train)
    assert b.user_ids.tolist() == [9, 10, 100] and b.meta["skipped_rows"] == 0
    with open(tmp_path / "valid.csv", "a") as f:
        f.write("11,3,400,5,1,1.0\n")
    third = cached(tmp_path, tmp_path / "cache")
    assert len(third.load().interactions.train) == 6 and third.last_load["cache"] == "miss"


def test_failed_preparation_keeps_existing_entry_and_leaves_no_temp_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(TABULAR / "valid.csv", tmp_path / "valid.csv")
    good = cached(tmp_path, tmp_path / "cache")
    good.load()
    entry = Path(good.last_load["folder"])
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    def write_then_fail(folder: Path, splits: Splits) -> None:
        splits.interactions.train.to_parquet(folder / "train.parquet")  # one table is on disk ...
        raise OSError("disk full")  # ... when the preparation fails

    monkeypatch.setattr(recrl.data.cache, "_write_tables", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cached(tmp_path, tmp_path / "cache", on_bad_rows="skip").load()  # other settings: another entry
    with pytest.raises(OSError, match="disk full"):
        recrl.data.cache.save_splits(entry, good.load())  # even onto the existing entry itself
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()] == [entry.name]
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before
    monkeypatch.undo()
    again = cached(tmp_path, tmp_path / "cache")
    assert rows(again.load().interactions.train) == VALID_ROWS and again.last_load["cache"] == "hit"


# ---------------------------------------------------------------------- KuaiRand / KuaiRec
def kuairand(root: Path = KUAIRAND, **kwargs: Any) -> KuaiRand:
    preprocess = Preprocessing(split="given", valid_share=0.0)
    return KuaiRand(root=str(root), **{"preprocess": preprocess, **kwargs})


KUAI_FIELDS = ["user", "item", "time", "click", "conversion", "watch"]


def test_kuairand_log_random_exposures_become_the_randomized_test_split() -> None:
    splits = kuairand().load()
    check_invariants(splits)
    assert splits.user_ids.tolist() == [0, 1, 2] and splits.item_ids.tolist() == [500, 501, 502]
    assert rows(splits.interactions.train, KUAI_FIELDS) == [
        (0, 0, 1649380600000, 1.0, 0.0, 0.5), (1, 0, 1649380000000, 1.0, 1.0, 1.2),
        (1, 1, 1649380300000, 0.0, 0.0, 0.05), (1, 2, 1649548800000, 1.0, 0.0, 1.0),
        (2, 0, 1649471400000, 0.0, 0.0, 0.2)]
    test = rows(splits.test, KUAI_FIELDS)
    assert test[1] == (2, 1, 1649469600000, 1.0, 1.0, 1.5)
    assert test[0][:5] == (0, 2, 1649466000000, 0.0, 0.0) and np.isnan(test[0][5])  # duration 0: no ratio
    assert splits.ground_truth is not None and splits.meta["random_exposure_rows"] == 2
    assert "is_rand" not in splits.interactions.train
    items = splits.interactions.items
    assert items["author_id"].iloc[:2].tolist() == [7, 8] and pd.isna(items["author_id"].iloc[2])
    assert items["tag"].iloc[0] == "28,9"


def test_kuairand_random_file_adds_random_exposures() -> None:
    splits = kuairand(random_file="log_random_4_22_to_5_08_pure.csv").load()
    assert splits.meta["random_exposure_rows"] == 3 and len(splits.test) == 3
    assert (1, 1, 1650618000000) in rows(splits.test, ["user", "item", "time"])


def test_kuairand_random_exposures_need_the_given_split_or_stay_in_the_log() -> None:
    with pytest.raises(RecrlError, match=r"2 random-exposure rows .* set dataset\.preprocess\.split=given"):
        kuairand(preprocess=Preprocessing(split="temporal")).load()
    splits = kuairand(preprocess=all_train(), random_exposure_as_test=False, item_file=None).load()
    assert len(splits.interactions.train) == 7 and splits.ground_truth is None
    assert splits.interactions.train["is_rand"].sum() == 2 and splits.interactions.items.shape[1] == 0


def test_kuairec_clicks_come_from_the_watch_ratio_and_time_becomes_milliseconds() -> None:
    splits = kuairand(KUAIRAND / "kuairec", file="big_matrix.csv", preprocess=all_train()).load()
    assert splits.user_ids.tolist() == [14, 19] and splits.item_ids.tolist() == [148, 183, 3649]
    assert rows(splits.interactions.train, ["user", "item", "time", "click", "watch"]) == [
        (0, 0, 1593898068378, 0.0, 0.722), (0, 1, 1593898080057, 0.0, 1.907),
        (0, 2, 1593898149479, 1.0, 2.063), (1, 0, 1593900000000, 1.0, 2.5)]
    lenient = kuairand(KUAIRAND / "kuairec", file="big_matrix.csv", preprocess=all_train(),
                       watch_ratio_threshold=0.8).load()
    assert lenient.interactions.train["click"].tolist() == [0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(("root", "file", "message"), [
    (KUAIRAND, "bad_click.csv", r"bad_click\.csv:3: malformed line \(non-numeric click 'yes'\)"),
    (KUAIRAND, "bad_fields.csv", r"bad_fields\.csv:4: malformed line \(expected 5 fields separated by ','"),
    (KUAIRAND, "no_time.csv", r"no_time\.csv: no time column \(time_ms for KuaiRand, timestamp for "),
    (KUAIRAND / "kuairec", "missing_time.csv", r"missing_time\.csv:3: malformed line \(empty time\)"),
    (TABULAR, "valid.csv", r"valid\.csv: column 'video_id' \(the item field\) is not in the file; its "
                           r"columns are: user_id, .*; point dataset\.file at a KuaiRand or KuaiRec log"),
    (KUAIRAND, "nothing.csv", r"dataset kuairand: nothing\.csv not found"),
])
def test_kuairand_errors_name_file_and_line(root: Path, file: str, message: str) -> None:
    with pytest.raises(RecrlError, match=message):
        kuairand(root, file=file).load()


def test_kuairand_extra_columns_are_kept_or_named_when_missing() -> None:
    splits = kuairand(extra_columns=["is_like", "tab"]).load()
    assert splits.interactions.train["is_like"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(RecrlError, match=r"column 'is_likes' \(the is_likes field\) is not in the file; .*"
                                         r"fix dataset\.extra_columns"):
        kuairand(extra_columns=["is_likes"]).load()


def test_kuairand_skip_counts_bad_rows() -> None:
    splits = kuairand(KUAIRAND / "kuairec", file="missing_time.csv", preprocess=all_train(),
                      on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == 1 and len(splits.interactions.train) == 1
    splits = kuairand(file="bad_fields.csv", preprocess=all_train(), on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == 1 and len(splits.interactions.train) == 2


# ---------------------------------------------------------------------- config files
@pytest.mark.parametrize("name", ["csv", "parquet", "kuairand"])
def test_dataset_yaml_validates_and_builds(name: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={name}", f"data_dir={tmp_path}",
                                          f"cache_dir={tmp_path}/c"])
    validate(cfg)
    dataset = build(cfg.dataset)
    assert dataset.cache_dir == tmp_path / "c" and dataset.preprocess.implicit_threshold is None
    with pytest.raises(RecrlError, match="not found in"):
        dataset.load()


def test_csv_yaml_loads_a_log_end_to_end(tmp_path: Path) -> None:
    shutil.copy(TABULAR / "valid.csv", tmp_path / "interactions.csv")
    overrides = [f"data_dir={tmp_path}", f"cache_dir={tmp_path}/c", "dataset=csv",
                 "+dataset.columns.click=clicked", "dataset.preprocess.min_user_interactions=0",
                 "dataset.preprocess.min_item_interactions=0"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    splits = build(cfg.dataset).load()
    assert splits.meta["split"] == "leave_last_out" and splits.interactions.n_users == 3
    assert rows(splits.interactions.train, ["user", "item", "time", "click"]) == [
        (row[0], row[1], row[2], row[3]) for row in VALID_ROWS]
