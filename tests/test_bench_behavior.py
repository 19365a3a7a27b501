"""``scripts/bench_behavior.py`` runs on a tiny generated log (no timing is asserted)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from tiny import SCRIPTS

from recrl.memory import keep_freed_memory


def test_bench_behavior_writes_one_row_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "not_yet" / "bench_behavior.json"
    monkeypatch.setattr(sys, "argv", ["bench_behavior.py", "--items", "30", "--users", "16", "--length", "4",
                                      "--batch", "4", "--steps", "1", "--history", "3",
                                      "--models", "gru", "mf", "--out", str(out)])
    runpy.run_path(str(SCRIPTS / "bench_behavior.py"), run_name="__main__")
    rows = json.loads(out.read_text())["results"]
    assert [r["model"] for r in rows] == ["gru", "mf"]
    assert all(r["params"] > 0 and r["train_rows_per_s"] > 0 and r["score_users_per_s"] > 0 for r in rows)
    assert json.loads(out.read_text())["settings"]["keep_freed_memory"] is keep_freed_memory()  # as a job
