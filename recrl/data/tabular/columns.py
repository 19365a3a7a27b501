"""Column mappings and headers of a delimited log: the ``field -> column`` mapping of
``dataset.columns``, the file's records split line by line (errors name the line), its header
and the check that every mapped column is there (with a hint when the delimiter looks wrong).
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from recrl.types import RecrlError

_DELIMITERS = (",", "\t", ";", "|", " ")


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
