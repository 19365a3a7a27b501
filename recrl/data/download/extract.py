"""Safe unpacking of a downloaded zip or tar.gz archive.

Every member is checked *before* anything is written: absolute paths, ``..`` components, links
that could leave the tree (symbolic links in zip archives, escaping symbolic or hard links in tar
archives) and device files, FIFOs or sockets are refused. Zip members are then written one by one
(each again checked to land inside the target folder); tar archives go through ``extractall``
with the ``data`` filter where Python has it. A broken archive is a one-line
:class:`~recrl.types.RecrlError`.
"""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from recrl.data.download.catalogue import CHUNK_BYTES, HELP_POINTER, DatasetSource
from recrl.types import RecrlError

SPECIAL_MODES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


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


def extract_archive(source: DatasetSource, archive: Path, dest: Path, label: str) -> None:
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

