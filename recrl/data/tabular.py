"""Interaction logs in any CSV or Parquet file (``dataset=csv``, ``dataset=parquet``).

``dataset.columns`` maps recrl's fields (``user``, ``item``, ``time``, ``rating``, ``click``,
``conversion``, ``watch``, ``propensity``, ``leave`` and any extra, e.g. ``is_like``) to the file's
column names. A CSV file is read with pandas' C parser; only when that finds something wrong is
it read again line by line, so that an error names the file and line (or, with
``dataset.on_bad_rows=skip``, the bad rows are dropped and counted).

Raw ids that are all integers become ``int64`` (so ``9`` sorts before ``10``); otherwise they
stay strings. ``time`` is numeric (fractional values are floored) or a datetime / ISO 8601 date
(read as Unix seconds).
"""

from __future__ import annotations

import codecs
import csv
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recrl.data.base import FileDataset
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.reader import Table
from recrl.types import RecrlError

FORMATS = ("csv", "parquet")
NA_TOKENS = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None"})
FIELD_KINDS = {"user": "id", "item": "id", "time": "time", "click": "number", "conversion": "number",
               "rating": "optional", "watch": "optional", "propensity": "optional", "leave": "optional"}
_INT_ID = r"[+-]?\d{1,18}"
_INT_LIMIT = 2.0**62
_EXACT_FLOAT_INT = 2.0**53  # whole floats below this are exact integers: ids read as floats become ints
_BOOLS = {"true": 1.0, "false": 0.0}
_DELIMITERS = (",", "\t", ";", "|", " ")
_FIX = "fix the file or set dataset.on_bad_rows=skip"

Problems = dict[int, str]  # row -> the first thing wrong with it
Converted = tuple[np.ndarray, Problems]


# ---------------------------------------------------------------------- typing columns
def field_kind(field: str) -> str:
    """How a field is typed: ``id``, ``time``, ``number`` (required), ``optional`` (NaN allowed) or
    ``extra`` (numeric if every value is, else text; never an error)."""
    return FIELD_KINDS.get(field, "extra")


def _text(series: pd.Series) -> pd.Series:
    """Stripped strings; missing values become empty strings."""
    return series.astype(object).where(series.notna(), "").astype(str).str.strip()


def _explain(problems: Problems, mask: np.ndarray, shown: pd.Series | None, message: str) -> None:
    """Note ``message`` (``{value}``: the row's value in ``shown``) for rows where ``mask`` holds and
    none is noted yet."""
    for row in np.flatnonzero(mask):
        if int(row) not in problems:
            value = "" if shown is None else repr(str(shown.iat[row])[:50])
            problems[int(row)] = message.format(value=value)


def bad_mask(problems: Problems, n: int) -> np.ndarray:
    """``[n]`` True on the rows that have a problem."""
    mask = np.zeros(n, dtype=bool)
    mask[list(problems)] = True
    return mask


def _without(problems: Problems, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` without problems, renumbered."""
    return frame[~bad_mask(problems, len(frame))].reset_index(drop=True)


def _exact_ints(series: pd.Series) -> bool:
    """An integer column without missing values that fits ``int64``."""
    if not pd.api.types.is_integer_dtype(series.dtype) or series.isna().any():
        return False
    return pd.api.types.is_signed_integer_dtype(series.dtype) or series.empty or int(series.max()) < 2**63


def _exact_wholes(values: np.ndarray) -> bool:
    """Every value is a whole number that a float holds exactly (below 2**53)."""
    return bool((np.isfinite(values) & (values == np.floor(values)) & (abs(values) < _EXACT_FLOAT_INT)).all())


def convert_ids(series: pd.Series, field: str) -> Converted:
    """Raw ids: ``int64`` when every present id is an integer, else strings; empty ids are bad."""
    n = len(series)
    if _exact_ints(series):
        return series.to_numpy(dtype=np.int64), {}
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if _exact_wholes(values):
            return values.astype(np.int64), {}
    text = _text(series)
    missing = text.isin(NA_TOKENS).to_numpy()
    problems: Problems = {}
    _explain(problems, missing, None, f"empty {field} id")
    present = text[~missing]
    values = np.zeros(n, dtype=np.int64)
    if present.str.fullmatch(_INT_ID).all():
        values[~missing] = present.astype(np.int64).to_numpy()
        return values, problems
    numbers = pd.to_numeric(present, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if _exact_wholes(numbers):
        values[~missing] = numbers.astype(np.int64)  # e.g. "3.0", as pandas reads a float column
        return values, problems
    return text.to_numpy(dtype=object), problems


def _numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray, pd.Series | None]:
    """Float values, where the value was missing, and the text (None for numeric columns)."""
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = np.array(series.to_numpy(dtype=np.float64, na_value=np.nan))
        return values, np.isnan(values), None
    text = _text(series)
    missing = text.isin(NA_TOKENS)
    flags = text.str.lower().map(_BOOLS)  # True/False, as pandas reads a boolean column
    values = pd.to_numeric(text.mask(missing | flags.notna()), errors="coerce").fillna(flags)
    return np.array(values.to_numpy(dtype=np.float64, na_value=np.nan)), missing.to_numpy(), text


def convert_numbers(series: pd.Series, field: str, required: bool = True) -> Converted:
    """Finite floats; non-numeric tokens are bad, and so are empty values when ``required``."""
    values, missing, text = _numbers(series)
    problems: Problems = {}
    if required:
        _explain(problems, missing, None, f"empty {field}")
    _explain(problems, ~missing & np.isnan(values), text, f"non-numeric {field} {{value}}")
    _explain(problems, np.isinf(values), series if text is None else text, f"{field} {{value}} is not finite")
    values[missing] = np.nan
    return values, problems


def _dates(series: pd.Series) -> bool:
    """A datetime column, or text of which no present value is a number (then read as dates)."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return True
    if pd.api.types.is_numeric_dtype(series.dtype):
        return False
    text = _text(series)
    present = text[~text.isin(NA_TOKENS)]
    return not present.empty and bool(pd.to_numeric(present, errors="coerce").isna().all())


def convert_dates(series: pd.Series, field: str) -> Converted:
    """Unix seconds of datetimes or ISO 8601 date strings (naive times taken as UTC)."""
    text = None if pd.api.types.is_datetime64_any_dtype(series.dtype) else _text(series)
    missing = series.isna().to_numpy() if text is None else text.isin(NA_TOKENS).to_numpy()
    try:
        parsed = pd.to_datetime(series if text is None else text.mask(missing), errors="coerce", utc=True,
                                format=None if text is None else "ISO8601")
        stamps = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[s]")
    except (ValueError, TypeError, OverflowError):
        stamps = np.full(len(series), np.datetime64("NaT"), dtype="datetime64[s]")
    problems: Problems = {}
    _explain(problems, missing, None, f"empty {field}")
    _explain(problems, np.isnat(stamps), series if text is None else text,
             f"{field} {{value}} is neither a number nor an ISO 8601 date")
    return np.where(np.isnat(stamps), 0, stamps.astype(np.int64)), problems


def convert_time(series: pd.Series, field: str, scale: float = 1.0) -> Converted:
    """Integer times: ``floor(value)``, or ``value * scale`` rounded (seconds -> milliseconds);
    datetimes become Unix seconds; empty, non-numeric or huge values are bad."""
    if _exact_ints(series) and scale == 1.0:
        return series.to_numpy(dtype=np.int64), {}
    if _dates(series):
        return convert_dates(series, field)
    values, problems = convert_numbers(series, field)
    with np.errstate(invalid="ignore", over="ignore"):
        values = np.floor(values) if scale == 1.0 else np.rint(values * scale)
        huge = abs(values) >= _INT_LIMIT
    _explain(problems, huge, None, f"{field} out of range")
    return np.where(bad_mask(problems, len(values)), 0, values).astype(np.int64), problems


def convert_extra(series: pd.Series, field: str) -> Converted:
    """Numbers when every present value is numeric, else stripped text (missing -> None)."""
    values, missing, text = _numbers(series)
    if text is None or not np.isnan(values[~missing]).any():
        return values, {}
    return text.mask(missing, None).to_numpy(dtype=object), {}


_CONVERTERS: dict[str, Callable[[pd.Series, str], Converted]] = {
    "id": convert_ids, "time": convert_time, "number": convert_numbers, "extra": convert_extra,
    "optional": lambda s, f: convert_numbers(s, f, required=False),
    "time_s": lambda s, f: convert_time(s, f, scale=1000.0),  # seconds -> integer milliseconds
}


def convert(fields: Mapping[str, pd.Series], kinds: Mapping[str, str],
            n: int) -> tuple[pd.DataFrame, Problems]:
    """Typed columns for the ``n`` rows of ``fields`` and each bad row's first problem."""
    problems: Problems = {}
    out: dict[str, np.ndarray] = {}
    for field, kind in kinds.items():
        if kind not in _CONVERTERS:
            raise RecrlError(f"field {field!r}: unknown kind {kind!r}; use one of {', '.join(_CONVERTERS)}")
        out[field], found = _CONVERTERS[kind](fields[field].reset_index(drop=True), field)
        for row, problem in found.items():
            problems.setdefault(row, problem)
    return pd.DataFrame(out, index=pd.RangeIndex(n)), problems


# ---------------------------------------------------------------------- mappings and headers
def column_map(columns: Mapping[str, Any] | None, default: dict[str, str]) -> dict[str, str]:
    """A plain ``field -> column`` dict (Hydra passes a DictConfig) with ``user`` and ``item``."""
    if columns is None:
        return dict(default)
    if not isinstance(columns, Mapping):
        raise RecrlError(f"dataset.columns={columns!r}: use a mapping such as "
                         "{user: user_id, item: item_id}")
    mapping = {str(k): str(v) for k, v in dict(columns).items() if v is not None}
    missing = [f for f in ("user", "item") if not mapping.get(f)]
    if missing:
        raise RecrlError(f"dataset.columns has no {' or '.join(missing)} entry: map it to the file's column, "
                         f"e.g. dataset.columns.{missing[0]}={missing[0]}_id")
    return mapping


def _unique_names(names: list[str]) -> list[str]:
    """Header names stripped of spaces and BOM; repeats get ``.1``, ``.2``... as in pandas."""
    seen: dict[str, int] = {}
    out = []
    for i, raw in enumerate(names):
        name = (raw.lstrip("\ufeff") if i == 0 else raw).strip()
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}.{count}")
    return out


def _undecodable_line(path: Path, encoding: str) -> int:
    """The number of the first line that ``encoding`` cannot decode (0 if none is found)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError:
                return number
    return 0


def _lines(path: Path, encoding: str) -> Iterator[str]:
    """The file's lines, newlines kept (for csv); an undecodable line is an error naming it."""
    try:
        with open(path, encoding=encoding, newline="") as f:
            yield from f
    except UnicodeDecodeError as err:
        raise RecrlError(f"{path}:{_undecodable_line(path, encoding)}: cannot decode the line as {encoding} "
                         f"({err.reason}); set dataset.encoding (e.g. latin-1)") from err
    except OSError as err:
        raise RecrlError(f"cannot read {path}: {err}") from err


def records(path: Path, sep: str, encoding: str) -> Iterator[tuple[int, list[str] | None, str]]:
    """``(first line number, fields, problem)`` of each non-blank record; fields is None when the
    record cannot be split (e.g. a field beyond the csv module's size limit)."""
    reader = csv.reader(_lines(path, encoding), delimiter=sep)
    end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield end + 1, None, f"cannot split the line ({err})"
            end = reader.line_num
            continue
        start, end = end + 1, reader.line_num
        if len(fields) > 1 or (fields and fields[0].strip()):
            yield start, fields, ""


def read_header(path: Path, sep: str, header: bool, encoding: str = "utf-8") -> tuple[list[str], str]:
    """The column names (positions ``"0"``, ``"1"``... without a header) and the first line's text."""
    for number, fields, problem in records(path, sep, encoding):
        if fields is None:
            raise RecrlError(f"{path}:{number}: cannot read the first line ({problem})")
        names = _unique_names(fields) if header else [str(i) for i in range(len(fields))]
        return names, sep.join(fields)
    what = "a header line and data rows" if header else "data rows"
    raise RecrlError(f"{path} is empty: expected {what}")


def check_columns(path: Path, columns: Mapping[str, str], names: list[str], *, first_line: str | None = None,
                  sep: str = ",", setting: str | None = "dataset.columns", fix: str | None = None) -> None:
    """Every mapped column exists (else an error naming ``setting.field``, or the field when
    ``setting`` is None, and ``fix``); a single-field first line means a wrong delimiter."""
    wanted = list(dict.fromkeys(columns.values()))
    if first_line is not None and len(names) == 1 and len(wanted) > 1:
        guesses = [d for d in _DELIMITERS if d != sep and len(first_line.split(d)) >= len(wanted)]
        hint = f" (sep={guesses[0]!r} splits it into {len(first_line.split(guesses[0]))})" if guesses else ""
        raise RecrlError(f"{path}: wrong delimiter? the header splits into 1 field with sep={sep!r} but "
                         f"dataset.columns maps {len(wanted)} columns{hint}; set dataset.sep "
                         f"(first line: {first_line[:100]!r})")
    for field, column in columns.items():
        if column not in names:
            where = f"{setting}.{field}" if setting else f"the {field} field"
            raise RecrlError(f"{path}: column {column!r} ({where}) is not in the file; its columns are: "
                             f"{column_list(names)}; {fix or f'fix {setting}'}")


def column_list(names: list[str], limit: int = 40) -> str:
    """The names for an error message, on one line."""
    listing = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return listing.replace("\r", "\\r").replace("\n", "\\n")


def _select(raw: pd.DataFrame, columns: Mapping[str, str]) -> dict[str, pd.Series]:
    return {field: raw[column] for field, column in columns.items()}


def _no_rows(path: Path, skipped: int, header: bool) -> RecrlError:
    if skipped:
        return RecrlError(f"{path}: no valid data rows ({skipped} malformed rows skipped); fix the file")
    return RecrlError(f"{path} has {'a header but ' if header else ''}no data rows; add interactions")


# ---------------------------------------------------------------------- CSV
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


# ---------------------------------------------------------------------- Parquet and side tables
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


# ---------------------------------------------------------------------- the dataset
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
            ``rating``, ``click``, ``conversion``, ``watch``, ``propensity``, ``leave`` and extras
            are optional.
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
