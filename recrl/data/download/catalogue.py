"""The catalogue of datasets ``recrl data download`` knows, and where they go.

Each :class:`DatasetSource` names the official public URL, the sub-folder of the data dir the
loaders read, the licence and what to cite, and the checksum of every file (sha256, or its git
blob id where only that is known). :data:`DATASETS` is the registry; :func:`data_dir` resolves
the data dir (``--data-dir``, else ``$RECRL_DATA_DIR``, else ``./data``) and
:func:`missing_message` is the one-line hint a loader gives when its files are not there.

The constants the other modules of :mod:`recrl.data.download` share (chunk size, help pointer)
live here too, so that they depend on this module only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from recrl.types import RecrlError

ArchiveKind = Literal["zip", "tar.gz", "file"]
ARCHIVE_KINDS: tuple[str, ...] = ("zip", "tar.gz", "file")
ENV_VAR = "RECRL_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")
CHUNK_BYTES = 1 << 16
HELP_POINTER = "see `recrl data download --help`"

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


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data dir: ``explicit`` if given, else ``$RECRL_DATA_DIR`` if set, else ``./data``."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    from_env = os.environ.get(ENV_VAR, "")
    return Path(from_env).expanduser() if from_env else DEFAULT_DATA_DIR


def dataset_source(name: str) -> DatasetSource:
    """The registry entry for ``name``, or a RecrlError listing the valid names."""
    if name not in DATASETS:
        raise RecrlError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
                         f"(`recrl data download --list` describes them)")
    return DATASETS[name]


def missing_message(name: str, folder: Path, expected: list[str]) -> str:
    """One line for a loader that did not find ``expected`` in ``folder``: where, how to get them, licence."""
    source = dataset_source(name)
    folder = Path(folder).expanduser().resolve()
    depth = len(Path(source.folder).parts)
    fetched_into = folder.parents[depth - 1] if folder.parts[-depth:] == Path(source.folder).parts else None
    command = f"recrl data download {name}"
    if fetched_into is not None:
        command += f" --data-dir {fetched_into}"
    return (f"{name} data not found: looked for {', '.join(expected)} in {folder}; run `{command}` "
            f"(or set {ENV_VAR} / data_dir= to point at another data dir), or fetch {source.url} by hand "
            f"and unpack it there; licence: {source.licence}")
