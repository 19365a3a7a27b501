"""``scripts/bench_large_model.py``: PPO per policy backbone, run tiny in-process (no timing is
asserted, only that every figure is there and the ratios are what they say)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny import load_script

from recrl.memory import keep_freed_memory


def test_bench_large_model_writes_one_row_per_backbone_with_ratios_to_the_mlp(tmp_path: Path) -> None:
    bench = load_script("bench_large_model")
    out = tmp_path / "bench_large_model.json"
    tiny = ["--items", "50", "--users", "8", "--repeats", "1", "--act-calls", "1", "--device", "cpu"]
    data = bench.main([*tiny, "--backbones", "small", "--out", str(out)])
    assert json.loads(out.read_text()) == data
    rows = data["results"]
    # the MLP is always measured first, as the reference, even when not asked for
    assert [r["backbone"] for r in rows] == ["mlp", "small"]
    assert [(r["encoder"], r["dim"], r["layers"], r["heads"]) for r in rows] == [
        ("mlp", 32, None, None), ("transformer", 64, 2, 2)]
    mlp, small = rows
    assert mlp["update_time_vs_mlp"] == 1.0 and mlp["acting_time_vs_mlp"] == 1.0
    assert small["update_time_vs_mlp"] == pytest.approx(small["update_s"] / mlp["update_s"])
    for r in rows:
        assert r["updates_per_s"] > 0 and r["acting_user_steps_per_s"] > 0 and r["params"] > 0
        assert r["minibatch_steps"] >= 4 and r["valid_rows"] > 0  # 4 epochs of at least one minibatch
        assert r["flops_per_update"] > 0 and r["peak_bytes"] >= 0 and r["memory_method"]
        assert r["update_cpu_per_wall"] > 0
        assert math.isfinite(r["share_of_bound"]) and r["share_of_bound"] > 0
        assert r["share_of_bound"] == pytest.approx(
            r["updates_per_s"] * r["flops_per_update"] / (data["machine"]["matmul_gflops"] * 1e9))
    assert small["flops_per_update"] > mlp["flops_per_update"]  # same rollout, bigger network
    assert data["machine"]["matmul_gflops"] > 0 and data["settings"]["backbones"] == ["mlp", "small"]
    assert data["machine"]["keep_freed_memory"] is keep_freed_memory()  # as a recrl job

    again = bench.main([*tiny, "--backbones", "mlp", "--out", str(tmp_path / "new.json"),
                        "--compare", str(out)])
    [change] = again["comparison"]["rows"]  # only the backbone in both runs
    assert change["backbone"] == "mlp" and change["ratio_change"] == 1.0 and change["speed_change"] > 0
