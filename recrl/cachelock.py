"""One builder per cache entry across processes: parallel jobs (a sweep, several shells) that need
the same prepared data, behavior model or text embeddings build it once; the others wait and load it.

An entry ``<cache_dir>/<kind>/<name>`` is guarded by the lock file
``<cache_dir>/locks/<kind>/<name>.lock`` (kept apart from the entries, so that a cache folder holds
entries only). :func:`build_once` is the whole pattern: look for the entry; when it is missing,
take the entry's lock, look again (another process may have built it while this one waited), and
only then build it. The build itself must write the entry atomically (temp file + rename,
:mod:`recrl.fileio`), so a reader never sees a partial entry, locked or not.

The locks are :class:`filelock.FileLock`: on POSIX an ``flock`` on the lock file, which the kernel
drops when its holder exits, however it exits (crash, ``kill -9``, Ctrl-C). A lock file left on
disk is therefore never a stale lock: it is reused by the next build and may be deleted at any
time when no recrl job runs. (On a file system without ``flock``, filelock falls back to a marker
file and breaks the markers of dead holders itself.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

LOCK_DIR = "locks"
POLL_SECONDS = 0.1  # how often a waiting process retries: a waiting job stops on Ctrl-C within this

T = TypeVar("T")
logger = logging.getLogger(__name__)


def lock_path(entry: Path) -> Path:
    """The lock file of the cache entry ``<cache_dir>/<kind>/<name>``:
    ``<cache_dir>/locks/<kind>/<name>.lock``.

    Example::

        lock_path(Path(".recrl_cache/behavior/simulator-0123abcd.pt"))
        # .recrl_cache/locks/behavior/simulator-0123abcd.pt.lock
    """
    entry = Path(entry)
    return entry.parent.parent / LOCK_DIR / entry.parent.name / f"{entry.name}.lock"


@contextlib.contextmanager
def entry_lock(entry: Path, what: str = "cache entry") -> Iterator[None]:
    """Hold the exclusive inter-process lock of the cache entry ``entry`` (see :func:`lock_path`).

    When another process holds it, say so at INFO level (``what`` names the entry for the user),
    wait for it, then say how long the wait took. The wait polls, so Ctrl-C stops it at once.

    Example::

        with entry_lock(path, "simulator behavior model"):
            if not path.is_file():
                build_and_write_atomically(path)
    """
    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _wait_for(lock, entry, what)
    try:
        yield
    finally:
        lock.release()


def _wait_for(lock: FileLock, entry: Path, what: str) -> None:
    """Block until ``lock`` is ours, logging why this process pauses and for how long."""
    logger.info("another process is building the %s %s; waiting for it (lock %s)", what, entry,
                lock.lock_file)
    start = time.perf_counter()
    lock.acquire(timeout=-1, poll_interval=POLL_SECONDS)
    logger.info("waited %.1fs for the %s %s", time.perf_counter() - start, what, entry)


def build_once(entry: Path, what: str, load: Callable[[], T | None],
               build: Callable[[], T]) -> tuple[T, bool]:
    """``(value, cached)``: the cache entry ``entry`` loaded by ``load`` (``cached=True``), or built by
    ``build`` under the entry's lock when ``load`` finds nothing usable (``cached=False``).

    ``load`` returns ``None`` for a missing or unusable entry; it runs once without the lock (a hit
    costs no locking) and once more holding it when the entry appeared or changed meanwhile, so that
    of several processes missing the same entry together exactly one builds it and the others load
    its result. ``build`` must write the entry atomically before it returns.

    Example::

        splits, cached = build_once(folder, "prepared data", read_entry, prepare_and_write)
    """
    value = load()
    if value is not None:
        return value, True
    seen = _stamp(entry)
    with entry_lock(entry, what):
        if seen is None or _stamp(entry) != seen:  # it appeared or was replaced while we waited
            value = load()
            if value is not None:
                return value, True
        return build(), False


def _stamp(entry: Path) -> tuple[int, int, int] | None:
    """What tells one version of ``entry`` from another (inode, mtime, size); ``None`` when missing.

    An unusable entry that nobody replaced is not loaded (and reported) a second time."""
    try:
        stat = Path(entry).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
