"""Test-session settings (one intra-op thread for torch here and in CLI subprocesses; freed
memory kept in the process, as every ``recrl`` job does) and the session fixtures of the
known-answer world (tests/clickbait.py).

The models in tests are tiny; on a 2-core machine two threads per op cost more in
synchronisation than they gain (up to 30x slower under load), so every test runs single-threaded.
The tests that fit in this process run as a job would (``trainer.keep_freed_memory``,
recrl/memory.py): without it, the Beauty test's full-catalogue softmax faulted in fresh pages
for every minibatch's logits (9.5 million page faults, 1.8x its fitting time).
"""

from __future__ import annotations

import os
from pathlib import Path

import clickbait
import pytest
import torch

from recrl.data.synthetic import SyntheticWorld
from recrl.memory import keep_freed_memory

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)
keep_freed_memory()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One recrl cache (``RECRL_CACHE_DIR``: fitted behavior models, oracle returns) for the
    end-to-end runs of this test session whose outcome does not depend on starting from an empty
    cache: the smoke world's simulator is fitted once, not once per test. The pytest-xdist workers
    of one session share it (recrl's cache lock lets one process fit and the others load); tests
    of the caching itself keep caches of their own."""
    base = tmp_path_factory.getbasetemp()
    shared_by_workers = os.environ.get("PYTEST_XDIST_WORKER") is not None  # base is the worker's own
    return (base.parent if shared_by_workers else base) / "recrl-cache"


@pytest.fixture(scope="session")
def clickbait_world() -> SyntheticWorld:
    """The known-answer world of the learning tests (tests/clickbait.py)."""
    return clickbait.make_world()


@pytest.fixture(scope="session")
def clickbait_references(clickbait_world: SyntheticWorld) -> dict[str, float]:
    """Best fixed item, greedy and random returns in ``clickbait_world`` (computed once per session)."""
    return clickbait.references(clickbait_world)
