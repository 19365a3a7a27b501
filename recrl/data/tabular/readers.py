"""Reading a log file (CSV or Parquet) and an item side table into typed recrl fields.

A CSV file is read with pandas' C parser; only when that finds something wrong is it read again
line by line, so that an error names the file and line (or, with ``dataset.on_bad_rows=skip``,
the bad rows are dropped and counted). A Parquet file's bad rows are named by their row number.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recrl.data.reader import Table, check_propensities
from recrl.data.tabular.columns import check_columns, read_header, records
from recrl.data.tabular.convert import Problems, bad_mask, convert, convert_ids, field_kind
from recrl.types import RecrlError

_FIX = "fix the file or set dataset.on_bad_rows=skip"


def _without(problems: Problems, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` without problems, renumbered."""
    return frame[~bad_mask(problems, len(frame))].reset_index(drop=True)


def _select(raw: pd.DataFrame, columns: Mapping[str, str]) -> dict[str, pd.Series]:
    return {field: raw[column] for field, column in columns.items()}


def _check_propensity(path: Path, raw: pd.DataFrame, columns: Mapping[str, str]) -> None:
    """Bad propensities are one error naming the file, the column and the count of rows (before the
    row-by-row problems, and whatever ``on_bad_rows`` says: see :func:`check_propensities`)."""
    if "propensity" in columns and not raw.empty:
        check_propensities(raw[columns["propensity"]], str(path), columns["propensity"])


def _no_rows(path: Path, skipped: int, header: bool) -> RecrlError:
    if skipped:
        return RecrlError(f"{path}: no valid data rows ({skipped} malformed rows skipped); fix the file")
    return RecrlError(f"{path} has {'a header but ' if header else ''}no data rows; add interactions")


def _fast_frame(path: Path, names: list[str], *, sep: str, header: bool,
                encoding: str) -> pd.DataFrame | None:
    """The whole file by pandas' C parser, or None when anything looks off (then go line by line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # mixed chunks become text
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, names=names, index_col=False,
                                na_filter=False, engine="c", on_bad_lines="error",
                                skip_blank_lines=True, encoding=encoding)
    except (ValueError, OverflowError, UnicodeError, MemoryError, pd.errors.ParserError,
            pd.errors.ParserWarning):
        return None  # the line-by-line pass says what is wrong
    except OSError as err:
        raise RecrlError(f"cannot read {path}: {err}") from err
    last = frame[names[-1]] if list(frame.columns) == names else None
    if last is None or (not pd.api.types.is_numeric_dtype(last.dtype) and (last == "").any()):
        return None  # a short row leaves its last field "" (a numeric column has no short rows)
    return frame


def _slow_rows(path: Path, n_fields: int, *, sep: str, header: bool, encoding: str
               ) -> tuple[list[list[str]], list[int], list[tuple[int, str, str]]]:
    """Data records with their line numbers, and ``(line, problem, text)`` of the unsplittable ones."""
    rows: list[list[str]] = []
    lines: list[int] = []
    bad: list[tuple[int, str, str]] = []
    first = header
    for number, fields, problem in records(path, sep, encoding):
        if first:
            first = False
        elif fields is None:
            bad.append((number, problem, ""))
        elif len(fields) != n_fields:
            bad.append((number, f"expected {n_fields} fields separated by {sep!r}, found {len(fields)}",
                        sep.join(fields)))
        else:
            rows.append(fields)
            lines.append(number)
    return rows, lines, bad


def _read_slowly(path: Path, names: list[str], columns: Mapping[str, str], kinds: Mapping[str, str], *,
                 sep: str, header: bool, encoding: str, on_bad_rows: str) -> Table:
    """Line-by-line parse: the first bad line becomes an error, or bad lines are skipped and counted."""
    rows, lines, bad = _slow_rows(path, len(names), sep=sep, header=header, encoding=encoding)
    raw = pd.DataFrame(rows or None, columns=names, dtype=object)
    _check_propensity(path, raw, columns)
    typed, problems = convert(_select(raw, columns), kinds, len(raw))
    bad += [(lines[i], problem, sep.join(rows[i])) for i, problem in problems.items()]
    if bad and on_bad_rows == "error":
        raise _line_error(path, *min(bad, key=lambda b: b[0]))
    return Table(frame=_without(problems, typed), skipped=len(bad))


def _line_error(path: Path, number: int, problem: str, text: str) -> RecrlError:
    return RecrlError(f"{path}:{number}: malformed line ({problem}): {text[:200]!r}; {_FIX}")


def _locate(path: Path, row: int, raw: pd.DataFrame, ids: list[str], *, sep: str, header: bool,
            encoding: str) -> tuple[int, str] | None:
    """Line number and text of the fast frame's data ``row``; None unless the record found there has
    the same ids as pandas read (then only the full line-by-line pass can say)."""
    names = list(raw.columns)
    records_seen = -1 if header else 0
    for number, fields, _ in records(path, sep, encoding):
        if records_seen == row:
            same = fields is not None and len(fields) == len(names) and all(
                fields[names.index(c)].strip() == str(raw[c].iat[row]).strip() for c in ids)
            return (number, sep.join(fields)) if same and fields is not None else None
        records_seen += 1
    return None


def _read_quickly(path: Path, raw: pd.DataFrame, columns: Mapping[str, str], kinds: Mapping[str, str], *,
                  sep: str, header: bool, encoding: str, on_bad_rows: str) -> Table | None:
    """Type the fast frame; bad rows are skipped, or the first one located for the error (None: not
    located, go line by line)."""
    _check_propensity(path, raw, columns)
    typed, problems = convert(_select(raw, columns), kinds, len(raw))
    if any(kind == "id" and pd.api.types.is_float_dtype(raw[columns[field]].dtype)
           and not pd.api.types.is_integer_dtype(typed[field].dtype) for field, kind in kinds.items()):
        return None  # ids kept as text, but pandas read them as floats: their text is lost
    if not problems:
        return Table(frame=typed)
    if on_bad_rows == "skip":
        return Table(frame=_without(problems, typed), skipped=len(problems))
    row = min(problems)
    ids = [columns[f] for f, kind in kinds.items() if kind == "id"]
    found = _locate(path, row, raw, ids, sep=sep, header=header, encoding=encoding)
    if found is not None:
        raise _line_error(path, found[0], problems[row], found[1])
    return None


def read_csv_log(path: Path, columns: Mapping[str, str], *, sep: str = ",", header: bool = True,
                 encoding: str = "utf-8", on_bad_rows: str = "error",
                 kinds: Mapping[str, str] | None = None) -> Table:
    """Read the mapped ``columns`` of a delimited file into typed recrl fields.

    Example::

        table = read_csv_log(Path("log.csv"), {"user": "uid", "item": "iid", "time": "ts"})
    """
    kinds = dict(kinds) if kinds is not None else {field: field_kind(field) for field in columns}
    names, first_line = read_header(path, sep, header, encoding)
    check_columns(path, columns, names, first_line=first_line, sep=sep)
    raw = _fast_frame(path, names, sep=sep, header=header, encoding=encoding)
    table = None
    if raw is not None:
        table = _read_quickly(path, raw, columns, kinds, sep=sep, header=header, encoding=encoding,
                              on_bad_rows=on_bad_rows)
    if table is None:
        table = _read_slowly(path, names, columns, kinds, sep=sep, header=header, encoding=encoding,
                             on_bad_rows=on_bad_rows)
    if table.frame.empty:
        raise _no_rows(path, table.skipped, header)
    return table


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = [str(n) for n in pq.read_schema(path).names]
        if columns is None:
            return pd.read_parquet(path)
        return pd.read_parquet(path, columns=[c for c in dict.fromkeys(columns) if c in names])
    except (pa.ArrowException, OSError, ValueError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RecrlError(f"{path}: not a readable Parquet file ({reason}); check dataset.path and "
                         "dataset.format") from err


def read_parquet_log(path: Path, columns: Mapping[str, str], *, on_bad_rows: str = "error",
                     kinds: Mapping[str, str] | None = None) -> Table:
    """Read the mapped ``columns`` of a Parquet file; bad rows are named by their 1-based row number."""
    kinds = dict(kinds) if kinds is not None else {field: field_kind(field) for field in columns}
    raw = _read_parquet(path, list(columns.values()))
    check_columns(path, columns, [str(c) for c in raw.columns])
    _check_propensity(path, raw, columns)
    typed, problems = convert(_select(raw, columns), kinds, len(raw))
    if problems and on_bad_rows == "error":
        first = min(problems)
        raise RecrlError(f"{path}: row {first + 1}: {problems[first]}; {_FIX}")
    table = Table(frame=_without(problems, typed), skipped=len(problems))
    if table.frame.empty:
        raise _no_rows(path, table.skipped, header=False)
    return table


def _side_frame(path: Path, key: str, sep: str, encoding: str, on_bad_rows: str) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return _read_parquet(path)
    try:
        return pd.read_csv(path, sep=sep, engine="c", encoding=encoding, low_memory=False, dtype={key: str},
                           on_bad_lines="skip" if on_bad_rows == "skip" else "error")
    except pd.errors.EmptyDataError as err:
        raise RecrlError(f"{path} is empty: expected a header line and rows, or drop the side table") from err
    except (ValueError, UnicodeError, pd.errors.ParserError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise RecrlError(f"{path}: cannot parse the side table ({reason}); {_FIX}") from err
    except OSError as err:
        raise RecrlError(f"cannot read {path}: {err}") from err


def read_side_table(path: Path, key: str, like: np.ndarray, *, columns: Mapping[str, str] | None = None,
                    sep: str = ",", encoding: str = "utf-8", on_bad_rows: str = "error") -> pd.DataFrame:
    """A side table indexed by raw id (the ``key`` column), typed like the log's ids ``like``.

    ``columns`` maps feature names to the file's columns (all other columns when None). Rows with an
    empty id are dropped; of repeated ids the first row is kept.
    """
    raw = _side_frame(path, key, sep, encoding, on_bad_rows)
    raw.columns = [str(c) for c in raw.columns]
    features = dict(columns) if columns is not None else {c: c for c in raw.columns if c != key}
    features.pop("item", None)
    check_columns(path, {"item": key, **features}, list(raw.columns), setting="dataset.item_columns")
    ids, problems = convert_ids(raw[key].reset_index(drop=True), "item")
    if like.dtype == object:
        ids = np.asarray([str(i) for i in ids], dtype=object)
    table = pd.DataFrame({name: raw[column].to_numpy() for name, column in features.items()},
                         index=pd.Index(ids, name="item"))
    table = table[~bad_mask(problems, len(table))]
    return table[~table.index.duplicated(keep="first")]
