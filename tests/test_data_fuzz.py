"""Fuzzing the file loaders: whatever bytes a file holds, loading gives valid Splits or a RecrlError.

Generated files mix valid rows with random tokens, wrong separators, blank lines, unicode, quotes,
undecodable bytes and very long lines. Hypothesis and pytest's function-scoped fixtures don't mix,
so each example writes into its own temporary folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from recrl.data.kuairand import KuaiRand
from recrl.data.movielens import MovieLens100K
from recrl.data.preprocess import Preprocessing
from recrl.data.reader import read_delimited
from recrl.data.tabular import TabularDataset, check_columns, field_kind, read_header
from recrl.data.tabular.readers import _fast_frame, _read_quickly, _read_slowly
from recrl.types import LOG_COLUMNS, RecrlError, Splits

# RECRL_FUZZ_EXAMPLES=5000 pytest tests/test_data_fuzz.py fuzzes longer
FUZZ = settings(max_examples=int(os.environ.get("RECRL_FUZZ_EXAMPLES", "50")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEPARATORS = [",", "\t", ";", " ", "|", "::", ""]
ODD_TOKENS = ["", " ", '"', '""', "nan", "NA", "inf", "-inf", "1e999", "-0", "0x1F", "1_000", "٣", "\x00",
              "é", "日本", "\u2028", "\r", "9" * 25, "-9223372036854775809", "True", "2020-01-01",
              "2020-13-45T99:00", "1969-12-31 23:59:59+05:00"]
TOKEN = st.one_of(st.integers(-3, 40).map(str), st.integers(-(2**64), 2**64).map(str),
                  st.floats().map(str), st.text(max_size=8), st.sampled_from(ODD_TOKENS))
JUNK_LINE = st.builds(lambda tokens, sep: sep.join(tokens), st.lists(TOKEN, max_size=9),
                      st.sampled_from(SEPARATORS))
LONG_LINE = st.builds(lambda unit, n: unit * n, st.sampled_from(["7", "a", "7,", '"', "é\t", "1,2,"]),
                      st.integers(500, 140_000))
BLANK = st.sampled_from(["", "   ", "\t", ","])
SMALL = st.integers(0, 12)


def weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """One of the strategies, picked in proportion to its weight (one_of treats repeats as one)."""
    slots = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(slots) - 1).flatmap(lambda k: slots[k])


def build_file(header: st.SearchStrategy[str], valid: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A header (or junk), then a mixture of valid rows and trouble, as bytes (sometimes not UTF-8)."""
    line = weighted((8, valid), (1, JUNK_LINE), (1, BLANK), (1, LONG_LINE))  # mostly valid rows
    text = st.builds(lambda h, body, nl, end: nl.join([h, *body]) + end,
                     weighted((6, header), (1, JUNK_LINE)), st.lists(line, max_size=14),
                     st.sampled_from(["\n", "\r\n"]), st.sampled_from(["", "\n"]))
    utf8 = text.map(lambda s: s.encode("utf-8"))
    return weighted((6, utf8), (1, utf8.map(lambda b: b + b"\xff\xfe")), (1, st.binary(max_size=300)))


def check_splits(splits: Splits) -> None:
    """The invariants every prepared dataset keeps."""
    inter = splits.interactions
    assert not inter.train.empty
    assert splits.user_ids is not None and len(splits.user_ids) == inter.n_users
    assert splits.item_ids is not None and len(splits.item_ids) == inter.n_items
    for frame in (inter.train, inter.valid, splits.test):
        assert tuple(frame.columns[:len(LOG_COLUMNS)]) == LOG_COLUMNS
        assert frame["user"].between(0, inter.n_users - 1).all()
        assert frame["item"].between(0, inter.n_items - 1).all()
        assert pd.api.types.is_integer_dtype(frame["time"])


def load_or_recrl_error(load: Callable[[], Splits]) -> None:
    """Loading gives valid splits or a one-line RecrlError, never any other exception."""
    try:
        splits = load()
    except RecrlError as err:
        assert str(err) and "\n" not in str(err)
        event("RecrlError")
        return
    check_splits(splits)
    event("loaded")


def in_folder(name: str, content: bytes, load: Callable[[Path], Splits]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).write_bytes(content)
        load_or_recrl_error(lambda: load(Path(folder)))


def lenient(**kwargs: object) -> Preprocessing:
    return Preprocessing(**{"min_user_interactions": 0, "min_item_interactions": 0, **kwargs})  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the CSV loader
CSV_ROW = st.builds("{},{},{},{}".format, SMALL, SMALL, st.integers(0, 10**10), st.floats(0, 5))


@FUZZ
@given(content=build_file(st.just("user_id,item_id,timestamp,rating"), CSV_ROW),
       sep=st.sampled_from([",", ",", ",", ";", "\t"]),
       on_bad_rows=st.sampled_from(["error", "skip", "skip"]),
       split=st.sampled_from(["leave_last_out", "temporal", "random", "user"]))
def test_csv_loader_never_crashes(content: bytes, sep: str, on_bad_rows: str, split: str) -> None:
    columns = {"user": "user_id", "item": "item_id", "time": "timestamp", "rating": "rating"}
    in_folder("log.csv", content, lambda root: TabularDataset(
        root=str(root), path="log.csv", columns=columns, sep=sep, on_bad_rows=on_bad_rows,
        preprocess=lenient(split=split)).load())


@FUZZ
@given(content=build_file(st.just("user_id,item_id,timestamp,rating"), CSV_ROW))
def test_csv_fast_path_agrees_with_the_line_by_line_path(content: bytes) -> None:
    """Where pandas' C parser reads the file, skipping bad rows gives what the line-by-line pass gives."""
    columns = {"user": "user_id", "item": "item_id", "time": "timestamp", "rating": "rating"}
    kinds = {field: field_kind(field) for field in columns}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.csv"
        path.write_bytes(content)
        try:
            names, _ = read_header(path, ",", True)
            check_columns(path, columns, names)
        except RecrlError:
            return
        raw = _fast_frame(path, names, sep=",", header=True, encoding="utf-8")
        assume(raw is not None)
        quick = _read_quickly(path, raw, columns, kinds, sep=",", header=True, encoding="utf-8",
                              on_bad_rows="skip")
        slow = _read_slowly(path, names, columns, kinds, sep=",", header=True, encoding="utf-8",
                            on_bad_rows="skip")
    if quick is None:  # the fast frame lost what the file said (ids read as floats): line by line
        event("fell back")
        return
    assert quick.skipped == slow.skipped
    pd.testing.assert_frame_equal(quick.frame, slow.frame, check_dtype=False)
    event("compared")


# ---------------------------------------------------------------------- the KuaiRand loader
KUAIRAND_HEADER = "user_id,video_id,time_ms,is_click,long_view,play_time_ms,duration_ms,is_rand"
KUAIREC_HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio"
KUAIRAND_ROW = st.builds("{},{},{},{},{},{},{},{}".format, SMALL, SMALL, st.integers(0, 10**13),
                         st.integers(0, 1), st.integers(0, 1), st.integers(0, 10**5), st.integers(0, 10**5),
                         st.sampled_from([0, 0, 0, 1]))
KUAIREC_ROW = st.builds("{},{},{},{},2020-07-05 05:27:48.378,20200705.0,{},{}".format, SMALL, SMALL,
                        st.integers(0, 10**5), st.integers(0, 10**5), st.floats(0, 2e9), st.floats(0, 10))


@FUZZ
@given(content=st.one_of(build_file(st.just(KUAIRAND_HEADER), KUAIRAND_ROW),
                         build_file(st.just(KUAIREC_HEADER), KUAIREC_ROW)),
       on_bad_rows=st.sampled_from(["error", "skip", "skip"]), as_test=st.booleans(),
       split=st.sampled_from(["given", "temporal"]))
def test_kuairand_loader_never_crashes(content: bytes, on_bad_rows: str, as_test: bool, split: str) -> None:
    in_folder("log.csv", content, lambda root: KuaiRand(
        root=str(root), file="log.csv", on_bad_rows=on_bad_rows, random_exposure_as_test=as_test,
        preprocess=lenient(split=split, valid_share=0.2)).load())


# ---------------------------------------------------------------------- recrl.data.reader and MovieLens
ML_ROW = st.builds("{}\t{}\t{}\t{}".format, SMALL, SMALL, st.integers(1, 5), st.integers(0, 10**9))
ML_FILE = build_file(ML_ROW, ML_ROW)
_HUGE_INT = re.compile(rb"(?<![\d.eE])[-+]?\d{19,}")


def has_huge_integer(content: bytes) -> bool:
    """Whether the file holds a decimal integer of 19+ digits, on which reader.parse_lines crashes
    (pinned by :func:`test_reader_rejects_integers_beyond_int64`)."""
    return bool(_HUGE_INT.search(content))


@FUZZ
@given(content=ML_FILE, sep=st.sampled_from(["\t", ",", " ", ":"]),
       on_bad_rows=st.sampled_from(["error", "skip"]))
def test_read_delimited_gives_typed_columns_or_recrl_error(content: bytes, sep: str,
                                                           on_bad_rows: str) -> None:
    assume(not has_huge_integer(content))  # the known crash pinned below
    columns = {"user": "int", "item": "int", "rating": "float", "note": "str"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "u.data"
        path.write_bytes(content)
        try:
            table = read_delimited(path, sep=sep, columns=columns, on_bad_rows=on_bad_rows)
        except RecrlError as err:
            assert "\n" not in str(err)
            event("RecrlError")
            return
    assert list(table.frame.columns) == list(columns) and table.skipped >= 0
    event("read")
    assert all(pd.api.types.is_integer_dtype(table.frame[c]) for c in ("user", "item"))
    assert pd.api.types.is_float_dtype(table.frame["rating"])


@FUZZ
@given(content=ML_FILE, on_bad_rows=st.sampled_from(["error", "skip", "skip"]),
       split=st.sampled_from(["leave_last_out", "temporal", "random"]))
def test_movielens100k_loader_never_crashes(content: bytes, on_bad_rows: str, split: str) -> None:
    assume(not has_huge_integer(content))  # the known crash pinned below
    in_folder("u.data", content, lambda root: MovieLens100K(
        root=str(root), on_bad_rows=on_bad_rows,
        preprocess=lenient(split=split, implicit_threshold=4)).load())


def test_reader_rejects_integers_beyond_int64_cleanly() -> None:
    """Integers beyond int64 are handled by the loaders built on recrl.data.tabular."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "log.csv").write_text("u,i,t\n99999999999999999999,1,5\n1,2,99999999999999999999\n")
        load = TabularDataset(root=folder, path="log.csv", columns={"user": "u", "item": "i", "time": "t"},
                              preprocess=lenient(), on_bad_rows="skip").load
        splits = load()
        assert splits.user_ids.tolist() == ["99999999999999999999"] and splits.meta["skipped_rows"] == 1


@pytest.mark.parametrize("line", ["99999999999999999999\t2\t3\t4", "1\t2\t3\t99999999999999999999"])
def test_reader_rejects_integers_beyond_int64(line: str) -> None:
    """The known crash that the MovieLens and reader fuzzers step around."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "u.data").write_text(f"1\t2\t3\t4\n{line}\n")
        with pytest.raises(RecrlError, match=r"u\.data:2: malformed line"):
            MovieLens100K(root=folder, preprocess=lenient()).load()
