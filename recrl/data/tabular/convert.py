"""Typing the raw columns of a log into recrl fields, row by row problems included.

Each field has a kind (:func:`field_kind`): raw ids that are all integers become ``int64`` (so
``9`` sorts before ``10``), otherwise they stay strings; ``time`` is numeric (fractional values are
floored) or a datetime / ISO 8601 date (read as Unix seconds); numbers are finite floats; extra
columns are numeric when every value is, else text. A converter returns the typed values and each
bad row's first problem (:data:`Problems`), which the readers turn into errors or skipped rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from recrl.env.signals import SIGNALS
from recrl.types import RecrlError

NA_TOKENS = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None"})
FIELD_KINDS = {"user": "id", "item": "id", "time": "time", "click": "number", "conversion": "number",
               "rating": "optional", "propensity": "optional", "leave": "optional"}
_INT_ID = r"[+-]?\d{1,18}"
_INT_LIMIT = 2.0**62
_EXACT_FLOAT_INT = 2.0**53  # whole floats below this are exact integers: ids read as floats become ints
_BOOLS = {"true": 1.0, "false": 0.0}

Problems = dict[int, str]  # row -> the first thing wrong with it
Converted = tuple[np.ndarray, Problems]


def field_kind(field: str) -> str:
    """How a field is typed: ``id``, ``time``, ``number`` (required), ``optional`` (NaN allowed:
    also every user signal, :mod:`recrl.env.signals`) or ``extra`` (numeric if every value is,
    else text; never an error)."""
    return FIELD_KINDS.get(field, "optional" if field in SIGNALS else "extra")


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
