"""Coat shopping (Schnabel et al., ICML 2016; ``dataset=coat``).

``train.ascii`` and ``test.ascii`` are dense users x items matrices of ratings 1-5 (0 = not
rated), space-separated, one user per line. Train holds the ratings of items users chose
themselves (missing not at random); test holds 16 items per user drawn uniformly at random, so
it doubles as the ground truth for evaluation. ``user_item_features/`` adds one-hot user and
item features with their column names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recrl.data.base import FileDataset
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.sequence import first_non_integer, malformed_line, read_text_lines
from recrl.types import RecrlError

FEATURES = "user_item_features"


@dataclass
class IntMatrix:
    """A parsed integer matrix: ``values`` (malformed rows skipped are all zero) and ``valid`` rows."""

    values: np.ndarray
    valid: np.ndarray

    @property
    def skipped(self) -> int:
        """How many rows were malformed and skipped."""
        return int((~self.valid).sum())


def _most_common(counts: list[int]) -> int:
    """The most frequent value (the smallest on ties); 0 for an empty list."""
    if not counts:
        return 0
    values, freq = np.unique(np.asarray(counts), return_counts=True)
    return int(values[np.argmax(freq)])


def _row_problem(fields: list[str], n_cols: int, max_value: int) -> str | None:
    """Why one matrix row is malformed, or ``None``."""
    if len(fields) != n_cols:
        return f"expected {n_cols} space-separated values, found {len(fields)}"
    bad = first_non_integer(fields)
    if bad is not None:
        return f"non-integer value {bad[:40]!r}; expected space-separated integers 0..{max_value}"
    top = max(fields, key=int)
    if int(top) > max_value:
        return f"value {top} outside 0..{max_value}"
    return None


def read_int_matrix(path: Path, *, max_value: int, on_bad_rows: str, n_rows: int | None = None,
                    n_cols: int | None = None, like: str = "") -> IntMatrix:
    """Parse a dense space-separated matrix of integers ``0..max_value``.

    The column count is ``n_cols`` when given (e.g. to match another file), else the most common
    row length. A row of another length or with a bad value is an error naming the file, line
    number and text, or (``on_bad_rows="skip"``) a skipped all-zero row, so that row indices
    keep meaning the same user. ``like`` names the file the shape must match, for messages.
    """
    lines = read_text_lines(path)
    fields = [line.split() for line in lines]
    if not lines:
        raise RecrlError(f"{path} is empty; expected a space-separated matrix of integers 0..{max_value}")
    if n_rows is not None and len(lines) != n_rows:
        raise RecrlError(f"{path} has {len(lines)} rows but {like or 'the other file'} has {n_rows}; "
                         "the files must describe the same users and items")
    width = n_cols if n_cols is not None else _most_common([len(f) for f in fields])
    values = np.zeros((len(lines), width), dtype=np.int64)
    valid = np.zeros(len(lines), dtype=bool)
    for index, row in enumerate(fields):
        problem = _row_problem(row, width, max_value)
        if problem is None:
            values[index] = np.asarray(row, dtype=np.int64)
            valid[index] = True
        elif on_bad_rows != "skip":
            raise malformed_line(path, index + 1, lines[index], problem)
    if not valid.any():
        raise RecrlError(f"{path} has no well-formed rows ({len(lines)} skipped); expected "
                         f"space-separated integers 0..{max_value}")
    return IntMatrix(values=values, valid=valid)


def matrix_log(values: np.ndarray) -> pd.DataFrame:
    """Non-zero cells as rows ``user`` (row), ``item`` (column), ``time`` 0, ``rating``; by user, item."""
    users, items = np.nonzero(values)
    return pd.DataFrame({"user": users.astype(np.int64), "item": items.astype(np.int64),
                         "time": np.zeros(len(users), dtype=np.int64),
                         "rating": values[users, items].astype(np.float64)})


def read_feature_names(path: Path, n_cols: int, features: Path) -> list[str]:
    """Column names, one per line (``feature_<i>`` when the file is absent); must match ``n_cols``."""
    if not path.is_file():
        return [f"feature_{i}" for i in range(n_cols)]
    names = [line.strip() for line in read_text_lines(path)]
    if len(names) != n_cols or not all(names):
        raise RecrlError(f"{path} names {len(names)} columns (blank lines count) but {features} has "
                         f"{n_cols}; fix one of them")
    return names


class Coat(FileDataset):
    """Coat: ``train.ascii`` (self-selected ratings) and ``test.ascii`` (random ratings), 290 x 300.

    Users are row indices and items column indices (raw ids from 0). Rows carry ``time`` 0,
    in item order within a user. Use ``preprocess.split=given`` to test on the randomized
    ratings; they also become ``Splits.ground_truth``.

    Example::

        splits = Coat(root="../shared/data/coat", preprocess=Preprocessing(split="given")).load()
    """

    name = "coat"
    download_name = "coat"

    def __init__(self, root: str, preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None, side_information: bool = True) -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        self.side_information = side_information

    def required_files(self) -> list[Path]:
        """The two rating matrices."""
        return [self.root / "train.ascii", self.root / "test.ascii"]

    def optional_files(self) -> list[Path]:
        """One-hot user and item features and their column names."""
        if not self.side_information:
            return []
        return [self.root / FEATURES / f"{who}_features{ext}"
                for who in ("item", "user") for ext in (".ascii", "_map.txt")]

    def read(self) -> RawLog:
        """Train and randomized test logs plus side tables."""
        train_path, test_path = self.required_files()
        train = read_int_matrix(train_path, max_value=5, on_bad_rows=self.on_bad_rows)
        n_users, n_items = train.values.shape
        test = read_int_matrix(test_path, max_value=5, on_bad_rows=self.on_bad_rows, n_rows=n_users,
                               n_cols=n_items, like=train_path.name)
        items, bad_items = self._features("item", n_items)
        users, bad_users = self._features("user", n_users)
        return RawLog(log=matrix_log(train.values), test=matrix_log(test.values), test_is_randomized=True,
                      items=items, users=users,
                      skipped_rows=train.skipped + test.skipped + bad_items + bad_users,
                      meta={"name": self.name, "shape": [n_users, n_items]})

    def _features(self, who: str, n_rows: int) -> tuple[pd.DataFrame | None, int]:
        """The ``who`` (``item``/``user``) one-hot table indexed by raw id, and its skipped rows."""
        path = self.root / FEATURES / f"{who}_features.ascii"
        if not (self.side_information and path.is_file()):
            return None, 0
        matrix = read_int_matrix(path, max_value=1, on_bad_rows=self.on_bad_rows, n_rows=n_rows,
                                 like=f"train.ascii's {who} count")
        names = read_feature_names(path.with_name(f"{who}_features_map.txt"), matrix.values.shape[1], path)
        index = pd.Index(np.flatnonzero(matrix.valid), name=who)
        table = pd.DataFrame(matrix.values[matrix.valid].astype(np.int8), index=index, columns=names)
        return table, matrix.skipped
