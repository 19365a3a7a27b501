"""Fetch the public datasets recrl's loaders read, check them file by file and unpack them safely.

``recrl data download ml100k`` puts MovieLens-100K under ``$RECRL_DATA_DIR/ml-100k`` (default
``./data/ml-100k``). Every file is checked (sha256, or its git blob id where only that is known)
*before* the unpacked folder is renamed into place, so a loader never sees a half-written or
altered folder. Archives are unpacked member by member after a check of every member: absolute
paths, ``..`` components, links that could leave the tree and device files are refused.

The datasets are not redistributed by recrl: each entry names its licence and what to cite.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from recrl.types import RecrlError

ArchiveKind = Literal["zip", "tar.gz", "file"]
ARCHIVE_KINDS: tuple[str, ...] = ("zip", "tar.gz", "file")
ENV_VAR = "RECRL_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")
URL_SCHEMES = ("http", "https", "file")
CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60.0
USER_AGENT = "recrl-data-download/0.1 (+https://pypi.org/project/recrl)"
HELP_POINTER = "see `recrl data download --help`"
SPECIAL_MODES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from, where it goes and how to check it.

    Attributes:
        name: registry key, used on the command line (``recrl data download <name>``).
        url: the official public URL of the archive or file.
        archive: ``"zip"``, ``"tar.gz"`` or ``"file"`` (a single file, not unpacked).
        folder: sub-folder of the data dir the loaders read (``"ml-100k"``, ``"seq/s3rec"``).
        licence: one line: the terms of use and what to cite.
        description: one line: what the data is.
        files: path inside ``folder`` -> expected sha256 of the file after unpacking.
        files_git_blob: path inside ``folder`` -> expected git blob id (``git hash-object``),
            for files whose sha256 is not known.
        archive_sha256: sha256 of the downloaded archive itself, when known.
        member_prefix: top folder of the archive (with a trailing ``/``) whose content becomes
            ``folder``; members outside it (e.g. ``__MACOSX/``) are not installed.
    """

    name: str
    url: str
    archive: ArchiveKind
    folder: str
    licence: str
    description: str
    files: dict[str, str] = field(default_factory=dict)
    files_git_blob: dict[str, str] = field(default_factory=dict)
    archive_sha256: str | None = None
    member_prefix: str = ""

    def __post_init__(self) -> None:
        if self.archive not in ARCHIVE_KINDS:
            raise ValueError(f"{self.name}: archive must be one of {ARCHIVE_KINDS}, got {self.archive!r}")
        if not self.expected_files:
            raise ValueError(f"{self.name}: give at least one checked file in files or files_git_blob")
        if self.archive == "file" and (len(self.expected_files) != 1 or self.member_prefix):
            raise ValueError(f"{self.name}: a 'file' source has exactly one checked file and no prefix")
        if self.member_prefix and not self.member_prefix.endswith("/"):
            raise ValueError(f"{self.name}: member_prefix must end with '/', got {self.member_prefix!r}")

    @property
    def expected_files(self) -> list[str]:
        """Every checked path inside ``folder``, sorted."""
        return sorted({*self.files, *self.files_git_blob})


GROUPLENS_LICENCE = ("GroupLens research-only terms: no redistribution or commercial use without "
                     "permission; cite Harper & Konstan, ACM TiiS 2015 ({readme})")
S3REC_BASE = "https://raw.githubusercontent.com/aHuiWang/CIKM2020-S3Rec/master/data"
S3REC_NOTE = "preprocessing from S3-Rec (Zhou et al., CIKM 2020, https://github.com/aHuiWang/CIKM2020-S3Rec)"
AMAZON_LICENCE = f"Amazon review data (McAuley et al., SIGIR 2015), research use only; {S3REC_NOTE}"
LASTFM_LICENCE = (f"Last.fm data from HetRec 2011 (Cantador et al., RecSys 2011), research use only; "
                  f"{S3REC_NOTE}")


def _s3rec(name: str, stem: str, sha256: str, licence: str, what: str) -> DatasetSource:
    """A one-file sequence dataset as preprocessed and published by S3-Rec."""
    return DatasetSource(
        name=name, url=f"{S3REC_BASE}/{stem}.txt", archive="file", folder="seq/s3rec",
        files={f"{stem}.txt": sha256}, licence=licence,
        description=f"{what} as preprocessed by S3-Rec: one line per user, item ids in time order")


DATASETS: dict[str, DatasetSource] = {
    "ml100k": DatasetSource(
        name="ml100k", url="https://files.grouplens.org/datasets/movielens/ml-100k.zip", archive="zip",
        folder="ml-100k", member_prefix="ml-100k/",
        files={"u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
               "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
               "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"},
        licence=GROUPLENS_LICENCE.format(
            readme="https://files.grouplens.org/datasets/movielens/ml-100k-README.txt"),
        description="MovieLens 100K: 100,000 ratings (1-5) by 943 users on 1,682 movies, with timestamps"),
    "ml1m": DatasetSource(
        name="ml1m", url="https://files.grouplens.org/datasets/movielens/ml-1m.zip", archive="zip",
        folder="ml-1m", member_prefix="ml-1m/",
        files={"users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
               "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"},
        files_git_blob={"ratings.dat": "77a7c4b150f588c23bb9e1f068aa996c0b413695"},
        licence=GROUPLENS_LICENCE.format(
            readme="https://files.grouplens.org/datasets/movielens/ml-1m-README.txt"),
        description="MovieLens 1M: 1,000,209 ratings (1-5) by 6,040 users on 3,706 movies, with timestamps"),
    "coat": DatasetSource(
        name="coat", url="https://www.cs.cornell.edu/~schnabts/mnar/coat.zip", archive="zip",
        folder="coat", member_prefix="coat/",
        files={"train.ascii": "a87bd9e7eaf3b89f976df3f25d4aa5d5d871be8a00b58947df9e6e015559bd37",
               "test.ascii": "de6714ab105a5e0be8166be7fd313901b29f9a09c3bea307901457d1d71847e6"},
        licence=("research use; cite Schnabel et al., 'Recommendations as Treatments', ICML 2016 "
                 "(https://www.cs.cornell.edu/~schnabts/mnar/)"),
        description=("Coat shopping: 290 users x 300 items, self-selected (MNAR) train ratings, "
                     "random (MAR) test ratings, propensities and features")),
    "beauty": _s3rec("beauty", "Beauty", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                     AMAZON_LICENCE, "Amazon Beauty"),
    "sports": _s3rec("sports", "Sports_and_Outdoors",
                     "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
                     AMAZON_LICENCE, "Amazon Sports and Outdoors"),
    "toys": _s3rec("toys", "Toys_and_Games",
                   "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
                   AMAZON_LICENCE, "Amazon Toys and Games"),
    "lastfm": _s3rec("lastfm", "LastFM", "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802",
                     LASTFM_LICENCE, "Last.fm artist listening"),
}


# ---------------------------------------------------------------------------------------------
# Locations and digests
# ---------------------------------------------------------------------------------------------


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data dir: ``explicit`` if given, else ``$RECRL_DATA_DIR`` if set, else ``./data``."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    from_env = os.environ.get(ENV_VAR, "")
    return Path(from_env).expanduser() if from_env else DEFAULT_DATA_DIR


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


def _is_present(source: DatasetSource, target: Path) -> bool:
    """Whether ``target`` already holds every expected file with the expected digest."""
    return target.is_dir() and not _mismatches(source, {rel: target / rel for rel in source.expected_files})


def _verify(source: DatasetSource, paths: dict[str, Path], url: str) -> None:
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


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def _source(name: str) -> DatasetSource:
    """The registry entry for ``name``, or a RecrlError listing the valid names."""
    if name not in DATASETS:
        raise RecrlError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
                         f"(`recrl data download --list` describes them)")
    return DATASETS[name]


def _resolve_url(url: str) -> str:
    """``url`` as an http(s):// or file:// URL; a plain path becomes a file:// URL."""
    if "://" not in url:
        return Path(url).expanduser().resolve().as_uri()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise RecrlError(f"unsupported URL scheme in {url}; use an http://, https:// or file:// URL "
                         f"or a local path")
    return url


def _network_error(url: str, reason: object, folder: Path) -> RecrlError:
    """The one-line error for a download that failed on the way."""
    return RecrlError(f"could not download {url}: {reason}; download it by hand into {folder} "
                      f"({HELP_POINTER})")


def _fetch(url: str, dest: Path, folder: Path, *, label: str, progress: bool | None) -> None:
    """Stream ``url`` into ``dest`` in chunks with a progress bar (``progress=None``: only when
    stderr is a terminal)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, dest.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      disable=None if progress is None else not progress, file=sys.stderr) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise _network_error(url, f"HTTP {err.code} {err.reason}", folder) from err
    except urllib.error.URLError as err:
        raise _network_error(url, err.reason, folder) from err
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _network_error(url, str(err) or type(err).__name__, folder) from err
    except OSError as err:
        raise RecrlError(f"could not write {dest}: {err}; check the free space and permissions of the "
                         f"data dir") from err


def _check_archive_digest(source: DatasetSource, path: Path, url: str) -> None:
    """Compare the downloaded archive with ``archive_sha256`` when it is known."""
    if source.archive_sha256 is None:
        return
    actual = sha256_file(path)
    if actual != source.archive_sha256.lower():
        raise RecrlError(f"checksum mismatch for the {source.name} archive from {url}: expected sha256 "
                         f"{source.archive_sha256}, got {actual}; the download may be corrupt or the "
                         f"upstream file changed: retry, or fetch it by hand ({HELP_POINTER})")


# ---------------------------------------------------------------------------------------------
# Safe unpacking
# ---------------------------------------------------------------------------------------------


def _parts(name: str) -> list[str]:
    """Path components of an archive member name, splitting on both kinds of slash."""
    return re.split(r"[/\\]", name)


def _unsafe_name(name: str) -> str | None:
    """Why an archive path is unsafe to write to (absolute, ``..``), or None when it is safe."""
    if not name or "\0" in name:
        return "an empty name or a NUL byte"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in _parts(name):
        return "a '..' component"
    return None


def _unsafe_symlink(linkname: str) -> str | None:
    """Why a symlink target could leave the tree: only plain descending relative links pass."""
    if _unsafe_name(linkname) is not None:
        return f"a symbolic link to {linkname!r} (absolute or leaving its folder)"
    return None


def _unsafe_hardlink(linkname: str, prefix: str) -> str | None:
    """Why a hard link target is outside the installed tree."""
    if _unsafe_name(linkname) is not None or not linkname.startswith(prefix):
        return f"a hard link to {linkname!r} outside {prefix or 'the archive'}"
    return None


def _refuse(label: str, member: str, reason: str) -> RecrlError:
    """The one-line error for an archive member that is unsafe to unpack."""
    return RecrlError(f"refusing to unpack {label}: member {member!r} has {reason}; the archive may be "
                      f"corrupt or tampered with: fetch it from the official URL ({HELP_POINTER})")


def _check_zip_member(info: zipfile.ZipInfo, label: str) -> None:
    """Refuse unsafe names, symlinks and special files in a zip archive."""
    reason = _unsafe_name(info.filename)
    mode = info.external_attr >> 16
    if reason is None and stat.S_ISLNK(mode):
        reason = "a symbolic link (links are not allowed in zip archives)"
    if reason is None and stat.S_IFMT(mode) in SPECIAL_MODES:
        reason = "a device, FIFO or socket type"
    if reason is not None:
        raise _refuse(label, info.filename, reason)


def _check_tar_member(member: tarfile.TarInfo, prefix: str, label: str) -> None:
    """Refuse unsafe names, escaping links and special files in a tar archive."""
    reason = _unsafe_name(member.name)
    if reason is None and member.issym():
        reason = _unsafe_symlink(member.linkname)
    elif reason is None and member.islnk():
        reason = _unsafe_hardlink(member.linkname, prefix)
    elif reason is None and not (member.isfile() or member.isdir()):
        reason = "a device, FIFO or other special type"
    if reason is not None:
        raise _refuse(label, member.name, reason)


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` resolves to ``root`` or below it."""
    return path.resolve().is_relative_to(root.resolve())


def _extract_zip(archive: Path, dest: Path, label: str) -> None:
    """Check every member of a zip archive, then write them under ``dest`` one by one."""
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for info in members:
            _check_zip_member(info, label)
        for info in members:
            out = dest / info.filename
            if not _inside(dest, out):
                raise _refuse(label, info.filename, "a path outside the target folder")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_BYTES)


def _extract_tar(archive: Path, dest: Path, prefix: str, label: str) -> None:
    """Check every member of a tar.gz archive, then unpack it under ``dest`` (with the 'data' filter)."""
    with tarfile.open(archive, mode="r:gz") as bundle:
        members = bundle.getmembers()
        for member in members:
            _check_tar_member(member, prefix, label)
        if hasattr(tarfile, "data_filter"):
            bundle.extractall(dest, members=members, filter="data")
        else:
            bundle.extractall(dest, members=members)


def _extract(source: DatasetSource, archive: Path, dest: Path, label: str) -> None:
    """Unpack ``archive`` under ``dest``; a broken archive becomes a one-line RecrlError."""
    try:
        if source.archive == "zip":
            _extract_zip(archive, dest, label)
        else:
            _extract_tar(archive, dest, source.member_prefix, label)
    except RecrlError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise RecrlError(f"could not unpack {label}: {err}; the download is corrupt or not a "
                         f"{source.archive} archive: retry with --force ({HELP_POINTER})") from err
    except OSError as err:
        raise RecrlError(f"could not unpack {label}: {err}; check the free space and permissions of "
                         f"the data dir") from err


# ---------------------------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------------------------


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
        _extract(source, archive, raw, label)
        root = raw / source.member_prefix.rstrip("/") if source.member_prefix else raw
        if not root.is_dir():
            raise RecrlError(f"{label} has no top folder {source.member_prefix!r}; the upstream layout "
                             f"may have changed: fetch it by hand into {target} ({HELP_POINTER})")
        _verify(source, {rel: root / rel for rel in source.expected_files}, url)
        _swap_in(root, target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install_file(source: DatasetSource, downloaded: Path, target: Path, url: str) -> None:
    """Verify a single downloaded file, then rename it into ``target``."""
    (rel,) = source.expected_files
    _verify(source, {rel: downloaded}, url)
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
    source = _source(name)
    root = Path(data_dir).expanduser()
    target = root / source.folder
    if not force and _is_present(source, target):
        print(f"{name}: already present in {target}")
        return target
    fetch_url = _resolve_url(url or source.url)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=root, prefix=f".{name}-", suffix=".download")
    except OSError as err:
        raise RecrlError(f"cannot write to the data dir {root}: {err}; pass another --data-dir or set "
                         f"{ENV_VAR}") from err
    os.close(handle)
    temp = Path(temp_name)
    try:
        _fetch(fetch_url, temp, target, label=name, progress=progress)
        _check_archive_digest(source, temp, fetch_url)
        if source.archive == "file":
            _install_file(source, temp, target, fetch_url)
        else:
            _install_archive(source, temp, target, fetch_url)
    finally:
        temp.unlink(missing_ok=True)
    print(f"{name}: downloaded and checked into {target}")
    return target


def missing_message(name: str, folder: Path, expected: list[str]) -> str:
    """One line for a loader that did not find ``expected`` in ``folder``: where, how to get them, licence."""
    source = _source(name)
    folder = Path(folder).expanduser().resolve()
    depth = len(Path(source.folder).parts)
    fetched_into = folder.parents[depth - 1] if folder.parts[-depth:] == Path(source.folder).parts else None
    command = f"recrl data download {name}"
    if fetched_into is not None:
        command += f" --data-dir {fetched_into}"
    return (f"{name} data not found: looked for {', '.join(expected)} in {folder}; run `{command}` "
            f"(or set {ENV_VAR} / data_dir= to point at another data dir), or fetch {source.url} by hand "
            f"and unpack it there; licence: {source.licence}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _epilog() -> str:
    """The help text's list of datasets, with what to put where when downloading by hand."""
    lines = [f"data dir: --data-dir, else ${ENV_VAR}, else ./data", "",
             "datasets (to install by hand, fetch the URL and unpack it so that these files sit in "
             "DATA_DIR/FOLDER; 'file' sources are saved as is):"]
    for source in DATASETS.values():
        lines += [f"  {source.name:8s} {source.archive:6s} {source.url}",
                  f"           folder {source.folder}: {', '.join(source.expected_files)}",
                  f"           {source.description}",
                  f"           licence: {source.licence}"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The ``recrl data download`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="recrl data download", description="Download, check and unpack a public dataset.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help=f"dataset to fetch: {', '.join(DATASETS)}")
    parser.add_argument("--list", action="store_true", help="list the datasets, URLs and licences")
    parser.add_argument("--data-dir", default=None, help=f"where to put it (default: ${ENV_VAR} or ./data)")
    parser.add_argument("--url", default=None, help="fetch from this URL or local file instead (a mirror)")
    parser.add_argument("--force", action="store_true", help="download again even if the files are present")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bar (shown only when stderr is a terminal anyway)")
    return parser


def _print_table() -> None:
    """Print the registry as a rich table."""
    table = Table(title="recrl datasets", show_lines=True)
    for column in ("name", "folder", "url", "licence"):
        table.add_column(column, overflow="fold")
    for source in DATASETS.values():
        table.add_row(source.name, source.folder, source.url, source.licence)
    Console().print(table)


def main(argv: list[str]) -> int:
    """``recrl data download <name> [--data-dir DIR] [--url URL] [--force]`` or ``--list``; exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    try:
        if args.list:
            _print_table()
            return 0
        if args.name is None:
            raise RecrlError(f"name a dataset to download ({', '.join(DATASETS)}) or pass --list")
        download(args.name, data_dir(args.data_dir), url=args.url, force=args.force,
                 progress=False if args.no_progress else None)
    except RecrlError as err:
        print(f"recrl: error: {err}", file=sys.stderr)
        return 2
    return 0
