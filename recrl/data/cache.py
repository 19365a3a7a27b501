"""Prepared datasets on disk: Parquet tables + JSON metadata, keyed by sources and settings.

A cache entry is a folder ``<cache_dir>/data/<name>-<key>/`` whose key hashes the source files'
sha256 and the dataset + preprocessing settings. Entries are written to a temporary folder and
renamed into place, so a failed or interrupted preparation never leaves a half-written entry and
never touches an existing one. :meth:`recrl.data.base.FileDataset.load` prepares an entry under its
lock (:mod:`recrl.cachelock`), so parallel jobs missing the same entry prepare it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import recrl
from recrl.types import Interactions, RecrlError, Splits

CACHE_FORMAT = 3  # 2: logs have a watch column; 3: Coat's propensities (self-selected and randomized rows)
ROWS_ONLY = "_rows_only"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(files: list[Path], settings: dict[str, Any]) -> str:
    """Short hash of the files' checksums and the JSON-able ``settings``."""
    blob = json.dumps({"files": [file_sha256(p) for p in files], "settings": settings,
                       "format": CACHE_FORMAT, "recrl": recrl.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ids_frame(ids: np.ndarray | None) -> pd.DataFrame:
    return pd.DataFrame({"raw_id": ids if ids is not None else np.zeros(0, dtype=np.int64)})


def _write_tables(folder: Path, splits: Splits) -> None:
    inter = splits.interactions
    tables = {"train": inter.train, "valid": inter.valid, "test": splits.test, "items": inter.items,
              **({"users": splits.users} if splits.users is not None else {}),
              "user_ids": _ids_frame(splits.user_ids), "item_ids": _ids_frame(splits.item_ids)}
    if splits.ground_truth is not None:
        tables.update(gt_train=splits.ground_truth.train, gt_valid=splits.ground_truth.valid)
    for name, frame in tables.items():
        if frame.shape[1] == 0:  # Parquet drops the row count of a table without columns
            frame = pd.DataFrame({ROWS_ONLY: np.zeros(len(frame), dtype=np.int8)})
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    meta = {"format": CACHE_FORMAT, "n_users": inter.n_users, "n_items": inter.n_items,
            "positive_only": inter.positive_only, "has_ground_truth": splits.ground_truth is not None,
            "meta": splits.meta}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=_json_scalar))


def _json_scalar(value: Any) -> Any:
    """numpy numbers as Python numbers; anything else as its string."""
    return value.item() if isinstance(value, np.generic) else str(value)


def save_splits(folder: Path, splits: Splits) -> None:
    """Write ``splits`` to ``folder`` atomically (temp folder, then rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_tables(tmp, splits)
        if folder.exists():  # another process prepared it meanwhile: keep theirs
            shutil.rmtree(tmp)
            return
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_splits(folder: Path) -> Splits:
    """Read an entry written by :func:`save_splits`."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise RecrlError(f"{folder} was written by another recrl version; delete it to rebuild")
        read = {p.stem: pd.read_parquet(p) for p in folder.glob("*.parquet")}
        read = {k: v.drop(columns=[ROWS_ONLY]) if ROWS_ONLY in v else v for k, v in read.items()}
        n_users, n_items, positive = meta["n_users"], meta["n_items"], meta["positive_only"]
        inter = Interactions(train=read["train"], valid=read["valid"], items=read["items"],
                             n_users=n_users, n_items=n_items, positive_only=positive)
        ground_truth = None
        if meta["has_ground_truth"]:
            ground_truth = Interactions(train=read["gt_train"], valid=read["gt_valid"], items=read["items"],
                                        n_users=n_users, n_items=n_items, positive_only=positive)
        users = read["users"] if "users" in read and len(read["users"].columns) else None
        test, user_ids, item_ids = read["test"], read["user_ids"]["raw_id"], read["item_ids"]["raw_id"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecrlError(f"cache entry {folder} is unreadable ({type(err).__name__}: {err}); "
                         "delete it to rebuild") from err
    return Splits(interactions=inter, test=test, ground_truth=ground_truth, user_ids=user_ids.to_numpy(),
                  item_ids=item_ids.to_numpy(), users=users, meta=meta["meta"])
