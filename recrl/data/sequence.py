"""Preprocessed sequential-recommendation files: S3-Rec's one-line-per-user format and SASRec's pairs.

Both hold positive events only (no shown-but-ignored rows, no ratings, no timestamps): a row's
``time`` is its position in the user's sequence, so ``leave_last_out`` holds out the last item.

* :class:`S3RecSequences` (``dataset=beauty|sports|toys|lastfm``): ``user_id item_1 ... item_n``
  per line, items in time order, plus an optional ``<Name>_item2attributes.json``.
* :class:`SasRecText` (``dataset=sasrec_txt``): ``user item`` per line, time-ordered within user.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recrl.data.base import FileDataset
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.reader import open_text, parse_lines, read_delimited
from recrl.types import RecrlError


def read_text_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file (``.gz`` accepted), without line endings or trailing blank lines."""
    try:
        with open_text(path, encoding) as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise RecrlError(f"{path}: cannot decode as {encoding} ({err.reason} at byte {err.start}); "
                         "is this the right file?") from err
    except (OSError, EOFError) as err:
        raise RecrlError(f"cannot read {path}: {err}") from err
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def malformed_line(path: Path, number: int, line: str, reason: str) -> RecrlError:
    """The one-line error for a bad line: file, line number, what is wrong and the text."""
    return RecrlError(f"{path}:{number}: malformed line ({reason}): {line[:200]!r}; fix the file "
                      "or set dataset.on_bad_rows=skip")


def first_non_integer(fields: list[str]) -> str | None:
    """The first field that is not a non-negative decimal integer, or ``None`` if all are."""
    joined = "".join(fields)
    if joined.isascii() and joined.isdigit():
        return None
    return next(f for f in fields if not (f.isascii() and f.isdigit()))


def _sequence_problem(fields: list[str]) -> str | None:
    """Why a split S3-Rec line is malformed, or ``None``."""
    bad = first_non_integer(fields)
    if bad is not None:
        return f"non-integer id {bad[:40]!r}; expected space-separated integer ids"
    if len(fields) < 2:
        return "a user id with no items"
    return None


def parse_sequences(path: Path, on_bad_rows: str) -> tuple[pd.DataFrame, int]:
    """Rows ``user, item, time`` (time = 0-based position in the line) and the skipped-line count.

    A line is malformed when a token is not a non-negative integer, when it has a user id but
    no items, or when its user already had a line; with ``on_bad_rows="skip"`` such lines are
    dropped and counted, otherwise the first one raises.
    """
    users: list[str] = []
    lengths: list[int] = []
    flat: list[str] = []
    seen: dict[str, int] = {}
    skipped = 0
    for number, line in enumerate(read_text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        problem = _sequence_problem(fields)
        user = fields[0].lstrip("0") or "0"
        if problem is None and user in seen:
            problem = f"user {user} already has a sequence on line {seen[user]}"
        if problem is not None:
            if on_bad_rows == "skip":
                skipped += 1
                continue
            raise malformed_line(path, number, line, problem)
        seen[user] = number
        users.append(fields[0])
        lengths.append(len(fields) - 1)
        flat.extend(fields[1:])
    return _sequence_frame(users, lengths, flat), skipped


def _sequence_frame(users: list[str], lengths: list[int], flat: list[str]) -> pd.DataFrame:
    """The long log of parsed sequences (vectorised)."""
    counts = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return pd.DataFrame({"user": np.repeat(np.asarray(users, dtype=np.int64), counts),
                         "item": np.asarray(flat, dtype=np.int64),
                         "time": np.arange(len(flat), dtype=np.int64) - np.repeat(starts, counts)})


def read_item_attributes(path: Path, items: np.ndarray, on_bad_rows: str) -> tuple[pd.DataFrame, int]:
    """``{item_id: [attribute ids]}`` as an items table with a space-joined ``attributes`` column.

    Every id in ``items`` gets a row (an empty string when the file lists none for it). Entries
    whose key or value is not an integer id (list) are errors, or skipped and counted.
    """
    try:
        with open_text(path, "utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise RecrlError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                         "fix or remove the file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RecrlError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise RecrlError(f"{path}: expected a JSON object {{item_id: [attribute ids]}}, "
                         f"found {type(data).__name__}")
    joined: dict[int, str] = {}
    skipped = 0
    for key, value in data.items():
        problem = _attribute_problem(key, value)
        if problem is not None:
            if on_bad_rows == "skip":
                skipped += 1
                continue
            raise RecrlError(f"{path}: item {key!r}: {problem}; fix the file or set dataset.on_bad_rows=skip")
        joined[int(key)] = " ".join(str(int(a)) for a in value)
    column = [joined.get(int(item), "") for item in items]
    return pd.DataFrame({"attributes": column}, index=pd.Index(items, name="item")), skipped


def _attribute_problem(key: str, value: Any) -> str | None:
    """Why one ``item2attributes`` entry is malformed, or ``None``."""
    if not (key.isascii() and key.isdigit()):
        return "the key is not an integer item id"
    if not isinstance(value, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in value):
        return f"expected a list of integer attribute ids, found {json.dumps(value)[:80]}"
    return None


class S3RecSequences(FileDataset):
    """S3-Rec / ICLRec sequences: ``user_id item_1 item_2 ... item_n`` per line (ids from 1).

    Args:
        root: folder holding ``file``.
        file: the sequence file, e.g. ``Beauty.txt``.
        dataset_name: the name used for cache folders and messages (e.g. ``beauty``).
        download_name: what ``recrl data download`` calls it, if it knows it.
        attributes: read ``<stem>_item2attributes.json`` when present into the items table's
            ``attributes`` column (space-joined attribute ids; a string so that it survives the
            Parquet cache unchanged).

    Example::

        splits = S3RecSequences(root="../shared/data/seq/s3rec", file="Beauty.txt",
                                dataset_name="beauty").load()
    """

    name = "s3rec"

    def __init__(self, root: str, file: str, dataset_name: str, download_name: str | None = None,
                 preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None, attributes: bool = True) -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        self.name = dataset_name  # type: ignore[misc]  # per instance: one class, several datasets
        self.download_name = download_name  # type: ignore[misc]
        self.file, self.attributes = file, attributes

    @property
    def attributes_path(self) -> Path:
        """``<stem>_item2attributes.json`` next to the sequence file."""
        return self.root / f"{Path(self.file).stem}_item2attributes.json"

    def required_files(self) -> list[Path]:
        """The sequence file."""
        return [self.root / self.file]

    def optional_files(self) -> list[Path]:
        """The item attributes, when asked for."""
        return [self.attributes_path] if self.attributes else []

    def read(self) -> RawLog:
        """Sequences as a positive-only log, plus item attributes when present."""
        path = self.root / self.file
        log, skipped = parse_sequences(path, self.on_bad_rows)
        if log.empty:
            raise RecrlError(f"{path} has no well-formed sequences ({skipped} lines skipped); "
                             "is this an S3-Rec `user item item ...` file?")
        items = None
        if self.attributes and self.attributes_path.is_file():
            items, bad = read_item_attributes(self.attributes_path, np.unique(log["item"].to_numpy()),
                                              self.on_bad_rows)
            skipped += bad
        return RawLog(log=log, items=items, skipped_rows=skipped,
                      meta={"name": self.name, "file": self.file})


class SasRecText(FileDataset):
    """SASRec's data format: ``user item`` per line (space-separated), time-ordered within user.

    ``time`` is the row's position among its user's rows in file order.

    Example::

        splits = SasRecText(root="data", file="ml-1m.txt").load()
    """

    name = "sasrec_txt"

    def __init__(self, root: str, file: str, dataset_name: str = "sasrec_txt",
                 preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None) -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        self.name = dataset_name  # type: ignore[misc]  # per instance: one class, several files
        self.file = file

    def required_files(self) -> list[Path]:
        """The pairs file."""
        return [self.root / self.file]

    def read(self) -> RawLog:
        """The pairs as a positive-only log."""
        path = self.root / self.file
        columns = {"user": "int", "item": "int"}
        table = read_delimited(path, sep=" ", columns=columns, on_bad_rows=self.on_bad_rows)
        if not isinstance(table.frame.index, pd.RangeIndex):
            # pandas turns surplus leading fields on every line into an index: find the lines
            table = parse_lines(path, sep=" ", columns=columns, on_bad_rows=self.on_bad_rows)
        frame = table.frame.reset_index(drop=True)
        negative = (frame[["user", "item"]] < 0).any(axis=1).to_numpy()
        if negative.any():
            row = int(np.flatnonzero(negative)[0])
            raise RecrlError(f"{path}: negative id on data row {row + 1} "
                             f"({frame['user'].iat[row]} {frame['item'].iat[row]}); ids must be >= 0")
        if frame.empty:
            raise RecrlError(f"{path} has no well-formed `user item` lines ({table.skipped} skipped)")
        frame["time"] = frame.groupby("user", sort=False).cumcount().to_numpy(dtype=np.int64)
        return RawLog(log=frame, skipped_rows=table.skipped, meta={"name": self.name, "file": self.file})
