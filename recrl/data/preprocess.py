"""Cleaning and splitting logged interactions (``dataset.preprocess``).

Raw logs (raw ids, whatever columns the file had) become :class:`~recrl.types.Splits`: duplicates
dropped, implicit clicks derived from ratings (ratings kept), k-core filtered, ids remapped to
dense ``0..n-1`` (maps back kept), then split. The test rows end up in ``Splits.test`` only;
the :class:`~recrl.types.Interactions` handed to training code holds train and valid rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recrl.types import LOG_COLUMNS, Interactions, RecrlError, Splits

SPLITS = ("leave_last_out", "temporal", "random", "given", "user")
TRAIN, VALID, TEST = 0, 1, 2
# compact on purpose: logs are the largest tables recrl holds in memory
LOG_DTYPES = {"user": np.int32, "item": np.int32, "time": np.int64, "click": np.float32,
              "conversion": np.float32, "rating": np.float32, "leave": np.float32, "propensity": np.float32}
DEDUPE = ("exact", "user_item", "none")


@dataclass
class RawLog:
    """Interactions as read from files, before cleaning.

    ``log`` has raw ``user`` and ``item`` ids and any of ``time``, ``rating``, ``click``,
    ``conversion``, ``propensity``, ``leave``; rows of a user without ``time`` are taken to be
    in time order. ``items``/``users`` are side tables indexed by raw id. ``test`` is a given
    test log (e.g. Coat's randomized exposures) and ``test_is_randomized`` says it can serve as
    the ground truth for evaluation.
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

    def __call__(self, raw: RawLog) -> Splits:
        """Clean, filter, remap and split ``raw``."""
        if self.split == "given" and raw.test is None:
            raise RecrlError("dataset.preprocess.split=given but this dataset has no test file of its own")
        log = self._standardise(raw.log, "log")
        rows_raw = len(log)
        log = self._dedupe(log)
        deduped = rows_raw - len(log)
        log = self._k_core(log)
        if log.empty:
            raise RecrlError(f"no interactions left after filtering ({rows_raw} rows read, k-core "
                             f"{self.min_user_interactions}/{self.min_item_interactions}): lower "
                             "dataset.preprocess.min_user_interactions / min_item_interactions")
        # the dataset's own test log: the test split (split=given) and/or the ground truth
        given = None if raw.test is None else self._standardise(raw.test, "test")
        dropped_test = 0
        if given is not None:
            known = given["user"].isin(log["user"]) & given["item"].isin(log["item"])
            dropped_test, given = int((~known).sum()), given[known]
        user_ids, item_ids, log, given = _remap(log, given)
        part = self._assign(log)
        frames = {name: _finish(log[part == code]) for name, code in
                  (("train", TRAIN), ("valid", VALID), ("test", TEST))}
        given_frame = None if given is None else _finish(given)
        if self.split == "given":
            frames["test"] = given_frame
        if frames["train"].empty:
            raise RecrlError("the training split is empty: use a smaller valid_share/test_share or more data")
        items = _side_table(raw.items, item_ids)
        interactions = Interactions(train=frames["train"], valid=frames["valid"], items=items,
                                    n_users=len(user_ids), n_items=len(item_ids),
                                    positive_only=bool(raw.log.get("click") is None
                                                       and self.implicit_threshold is None))
        ground_truth = (self._ground_truth(given_frame, interactions)
                        if raw.test_is_randomized and given_frame is not None else None)
        meta = {**raw.meta, "rows_read": rows_raw, "skipped_rows": raw.skipped_rows,
                "duplicates_removed": deduped, "test_rows_without_training_user_or_item": dropped_test,
                "rows_after_filtering": len(log) + (0 if given is None else len(given)),
                "split": self.split}
        return Splits(interactions=interactions, test=frames["test"], ground_truth=ground_truth,
                      user_ids=user_ids, item_ids=item_ids,
                      users=None if raw.users is None else _side_table(raw.users, user_ids), meta=meta)

    # ------------------------------------------------------------------ steps
    def _standardise(self, log: pd.DataFrame, what: str) -> pd.DataFrame:
        """``user``, ``item``, ``time``, ``click`` and whichever other log columns the data has,
        in compact dtypes; absent columns are added only at the end (:func:`_finish`) so they
        are not carried through the sorts and copies."""
        for column in ("user", "item"):
            if column not in log:
                columns = ", ".join(map(str, log.columns))
                raise RecrlError(f"the {what} has no {column!r} column (columns: {columns})")
        out = pd.DataFrame({"user": log["user"].to_numpy(), "item": log["item"].to_numpy()})
        out["time"] = (log["time"].to_numpy() if "time" in log
                       else out.groupby("user", sort=False).cumcount().to_numpy())
        if self.implicit_threshold is not None:
            if "rating" not in log:
                raise RecrlError("dataset.preprocess.implicit_threshold is set but the data has no ratings")
            out["click"] = (log["rating"].to_numpy() >= self.implicit_threshold).astype(np.float32)
        else:
            out["click"] = log["click"].to_numpy(dtype=np.float32) if "click" in log else np.float32(1.0)
        for column in ("rating", "conversion", "leave", "propensity"):
            if column in log:
                out[column] = log[column].to_numpy(dtype=np.float32)
        extra = [c for c in log.columns if c not in out.columns]
        for column in extra:  # e.g. watch_ratio: kept for models that use it
            out[column] = log[column].to_numpy()
        return out

    def _dedupe(self, log: pd.DataFrame) -> pd.DataFrame:
        if self.dedupe == "exact":
            return log.drop_duplicates(["user", "item", "time"], keep="last")
        if self.dedupe == "user_item":
            ordered = log.sort_values(["user", "time"], kind="stable")
            return ordered.drop_duplicates(["user", "item"], keep="last").sort_index()
        return log

    def _k_core(self, log: pd.DataFrame) -> pd.DataFrame:
        """Drop users and items with too few rows, repeatedly, until none is left to drop."""
        min_u, min_i = self.min_user_interactions, self.min_item_interactions
        while min_u > 1 or min_i > 1:
            user_counts = log["user"].map(log["user"].value_counts())
            item_counts = log["item"].map(log["item"].value_counts())
            keep = (user_counts >= min_u) & (item_counts >= min_i)
            if keep.all():
                break
            log = log[keep]
        return log

    def _assign(self, log: pd.DataFrame) -> np.ndarray:
        """Split code per row (:data:`TRAIN`, :data:`VALID`, :data:`TEST`) of the remapped,
        user/time-sorted log; int8 codes and numpy only, since logs can be large."""
        n = len(log)
        part = np.full(n, TRAIN, dtype=np.int8)
        rng = np.random.default_rng(self.seed)
        user = log["user"].to_numpy()
        if self.split == "leave_last_out":
            counts = np.bincount(user)
            ends = np.cumsum(counts)[user]  # rows are grouped by user: one past each user's last row
            from_end = ends - 1 - np.arange(n)
            long_enough = counts[user] >= 3
            part[(from_end == 1) & long_enough] = VALID
            part[(from_end == 0) & long_enough] = TEST
        elif self.split == "temporal":
            order = np.argsort(log["time"].to_numpy(), kind="stable")
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


def _remap(log: pd.DataFrame, given: pd.DataFrame | None
           ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame | None]:
    """Dense ids in sorted raw-id order; rows sorted by user, then time (stable)."""
    users = pd.Index(np.sort(log["user"].unique()))
    items = pd.Index(np.sort(log["item"].unique()))

    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.assign(user=users.get_indexer(frame["user"]).astype(np.int32),
                             item=items.get_indexer(frame["item"]).astype(np.int32),
                             time=frame["time"].astype(np.int64))
        return frame.sort_values(["user", "time"], kind="stable").reset_index(drop=True)

    return users.to_numpy(), items.to_numpy(), apply(log), None if given is None else apply(given)


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Standard column order and dtypes; extra columns follow."""
    frame = frame.reset_index(drop=True)
    for column, default in (("rating", np.nan), ("conversion", 0.0), ("leave", np.nan),
                            ("propensity", np.nan)):
        if column not in frame:
            frame[column] = np.full(len(frame), default, dtype=LOG_DTYPES[column])
    extra = [c for c in frame.columns if c not in LOG_COLUMNS]
    return frame[list(LOG_COLUMNS) + extra].astype(LOG_DTYPES)


def _side_table(table: pd.DataFrame | None, ids: np.ndarray) -> pd.DataFrame:
    """Rows of a raw-id-indexed side table in dense-id order (missing ids give empty rows)."""
    if table is None:
        return pd.DataFrame(index=pd.RangeIndex(len(ids)))
    table = table[~table.index.duplicated(keep="last")]  # a repeated id: its last row wins
    return table.reindex(ids).reset_index(drop=True)
