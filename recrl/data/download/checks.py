"""Checksums: every file of a dataset is checked against the catalogue before it is installed.

A file is checked by its sha256 (``DatasetSource.files``) or, where only that is known, by its git
blob id (``DatasetSource.files_git_blob``); a downloaded archive is also checked against
``DatasetSource.archive_sha256`` when the catalogue gives it. A mismatch or a missing file is a
one-line :class:`~recrl.types.RecrlError` that says what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from recrl.data.download.catalogue import CHUNK_BYTES, HELP_POINTER, DatasetSource
from recrl.types import RecrlError


def _hash_file(path: Path, digest: hashlib._Hash) -> str:
    """Feed ``path`` to ``digest`` in chunks and return the hex digest."""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    return _hash_file(path, hashlib.sha256())


def git_blob_sha1(path: Path) -> str:
    """Git blob id of the file at ``path``: sha1 over ``b"blob <len>\\0" + content``."""
    header = f"blob {path.stat().st_size}\0".encode()
    return _hash_file(path, hashlib.sha1(header, usedforsecurity=False))


CHECKS: tuple[tuple[str, str, Callable[[Path], str]], ...] = (
    ("files", "sha256", sha256_file),
    ("files_git_blob", "git blob sha1", git_blob_sha1),
)


def _mismatches(source: DatasetSource, paths: dict[str, Path]) -> list[tuple[str, str, str, str]]:
    """``(relative path, digest kind, expected, actual)`` for every failed check; actual may be 'missing'."""
    failed = []
    for attribute, kind, digest in CHECKS:
        for rel, expected in getattr(source, attribute).items():
            path = paths[rel]
            actual = digest(path) if path.is_file() else "missing"
            if actual != expected.lower():
                failed.append((rel, kind, expected, actual))
    return failed


def is_present(source: DatasetSource, target: Path) -> bool:
    """Whether ``target`` already holds every expected file with the expected digest."""
    return target.is_dir() and not _mismatches(source, {rel: target / rel for rel in source.expected_files})


def verify_files(source: DatasetSource, paths: dict[str, Path], url: str) -> None:
    """Raise a RecrlError naming the first file that is missing or has the wrong digest."""
    failed = _mismatches(source, paths)
    if not failed:
        return
    rel, kind, expected, actual = failed[0]
    shown = f"{source.folder}/{rel}"
    if actual == "missing":
        raise RecrlError(f"{shown} is missing from the download of {url}; the upstream layout may have "
                         f"changed: fetch it by hand ({HELP_POINTER})")
    raise RecrlError(f"checksum mismatch for {shown}: expected {kind} {expected}, got {actual}; the download "
                     f"may be corrupt or the upstream file changed: retry, or fetch {url} by hand "
                     f"({HELP_POINTER})")


def check_archive_digest(source: DatasetSource, path: Path, url: str) -> None:
    """Compare the downloaded archive with ``archive_sha256`` when it is known."""
    if source.archive_sha256 is None:
        return
    actual = sha256_file(path)
    if actual != source.archive_sha256.lower():
        raise RecrlError(f"checksum mismatch for the {source.name} archive from {url}: expected sha256 "
                         f"{source.archive_sha256}, got {actual}; the download may be corrupt or the "
                         f"upstream file changed: retry, or fetch it by hand ({HELP_POINTER})")

