"""Reading delimited interaction files fast, with errors that point at the offending line.

The fast path is pandas' C parser. When it fails (or bad rows are to be skipped), a line-by-line
pass finds each malformed line: with ``on_bad_rows="error"`` the first one becomes a one-line
:class:`~recrl.types.RecrlError` naming the file, line number and text; with ``"skip"`` bad lines
are dropped and counted.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recrl.types import RecrlError

BAD_ROW_POLICIES = ("error", "skip")
_UNKNOWN = frozenset({"", "nan", "none", "null", "na", "n/a"})  # propensity text that means unknown


def propensity_problems(values: object) -> dict[str, int]:
    """Rows of a ``propensity`` column that are not a probability in (0, 1]: counts of
    ``non-numeric`` (text that is not a number, or infinite), ``not above 0`` and ``above 1``
    values. NaN, ``None`` and empty or NA text mean unknown and are fine."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(series.dtype):
        numbers = series.astype(np.float64).to_numpy()
        unknown = np.zeros(len(series), dtype=bool)
    elif pd.api.types.is_numeric_dtype(series.dtype):
        numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
        unknown = np.isnan(numbers)
    else:
        text = series.astype(object).where(series.notna(), "").astype(str).str.strip()
        unknown = text.str.lower().isin(_UNKNOWN).to_numpy()
        numbers = pd.to_numeric(text.mask(unknown), errors="coerce")
        numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~unknown
    with np.errstate(invalid="ignore"):
        return {"non-numeric": int((known & ~np.isfinite(numbers)).sum()),
                "not above 0": int((known & np.isfinite(numbers) & (numbers <= 0)).sum()),
                "above 1": int((known & np.isfinite(numbers) & (numbers > 1)).sum())}


def check_propensities(values: object, where: str, column: str = "propensity") -> None:
    """One :class:`RecrlError` line naming ``where`` (the file), the ``column`` (the file's name of
    the ``propensity`` field) and how many rows
    are not a probability in (0, 1] (see :func:`propensity_problems`); NaN / empty (unknown) is
    fine. The check does not depend on ``dataset.on_bad_rows``: dropping rows by their propensity
    would silently change the logged distribution that off-policy evaluation reweights."""
    problems = propensity_problems(values)
    bad = sum(problems.values())
    if bad:
        kinds = ", ".join(f"{count} {kind}" for kind, count in problems.items() if count)
        label = repr(column) if column == "propensity" else f"{column!r} (dataset.columns.propensity)"
        raise RecrlError(f"{where}: column {label} has {bad} row(s) that are not a "
                         f"probability in (0, 1] ({kinds}); fix them, or leave them empty (unknown) to "
                         "have them estimated")


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"integer {text} does not fit in 64 bits")
    return value


_CONVERTERS: dict[str, Callable[[str], object]] = {"int": _int64, "float": float, "str": str}


@dataclass
class Table:
    """A parsed file: its rows and how many malformed lines were skipped."""

    frame: pd.DataFrame
    skipped: int = 0


def check_policy(on_bad_rows: str) -> None:
    """Reject anything but ``error`` or ``skip``."""
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise RecrlError(f"dataset.on_bad_rows={on_bad_rows!r}: use one of {', '.join(BAD_ROW_POLICIES)}")


def open_text(path: Path, encoding: str) -> io.TextIOBase:
    """Open a text file, transparently decompressing ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    try:
        with open_text(path, encoding) as f:
            for number, line in enumerate(f, start=1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise RecrlError(f"{path}: cannot decode as {encoding} ({err.reason} at byte {err.start}); "
                         "is this the right file?") from err
    except (OSError, EOFError) as err:
        raise RecrlError(f"cannot read {path}: {err}") from err


def parse_lines(path: Path, *, sep: str, columns: dict[str, str], encoding: str = "utf-8",
                on_bad_rows: str = "error", skip_header: bool = False,
                min_fields: int | None = None) -> Table:
    """Parse ``path`` line by line: each non-empty line splits on ``sep`` into ``columns``
    (name -> ``int``/``float``/``str``). Extra fields are an error unless ``min_fields`` is set,
    in which case only the first ``len(columns)`` are kept."""
    check_policy(on_bad_rows)
    names, kinds = list(columns), [_CONVERTERS[k] for k in columns.values()]
    values: list[list[object]] = [[] for _ in names]
    skipped = 0
    for number, line in _lines(path, encoding):
        if (skip_header and number == 1) or not line.strip():
            continue
        fields = line.split(sep) if sep != " " else line.split()
        try:
            if len(fields) != len(names) and (min_fields is None or len(fields) < len(names)):
                raise ValueError(f"expected {len(names)} fields separated by {sep!r}, found {len(fields)}")
            row = [convert(field.strip()) for convert, field in zip(kinds, fields, strict=False)]
        except ValueError as err:
            if on_bad_rows == "skip":
                skipped += 1
                continue
            reason = str(err).split(":")[0] if "invalid literal" in str(err) else str(err)
            raise RecrlError(f"{path}:{number}: malformed line ({reason}): {line[:200]!r}; fix the file "
                             "or set dataset.on_bad_rows=skip") from err
        for column, value in zip(values, row, strict=False):
            column.append(value)
    frame = pd.DataFrame({n: np.asarray(v, dtype=_dtype(k)) for n, v, k in
                          zip(names, values, columns.values(), strict=True)})
    return Table(frame=frame, skipped=skipped)


def _kind_ok(series: pd.Series, kind: str) -> bool:
    if kind == "int":
        return pd.api.types.is_integer_dtype(series)
    if kind == "float":
        return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    return True


def _dtype(kind: str) -> object:
    return {"int": np.int64, "float": np.float64, "str": object}[kind]


CHUNK_ROWS = 65_536  # rows per parsed chunk: bounds the parser's buffers (~7 MB)


def count_lines(path: Path) -> int:
    """Number of lines (an upper bound on rows), streaming the file in blocks."""
    opener = gzip.open if path.suffix == ".gz" else open
    count, last = 0, b"\n"
    with opener(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


class ChunkedColumns:
    """Preallocated columns filled chunk by chunk: the whole file is never held twice."""

    def __init__(self, columns: dict[str, str], capacity: int) -> None:
        self.kinds = columns
        self.arrays = {n: np.empty(capacity, dtype=_dtype(k)) for n, k in columns.items()}
        self.size = 0

    def add(self, chunk: pd.DataFrame) -> bool:
        """Append a parsed chunk; ``False`` when it has the wrong shape or kinds."""
        if chunk.shape[1] != len(self.kinds) or chunk.isna().to_numpy().any():
            return False
        chunk.columns = list(self.kinds)
        if not all(_kind_ok(chunk[n], k) for n, k in self.kinds.items()):
            return False
        end = self.size + len(chunk)
        if end > len(next(iter(self.arrays.values()))):
            return False
        for name, array in self.arrays.items():
            array[self.size:end] = chunk[name].to_numpy()
        self.size = end
        return True

    def frame(self) -> pd.DataFrame:
        """The filled rows as a frame over the preallocated arrays (no copy)."""
        return pd.DataFrame({n: a[:self.size] for n, a in self.arrays.items()}, copy=False)


def read_delimited(path: Path, *, sep: str, columns: dict[str, str], encoding: str = "utf-8",
                   on_bad_rows: str = "error", skip_header: bool = False) -> Table:
    """Read a single-character-delimited file fast; fall back to :func:`parse_lines` for errors.

    The fast path parses chunks with pandas' C parser into preallocated columns, so peak memory
    stays near the size of the result; any chunk with a wrong field count, a missing value or a
    non-numeric entry sends the whole file through the line-by-line pass, which names the line.
    """
    check_policy(on_bad_rows)
    try:
        fill = ChunkedColumns(columns, count_lines(path))
        reader = pd.read_csv(path, sep=sep if sep != " " else r"\s+", header=None, encoding=encoding,
                             skiprows=1 if skip_header else 0, engine="c", on_bad_lines="error",
                             skip_blank_lines=True, chunksize=CHUNK_ROWS)
        with reader:
            if all(fill.add(chunk) for chunk in reader):
                return Table(frame=fill.frame())
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OverflowError):
        pass  # the line-by-line pass says which line is wrong
    except (OSError, EOFError) as err:
        raise RecrlError(f"cannot read {path}: {err}") from err
    return parse_lines(path, sep=sep, columns=columns, encoding=encoding, on_bad_rows=on_bad_rows,
                       skip_header=skip_header)
