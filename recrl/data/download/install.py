"""Installing a dataset: fetch it, check it, unpack it and rename it into place.

:func:`download` is the whole job behind ``recrl data download <name>``. Nothing is fetched when
the folder already holds every file with the expected digest. An archive is unpacked into a temp
folder next to the target and every file is checked *before* that folder is renamed into place,
so a loader never sees a half-written or altered folder; on any failure the temp files are
removed and an existing folder is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from recrl.data.download.catalogue import ENV_VAR, HELP_POINTER, DatasetSource, dataset_source
from recrl.data.download.checks import check_archive_digest, is_present, verify_files
from recrl.data.download.extract import extract_archive
from recrl.data.download.fetch import fetch_file, resolve_url
from recrl.types import RecrlError


def _swap_in(new: Path, target: Path, staging: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is first moved aside into ``staging``."""
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
        return
    previous = staging / "previous"
    os.replace(target, previous)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(previous, target)
        raise


def _install_archive(source: DatasetSource, archive: Path, target: Path, url: str) -> None:
    """Unpack into a temp folder next to ``target``, verify every file, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.part-"))
    try:
        raw = staging / "raw"
        raw.mkdir()
        label = f"the {source.name} archive from {url}"
        extract_archive(source, archive, raw, label)
        root = raw / source.member_prefix.rstrip("/") if source.member_prefix else raw
        if not root.is_dir():
            raise RecrlError(f"{label} has no top folder {source.member_prefix!r}; the upstream layout "
                             f"may have changed: fetch it by hand into {target} ({HELP_POINTER})")
        verify_files(source, {rel: root / rel for rel in source.expected_files}, url)
        _swap_in(root, target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install_file(source: DatasetSource, downloaded: Path, target: Path, url: str) -> None:
    """Verify a single downloaded file, then rename it into ``target``."""
    (rel,) = source.expected_files
    verify_files(source, {rel: downloaded}, url)
    dest = target / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, dest)


def download(name: str, data_dir: Path | str, *, url: str | None = None, force: bool = False,
             progress: bool | None = None) -> Path:
    """Download, check and install dataset ``name`` under ``data_dir``; return its folder.

    Nothing is fetched when the folder already holds every expected file with the expected
    digest (unless ``force``). ``url`` replaces the registry URL (http://, https://, file:// or
    a local path), e.g. for a mirror or a copy fetched by hand. ``progress``: the download's
    progress bar, ``None`` only when stderr is a terminal. On any failure the temp files are
    removed and an existing folder is left as it was.
    """
    source = dataset_source(name)
    root = Path(data_dir).expanduser()
    target = root / source.folder
    if not force and is_present(source, target):
        print(f"{name}: already present in {target}")
        return target
    fetch_url = resolve_url(url or source.url)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=root, prefix=f".{name}-", suffix=".download")
    except OSError as err:
        raise RecrlError(f"cannot write to the data dir {root}: {err}; pass another --data-dir or set "
                         f"{ENV_VAR}") from err
    os.close(handle)
    temp = Path(temp_name)
    try:
        fetch_file(fetch_url, temp, target, label=name, progress=progress)
        check_archive_digest(source, temp, fetch_url)
        if source.archive == "file":
            _install_file(source, temp, target, fetch_url)
        else:
            _install_archive(source, temp, target, fetch_url)
    finally:
        temp.unlink(missing_ok=True)
    print(f"{name}: downloaded and checked into {target}")
    return target
