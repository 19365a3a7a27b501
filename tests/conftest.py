"""Test-session settings: one intra-op thread for torch here and in CLI subprocesses.

The models in tests are tiny; on a 2-core machine two threads per op cost more in
synchronisation than they gain (up to 30x slower under load), so every test runs single-threaded.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)
