"""Interaction logs in any CSV or Parquet file (``dataset=csv``, ``dataset=parquet``).

``dataset.columns`` maps recrl's fields (``user``, ``item``, ``time``, ``rating``, ``click``,
``conversion``, ``propensity``, ``leave``, the user signals such as ``watch`` and any extra, e.g.
``is_like``) to the file's
column names. A CSV file is read with pandas' C parser; only when that finds something wrong is
it read again line by line, so that an error names the file and line (or, with
``dataset.on_bad_rows=skip``, the bad rows are dropped and counted).

Raw ids that are all integers become ``int64`` (so ``9`` sorts before ``10``); otherwise they
stay strings. ``time`` is numeric (fractional values are floored) or a datetime / ISO 8601 date
(read as Unix seconds).

:class:`TabularDataset` lives here, so its ``_target_`` (``conf/dataset/csv.yaml``,
``parquet.yaml``) stays ``recrl.data.tabular.TabularDataset``; the reading is done by the modules
:mod:`~recrl.data.tabular.convert` (typing columns), :mod:`~recrl.data.tabular.columns` (column
mappings, records and headers) and :mod:`~recrl.data.tabular.readers` (CSV, Parquet and item side
tables), whose public names this package re-exports.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from recrl.data.base import FileDataset
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.tabular.columns import check_columns, column_list, column_map, read_header, records
from recrl.data.tabular.convert import (
    FIELD_KINDS,
    NA_TOKENS,
    Converted,
    Problems,
    bad_mask,
    convert,
    convert_dates,
    convert_extra,
    convert_ids,
    convert_numbers,
    convert_time,
    field_kind,
)
from recrl.data.tabular.readers import read_csv_log, read_parquet_log, read_side_table
from recrl.types import RecrlError

__all__ = [
    "FIELD_KINDS", "FORMATS", "NA_TOKENS", "Converted", "Problems", "TabularDataset", "bad_mask",
    "check_columns", "column_list", "column_map", "convert", "convert_dates", "convert_extra",
    "convert_ids", "convert_numbers", "convert_time", "field_kind", "read_csv_log", "read_header",
    "read_parquet_log", "read_side_table", "records",
]

FORMATS = ("csv", "parquet")


def _check_sep(sep: str) -> str:
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
    if len(sep) != 1 or sep in "\"\r\n":
        raise RecrlError(f"dataset.sep={sep!r}: use one character such as ',', ';', '|' or '\\t'")
    return sep


def _check_encoding(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError as err:
        raise RecrlError(f"dataset.encoding={encoding!r} is not a known text encoding; "
                         "try utf-8 or latin-1") from err


class TabularDataset(FileDataset):
    """Interactions from one CSV or Parquet file whose columns ``columns`` names.

    Args:
        path: the log file, relative to ``root``.
        format: ``csv`` or ``parquet``.
        columns: recrl field -> the file's column; ``user`` and ``item`` are required; ``time``,
            ``rating``, ``click``, ``conversion``, ``propensity``, ``leave``, the user signals
            (``watch``, ...) and extras are optional.
            Without a header, name columns by position (``"0"``, ``"1"``...).
        sep, header, encoding: how the CSV file is written.
        item_file: optional side table (CSV with the same ``sep``, or ``.parquet``) keyed by the item
            column; ``item_columns`` maps feature names to its columns (all columns when None).

    Example::

        splits = TabularDataset(root="data", path="log.csv",
                                columns={"user": "uid", "item": "sku", "time": "ts"}).load()
    """

    name = "tabular"

    def __init__(self, root: str, preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None, path: str = "interactions.csv", format: str = "csv",
                 columns: dict[str, str] | None = None, sep: str = ",", header: bool = True,
                 item_file: str | None = None, item_columns: dict[str, str] | None = None,
                 encoding: str = "utf-8") -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        if format not in FORMATS:
            raise RecrlError(f"dataset.format={format!r}: use one of {', '.join(FORMATS)}")
        self.path, self.format, self.header = path, format, header
        self.columns = column_map(columns, {"user": "user_id", "item": "item_id"})
        self.sep, self.encoding = _check_sep(sep), _check_encoding(encoding)
        self.item_file = item_file
        self.item_columns = (None if item_columns is None
                             else {str(k): str(v) for k, v in dict(item_columns).items()})

    def required_files(self) -> list[Path]:
        """The log file."""
        return [self.root / self.path]

    def optional_files(self) -> list[Path]:
        """The item side table, when one is configured."""
        return [self.root / self.item_file] if self.item_file else []

    def read(self) -> RawLog:
        """The mapped columns of the log, plus the item side table when present."""
        path = self.root / self.path
        if self.format == "parquet":
            table = read_parquet_log(path, self.columns, on_bad_rows=self.on_bad_rows)
        else:
            table = read_csv_log(path, self.columns, sep=self.sep, header=self.header, encoding=self.encoding,
                                 on_bad_rows=self.on_bad_rows)
        items = None
        if self.item_file and (self.root / self.item_file).is_file():
            key = (self.item_columns or {}).get("item", self.columns["item"])
            items = read_side_table(self.root / self.item_file, key, table.frame["item"].to_numpy(),
                                    columns=self.item_columns, sep=self.sep, encoding=self.encoding,
                                    on_bad_rows=self.on_bad_rows)
        return RawLog(log=table.frame, items=items, skipped_rows=table.skipped,
                      meta={"name": self.name, "source": self.path, "format": self.format})
