"""Coat shopping (Schnabel et al., ICML 2016; ``dataset=coat``).

``train.ascii`` and ``test.ascii`` are dense users x items matrices of ratings 1-5 (0 = not
rated), space-separated, one user per line. Train holds the ratings of items users chose
themselves (missing not at random); test holds 16 items per user drawn uniformly at random, so
it doubles as the ground truth for evaluation. ``user_item_features/`` adds one-hot user and
item features with their column names.

``propensities.ascii`` (optional), a users x items matrix of floats aligned with ``train.ascii``,
holds the authors' estimates ``P_ui`` of the probability that user ``u`` rates item ``i`` (their
Naive Bayes model; a user's row sums to about 24, the items each user rated). The train log is
the users' self-selection, which recrl treats as a logging policy choosing one item per step
over the catalogue, so each ``train.ascii`` row's ``propensity`` is the per-user normalised
exposure probability ``P(item | user) = P_ui / sum_j P_uj``. Without the file the column stays
NaN (unknown) and ``meta["propensity"]`` says so. The rows of the randomized ``test.ascii`` carry
``1 / n_items`` in any case: their items were drawn uniformly at random (16 per user; the order
of the draws is unknown, so each is counted as one uniform draw over the catalogue).
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
PROPENSITIES = "propensities.ascii"


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


def _float_tokens(path: Path, n_rows: int, n_cols: int, like: str) -> np.ndarray:
    """The space-separated numbers of ``path`` as an ``[n_rows, n_cols]`` float matrix (NaN where
    a token is not a number); a shape other than ``like``'s is a one-line error."""
    lines = read_text_lines(path)
    widths = {len(line.split()) for line in lines}
    if len(lines) != n_rows or widths != {n_cols}:
        shape = f"{len(lines)} rows of {'/'.join(map(str, sorted(widths))) or 0} values"
        raise RecrlError(f"{path} has {shape} but {like} is {n_rows} x {n_cols}; the files must describe "
                         "the same users and items (or remove the file)")
    tokens = pd.Series(" ".join(lines).split())
    return pd.to_numeric(tokens, errors="coerce").to_numpy(dtype=np.float64).reshape(n_rows, n_cols)


def read_propensities(path: Path, rated: np.ndarray, like: str = "train.ascii") -> np.ndarray:
    """Schnabel et al.'s propensity matrix ``P_ui``, checked against the rated cells ``rated``
    ``[users, items]`` of ``like``, as per-user normalised probabilities ``P_ui / sum_j P_uj``.

    Every entry must be a finite number in [0, 1], and above 0 on a rated cell; otherwise one
    error names the file and the count of bad entries.
    """
    values = _float_tokens(path, *rated.shape, like=like)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0) | (values > 1) | (rated & (values <= 0))
    if bad.any():
        raise RecrlError(f"{path}: {int(bad.sum())} of {bad.size} entries are not probabilities "
                         f"(non-numeric, outside [0, 1], or 0 on a cell {like} rates); fix the file or "
                         "remove it to load Coat without propensities")
    return values / values.sum(axis=1, keepdims=True).clip(min=np.finfo(np.float64).tiny)


class Coat(FileDataset):
    """Coat: ``train.ascii`` (self-selected ratings) and ``test.ascii`` (random ratings), 290 x 300.

    Users are row indices and items column indices (raw ids from 0). Rows carry ``time`` 0,
    in item order within a user. Use ``preprocess.split=given`` to test on the randomized
    ratings; they also become ``Splits.ground_truth``. With ``propensities.ascii`` next to
    them, the train rows carry the authors' propensities (see the module docstring).

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
        """The propensity matrix, then one-hot user and item features and their column names."""
        if not self.side_information:
            return [self.root / PROPENSITIES]
        return [self.root / PROPENSITIES] + [self.root / FEATURES / f"{who}_features{ext}"
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
        log, note = self._with_propensities(matrix_log(train.values), train.values > 0, train_path.name)
        randomized = matrix_log(test.values)
        randomized["propensity"] = 1.0 / n_items  # the experiment's design: items drawn uniformly at random
        return RawLog(log=log, test=randomized, test_is_randomized=True,
                      items=items, users=users,
                      skipped_rows=train.skipped + test.skipped + bad_items + bad_users,
                      meta={"name": self.name, "shape": [n_users, n_items], "propensity": note})

    def _with_propensities(self, log: pd.DataFrame, rated: np.ndarray, like: str) -> tuple[pd.DataFrame, str]:
        """``log`` with each row's ``propensity`` from ``propensities.ascii`` when present, and a
        note for the report saying where the propensities came from."""
        path = self.root / PROPENSITIES
        if not path.is_file():
            return log, (f"{PROPENSITIES} not found in {self.root}: propensity unknown (NaN) on every row; "
                         "recrl.ope.propensity can estimate them")
        probs = read_propensities(path, rated, like)
        log["propensity"] = probs[log["user"].to_numpy(), log["item"].to_numpy()]
        return log, (f"{PROPENSITIES}: rows of {like} carry P(item | user) = P_ui / sum_j P_uj, the "
                     "authors' (Schnabel et al. 2016) exposure probabilities normalised per user; rows of "
                     "the randomized test.ascii 1 / n_items")

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
