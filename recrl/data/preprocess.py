"""Cleaning and splitting logged interactions (``dataset.preprocess``).

Raw logs (raw ids, whatever columns the file had) become :class:`~recrl.types.Splits`: duplicates
dropped, implicit clicks derived from ratings (ratings kept), k-core filtered, ids remapped to
dense ``0..n-1`` (maps back kept), then split. The test rows end up in ``Splits.test`` only;
the :class:`~recrl.types.Interactions` handed to training code holds train and valid rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recrl.data.reader import check_propensities
from recrl.env.signals import SIGNALS
from recrl.types import Interactions, RecrlError, Splits, log_columns

SPLITS = ("leave_last_out", "temporal", "random", "given", "user")
DEDUPE = ("exact", "user_item", "none")
TRAIN, VALID, TEST = 0, 1, 2
# compact on purpose: logs are the largest tables recrl holds in memory (a user signal: float32)
CORE_DTYPES = {"user": np.int32, "item": np.int32, "time": np.int64, "click": np.float32,
               "conversion": np.float32, "rating": np.float32, "leave": np.float32, "propensity": np.float32}
# the value of a column the data does not have (a user signal: NaN)
CORE_DEFAULTS = {"rating": np.nan, "conversion": 0.0, "leave": np.nan, "propensity": np.nan}


def log_dtypes() -> dict[str, Any]:
    """The dtype of every log column: :data:`CORE_DTYPES` and float32 per registered signal."""
    return {**CORE_DTYPES, **dict.fromkeys(SIGNALS, np.float32)}


def log_defaults() -> dict[str, float]:
    """The value of each optional log column the data does not have: :data:`CORE_DEFAULTS` and
    NaN per registered signal."""
    return {**CORE_DEFAULTS, **dict.fromkeys(SIGNALS, np.nan)}


@dataclass
class RawLog:
    """Interactions as read from files, before cleaning.

    ``log`` has raw ``user`` and ``item`` ids and any of ``time``, ``rating``, ``click``,
    ``conversion``, ``propensity``, ``leave`` and the user signals (``watch``, ...); rows of a
    user without ``time`` are taken to be in time order. ``items``/``users`` are side tables
    indexed by raw id. ``test`` is a given test log (e.g. Coat's randomized exposures) and
    ``test_is_randomized`` says it can serve as the ground truth for evaluation.
    """

    log: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    test: pd.DataFrame | None = None
    test_is_randomized: bool = False
    skipped_rows: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


class Preprocessing:
    """How a raw log is cleaned and split.

    Args:
        split: ``leave_last_out`` (per user: last row test, second last valid; users with
            fewer than 3 rows stay wholly in train),
            ``temporal`` (global: the latest ``test_share`` of rows test, the ``valid_share``
            before them valid), ``random`` (rows), ``user`` (whole users) or ``given`` (the
            dataset's own test file; valid is a random share of the rest).
        implicit_threshold: if set, ``click = rating >= threshold`` (the rating is kept).
        min_user_interactions / min_item_interactions: k-core filter, applied until stable.
        dedupe: ``exact`` drops repeated (user, item, time) rows, ``user_item`` keeps only a
            user's last row per item, ``none`` keeps everything.

    Example::

        splits = Preprocessing(split="leave_last_out", implicit_threshold=4)(raw_log)
    """

    def __init__(self, split: str = "leave_last_out", implicit_threshold: float | None = None,
                 min_user_interactions: int = 0, min_item_interactions: int = 0,
                 dedupe: str = "exact", valid_share: float = 0.1, test_share: float = 0.1,
                 seed: int = 0) -> None:
        if split not in SPLITS:
            raise RecrlError(f"dataset.preprocess.split={split!r}: use one of {', '.join(SPLITS)}")
        if dedupe not in DEDUPE:
            raise RecrlError(f"dataset.preprocess.dedupe={dedupe!r}: use one of {', '.join(DEDUPE)}")
        if not (0 <= valid_share < 1 and 0 <= test_share < 1 and valid_share + test_share < 1):
            raise RecrlError("dataset.preprocess: valid_share and test_share must be in [0, 1) "
                             "and sum below 1")
        self.split, self.implicit_threshold, self.dedupe = split, implicit_threshold, dedupe
        self.min_user_interactions, self.min_item_interactions = min_user_interactions, min_item_interactions
        self.valid_share, self.test_share, self.seed = valid_share, test_share, seed

    def fingerprint(self) -> dict[str, Any]:
        """The settings, for cache keys."""
        return dict(vars(self))

    def __call__(self, raw: RawLog, release: bool = False) -> Splits:
        """Clean, filter, remap and split ``raw``.

        The work is done on plain numpy columns, one column at a time, so the peak memory stays
        a small multiple of the compact result. With ``release`` the caller hands ``raw.log``
        over: it is emptied as soon as its columns are taken, so its memory can be freed early.
        """
        if self.split == "given" and raw.test is None:
            raise RecrlError("dataset.preprocess.split=given but this dataset has no test file of its own")
        positive_only = "click" not in raw.log and self.implicit_threshold is None
        cols = self._standardise(raw.log, "log")
        rows_raw = len(cols["user"])
        if release:
            raw.log = pd.DataFrame(columns=raw.log.columns)  # drops every reference to the data
        user_ids, cols["user"] = _codes(cols["user"])
        item_ids, cols["item"] = _codes(cols["item"])
        cols = _take(cols, np.lexsort((cols["time"], cols["user"])))  # by user, then time (stable)
        cols = _take(cols, self._dedupe_keep(cols))
        deduped = rows_raw - len(cols["user"])
        cols = _take(cols, self._k_core_keep(cols))
        if len(cols["user"]) == 0:
            raise RecrlError(f"no interactions left after filtering ({rows_raw} rows read, k-core "
                             f"{self.min_user_interactions}/{self.min_item_interactions}): lower "
                             "dataset.preprocess.min_user_interactions / min_item_interactions")
        user_ids, cols["user"] = _densify(user_ids, cols["user"])
        item_ids, cols["item"] = _densify(item_ids, cols["item"])
        part = self._assign(cols["user"], cols["time"])
        frames = _split_frames(cols, part)
        del cols
        # the dataset's own test log: the test split (split=given) and/or the ground truth
        given, dropped_test = (None, 0) if raw.test is None else self._given(raw.test, user_ids, item_ids)
        if self.split == "given":
            frames["test"] = given
        if frames["train"].empty:
            raise RecrlError("the training split is empty: use a smaller valid_share/test_share or more data")
        items = _side_table(raw.items, item_ids)
        interactions = Interactions(train=frames["train"], valid=frames["valid"], items=items,
                                    n_users=len(user_ids), n_items=len(item_ids), positive_only=positive_only)
        ground_truth = (self._ground_truth(given, interactions)
                        if raw.test_is_randomized and given is not None else None)
        kept = sum(len(f) for f in (frames["train"], frames["valid"])) + len(frames["test"])
        meta = {**raw.meta, "rows_read": rows_raw, "skipped_rows": raw.skipped_rows,
                "duplicates_removed": deduped, "test_rows_without_training_user_or_item": dropped_test,
                "rows_after_filtering": kept, "split": self.split}
        return Splits(interactions=interactions, test=frames["test"], ground_truth=ground_truth,
                      user_ids=user_ids, item_ids=item_ids,
                      users=None if raw.users is None else _side_table(raw.users, user_ids), meta=meta)

    def _given(self, test: pd.DataFrame, user_ids: np.ndarray,
               item_ids: np.ndarray) -> tuple[pd.DataFrame, int]:
        """The dataset's own test log in dense ids (rows of unknown users/items dropped, counted)."""
        cols = self._standardise(test, "test")
        cols["user"] = pd.Index(user_ids).get_indexer(cols["user"]).astype(np.int32)
        cols["item"] = pd.Index(item_ids).get_indexer(cols["item"]).astype(np.int32)
        known = (cols["user"] >= 0) & (cols["item"] >= 0)
        cols = _take(cols, np.flatnonzero(known))
        cols = _take(cols, np.lexsort((cols["time"], cols["user"])))
        return log_frame(cols), int((~known).sum())

    # ------------------------------------------------------------------ steps
    def _standardise(self, log: pd.DataFrame, what: str) -> dict[str, np.ndarray]:
        """Columns ``user``, ``item``, ``time``, ``click`` and whichever other log columns the
        data has, as numpy arrays (views of ``log`` where no conversion is needed); absent
        columns are added only in the final frames so they are not carried through the sorts."""
        for column in ("user", "item"):
            if column not in log:
                columns = ", ".join(map(str, log.columns))
                raise RecrlError(f"the {what} has no {column!r} column (columns: {columns})")
        n = len(log)
        out = {"user": log["user"].to_numpy(), "item": log["item"].to_numpy()}
        out["time"] = (log["time"].to_numpy() if "time" in log
                       else log.groupby("user", sort=False).cumcount().to_numpy())
        if self.implicit_threshold is not None:
            if "rating" not in log:
                raise RecrlError("dataset.preprocess.implicit_threshold is set but the data has no ratings")
            out["click"] = (log["rating"].to_numpy() >= self.implicit_threshold).astype(np.float32)
        else:
            out["click"] = (log["click"].to_numpy(dtype=np.float32) if "click" in log
                            else np.ones(n, dtype=np.float32))
        if "propensity" in log:
            check_propensities(log["propensity"], {"log": "the log"}.get(what, f"the {what} log"))
        for column in log_defaults():
            if column in log:
                out[column] = log[column].to_numpy(dtype=np.float32)
        for column in log.columns:  # extras such as is_like: kept for models that use them
            if column not in out:
                out[column] = log[column].to_numpy()
        return out

    def _dedupe_keep(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Rows to keep of the user/time-sorted columns (ties in file order): the last of each
        repeated (user, item, time) for ``exact``, the last in time of each (user, item) for
        ``user_item``."""
        user, item, time = cols["user"], cols["item"], cols["time"]
        n = len(user)
        if self.dedupe == "none" or n < 2:
            return np.arange(n)
        if self.dedupe == "exact":
            # a repeat shares user and time with its neighbour: look only inside such runs
            tie = user[1:] == user[:-1]
            tie &= time[1:] == time[:-1]
            rows = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
            if len(rows) == 0:
                return np.arange(n)
            keys = pd.DataFrame({"user": user[rows], "item": item[rows], "time": time[rows]})
            drop = rows[keys.duplicated(keep="last").to_numpy()]
        else:
            key = user.astype(np.int64) * (int(item.max()) + 1) + item
            drop = np.flatnonzero(pd.Series(key).duplicated(keep="last").to_numpy())
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        return np.flatnonzero(keep)

    def _k_core_keep(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Rows of users and items with enough rows, filtering repeatedly until stable."""
        min_u, min_i = self.min_user_interactions, self.min_item_interactions
        user, item = cols["user"], cols["item"]
        keep = np.ones(len(user), dtype=bool)
        while min_u > 1 or min_i > 1:
            users_ok = np.bincount(user[keep], minlength=int(user.max()) + 1) >= min_u
            items_ok = np.bincount(item[keep], minlength=int(item.max()) + 1) >= min_i
            now = keep & users_ok[user] & items_ok[item]
            if now.sum() == keep.sum():
                break
            keep = now
        return np.flatnonzero(keep)

    def _assign(self, user: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Split code per row (:data:`TRAIN`, :data:`VALID`, :data:`TEST`) of the remapped,
        user/time-sorted log."""
        n = len(user)
        part = np.full(n, TRAIN, dtype=np.int8)
        rng = np.random.default_rng(self.seed)
        if self.split == "leave_last_out":
            counts = np.bincount(user)
            ends = np.cumsum(counts)[user]  # rows are grouped by user: one past each user's last row
            from_end = ends - 1 - np.arange(n)
            long_enough = counts[user] >= 3
            part[(from_end == 1) & long_enough] = VALID
            part[(from_end == 0) & long_enough] = TEST
        elif self.split == "temporal":
            order = np.argsort(time, kind="stable")
            n_test, n_valid = round(n * self.test_share), round(n * self.valid_share)
            part[order[n - n_test:]] = TEST
            part[order[n - n_test - n_valid:n - n_test]] = VALID
        elif self.split in ("random", "given"):
            u = rng.random(n)
            part[u < self.valid_share] = VALID
            if self.split == "random":
                part[(u >= self.valid_share) & (u < self.valid_share + self.test_share)] = TEST
        else:  # user
            draw = rng.random(int(user.max()) + 1)[user]
            part[draw < self.valid_share + self.test_share] = VALID
            part[draw < self.test_share] = TEST
        return part

    def _ground_truth(self, test: pd.DataFrame, interactions: Interactions) -> Interactions:
        """A log for fitting a ground-truth user model on randomized exposures (evaluation only)."""
        rng = np.random.default_rng(self.seed + 1)
        is_valid = rng.random(len(test)) < max(self.valid_share, 0.1)
        return Interactions(train=_finish(test[~is_valid]), valid=_finish(test[is_valid]),
                            items=interactions.items, n_users=interactions.n_users,
                            n_items=interactions.n_items, positive_only=interactions.positive_only)


def _codes(raw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct raw ids and each row's dense int32 code."""
    if raw_ids.dtype.kind in "iu" and len(raw_ids):
        low, high = int(raw_ids.min()), int(raw_ids.max())
        if high - low <= 4 * len(raw_ids) + 1024:  # compact integer ids: a lookup table, no hashing
            present = np.zeros(high - low + 1, dtype=bool)
            present[raw_ids - low] = True
            code_of = (np.cumsum(present, dtype=np.int64) - 1).astype(np.int32)
            return np.flatnonzero(present) + low, code_of[raw_ids - low]
    codes, uniques = pd.factorize(raw_ids, sort=True)
    return np.asarray(uniques), codes.astype(np.int32)


def _densify(ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes 0..n-1 after filtering (order kept), with the matching raw ids."""
    present = np.bincount(codes, minlength=len(ids)) > 0
    if present.all():
        return ids, codes
    new_code = np.cumsum(present, dtype=np.int64).astype(np.int32) - 1
    return ids[present], new_code[codes]


def _take(cols: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``rows`` of every column, one column at a time (old columns freed as we go)."""
    if len(rows) == len(cols["user"]) and (len(rows) == 0 or (rows[0] == 0 and (np.diff(rows) == 1).all())):
        return cols
    for name in list(cols):
        cols[name] = cols[name][rows]
    return cols


def _split_frames(cols: dict[str, np.ndarray], part: np.ndarray) -> dict[str, pd.DataFrame]:
    """Train / valid / test frames; rows are regrouped by split so each frame is a slice."""
    order = np.argsort(part, kind="stable")
    cols = _take(cols, order)
    bounds = np.cumsum(np.bincount(part, minlength=3))
    starts = (0, int(bounds[0]), int(bounds[1]))
    return {name: log_frame({k: v[a:b] for k, v in cols.items()})
            for name, a, b in zip(("train", "valid", "test"), starts, bounds.tolist(), strict=True)}


def log_frame(cols: Mapping[str, Any]) -> pd.DataFrame:
    """A log frame in :func:`~recrl.types.log_columns` order and :func:`log_dtypes` from columns
    (a dict of arrays or a DataFrame); absent optional columns get :func:`log_defaults`, extra
    columns follow.

    Example::

        log = log_frame({"user": [0, 0], "item": [3, 1], "time": [0, 1], "click": [1.0, 0.0]})
    """
    cols = {k: np.asarray(v) for k, v in cols.items()}
    n = len(cols["user"])
    columns, dtypes, defaults = log_columns(), log_dtypes(), log_defaults()
    out = {}
    for column in columns:
        default = defaults.get(column)
        value = cols[column] if column in cols else np.full(n, default, dtype=dtypes[column])
        out[column] = np.asarray(value, dtype=dtypes[column])
    out.update({k: v for k, v in cols.items() if k not in columns})
    return pd.DataFrame(out, copy=False)


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Standard column order and dtypes; extra columns follow."""
    frame = frame.reset_index(drop=True)
    columns, dtypes = log_columns(), log_dtypes()
    for column, default in log_defaults().items():
        if column not in frame:
            frame[column] = np.full(len(frame), default, dtype=dtypes[column])
    extra = [c for c in frame.columns if c not in columns]
    return frame[list(columns) + extra].astype(dtypes)


def _side_table(table: pd.DataFrame | None, ids: np.ndarray) -> pd.DataFrame:
    """Rows of a raw-id-indexed side table in dense-id order (missing ids give empty rows)."""
    if table is None:
        return pd.DataFrame(index=pd.RangeIndex(len(ids)))
    table = table[~table.index.duplicated(keep="last")]  # a repeated id: its last row wins
    return table.reindex(ids).reset_index(drop=True)
