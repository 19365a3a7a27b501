"""Base class of file-backed datasets: check the files, read, preprocess, cache."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from recrl.cachelock import build_once
from recrl.data.cache import cache_key, load_splits, save_splits
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.reader import check_policy
from recrl.types import RecrlError, Splits


class FileDataset(ABC):
    """A dataset read from files under ``root``.

    Subclasses set ``name`` (and ``download_name`` when ``recrl data download`` knows it),
    list their files in :meth:`required_files` and turn them into a :class:`RawLog` in
    :meth:`read`. :meth:`load` does the rest: a clear message for missing files, a cache hit
    when the files and settings are unchanged, otherwise read + preprocess + atomic cache write
    (one process at a time per entry: parallel jobs prepare the same data once, :mod:`recrl.cachelock`).

    Example::

        splits = MovieLens100K(root="../shared/data/ml-100k").load()
    """

    name: ClassVar[str] = "dataset"
    download_name: ClassVar[str | None] = None

    def __init__(self, root: str, preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None) -> None:
        check_policy(on_bad_rows)
        self.root = Path(root).expanduser()
        self.preprocess = preprocess or Preprocessing()
        self.on_bad_rows = on_bad_rows
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.last_load: dict[str, Any] = {}

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def required_files(self) -> list[Path]:
        """Files that must exist (their checksums key the cache)."""

    def optional_files(self) -> list[Path]:
        """Files used when present (side information); they key the cache too."""
        return []

    @abstractmethod
    def read(self) -> RawLog:
        """Parse the files into a raw log."""

    # ------------------------------------------------------------------ shared
    def settings(self) -> dict[str, Any]:
        """Everything that changes the prepared result besides the files (for the cache key)."""
        own = {k: v for k, v in vars(self).items()
               if k not in ("root", "preprocess", "cache_dir", "last_load")}
        return {"class": type(self).__name__, **own, "preprocess": self.preprocess.fingerprint()}

    def check_files(self) -> list[Path]:
        """The files the cache key covers; a one-line error naming what is missing and where."""
        missing = [p for p in self.required_files() if not p.is_file()]
        if missing:
            raise RecrlError(self._missing_message(missing))
        return self.required_files() + [p for p in self.optional_files() if p.is_file()]

    def _missing_message(self, missing: list[Path]) -> str:
        from recrl.data.download import DATASETS, missing_message

        if self.download_name in DATASETS:
            return f"dataset {self.name}: " + missing_message(
                self.download_name, self.root, [str(p.relative_to(self.root)) for p in missing])
        names = ", ".join(p.name for p in missing)
        return (f"dataset {self.name}: {names} not found in {self.root.resolve()}; point dataset.root "
                "(or data_dir / RECRL_DATA_DIR) at the folder that has it")

    def load(self) -> Splits:
        """Prepared splits, from the cache when the files and settings are unchanged."""
        start = time.perf_counter()
        files = self.check_files()
        if self.cache_dir is None:
            splits = self.preprocess(self.read(), release=True)
            self.last_load = {"cache": "disabled", "seconds": time.perf_counter() - start}
            return splits
        key = cache_key(files, self.settings())
        folder = self.cache_dir / "data" / f"{self.name}-{key}"
        splits, cached = build_once(folder, f"prepared {self.name} data", lambda: self._cached(folder),
                                    lambda: self._prepare(folder))
        self.last_load = {"cache": "hit" if cached else "miss", "folder": str(folder),
                          "seconds": time.perf_counter() - start}
        return splits

    def _cached(self, folder: Path) -> Splits | None:
        """The cache entry ``folder`` when it exists (complete: entries appear by one rename)."""
        return load_splits(folder) if (folder / "meta.json").is_file() else None

    def _prepare(self, folder: Path) -> Splits:
        """Read and preprocess the files, and write the result to the cache entry ``folder``."""
        splits = self.preprocess(self.read(), release=True)
        splits.meta.setdefault("name", self.name)
        save_splits(folder, splits)
        return splits
