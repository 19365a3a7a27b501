"""Tests for recrl.data.download: fetching over local http:// and file:// URLs only, never the internet."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recrl.data import download as dl
from recrl.types import RecrlError

FILES = {"u.data": b"1\t2\t5\t881250949\n3\t4\t3\t891717742\n", "u.item": b"1|Toy Story (1995)|\n",
         "sub/u.user": b"1|24|M|technician|85711\n"}
TOP = "ml-100k/"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _local_urls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that would reach a URL other than file:// or 127.0.0.1."""
    real = urllib.request.urlopen

    def guarded(request: urllib.request.Request | str, *args: object, **kwargs: object) -> object:
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert url.startswith(("file://", "http://127.0.0.1:")), f"test tried to reach {url}"
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def ml100k(monkeypatch: pytest.MonkeyPatch) -> dl.DatasetSource:
    """The ml100k entry with checksums of the small test files and an unreachable URL."""
    source = dataclasses.replace(dl.DATASETS["ml100k"], url="http://127.0.0.1:9/unused.zip",
                                 files={rel: _sha(data) for rel, data in FILES.items()})
    monkeypatch.setitem(dl.DATASETS, "ml100k", source)
    return source


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/srv``: (base URL, folder)."""
    root = tmp_path / "srv"
    root.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data)
    return path


def _tar_info(name: str, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _good_members(top: str = TOP) -> dict[str, bytes]:
    return {top: b"", **{top + rel: data for rel, data in FILES.items()}, "__MACOSX/._u.data": b"junk"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- registry, locations and digests ----------------------------------------------------------


def test_registry_entries_are_consistent() -> None:
    assert set(dl.DATASETS) == {"ml100k", "ml1m", "coat", "beauty", "sports", "toys", "lastfm"}
    for name, source in dl.DATASETS.items():
        assert source.name == name and source.url.startswith("https://") and source.licence
        assert all(len(d) == 64 for d in source.files.values())
        assert all(len(d) == 40 for d in source.files_git_blob.values())
    assert dl.DATASETS["ml1m"].expected_files == ["movies.dat", "ratings.dat", "users.dat"]
    assert {s.folder for s in dl.DATASETS.values() if s.archive == "file"} == {"seq/s3rec"}


def test_source_validation() -> None:
    with pytest.raises(ValueError, match="archive"):
        dataclasses.replace(dl.DATASETS["ml100k"], archive="rar")
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(dl.DATASETS["beauty"], files={"a": "0" * 64, "b": "0" * 64})


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(dl.ENV_VAR, raising=False)
    assert dl.data_dir() == Path("data")
    monkeypatch.setenv(dl.ENV_VAR, str(tmp_path / "env"))
    assert dl.data_dir() == tmp_path / "env"
    assert dl.data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert dl.data_dir(str(tmp_path / "s")) == tmp_path / "s"


def test_git_blob_sha1_matches_git_hash_object(tmp_path: Path) -> None:
    path = tmp_path / "hello"
    path.write_bytes(b"hello\n")
    assert dl.git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert dl.sha256_file(path) == _sha(b"hello\n")


# --- successful downloads ---------------------------------------------------------------------


def test_download_zip_over_http_then_noop(ml100k: dl.DatasetSource, server: tuple[str, Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, root = server
    _zip(root / "ml.zip", _good_members())
    data = tmp_path / "data"
    target = dl.download("ml100k", data, url=f"{base}/ml.zip", progress=False)
    assert target == data / "ml-100k"
    assert _listing(target) == ["sub", "sub/u.user", "u.data", "u.item"]
    assert (target / "u.data").read_bytes() == FILES["u.data"]
    assert _listing(data) == ["ml-100k", *(f"ml-100k/{p}" for p in _listing(target))]
    (root / "ml.zip").unlink()  # a second call must not fetch anything
    capsys.readouterr()
    assert dl.download("ml100k", data, url=f"{base}/ml.zip", progress=False) == target
    assert "already present" in capsys.readouterr().out


def test_download_tar_gz_over_file_url_and_force(ml100k: dl.DatasetSource, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setitem(dl.DATASETS, "ml100k", dataclasses.replace(ml100k, archive="tar.gz"))
    members = [(_tar_info("ml-100k", type=tarfile.DIRTYPE), None)]
    members += [(_tar_info(f"ml-100k/{rel}"), data) for rel, data in FILES.items()]
    members.append((_tar_info("ml-100k/link", type=tarfile.SYMTYPE, linkname="u.data"), None))
    archive = _tar(tmp_path / "ml.tar.gz", members)
    data = tmp_path / "data"
    (data / "ml-100k").mkdir(parents=True)
    (data / "ml-100k" / "stale").write_text("old")
    target = dl.download("ml100k", data, url=archive.as_uri(), force=True, progress=False)
    assert not (target / "stale").exists()
    assert (target / "link").read_bytes() == FILES["u.data"]
    assert sorted(p.name for p in data.iterdir()) == ["ml-100k"]


def test_download_accepts_a_local_path_and_archive_digest(ml100k: dl.DatasetSource,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ml.zip", _good_members())
    pinned = dataclasses.replace(ml100k, archive_sha256=dl.sha256_file(archive))
    monkeypatch.setitem(dl.DATASETS, "ml100k", pinned)
    target = dl.download("ml100k", tmp_path / "data", url=str(archive), progress=False)
    assert (target / "u.item").read_bytes() == FILES["u.item"]


def test_single_file_source(monkeypatch: pytest.MonkeyPatch, server: tuple[str, Path],
                            tmp_path: Path) -> None:
    base, root = server
    content = b"1 2 3 4\n2 5 6\n"
    (root / "Beauty.txt").write_bytes(content)
    source = dataclasses.replace(dl.DATASETS["beauty"], files={"Beauty.txt": _sha(content)})
    monkeypatch.setitem(dl.DATASETS, "beauty", source)
    data = tmp_path / "data"
    (data / "seq" / "s3rec").mkdir(parents=True)  # lastfm shares the folder: it must be left alone
    (data / "seq" / "s3rec" / "LastFM.txt").write_text("kept")
    target = dl.download("beauty", data, url=f"{base}/Beauty.txt", progress=False)
    assert target == data / "seq" / "s3rec"
    assert (target / "Beauty.txt").read_bytes() == content
    assert (target / "LastFM.txt").read_text() == "kept"
    assert sorted(p.name for p in data.iterdir()) == ["seq"]


def test_git_blob_check_in_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = dataclasses.replace(dl.DATASETS["ml1m"], files={},
                                 files_git_blob={"ratings.dat": "ce013625030ba8dba906f756967f9e9ca394464a"})
    monkeypatch.setitem(dl.DATASETS, "ml1m", source)
    archive = _zip(tmp_path / "ml1m.zip", {"ml-1m/ratings.dat": b"hello\n"})
    target = dl.download("ml1m", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert (target / "ratings.dat").read_bytes() == b"hello\n"
    bad = _zip(tmp_path / "bad.zip", {"ml-1m/ratings.dat": b"hello!\n"})
    with pytest.raises(RecrlError, match="expected git blob sha1 ce0136"):
        dl.download("ml1m", tmp_path / "other", url=bad.as_uri(), progress=False)


# --- failures leave nothing behind ------------------------------------------------------------


def test_checksum_mismatch_leaves_nothing(ml100k: dl.DatasetSource, server: tuple[str, Path],
                                          tmp_path: Path) -> None:
    base, root = server
    _zip(root / "ml.zip", {**_good_members(), TOP + "u.data": b"tampered\n"})
    data = tmp_path / "data"
    with pytest.raises(RecrlError) as err:
        dl.download("ml100k", data, url=f"{base}/ml.zip", progress=False)
    message = str(err.value)
    assert "ml-100k/u.data" in message and ml100k.files["u.data"] in message
    assert _sha(b"tampered\n") in message and "upstream" in message and "\n" not in message
    assert _listing(data) == []


def test_failed_redownload_keeps_existing_folder(ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", _good_members())
    data = tmp_path / "data"
    dl.download("ml100k", data, url=good.as_uri(), progress=False)
    bad = _zip(tmp_path / "bad.zip", {TOP + "u.data": b"x"})
    with pytest.raises(RecrlError, match="checksum mismatch"):
        dl.download("ml100k", data, url=bad.as_uri(), force=True, progress=False)
    assert (data / "ml-100k" / "u.data").read_bytes() == FILES["u.data"]
    assert sorted(p.name for p in data.iterdir()) == ["ml-100k"]


def test_missing_top_folder_or_file(ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    flat = _zip(tmp_path / "flat.zip", FILES)
    with pytest.raises(RecrlError, match="no top folder 'ml-100k/'"):
        dl.download("ml100k", tmp_path / "data", url=flat.as_uri(), progress=False)
    partial = _zip(tmp_path / "partial.zip", {TOP + "u.data": FILES["u.data"]})
    with pytest.raises(RecrlError, match=r"u\.item is missing"):
        dl.download("ml100k", tmp_path / "data", url=partial.as_uri(), progress=False)
    assert _listing(tmp_path / "data") == []


def test_archive_digest_mismatch(ml100k: dl.DatasetSource, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    monkeypatch.setitem(dl.DATASETS, "ml100k", dataclasses.replace(ml100k, archive_sha256="0" * 64))
    archive = _zip(tmp_path / "ml.zip", _good_members())
    with pytest.raises(RecrlError, match="checksum mismatch for the ml100k archive"):
        dl.download("ml100k", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert _listing(tmp_path / "data") == []


def test_corrupt_archive(ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(RecrlError, match="could not unpack"):
        dl.download("ml100k", tmp_path / "data", url=junk.as_uri(), progress=False)
    assert _listing(tmp_path / "data") == []


UNSAFE_ZIP_NAMES = ["../evil.txt", "ml-100k/../../evil.txt", "ABSOLUTE", "ml-100k\\..\\evil.txt"]


@pytest.mark.parametrize("evil", UNSAFE_ZIP_NAMES)
def test_zip_with_unsafe_path_is_refused(evil: str, ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    name = str(tmp_path / "evil.txt") if evil == "ABSOLUTE" else evil
    archive = _zip(tmp_path / "evil.zip", {**_good_members(), name: b"pwned"})
    assert name in zipfile.ZipFile(archive).namelist()
    data = tmp_path / "deep" / "data"
    with pytest.raises(RecrlError, match="refusing to unpack"):
        dl.download("ml100k", data, url=archive.as_uri(), progress=False)
    assert not list(tmp_path.rglob("evil.txt"))
    assert _listing(data) == []


def test_zip_with_symlink_is_refused(ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name, data in _good_members().items():
            bundle.writestr(name, data)
        info = zipfile.ZipInfo(TOP + "passwd")
        info.external_attr = (0o120777 << 16)
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(RecrlError, match="symbolic link"):
        dl.download("ml100k", tmp_path / "data", url=archive.as_uri(), progress=False)
    assert _listing(tmp_path / "data") == []


UNSAFE_TAR_MEMBERS = {
    "symlink-absolute": (_tar_info(TOP + "passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd"), None),
    "symlink-up": (_tar_info(TOP + "up", type=tarfile.SYMTYPE, linkname="../../etc/passwd"), None),
    "hardlink-absolute": (_tar_info(TOP + "hard", type=tarfile.LNKTYPE, linkname="/etc/passwd"), None),
    "hardlink-outside-top": (_tar_info(TOP + "hard", type=tarfile.LNKTYPE, linkname="other/x"), None),
    "dotdot": (_tar_info("../evil.txt"), b"pwned"),
    "absolute": (_tar_info("/tmp/recrl-test-evil.txt"), b"pwned"),
    "char-device": (_tar_info(TOP + "null", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None),
    "fifo": (_tar_info(TOP + "pipe", type=tarfile.FIFOTYPE), None),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TAR_MEMBERS))
def test_tar_with_unsafe_member_is_refused(case: str, ml100k: dl.DatasetSource,
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(dl.DATASETS, "ml100k", dataclasses.replace(ml100k, archive="tar.gz"))
    members = [(_tar_info(TOP + rel), data) for rel, data in FILES.items()]
    archive = _tar(tmp_path / "evil.tar.gz", [*members, UNSAFE_TAR_MEMBERS[case]])
    data = tmp_path / "deep" / "data"
    with pytest.raises(RecrlError, match=r"refusing to unpack .* has "):
        dl.download("ml100k", data, url=archive.as_uri(), progress=False)
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/recrl-test-evil.txt").exists()
    assert _listing(data) == []


def test_unreachable_url(ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/ml-100k.zip"
    with pytest.raises(RecrlError) as err:
        dl.download("ml100k", tmp_path / "data", url=url, progress=False)
    message = str(err.value)
    assert message.startswith(f"could not download {url}: ")
    assert f"download it by hand into {tmp_path / 'data' / 'ml-100k'}" in message
    assert "recrl data download --help" in message
    assert _listing(tmp_path / "data") == []


def test_http_404_and_missing_file(ml100k: dl.DatasetSource, server: tuple[str, Path],
                                   tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(RecrlError, match=r"could not download .*: HTTP 404 .*; download it by hand"):
        dl.download("ml100k", tmp_path / "data", url=f"{base}/absent.zip", progress=False)
    with pytest.raises(RecrlError, match="could not download file://"):
        dl.download("ml100k", tmp_path / "data", url=(tmp_path / "absent.zip").as_uri(), progress=False)
    assert _listing(tmp_path / "data") == []


def test_unsupported_scheme(ml100k: dl.DatasetSource, tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match="unsupported URL scheme"):
        dl.download("ml100k", tmp_path, url="ftp://example.org/x.zip")


def test_unknown_name_lists_options(tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match="unknown dataset 'nope'; valid names: ml100k, ml1m, coat"):
        dl.download("nope", tmp_path)


# --- messages and command line ----------------------------------------------------------------


def test_missing_message_is_one_actionable_line(tmp_path: Path) -> None:
    folder = tmp_path / "d" / "ml-100k"
    message = dl.missing_message("ml100k", folder, ["u.data", "u.item"])
    assert "\n" not in message
    assert f"u.data, u.item in {folder}" in message
    assert f"recrl data download ml100k --data-dir {tmp_path / 'd'}" in message
    assert "RECRL_DATA_DIR" in message and dl.DATASETS["ml100k"].url in message
    assert "Harper & Konstan" in message
    nested = dl.missing_message("beauty", tmp_path / "x" / "seq" / "s3rec", ["Beauty.txt"])
    assert f"--data-dir {tmp_path / 'x'}`" in nested and "McAuley" in nested


def test_main_list_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert dl.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "ml100k" in out and "lastfm" in out
    assert dl.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recrl: error: unknown dataset 'nope'") and err.count("\n") == 1
    assert dl.main([]) == 2
    assert "--list" in capsys.readouterr().err
    assert dl.main(["--help"]) == 0
    assert "install by hand" in capsys.readouterr().out


def test_main_downloads(ml100k: dl.DatasetSource, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _zip(tmp_path / "ml.zip", _good_members())
    data = tmp_path / "data"
    assert dl.main(["ml100k", "--data-dir", str(data), "--url", archive.as_uri(), "--no-progress"]) == 0
    assert (data / "ml-100k" / "u.data").is_file()
    assert dl.main(["ml100k", "--data-dir", str(data)]) == 0
    assert "already present" in capsys.readouterr().out
