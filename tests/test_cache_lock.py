"""The shared cache under parallel jobs: four processes starting together on an empty cache prepare
the data once and fit the behavior model once; the others wait, load the result, and never read a
partial file. Plus the lock itself: a second process blocks until the holder releases, and a crashed
holder leaves no stale lock behind."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from filelock import FileLock

from recrl.cachelock import build_once, entry_lock, lock_path

WORKERS = 4
ML100K = Path(__file__).resolve().parent / "fixtures" / "movielens" / "ml-100k"
OVERRIDES = ["experiment=smoke", "trainer.device=cpu", "dataset.n_users=200"]
WAITING = "waiting for it"
HOLDER = """
import pathlib, sys, time
from recrl.cachelock import entry_lock
entry, release = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with entry_lock(entry, "test entry"):
    print("held", flush=True)
    while not release.exists():
        time.sleep(0.01)
"""


# ---------------------------------------------------------------------- four jobs on one cache
class _Messages(logging.Handler):
    """Collects the messages of the records it handles."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _record_checkpoint_reads(reads: list[tuple[str, bool]]) -> None:
    """Make ``recrl.stages`` note the sha256 of every checkpoint file it reads and whether it loaded."""
    import recrl.stages

    real = recrl.stages.load_checkpoint

    def recording(path: Any, map_location: Any = "cpu") -> dict[str, Any]:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        try:
            payload = real(path, map_location=map_location)
        except BaseException:
            reads.append((digest, False))
            raise
        reads.append((digest, True))
        return payload

    recrl.stages.load_checkpoint = recording


def _job(index: int, cache_dir: str, out_dir: str, barrier: Any) -> None:
    """One job (a spawned process): prepare the MovieLens fixture, then fit the tiny behavior model,
    each step started together with the other jobs; its results go to ``out_dir/job-<index>.pt``."""
    torch.set_num_threads(1)
    handler, reads = _Messages(), []
    logging.getLogger("recrl").addHandler(handler)
    logging.getLogger("recrl").setLevel(logging.INFO)
    try:
        from recrl.config import build, compose_config, validate
        from recrl.data.movielens import MovieLens100K
        from recrl.stages import build_behavior, fit_behavior

        _record_checkpoint_reads(reads)
        cfg = compose_config("train", [*OVERRIDES, f"cache_dir='{cache_dir}'"])
        validate(cfg)
        interactions = build(cfg.dataset).load().interactions  # the synthetic world: no data cache
        behavior = build_behavior(cfg, interactions, torch.device("cpu"))
        dataset = MovieLens100K(root=str(ML100K), cache_dir=cache_dir)
        barrier.wait(timeout=120)
        splits = dataset.load()
        barrier.wait(timeout=120)
        report = fit_behavior(cfg, behavior, interactions, "parallel")
        result = {"data_cache": dataset.last_load["cache"], "train": splits.interactions.train,
                  "report": report, "state_dict": behavior.state_dict(), "reads": reads,
                  "messages": handler.messages}
    except BaseException:  # the parent reports it
        result = {"error": traceback.format_exc()}
    torch.save(result, Path(out_dir) / f"job-{index}.pt")


@pytest.fixture(scope="module")
def four_jobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    """The results of :func:`_job` run by four processes at once on an empty cache, and the cache."""
    root = tmp_path_factory.mktemp("parallel")
    cache = root / "cache"
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(WORKERS)
    jobs = [spawn.Process(target=_job, args=(i, str(cache), str(root), barrier)) for i in range(WORKERS)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=240)
    for job in jobs:
        if job.is_alive():
            job.kill()
    assert [job.exitcode for job in jobs] == [0] * WORKERS
    results = [torch.load(root / f"job-{i}.pt", weights_only=False) for i in range(WORKERS)]
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[0]
    return results, cache


def test_one_of_four_jobs_fits_the_behavior_model_and_the_others_load_it(
        four_jobs: tuple[list[dict[str, Any]], Path]) -> None:
    results, cache = four_jobs
    assert sorted(r["report"]["cached"] for r in results) == [False, True, True, True]
    (entry,) = (cache / "behavior").iterdir()  # one entry, no temp files
    assert entry.name.startswith("simulator-") and entry.suffix == ".pt"
    first = results[0]["state_dict"]
    for result in results[1:]:
        assert result["state_dict"].keys() == first.keys()
        for name, value in first.items():
            assert torch.equal(result["state_dict"][name], value), name
    final = hashlib.sha256(entry.read_bytes()).hexdigest()
    for result in results:  # every read of the entry was of the whole, final file, and loaded
        assert result["reads"] == ([] if not result["report"]["cached"] else [(final, True)])
        assert not [m for m in result["messages"] if "unusable" in m]
    waits = [[m for m in r["messages"] if WAITING in m and "simulator behavior model" in m] for r in results]
    assert not waits[[r["report"]["cached"] for r in results].index(False)]  # the one that fitted
    assert any(waits)  # the others paused, and said why
    assert lock_path(entry).is_file() and lock_path(entry).parent == cache / "locks" / "behavior"


def test_one_of_four_jobs_prepares_the_data_and_the_others_load_it(
        four_jobs: tuple[list[dict[str, Any]], Path]) -> None:
    results, cache = four_jobs
    assert sorted(r["data_cache"] for r in results) == ["hit", "hit", "hit", "miss"]
    (entry,) = (cache / "data").iterdir()  # one entry, no temp folders
    assert (entry / "meta.json").is_file()
    for result in results[1:]:
        pd.testing.assert_frame_equal(result["train"], results[0]["train"])
    waits = [[m for m in r["messages"] if WAITING in m and "prepared ml100k data" in m] for r in results]
    assert not waits[[r["data_cache"] for r in results].index("miss")]


# ---------------------------------------------------------------------- the lock itself
def _start_holder(entry: Path, release: Path) -> subprocess.Popen[str]:
    """A process that takes ``entry``'s lock and holds it until ``release`` exists."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(entry), str(release)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_waits_until_the_holder_releases(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry, release = tmp_path / "kind" / "entry", tmp_path / "release"
    holder = _start_holder(entry, release)
    timer = threading.Timer(0.5, release.touch)
    timer.start()
    caplog.set_level(logging.INFO, logger="recrl.cachelock")
    start = time.perf_counter()
    try:
        with entry_lock(entry, "test entry"):
            assert release.exists()  # not before the holder was told to let go
            waited = time.perf_counter() - start
    finally:
        timer.join()
        assert holder.wait(timeout=30) == 0
    assert waited >= 0.4
    assert any(WAITING in m and "test entry" in m for m in caplog.messages)
    assert any(m.startswith("waited ") for m in caplog.messages)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry = tmp_path / "kind" / "entry"
    holder = _start_holder(entry, tmp_path / "never")
    holder.kill()
    holder.wait(timeout=30)
    assert lock_path(entry).is_file()  # the file stays ...
    with FileLock(str(lock_path(entry)), timeout=10):  # ... but the kernel dropped the lock
        pass
    caplog.set_level(logging.INFO, logger="recrl.cachelock")
    with entry_lock(entry, "test entry"):
        pass
    assert not [m for m in caplog.messages if WAITING in m]


def test_build_once_loads_again_under_the_lock_only_what_may_have_changed(tmp_path: Path) -> None:
    entry = tmp_path / "kind" / "entry"
    loads: list[str] = []

    def missing() -> None:
        loads.append("load")

    assert build_once(entry, "test entry", missing, lambda: "built") == ("built", False)
    assert loads == ["load", "load"]  # missing: another process may build it while we wait
    entry.parent.mkdir(parents=True)
    entry.write_text("damaged")
    loads.clear()
    assert build_once(entry, "test entry", missing, lambda: "rebuilt") == ("rebuilt", False)
    assert loads == ["load"]  # unusable and unchanged: not read (and reported) twice
    assert build_once(entry, "test entry", lambda: "read", lambda: "never") == ("read", True)
