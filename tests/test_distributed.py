"""Data-parallel behavior-model fitting under torchrun (recrl.distributed): 2 CPU processes over gloo.

The 2-process fits run once per module, with this file as torchrun's script (``__main__`` below):
rank 0 fits every case of :func:`cases` (``fit_sequence_model``), rank 1 fits along
(``serve_fits``); each rank writes what it saw per epoch to a JSON file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recrl import distributed
from recrl.behavior.fit import EpochStats, TrainingSettings, fit_sequence_model, serve_fits
from recrl.behavior.gru import GRUBehavior
from recrl.data.preprocess import log_frame
from recrl.data.synthetic import SyntheticWorld
from recrl.types import Interactions

# Same global batches, same random streams, so only the order of float sums differs (each rank sums
# its own rows, then the gradients are averaged across ranks): agreement to ~1e-6 relative, 1e-4 allowed.
RTOL = 1e-4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _positive_only_logs(n_users: int = 29, n_items: int = 12) -> Interactions:
    """Positive-only sessions of 3-9 clicks (sampled negatives and uneven lengths)."""
    rng = np.random.default_rng(0)
    rows = [(u, int(rng.integers(n_items)), t) for u in range(n_users) for t in range(3 + u % 7)]
    frame = log_frame(pd.DataFrame(rows, columns=["user", "item", "time"]).assign(click=1.0))
    last = frame.groupby("user").cumcount(ascending=False) == 0
    return Interactions(train=frame[~last].reset_index(drop=True), valid=frame[last].reset_index(drop=True),
                        items=pd.DataFrame(index=range(n_items)), n_users=n_users, n_items=n_items,
                        positive_only=True)


def cases() -> list[tuple[Interactions, TrainingSettings]]:
    """Two fits: logged clicks and no-clicks with leave labels (34 training users in batches of 11:
    the last batch has 1 user, so rank 1 has none), and positive-only logs with the sampled
    softmax loss, popularity negatives and length buckets (29 users in batches of 6)."""
    logs = SyntheticWorld(n_items=20, n_users=41, n_topics=3, horizon=5, seed=0).load().interactions
    return [(logs, TrainingSettings(lr=1e-2, epochs=4, patience=10, batch_size=11, max_len=10)),
            (_positive_only_logs(), TrainingSettings(lr=1e-2, epochs=3, patience=10, batch_size=6, max_len=10,
                                                     loss="softmax", softmax_negatives=5,
                                                     negative_sampling="popularity", bucket_by_length=True))]


def fit_case(logs: Interactions, settings: TrainingSettings, record: list[EpochStats]) -> None:
    """A tiny GRU fitted on ``logs`` (on one process, or led by rank 0 under torchrun)."""
    model = GRUBehavior(n_items=logs.n_items, dim=8, hidden=16, training=settings)
    fit_sequence_model(model, logs, settings, on_epoch=record.append)


def as_json(fits: list[list[EpochStats]]) -> list[list[dict]]:
    """Every fit's epochs as plain dicts."""
    return [[{"train_loss": s.train_loss, "valid_loss": s.valid_loss, "sessions": s.sessions.tolist()}
             for s in fit] for fit in fits]


def run_rank(out: Path) -> None:
    """One rank of the 2-process run: rank 0 leads every fit of :func:`cases`, rank 1 fits along."""
    torch.set_num_threads(1)
    fits: list[list[EpochStats]] = []
    if distributed.is_main():
        for logs, settings in cases():
            fits.append([])
            fit_case(logs, settings, fits[-1])
        distributed.release()
    else:
        def record(stats: EpochStats) -> None:
            if stats.epoch == 1:
                fits.append([])
            fits[-1].append(stats)

        assert serve_fits(on_epoch=record) == len(cases())
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(as_json(fits)))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[list[list[dict]]]:
    """What each of the 2 ranks saw, per fit and epoch."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*TORCHRUN, __file__, str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_every_training_user_is_seen_once_per_epoch_across_the_ranks(two_ranks: list) -> None:
    for fit, (logs, _) in enumerate(cases()):
        n_train = logs.train["user"].nunique()
        for epoch0, epoch1 in zip(two_ranks[0][fit], two_ranks[1][fit], strict=True):
            seen0, seen1 = epoch0["sessions"], epoch1["sessions"]
            assert sorted(seen0 + seen1) == list(range(n_train))
            assert abs(len(seen0) - len(seen1)) <= math.ceil(n_train / 6)  # at most one user per batch apart


def test_two_processes_follow_the_single_process_loss_curve(two_ranks: list) -> None:
    for fit, (logs, settings) in enumerate(cases()):
        single: list[EpochStats] = []
        fit_case(logs, settings, single)
        distributed_fit = two_ranks[0][fit]
        assert len(distributed_fit) == len(single) == settings.epochs
        for one, both in zip(single, distributed_fit, strict=True):
            assert both["train_loss"] == pytest.approx(one.train_loss, rel=RTOL)
            assert both["valid_loss"] == pytest.approx(one.valid_loss, rel=RTOL)
        assert [e["train_loss"] for e in two_ranks[1][fit]] == [e["train_loss"] for e in distributed_fit]


def test_torchrun_train_writes_one_run_folder_from_rank_0(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECRL_CACHE_DIR": str(tmp_path / "cache"),
           "RECRL_DEBUG": ""}
    proc = subprocess.run([*TORCHRUN, "-m", "recrl.cli", "train", "experiment=smoke"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "outputs"]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.json").is_file()
    assert "data-parallel fit on 2 ranks (gloo)" in (runs[0] / "cli.log").read_text()
    assert len(list((tmp_path / "cache" / "behavior").iterdir())) == 1


if __name__ == "__main__":  # one rank under torchrun (the two_ranks fixture)
    run_rank(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: gloo's threads sometimes end it in std::terminate (SIGABRT)
