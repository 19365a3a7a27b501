"""Tests for recrl.sweep: grouping multirun jobs by configuration and aggregating across seeds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from rich.console import Console

from recrl.cli import main as recrl_main
from recrl.sweep import (
    COLUMNS,
    JobStatus,
    SweepSummaryCallback,
    algorithm_table,
    collect_sweep,
    configuration_label,
    configuration_status,
    failed_jobs,
    find_reports,
    split_algo,
    summarize_sweep,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
T_975_DF2 = 4.302652729749  # Student-t 97.5% quantile, 2 degrees of freedom


def _make_job(sweep_dir: Path, num: int, overrides: list[str], sim_return: float | None) -> None:
    """A fake Hydra job folder with ``.hydra/overrides.yaml`` and a ``report.json``."""
    job_dir = sweep_dir / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    gt_return = None if sim_return is None else sim_return - 1.0
    evaluation = {
        "simulator": {
            "dqn": {
                "return": {"mean": sim_return, "ci95": 0.5, "n": 100},
                "coverage": {"mean": 0.4, "ci95": None, "n": 1},
            },
            "random": {"return": {"mean": 2.0, "ci95": 0.1, "n": 100}},
        },
        "ground_truth": {"dqn": {"return": {"mean": gt_return, "ci95": 0.5, "n": 100}}},
    }
    (job_dir / "report.json").write_text(json.dumps({"task": "train", "evaluation": evaluation}))


def _make_sweep(sweep_dir: Path) -> None:
    """Two configurations x three seeds; returns [9, 10, 11] and [1, 2, 6] on the simulator."""
    num = 0
    for seed, ret in enumerate([9.0, 10.0, 11.0]):
        _make_job(sweep_dir, num, ["algo=dqn", f"seed={seed}"], ret)
        num += 1
    for seed, ret in enumerate([1.0, 2.0, 6.0]):
        _make_job(sweep_dir, num, [f"seed={seed}", "reward=conversion", "algo=dqn"], ret)
        num += 1


def _row(frame: pd.DataFrame, config: str, env: str, policy: str, metric: str) -> pd.Series:
    sub = frame[
        (frame["configuration"] == config)
        & (frame["env"] == env)
        & (frame["policy"] == policy)
        & (frame["metric"] == metric)
    ]
    assert len(sub) == 1
    return sub.iloc[0]


def test_configuration_label() -> None:
    assert configuration_label(["seed=2", "reward=ctr", "algo=dqn"]) == "algo=dqn reward=ctr"
    assert configuration_label(["++seed=2"]) == "(default)"
    assert configuration_label([]) == "(default)"
    assert configuration_label(["seeds=3"]) == "seeds=3"
    shared = frozenset({"experiment=smoke"})
    assert configuration_label(["algo=dqn", "experiment=smoke", "seed=1"], shared) == "algo=dqn"


def test_summarize_sweep_means_and_cis(tmp_path: Path) -> None:
    _make_sweep(tmp_path)
    frame = summarize_sweep(tmp_path, console=Console(record=True, width=200))
    assert frame is not None
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.columns) == COLUMNS
    a, b = "(default)", "reward=conversion"  # algo=dqn is shared by all jobs
    assert set(csv["configuration"]) == {a, b}
    # config a: [9, 10, 11] -> mean 10, sd 1
    row = _row(csv, a, "simulator", "dqn", "return")
    assert row["mean"] == pytest.approx(10.0)
    assert row["ci95"] == pytest.approx(T_975_DF2 * 1.0 / math.sqrt(3), abs=1e-6)
    assert row["ci95"] == pytest.approx(2.484138, abs=1e-6)
    assert row["n_seeds"] == 3
    # config b: [1, 2, 6] -> mean 3, variance (4 + 1 + 9) / 2 = 7
    row = _row(csv, b, "simulator", "dqn", "return")
    assert row["mean"] == pytest.approx(3.0)
    assert row["ci95"] == pytest.approx(T_975_DF2 * math.sqrt(7) / math.sqrt(3), abs=1e-6)
    assert row["ci95"] == pytest.approx(6.572411, abs=1e-6)
    row = _row(csv, b, "ground_truth", "dqn", "return")
    assert row["mean"] == pytest.approx(2.0)
    assert row["ci95"] == pytest.approx(6.572411, abs=1e-6)
    # identical values across seeds: zero-width interval
    row = _row(csv, a, "simulator", "random", "return")
    assert (row["mean"], row["ci95"], row["n_seeds"]) == (2.0, 0.0, 3)
    assert _row(csv, a, "simulator", "dqn", "coverage")["mean"] == pytest.approx(0.4)
    assert len(csv) == 2 * 4  # 2 configs x (3 simulator series + 1 ground_truth)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), csv, check_dtype=False)


def test_summary_markdown_and_console(tmp_path: Path) -> None:
    _make_sweep(tmp_path)
    console = Console(record=True, width=200)
    summarize_sweep(tmp_path, console=console)
    md = (tmp_path / "summary.md").read_text()
    sim_table = "\n".join(
        [
            "| policy | (default) | reward=conversion |",
            "|---|---:|---:|",
            "| dqn | 10.000 ± 2.484 | 3.000 ± 6.572 |",
            "| random | 2.000 ± 0.000 | 2.000 ± 0.000 |",
        ]
    )
    assert "## return on simulator" in md and sim_table in md
    assert "## return on ground_truth" in md
    assert "|---|---|---|---|---:|---:|---:|---:|" in md
    assert "| (default) | ground_truth | dqn | return | 9.000 | 2.484 | 3 | ok |" in md
    assert "6 jobs (6 ok), 2 configurations" in md
    assert "did not succeed" not in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    text = console.export_text()
    assert "Sweep: return on simulator" in text and "10.000 ± 2.484" in text


def test_null_means_are_dropped_from_seed_counts(tmp_path: Path) -> None:
    _make_sweep(tmp_path)
    _make_job(tmp_path, 6, ["algo=dqn", "seed=3"], None)  # e.g. a diverged run
    frame = summarize_sweep(tmp_path, console=Console(record=True))
    assert frame is not None
    row = _row(frame, "(default)", "simulator", "dqn", "return")
    assert (row["mean"], row["n_seeds"]) == (pytest.approx(10.0), 3)
    assert _row(frame, "(default)", "simulator", "random", "return")["n_seeds"] == 4


def test_jobs_without_overrides_form_default_configuration(tmp_path: Path) -> None:
    _make_job(tmp_path, 0, ["seed=0"], 1.0)
    _make_job(tmp_path, 1, ["seed=1"], 3.0)
    frame = summarize_sweep(tmp_path, console=Console(record=True))
    assert frame is not None
    row = _row(frame, "(default)", "simulator", "dqn", "return")
    assert row["mean"] == pytest.approx(2.0)
    assert row["ci95"] == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2), abs=1e-6)


def _make_algo_job(sweep_dir: Path, num: int, overrides: list[str], algo_return: float) -> None:
    """A job whose report holds its algorithm's policy (named after ``algo=``) and a random baseline."""
    algo = next(o.split("=", 1)[1] for o in overrides if o.startswith("algo="))
    job_dir = sweep_dir / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    random_return = 1.0 if "dataset=coat" in overrides else 2.0
    evaluation = {
        env: {algo: {"return": {"mean": algo_return + shift, "ci95": 0.1, "n": 10}},
              "trained_in_ground_truth": {"return": {"mean": 2 * algo_return, "ci95": 0.1, "n": 10}},
              "random": {"return": {"mean": random_return, "ci95": 0.1, "n": 10}}}
        for env, shift in (("ground_truth", 0.0), ("simulator", 10.0))
    }
    (job_dir / "report.json").write_text(json.dumps({"task": "train", "evaluation": evaluation}))


def _make_algo_sweep(sweep_dir: Path) -> None:
    """algo=dqn,ppo x dataset=synthetic,coat x seed=0,1 (+ experiment=smoke on every job).

    Ground-truth returns: dqn synthetic 3, 5; dqn coat 4, 4; ppo synthetic 1, 1; ppo coat 2, 6.
    """
    returns = {("dqn", "synthetic"): [3.0, 5.0], ("dqn", "coat"): [4.0, 4.0],
               ("ppo", "synthetic"): [1.0, 1.0], ("ppo", "coat"): [2.0, 6.0]}
    for num, ((algo, dataset), values) in enumerate(returns.items()):
        for seed, value in enumerate(values):
            overrides = [f"seed={seed}", f"dataset={dataset}", f"algo={algo}", "experiment=smoke"]
            _make_algo_job(sweep_dir, 2 * num + seed, overrides, value)


def test_split_algo() -> None:
    assert split_algo("algo=dqn dataset=coat") == ("dqn", "dataset=coat")
    assert split_algo("algo=ppo") == ("ppo", "(default)")
    assert split_algo("(default)") == (None, "(default)")
    assert split_algo("dataset=coat reward=ctr") == (None, "dataset=coat reward=ctr")


def test_algorithm_table_rows_are_algorithms_columns_are_context_and_env(tmp_path: Path) -> None:
    _make_algo_sweep(tmp_path)
    frame = collect_sweep(find_reports(tmp_path))
    table = algorithm_table(frame, "return")
    assert table is not None
    header, rows = table
    assert header == ["policy", "dataset=coat ground_truth", "dataset=coat simulator",
                      "dataset=synthetic ground_truth", "dataset=synthetic simulator"]
    by_policy = {row[0]: row[1:] for row in rows}
    assert list(by_policy) == ["dqn", "ppo", "dqn · trained_in_ground_truth", "ppo · trained_in_ground_truth",
                               "random"]
    # the ground-truth-trained copy belongs to its own algorithm: dqn synthetic 2 x (3, 5), ppo 2 x (1, 1)
    t_half = 12.706204736      # Student t (1 df) x standard error (sd sqrt(2) / sqrt(2) = 1) for 3, 5
    assert by_policy["dqn · trained_in_ground_truth"][2] == f"8.000 ± {2 * t_half:.3f}"
    assert by_policy["ppo · trained_in_ground_truth"][2].startswith("2.000")
    assert by_policy["dqn"][2] == f"4.000 ± {t_half:.3f}"     # synthetic: mean of 3 and 5
    assert by_policy["dqn"][3] == f"14.000 ± {t_half:.3f}"
    assert by_policy["dqn"][0].startswith("4.000")           # coat: 4 and 4, no spread
    assert by_policy["ppo"][0] == f"4.000 ± {2 * t_half:.3f}"  # coat: mean of 2 and 6
    assert by_policy["random"] == ["1.000 ± 0.000", "1.000 ± 0.000", "2.000 ± 0.000", "2.000 ± 0.000"]


def test_algorithm_table_needs_two_algorithms(tmp_path: Path) -> None:
    _make_sweep(tmp_path)     # only algo=dqn
    assert algorithm_table(collect_sweep(find_reports(tmp_path)), "return") is None


def test_summary_markdown_and_console_show_the_algorithm_table(tmp_path: Path) -> None:
    _make_algo_sweep(tmp_path)
    console = Console(record=True, width=200)
    summarize_sweep(tmp_path, console=console)
    markdown = (tmp_path / "summary.md").read_text()
    assert "## return by algorithm" in markdown
    assert "| policy | dataset=coat ground_truth | dataset=coat simulator |" in markdown
    text = console.export_text()
    assert "Sweep: return by algorithm" in text and "dataset=coat ground_truth" in text


def test_sweep_summarize_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _make_algo_sweep(tmp_path)
    assert recrl_main(["sweep", "summarize", str(tmp_path)]) == 0
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "summary.md").is_file()
    assert recrl_main(["sweep", "summarize", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert recrl_main(["sweep", "summarize", str(empty)]) == 2
    assert "no job under" in capsys.readouterr().err


def test_no_reports_returns_none(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    assert summarize_sweep(tmp_path, console=console) is None
    assert "No report.json found" in console.export_text()
    assert not (tmp_path / "summary.csv").exists()


def test_callback_summarizes_sweep_dir(tmp_path: Path) -> None:
    _make_sweep(tmp_path)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummaryCallback().on_multirun_end(config)
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "summary.md").exists()


def test_callback_runs_at_end_of_real_hydra_multirun(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        textwrap.dedent(
            """\
            seed: 0
            algo: dqn
            hydra:
              callbacks:
                sweep_summary:
                  _target_: recrl.sweep.SweepSummaryCallback
            """
        )
    )
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import hydra
            from hydra.core.hydra_config import HydraConfig

            from recrl.report import write_report


            @hydra.main(version_base=None, config_path="conf", config_name="config")
            def main(cfg):
                ret = cfg.seed + (10.0 if cfg.algo == "dqn" else 0.0)
                stat = {"mean": ret, "ci95": 0.1, "n": 5}
                report = {"evaluation": {"simulator": {"agent": {"return": stat}}}}
                write_report(Path(HydraConfig.get().runtime.output_dir), report)


            main()
            """
        )
    )
    sweep_dir = tmp_path / "multirun"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "app.py", "-m", "seed=0,1,2", "algo=dqn,random", f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    csv = pd.read_csv(sweep_dir / "summary.csv")
    assert sorted(csv["configuration"]) == ["algo=dqn", "algo=random"]
    row = _row(csv, "algo=dqn", "simulator", "agent", "return")
    assert (row["mean"], row["n_seeds"]) == (pytest.approx(11.0), 3)
    assert row["ci95"] == pytest.approx(2.484138, abs=1e-6)


def test_job_status_round_trip_and_configuration_status(tmp_path: Path) -> None:
    JobStatus("failed", 2, "trainer.steps=-1 is negative", 0.5).write(tmp_path / "a")
    assert JobStatus.read(tmp_path / "a") == JobStatus("failed", 2, "trainer.steps=-1 is negative", 0.5)
    assert JobStatus.read(tmp_path / "missing") is None
    jobs = pd.DataFrame({"configuration": ["x", "x", "x", "y"], "status": ["ok", "failed", "pruned", "ok"]})
    assert configuration_status(jobs) == {"x": "1 failed and 1 pruned of 3", "y": "ok"}


def test_summary_lists_failed_jobs_beside_the_results(tmp_path: Path) -> None:
    _make_sweep(tmp_path)
    failed = tmp_path / "6"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["algo=dqn", "reward=watch", "seed=0"]))
    JobStatus("failed", 1, "RuntimeError: out of memory").write(failed)
    console = Console(record=True, width=200)
    frame = summarize_sweep(tmp_path, console=console)
    assert frame is not None
    row = frame[frame["configuration"] == "reward=watch"].iloc[0]
    assert (row["env"], row["n_seeds"], row["status"]) == ("", 0, "1 failed of 1")
    assert set(frame[frame["configuration"] != "reward=watch"]["status"]) == {"ok"}
    md = (tmp_path / "summary.md").read_text()
    assert "7 jobs (6 ok, 1 failed)" in md
    assert "| 6 | reward=watch | 0 | failed | 1 | RuntimeError: out of memory |" in md
    line = "job 6 (reward=watch, seed 0): failed, exit code 1: RuntimeError: out of memory"
    assert line in console.export_text()
    assert failed_jobs(tmp_path) == ["6"]
