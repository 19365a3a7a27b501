"""recrl sweep on the Ray and submitit launchers (optional extras): jobs spread out, each with
``trainer.threads`` threads, a failing job recorded while the others run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny import run_recrl

from recrl.cli import launcher_overrides
from recrl.config import compose_config

# two algorithms x a slate size that fails at run time (larger than the catalogue the data has):
# two jobs fail, two run
GRID = ["experiment=smoke", "eval.baselines=[]", "eval.oracle=false", "algo=random,popular",
        "env.slate_size=1,5000", "trainer.threads=1"]


def recrl(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return run_recrl(*args, cwd=cwd, cache=cache, RAY_DEDUP_LOGS="0")


def check_sweep(proc: subprocess.CompletedProcess, sweep: Path) -> None:
    """Two of four jobs failed (recorded, exit code 1); the others ran with one thread each."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 of 4 jobs failed" in proc.stderr
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert len(jobs) == 4
    assert sorted(jobs["status"]) == ["failed", "failed", "ok", "ok"]
    assert set(jobs[jobs["status"] == "failed"]["configuration"].str.contains("slate_size=5000")) == {True}
    for job in jobs[jobs["status"] == "ok"]["job"]:
        assert json.loads((sweep / str(job) / "report.json").read_text())["threads"] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A local Ray head with 2 CPUs, started for these tests (as a user's cluster would be)."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray is None:
        pytest.skip("the ray command is not beside this Python")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's default temp folder, where `address=auto` finds the cluster and its auth token
    subprocess.run([ray, "start", "--head", f"--port={free_port()}", "--num-cpus=2",
                    "--include-dashboard=false", "--object-store-memory=100000000", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        yield "auto"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_launcher_spreads_jobs_over_a_running_cluster(tmp_path: Path, ray_head: str,
                                                          shared_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = recrl("sweep", *GRID, "hydra/launcher=ray", f"+hydra.launcher.ray.init.address={ray_head}",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, cache=shared_cache)
    check_sweep(proc, sweep)
    launcher = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["ray"]["remote"]["num_cpus"] == 1  # trainer.threads reserves the cores
    assert launcher["ray"]["init"] == {"address": ray_head, "object_store_memory": None}


def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path: Path, shared_cache: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the slurm extra is not installed: pip install -e '.[slurm]'")
    sweep = tmp_path / "sweep"
    proc = recrl("sweep", *GRID, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, cache=shared_cache)
    check_sweep(proc, sweep)
    assert yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]["cpus_per_task"] == 1


def test_submitit_slurm_asks_slurm_for_the_job_threads() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the slurm extra is not installed: pip install -e '.[slurm]'")
    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "trainer.threads=8"]
    overrides += launcher_overrides(overrides)
    launcher = compose_config("train", overrides, return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.cpus_per_task, launcher.partition) == (8, "gpu")
    explicit = ["hydra/launcher=submitit_slurm", "trainer.threads=8", "hydra.launcher.cpus_per_task=16"]
    assert launcher_overrides(explicit) == []
    assert launcher_overrides(["hydra/launcher=joblib", "trainer.threads=8"]) == []
    assert launcher_overrides(["hydra/launcher=ray"]) == []
