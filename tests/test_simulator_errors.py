"""``scripts/simulator_errors.py``: a trained policy's served items as the logs, the simulator and
the ground truth see them (end to end on a smoke run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tiny import load_script, run_recrl


def test_served_items_and_steps_on_a_smoke_run(tmp_path: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    proc = run_recrl("train", "experiment=smoke", f"hydra.run.dir={run}", cwd=tmp_path, cache=shared_cache,
                     OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = load_script("simulator_errors")
    out = tmp_path / "errors.json"
    torch.set_num_threads(1)
    os.environ["RECRL_CACHE_DIR"] = str(shared_cache)
    try:
        assert errors.main([str(run), "--users", "24", "--items", "5", "--out", str(out)]) == 0
    finally:
        del os.environ["RECRL_CACHE_DIR"]
    result = json.loads(out.read_text())
    rows, steps = result["items"], result["steps"]
    stages, _ = errors.rebuild(str(run))
    horizon = int(stages.cfg.env.horizon)
    assert 1 <= len(rows) <= 5 and 1 <= len(steps) <= horizon
    served = [r["served"] for r in rows]
    assert served == sorted(served, reverse=True) and sum(served) <= 24 * horizon
    # the logged figures are the training log's own counts
    log = stages.splits.interactions.train
    counts = np.bincount(log["item"].to_numpy(), minlength=stages.ctx.n_items)
    for r in rows:
        assert r["logged_impressions"] == counts[r["item"]]
        assert 0.0 <= r["simulator_click_prob"] <= 1.0 and 0.0 <= r["true_click_prob"] <= 1.0
    users = [s["users"] for s in steps]
    assert users[0] == 24 and users == sorted(users, reverse=True)
    assert all(0.0 <= s[k] <= 1.0 for s in steps for k in ("true_ctr", "predicted_ctr", "simulator_ctr"))
