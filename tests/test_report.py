"""Tests for recrl.report: metric logging, atomic writes, learning curves and final reports."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest
from rich.console import Console

from recrl.report import (
    RunLogger,
    _curves,
    markdown_table,
    plot_learning_curves,
    print_report_table,
    read_metrics,
    write_json_atomic,
    write_report,
    write_text_atomic,
)

NAN = float("nan")


def _strict_json(text: str) -> object:
    """Parse JSON, failing on the non-standard NaN/Infinity tokens."""

    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def _report() -> dict:
    stat = {"mean": 9.1, "ci95": 0.3, "n": 500}
    return {
        "task": "train",
        "run_dir": "/tmp/run",
        "seed": 0,
        "algo": "dqn",
        "reward": "ctr",
        "config": {"algo": {"name": "dqn", "lr": 1e-3}},
        "timings": {"behavior_fit_s": 3.1, "train_s": 40.2, "eval_s": 5.0, "total_s": 50.0},
        "versions": {"recrl": "0.1.0", "torch": "2.13.0", "python": "3.11.7"},
        "behavior": {"valid_click_logloss": 0.66, "valid_click_auc": 0.64},
        "evaluation": {
            "simulator": {
                "dqn": {"return": stat, "ctr": {"mean": 0.21, "ci95": 0.01, "n": 500}},
                "random": {"return": {"mean": 3.0, "ci95": NAN, "n": 1}, "ctr": {"mean": 0.1, "ci95": None}},
            },
            "ground_truth": {
                "dqn": {"return": {"mean": 7.25, "ci95": 0.4125, "n": 500}},
                "random": {"return": {"mean": 2.5, "ci95": 0.25, "n": 500}},
            },
        },
    }


def test_run_logger_writes_strict_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with RunLogger(tmp_path / "run") as logger:
        logger.log(1, {"train/loss": 0.5, "eval/return": NAN})
        logger.log(2, {"train/loss": 0.25, "eval/return": 3.0, "train/inf": math.inf})
        # flushed per line: readable before close
        assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [_strict_json(line) for line in lines] == [
        {"step": 1, "train/loss": 0.5, "eval/return": None},
        {"step": 2, "train/loss": 0.25, "eval/return": 3.0, "train/inf": None},
    ]
    scalars = _tensorboard_scalars(tmp_path / "run" / "tb")
    assert scalars["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert scalars["eval/return"][1] == (2, 3.0) and math.isnan(scalars["eval/return"][0][1])
    assert scalars["train/inf"] == [(2, math.inf)]


def _tensorboard_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard's own reader finds in ``tb_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_run_logger_writes_tensorboard_without_a_writer_thread(tmp_path: Path) -> None:
    """An interrupt can stop the run anywhere in ``log``: no thread or lock is left for ``close``
    to wait on, and what was logged before stays readable."""
    threads = threading.active_count()
    logger = RunLogger(tmp_path)
    logger.log(3, {"eval/return": 2.0})
    assert threading.active_count() == threads
    assert _tensorboard_scalars(tmp_path / "tb") == {"eval/return": [(3, 2.0)]}  # flushed, not yet closed
    logger.close()
    logger.close()
    RunLogger(tmp_path).log(4, {"eval/return": 1.0})  # a resumed run: a second file in the same folder
    assert _tensorboard_scalars(tmp_path / "tb") == {"eval/return": [(3, 2.0), (4, 1.0)]}


def test_run_logger_without_tensorboard_appends(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log(0, {"train/loss": 1.0})
    logger.close()
    logger.close()
    RunLogger(tmp_path, tensorboard=False).log(5, {"train/loss": 0.5})
    assert not (tmp_path / "tb").exists()
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 0, "train/loss": 1.0},
        {"step": 5, "train/loss": 0.5},
    ]


def test_read_metrics_skips_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 0.5}\n\n{"step": 2, "train/lo')
    assert read_metrics(path) == [{"step": 1, "train/loss": 0.5}]


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"x": NAN, "y": [1, 2]})
    write_text_atomic(tmp_path / "b.txt", "hello ±")
    write_text_atomic(tmp_path / "b.txt", "replaced")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]
    assert _strict_json((tmp_path / "a.json").read_text()) == {"x": None, "y": [1, 2]}
    assert (tmp_path / "b.txt").read_text() == "replaced"


def test_failed_atomic_write_keeps_original_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    write_json_atomic(target, {"v": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert json.loads(target.read_text()) == {"v": 1}


def test_write_report_json_round_trips(tmp_path: Path) -> None:
    report = _report()
    write_report(tmp_path, report)
    loaded = _strict_json((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.json").read_text().startswith('{\n  "task": "train"')
    assert loaded["evaluation"]["simulator"]["random"]["return"] == {"mean": 3.0, "ci95": None, "n": 1}
    report["evaluation"]["simulator"]["random"]["return"]["ci95"] = None
    assert loaded == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_write_report_markdown_tables(tmp_path: Path) -> None:
    write_report(tmp_path, _report())
    md = (tmp_path / "report.md").read_text()
    return_table = "\n".join(
        [
            "| policy | simulator | ground_truth |",
            "|---|---:|---:|",
            "| dqn | 9.100 ± 0.300 | 7.250 ± 0.412 |",
            "| random | 3.000 | 2.500 ± 0.250 |",
        ]
    )
    assert md.startswith("# ")
    assert return_table in md
    assert md.index(return_table) < md.index("### ctr")
    # ctr is missing on ground_truth: its table has the simulator column only
    assert "### ctr\n\n| policy | simulator |\n|---|---:|\n| dqn | 0.210 ± 0.010 |" in md
    assert "| random | 3.000 | 0.100 |" in md  # per-env table (simulator: return, ctr)
    assert "**algo**: `dqn`" in md and "**reward**: `ctr`" in md and "**seed**: `0`" in md
    assert "torch 2.13.0" in md
    assert "## Behavior model" in md and "| valid_click_auc | 0.6400 |" in md
    assert "| total_s | 50.00 s |" in md


def test_write_report_without_behavior(tmp_path: Path) -> None:
    report = _report()
    del report["behavior"]
    write_report(tmp_path, report)
    assert "Behavior model" not in (tmp_path / "report.md").read_text()


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["a", "b"], [["x|y", "1"]]) == "| a | b |\n|---|---:|\n| x\\|y | 1 |"


def test_print_report_table_shows_each_env() -> None:
    console = Console(record=True, width=200)
    print_report_table(_report(), console=console)
    text = console.export_text()
    assert "Evaluation on simulator" in text and "Evaluation on ground_truth" in text
    assert "9.100 ± 0.300" in text and "7.250 ± 0.412" in text


def test_plot_learning_curves_writes_png(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=False) as logger:
        for step in range(5):
            logger.log(step, {"train/loss": 1.0 / (step + 1), "eval/return": float(step), "other": 1.0})
    out = plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert len(data) > 0 and data.startswith(b"\x89PNG")
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]
    explicit = plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "one.png", keys=["other"])
    assert explicit is not None and explicit.stat().st_size > 0


def test_default_curves_include_the_ground_truth_trained_copy() -> None:
    records = [{"step": s, "eval/return": 1.0, "trained_in_ground_truth/eval/return": 2.0,
                "trained_in_ground_truth/train/loss": 0.5, "other": 3.0} for s in range(3)]
    assert set(_curves(records, None)) == {"eval/return", "trained_in_ground_truth/eval/return"}


def test_plot_learning_curves_nothing_to_plot(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=False) as logger:
        logger.log(0, {"train/loss": 1.0, "eval/return": NAN})
        logger.log(1, {"eval/return": NAN, "other": 2.0})
    assert plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png") is None
    assert plot_learning_curves(tmp_path / "missing.jsonl", tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
