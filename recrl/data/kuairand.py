"""KuaiRand and KuaiRec short-video logs (``dataset=kuairand``).

KuaiRand (Gao et al., CIKM 2022) logs have ``user_id``, ``video_id``, ``time_ms``, ``is_click``,
``long_view``, ``play_time_ms``, ``duration_ms`` and ``is_rand`` (1 where the video was shown at
random). KuaiRec (Gao et al., CIKM 2022) matrices have ``user_id``, ``video_id``, ``timestamp``
(seconds), ``watch_ratio`` and no clicks. Both become one log:

* ``time``: ``time_ms``, or ``timestamp`` converted to integer milliseconds;
* ``click``: ``is_click``, or ``watch_ratio >= watch_ratio_threshold`` (2.0 as in KuaiRec papers);
* ``conversion``: ``long_view`` when present;
* ``watch``: the watch ratio, the file's own ``watch_ratio`` or ``play_time_ms / duration_ms``
  (NaN where the duration is unknown or zero): the dwell response behind ``reward=watch``;
* random exposures (``is_rand == 1``, and every row of ``random_file``) become the given,
  randomized test log when ``random_exposure_as_test`` (use ``preprocess.split=given``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recrl.data.base import FileDataset
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.reader import Table
from recrl.data.tabular import check_columns, column_list, read_csv_log, read_header, read_side_table
from recrl.types import RecrlError

SEP = ","
FIX = "point dataset.file at a KuaiRand or KuaiRec log"


def log_columns(path: Path, names: list[str], extra: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The ``field -> column`` mapping and field kinds for a KuaiRand/KuaiRec log with ``names``."""
    columns = {"user": "user_id", "item": "video_id"}
    kinds = {"user": "id", "item": "id"}
    if "time_ms" in names:
        columns["time"], kinds["time"] = "time_ms", "time"
    elif "timestamp" in names:
        columns["time"], kinds["time"] = "timestamp", "time_s"
    else:
        check_columns(path, columns, names, setting=None, fix=FIX)  # a file without ids says that first
        raise RecrlError(f"{path}: no time column (time_ms for KuaiRand, timestamp for KuaiRec); its columns "
                         f"are: {column_list(names)}; {FIX}")
    optional = {"is_click": ("click", "number"), "long_view": ("conversion", "number"),
                "is_rand": ("is_rand", "number")}
    optional |= ({"watch_ratio": ("watch", "optional")} if "watch_ratio" in names else
                 {"play_time_ms": ("play_time_ms", "optional"), "duration_ms": ("duration_ms", "optional")})
    for column, (field, kind) in optional.items():
        if column in names:
            columns[field], kinds[field] = column, kind
    for column in extra:
        if column not in columns.values():
            columns[column], kinds[column] = column, "extra"
    check_columns(path, columns, names, setting=None, fix=FIX if set(extra) <= set(names)
                  else "fix dataset.extra_columns")
    return columns, kinds


def derive(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``watch`` (ratio) from play/duration times where the file lacks it; clicks from it where needed."""
    frame = frame.copy()
    if "play_time_ms" in frame and "duration_ms" in frame:
        play, duration = frame.pop("play_time_ms").to_numpy(), frame.pop("duration_ms").to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["watch"] = np.where(duration > 0, play / duration, np.nan)
    if "click" not in frame and "watch" in frame:
        frame["click"] = (frame["watch"].to_numpy() >= threshold).astype(np.float64)
    return frame


def same_id_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids as strings where concatenated logs mixed integer and text ids (they must sort together)."""
    for column in ("user", "item"):
        if not pd.api.types.is_integer_dtype(frame[column].dtype):
            frame[column] = frame[column].astype(str)
    return frame


class KuaiRand(FileDataset):
    """A KuaiRand (``log_*.csv``) or KuaiRec (``big_matrix.csv``/``small_matrix.csv``) log.

    Args:
        file: the log inside ``root``.
        random_file: an optional log of random exposures (e.g. ``log_random_4_22_to_5_08_pure.csv``);
            all its rows count as random.
        item_file: a glob for the video side table (first match, used when present; None: none).
        watch_ratio_threshold: ``click = watch_ratio >= threshold`` for logs without ``is_click``.
        random_exposure_as_test: random exposures become the given test log (randomized, so it can
            also serve as the ground truth); needs ``preprocess.split=given``. When False they stay
            in the log with their ``is_rand`` flag.
        extra_columns: further columns to keep (e.g. ``is_like``), numeric where possible.

    Example::

        splits = KuaiRand(root="data/KuaiRand-Pure/data", preprocess=Preprocessing(split="temporal")).load()
    """

    name = "kuairand"

    def __init__(self, root: str, preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None, file: str = "log_standard_4_08_to_4_21_pure.csv",
                 random_file: str | None = None, item_file: str | None = "video_features_basic_*.csv",
                 watch_ratio_threshold: float = 2.0, random_exposure_as_test: bool = True,
                 extra_columns: list[str] | None = None) -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        self.file, self.random_file, self.item_file = file, random_file, item_file
        self.watch_ratio_threshold = float(watch_ratio_threshold)
        self.random_exposure_as_test = random_exposure_as_test
        self.extra_columns = [str(c) for c in (extra_columns or [])]

    def required_files(self) -> list[Path]:
        """The log."""
        return [self.root / self.file]

    def optional_files(self) -> list[Path]:
        """The random-exposure log and the video side table, when configured."""
        files = [self.root / self.random_file] if self.random_file else []
        return files + self._item_path()

    def _item_path(self) -> list[Path]:
        if not self.item_file or not self.root.is_dir():
            return []
        return sorted(self.root.glob(self.item_file))[:1]

    def read(self) -> RawLog:
        """The log (plus random exposures), split into the training log and the randomized test log."""
        table = self._read_log(self.root / self.file)
        frames, skipped = [table.frame], table.skipped
        random_path = self.root / self.random_file if self.random_file else None
        if random_path is not None and random_path.is_file():
            extra = self._read_log(random_path)
            frames.append(extra.frame.assign(is_rand=1.0))
            skipped += extra.skipped
        log, test = self._split_random(same_id_types(pd.concat(frames, ignore_index=True)))
        items = None
        if self._item_path():
            items = read_side_table(self._item_path()[0], "video_id", log["item"].to_numpy(), sep=SEP,
                                    on_bad_rows=self.on_bad_rows)
        meta = {"name": self.name, "source": self.file,
                "random_exposure_rows": 0 if test is None else len(test)}
        return RawLog(log=log, items=items, test=test, test_is_randomized=test is not None,
                      skipped_rows=skipped, meta=meta)

    def _read_log(self, path: Path) -> Table:
        names, _ = read_header(path, SEP, header=True)
        columns, kinds = log_columns(path, names, self.extra_columns)
        table = read_csv_log(path, columns, sep=SEP, on_bad_rows=self.on_bad_rows, kinds=kinds)
        return Table(frame=derive(table.frame, self.watch_ratio_threshold), skipped=table.skipped)

    def _split_random(self, log: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """``(log, random exposures)``; the flag is dropped unless the rows stay in the log."""
        if "is_rand" not in log or not self.random_exposure_as_test:
            return log, None
        random = log.pop("is_rand").to_numpy() > 0
        if not random.any():
            return log, None
        if self.preprocess.split != "given":
            raise RecrlError(f"dataset {self.name}: {int(random.sum())} random-exposure rows (is_rand=1) are "
                             "meant as the test log: set dataset.preprocess.split=given, or "
                             "dataset.random_exposure_as_test=false to keep them in the log")
        if random.all():
            raise RecrlError(f"dataset {self.name}: every row is a random exposure, nothing is left to train "
                             "on; set dataset.random_exposure_as_test=false")
        return log[~random].reset_index(drop=True), log[random].reset_index(drop=True)
