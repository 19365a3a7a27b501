"""Fetch the public datasets recrl's loaders read, check them file by file and unpack them safely.

``recrl data download ml100k`` puts MovieLens-100K under ``$RECRL_DATA_DIR/ml-100k`` (default
``./data/ml-100k``). Every file is checked (sha256, or its git blob id where only that is known)
*before* the unpacked folder is renamed into place, so a loader never sees a half-written or
altered folder. Archives are unpacked member by member after a check of every member: absolute
paths, ``..`` components, links that could leave the tree and device files are refused.

The datasets are not redistributed by recrl: each entry names its licence and what to cite.

The modules: :mod:`~recrl.data.download.catalogue` (the known datasets with their URLs,
checksums and licences, the data dir, the hint for a loader whose files are missing),
:mod:`~recrl.data.download.checks` (sha256 and git blob checks), :mod:`~recrl.data.download.fetch`
(streaming a URL with a progress bar), :mod:`~recrl.data.download.extract` (unpacking with the
path-traversal and link checks), :mod:`~recrl.data.download.install` (:func:`download`: fetch,
check, unpack, rename into place) and :mod:`~recrl.data.download.command` (:func:`main`, the
``recrl data download`` command line). This package re-exports their public names.
"""

from __future__ import annotations

from recrl.data.download.catalogue import (
    AMAZON_LICENCE,
    ARCHIVE_KINDS,
    CHUNK_BYTES,
    DATASETS,
    DEFAULT_DATA_DIR,
    ENV_VAR,
    GROUPLENS_LICENCE,
    HELP_POINTER,
    LASTFM_LICENCE,
    S3REC_BASE,
    S3REC_NOTE,
    ArchiveKind,
    DatasetSource,
    data_dir,
    dataset_source,
    missing_message,
)
from recrl.data.download.checks import (
    CHECKS,
    check_archive_digest,
    git_blob_sha1,
    is_present,
    sha256_file,
    verify_files,
)
from recrl.data.download.command import main
from recrl.data.download.extract import SPECIAL_MODES, extract_archive
from recrl.data.download.fetch import TIMEOUT_S, URL_SCHEMES, USER_AGENT, fetch_file, resolve_url
from recrl.data.download.install import download

__all__ = [
    "AMAZON_LICENCE",
    "ARCHIVE_KINDS",
    "CHECKS",
    "CHUNK_BYTES",
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "ENV_VAR",
    "GROUPLENS_LICENCE",
    "HELP_POINTER",
    "LASTFM_LICENCE",
    "S3REC_BASE",
    "S3REC_NOTE",
    "SPECIAL_MODES",
    "TIMEOUT_S",
    "URL_SCHEMES",
    "USER_AGENT",
    "ArchiveKind",
    "DatasetSource",
    "check_archive_digest",
    "data_dir",
    "dataset_source",
    "download",
    "extract_archive",
    "fetch_file",
    "git_blob_sha1",
    "is_present",
    "main",
    "missing_message",
    "resolve_url",
    "sha256_file",
    "verify_files",
]
