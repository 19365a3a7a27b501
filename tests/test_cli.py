"""End to end through the ``recrl`` command in a subprocess, with the tiny smoke config."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import load_script, refused_in_process, run_recrl

from recrl import api, kernels
from recrl.checkpoint import load_checkpoint
from recrl.cli import _combinations, check_overrides, main
from recrl.ope.evaluation import OffPolicyEvaluation

SMOKE = ["experiment=smoke"]


def recrl(*args: str, cwd: Path, cache: Path, check: bool = True,
          fresh: bool = False) -> subprocess.CompletedProcess:
    proc = run_recrl(*args, cwd=cwd, cache=cache, fresh=fresh)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def means(report: dict) -> dict[tuple[str, str, str], float]:
    return {(env, pol, metric): stat["mean"]
            for env, by_policy in report["evaluation"].items()
            for pol, metrics in by_policy.items() for metric, stat in metrics.items()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    run_dir = root / "run"
    recrl("train", *SMOKE, f"hydra.run.dir={run_dir}", cwd=root, cache=root / "cache")
    return root, run_dir


def test_train_writes_the_run_folder(trained_run: tuple[Path, Path]) -> None:
    _, run = trained_run
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/best.pt",
                 "metrics.jsonl", "report.json", "report.md", "plots/learning_curve.png"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/return" in line for line in lines)
    assert any("train/loss" in line for line in lines)
    report = json.loads((run / "report.json").read_text())
    assert set(report["evaluation"]) == {"simulator", "ground_truth", "ope"}
    algo = report["algo"]
    # every policy but the oracle, which acts on the true state
    assert set(report["evaluation"]["ope"]) == {algo, "random", "popular", "greedy"}
    off = report["off_policy"]
    assert off["source"] == "the test split" and off["sessions"] == 50 and off["propensity"]["missing"] == 0
    random_estimates = off["policies"]["random"]
    assert set(random_estimates) == {"dm", "ips", "snips", "clipped_ips", "dr", "switch_dr", "model", "pdis",
                                     "wpdis", "wdr", "seq_dr"}
    assert report["evaluation"]["ope"]["random"]["return"]["mean"] == random_estimates["model"]["value"]
    assert "## Off-policy estimates" in (run / "report.md").read_text()
    assert set(report["evaluation"]["ground_truth"]) == {algo, "random", "popular", "greedy", "oracle"}
    truth = report["evaluation"]["ground_truth"]
    assert truth["oracle"]["return"]["mean"] > truth["random"]["return"]["mean"]
    assert truth[algo]["oracle_share"]["mean"] == pytest.approx(
        truth[algo]["return"]["mean"] / truth["oracle"]["return"]["mean"])
    for metric in ("coverage", "exposure_gini", "same_top_item", "category_diversity"):
        assert metric in truth[algo], metric
    ret = report["evaluation"]["ground_truth"][algo]["return"]
    assert ret["n"] == 64 and ret["ci95"] > 0
    assert 0 < report["behavior"]["valid_click_auc"] <= 1
    assert report["seed"] == 0 and report["versions"]["torch"]
    assert report["native_search"] == kernels.status()
    # the tiny world's catalogue is under the bfloat16 search's threshold: nothing rounded
    assert report["native_search_users"] == {"rounded_users": 0, "searched_again": 0}
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["algo_name"] == algo and ckpt["step"] in (60, 70)  # on-policy: whole episodes of 10 steps


def test_the_run_folder_log_holds_the_run_messages(trained_run: tuple[Path, Path]) -> None:
    _, run = trained_run
    log = (run / "cli.log").read_text()
    for message in ("[recrl.behavior.fit][INFO] - fitting behavior model GRUBehavior on",
                    "[recrl.behavior.fit][INFO] - fitted behavior model GRUBehavior in",
                    "[recrl.loop][INFO] - training ", "[recrl.loop][INFO] - step 30/",
                    "[recrl.loop][INFO] - training DQN done: ", "[recrl.evaluate][INFO] - final evaluation: ",
                    "[recrl.report][INFO] - result: dqn return ", f"report in {run / 'report.md'}"):
        assert message in log, message
    assert "[/" not in log and "\x1b[" not in log  # plain text: no rich markup, no colour codes


def test_train_in_ground_truth_adds_a_labelled_row(tmp_path: Path, shared_cache: Path) -> None:
    run_dir = tmp_path / "run"
    recrl("train", *SMOKE, "eval.train_in_ground_truth=true", "eval.baselines=[random,planner]",
          "algo.demonstrations=16", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=shared_cache)
    report = json.loads((run_dir / "report.json").read_text())
    for env in ("simulator", "ground_truth"):
        assert "trained_in_ground_truth" in report["evaluation"][env]
        assert report["evaluation"][env]["planner"]["return"]["mean"] > 0  # an opt-in baseline row
    assert "oracle_share" in report["evaluation"]["ground_truth"]["trained_in_ground_truth"]
    assert "trained_in_ground_truth" in (run_dir / "report.md").read_text()
    # its learning curve (evaluated in the ground truth) lands in the run's metrics, labelled
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/demo_loss" in r for r in records)  # DQfD's margin loss was trained
    # the run's demonstrations come from the planner on the fitted model, the copy's from the
    # planner on the ground truth it trains in (eval.ground_truth_demonstrator=truth)
    log = (run_dir / "cli.log").read_text()
    assert "sessions of the planner on GRUBehavior as demonstrations" in log
    assert "sessions of the planner on HistoryBelief as demonstrations" in log
    curve = [r for r in records if "trained_in_ground_truth/eval/return" in r]
    assert curve and all(r["trained_in_ground_truth/eval/return"] >= 0 for r in curve)
    assert any("eval/return" in r for r in records)  # the run's own curve is still there
    # its weights are kept for inspection, loadable like any checkpoint
    copy = api.load(run_dir, device="cpu", checkpoint="trained_in_ground_truth")
    own = api.load(run_dir, device="cpu")
    assert type(copy.policy.algo) is type(own.policy.algo)
    assert not all(torch.equal(a, b) for a, b in zip(copy.policy.algo.q.parameters(),
                                                     own.policy.algo.q.parameters(), strict=True))


def test_eval_reproduces_the_final_evaluation(trained_run: tuple[Path, Path]) -> None:
    root, run = trained_run
    out = root / "eval"
    proc = recrl("eval", f"checkpoint={run}", f"hydra.run.dir={out}", cwd=root, cache=root / "cache")
    assert "result: dqn return " in proc.stderr and "result: dqn return " in (out / "cli.log").read_text()
    original = means(json.loads((run / "report.json").read_text()))
    again = means(json.loads((out / "report.json").read_text()))
    assert original.keys() == again.keys()
    for key, value in original.items():
        if not math.isnan(value):
            assert abs(value - again[key]) <= 1e-6, key


def test_eval_settings_on_the_command_line_replace_the_runs(trained_run: tuple[Path, Path]) -> None:
    """`recrl eval checkpoint=<run> eval.ranking_split=valid`: the same policy's next-item ranking on
    the validation users (to choose settings without the test users), the rest of the run's
    evaluation settings kept."""
    root, run = trained_run
    out = root / "eval_valid"
    recrl("eval", f"checkpoint={run}", "eval.ranking_split=valid", "eval.episodes=50", "ope.enabled=false",
          f"hydra.run.dir={out}", cwd=root, cache=root / "cache")
    report = json.loads((out / "report.json").read_text())
    trained = json.loads((run / "report.json").read_text())
    assert trained["ranking_split"] == "test" and report["ranking_split"] == "valid"
    assert report["config"]["eval"]["episodes"] == 50 and report["config"]["eval"]["baselines"] == \
        trained["config"]["eval"]["baselines"]
    assert report["evaluation"]["simulator"]["random"]["return"]["n"] == 50
    assert report["policy_ranking"] and report["policy_ranking"] != trained["policy_ranking"]
    markdown = (out / "report.md").read_text()
    assert "offline ranking" in markdown and "held-out validation users" in markdown


def test_eval_ope_runs_only_the_off_policy_estimates(trained_run: tuple[Path, Path]) -> None:
    root, run = trained_run
    out = root / "ope"
    recrl("eval", "ope", f"checkpoint={run}", "ope.estimators=[ips,wpdis]", "ope.column=wpdis",
          "ope.n_boot=20", "ope.max_sessions=50", f"hydra.run.dir={out}", cwd=root, cache=root / "cache")
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "ope" and set(report["evaluation"]) == {"ope"}
    assert set(report["off_policy"]["policies"]["random"]) == {"ips", "wpdis"}
    trained = json.loads((run / "report.json").read_text())["off_policy"]["policies"]["random"]
    estimated = report["off_policy"]["policies"]["random"]
    assert estimated["ips"]["value"] == pytest.approx(trained["ips"]["value"])


def test_ope_table_compares_every_estimate_with_the_ground_truth(trained_run: tuple[Path, Path]) -> None:
    """scripts/ope_table.py on one run: one row per (policy, per-session estimator), bias = estimate -
    truth, where the truth is the report's ground-truth return."""
    root, run = trained_run
    table_script = load_script("ope_table")
    ope = OffPolicyEvaluation(estimators=["model", "wpdis"], column="model", n_boot=0, rollouts=1,
                              max_sessions=50)
    table = table_script.collect(table_script.run_folders([root]), ope)
    report = json.loads((run / "report.json").read_text())
    assert set(table) == {report["algo"], "random", "popular", "greedy"}
    records = table_script.summarize(table, ["model", "wpdis"])
    random_model = next(r for r in records if r["policy"] == "random" and r["estimator"] == "model")
    truth = report["evaluation"]["ground_truth"]["random"]["return"]["mean"]
    assert random_model["truth"] == pytest.approx(truth) and random_model["logs"] == 1
    assert random_model["bias"] == pytest.approx(random_model["estimate"] - truth)
    assert random_model["rmse"] == pytest.approx(abs(random_model["bias"]))


def test_best_by_ope_is_the_policy_evaluated(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    """trainer.select_by=ope picks best.pt by the off-policy estimate on the validation logs, and
    eval.policy=best makes the final evaluation score it: `recrl eval` of best.pt gives the same
    figures."""
    root, _ = trained_run
    run = tmp_path / "best"
    recrl("train", *SMOKE, "trainer.select_by=ope", "eval.policy=best", f"hydra.run.dir={run}", cwd=root,
          cache=root / "cache")
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["select_by"] == "ope" and report["training"]["evaluated_policy"] == "best"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    checks = [line["eval/return"] for line in lines if "eval/return" in line]
    assert checks and max(checks) == pytest.approx(report["training"]["best_eval_return"])
    again = tmp_path / "again"
    recrl("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={again}", cwd=root,
          cache=root / "cache")
    evaluated = json.loads((again / "report.json").read_text())
    assert means(evaluated)[("ground_truth", "dqn", "return")] == pytest.approx(
        means(report)[("ground_truth", "dqn", "return")], abs=1e-6)


def test_behavior_model_is_cached(trained_run: tuple[Path, Path]) -> None:
    root, _ = trained_run
    proc = recrl("train", *SMOKE, "algo=random", f"hydra.run.dir={root / 'random'}", cwd=root,
                 cache=root / "cache")
    assert "cache hit" in proc.stderr
    report = json.loads((root / "random" / "report.json").read_text())
    assert report["behavior"]["cached"] is True


def test_eval_behavior_only_reports_the_behavior_model(trained_run: tuple[Path, Path]) -> None:
    root, _ = trained_run
    out = root / "behavior"
    proc = recrl("eval", "behavior-only", *SMOKE, f"hydra.run.dir={out}", cwd=root, cache=root / "cache")
    assert "cache hit" in proc.stderr  # the model fitted by `recrl train` is reused
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "behavior" and "evaluation" not in report
    assert set(report["offline"]) == {"full", "sampled-100", "popularity · full", "popularity · sampled-100"}
    assert 0 <= report["offline"]["full"]["ndcg@10"] <= report["offline"]["full"]["hr@10"] <= 1
    assert {"validation", "true_model"} <= set(report["fidelity"])
    assert (out / "plots" / "calibration.png").is_file()
    assert "offline ranking" in proc.stdout and "## Simulator fidelity" in (out / "report.md").read_text()


def test_ground_truth_env_from_a_saved_run(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = trained_run
    out = tmp_path / "gt"
    recrl("train", *SMOKE, "algo=random", "eval.baselines=[]", f"eval.ground_truth={run}",
          f"hydra.run.dir={out}", cwd=root, cache=root / "cache")
    report = json.loads((out / "report.json").read_text())
    assert set(report["evaluation"]) == {"simulator", "ground_truth", "ope"}
    assert "true_model" not in report["fidelity"]  # the saved model is not the true world
    proc = recrl("train", *SMOKE, f"eval.ground_truth={tmp_path / 'nothing'}", cwd=tmp_path,
                 cache=root / "cache", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_resume_continues_from_the_checkpoint_with_its_random_streams(tmp_path: Path,
                                                                      shared_cache: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    lean = ["eval.baselines=[]", "eval.oracle=false", "ope.enabled=false"]  # the final report is not checked
    recrl("train", *SMOKE, *lean, "algo=dqn", "trainer.steps=30", f"hydra.run.dir={first}", cwd=tmp_path,
          cache=shared_cache)
    saved = load_checkpoint(first / "checkpoints" / "last.pt")
    assert saved["step"] == 30
    recrl("train", *SMOKE, *lean, "algo=dqn", "trainer.steps=60", f"resume={first}",
          f"hydra.run.dir={second}", cwd=tmp_path, cache=shared_cache)
    resumed = load_checkpoint(second / "checkpoints" / "last.pt")
    assert resumed["step"] == 60 and resumed["algo"]["acted_steps"] > saved["algo"]["acted_steps"]
    report = json.loads((second / "report.json").read_text())
    assert report["training"]["env_steps"] == 60 and report["training"]["user_steps"] == 30 * 16
    steps = [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) > 30  # the log continues after the checkpoint's step
    proc = recrl("train", *SMOKE, "algo=reinforce", f"resume={first}", f"hydra.run.dir={tmp_path / 'bad'}",
                 cwd=tmp_path, cache=shared_cache, check=False)
    assert proc.returncode == 2 and "its algo settings differ" in proc.stderr


def test_restore_training_state_restores_the_random_streams() -> None:
    import torch

    from recrl.data.synthetic import SyntheticWorld
    from recrl.env.simulator import RecEnv
    from recrl.rewards import ClickReward
    from recrl.train import restore_training_state

    env = RecEnv(SyntheticWorld(n_items=10, n_users=5, n_topics=2, horizon=3), ClickReward())
    env.generator.manual_seed(5)
    payload = {"algo": {}, "torch_rng": torch.get_rng_state(), "env_rng": env.generator.get_state()}
    expected = (torch.rand(3), torch.rand(3, generator=env.generator))

    class NoAlgo:
        def load_state_dict(self, state: dict) -> None:
            assert state == {}

    restore_training_state(payload, NoAlgo(), env)
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, generator=env.generator), expected[1])


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


@pytest.mark.parametrize(("launcher", "algos", "seeds"), [([], ["reinforce", "random"], [0, 1]),
                                                          (JOBLIB, ["random", "popular"], [0])],
                         ids=["one_at_a_time", "joblib_parallel"])
def test_sweep_writes_one_folder_per_job_and_a_summary(tmp_path: Path, shared_cache: Path,
                                                       launcher: list[str], algos: list[str],
                                                       seeds: list[int]) -> None:
    sweep = tmp_path / "sweep"
    grid = [f"algo={','.join(algos)}", f"seed={','.join(map(str, seeds))}"]
    recrl("sweep", *SMOKE, *grid, "eval.baselines=[]", *launcher, f"hydra.sweep.dir={sweep}", cwd=tmp_path,
          cache=shared_cache)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "report.json").is_file())
    assert len(jobs) == len(algos) * len(seeds)
    summary = (sweep / "summary.csv").read_text().splitlines()
    header = summary[0].split(",")
    assert header[:4] == ["configuration", "env", "policy", "metric"]
    rows = [dict(zip(header, line.split(","), strict=True)) for line in summary[1:]]
    returns = [r for r in rows if r["metric"] == "return" and r["env"] == "ground_truth"]
    assert {r["configuration"] for r in returns} == {f"algo={a}" for a in algos}
    assert all(r["n_seeds"] == str(len(seeds)) for r in returns)
    assert "## return by algorithm" in (sweep / "summary.md").read_text()
    for job in jobs:  # every job logs into its own folder, also in joblib's worker processes
        assert "result: " in (job / "cli.log").read_text(), job


@pytest.mark.parametrize("launcher", [[], JOBLIB], ids=["one_at_a_time", "joblib_parallel"])
def test_a_failing_job_is_recorded_and_the_other_jobs_run(tmp_path: Path, shared_cache: Path,
                                                          launcher: list[str]) -> None:
    # a slate larger than the catalogue the data turns out to have: job 0 fails at run time
    # (after the pre-check), job 1 runs
    sweep = tmp_path / "sweep"
    proc = recrl("sweep", *SMOKE, "env.slate_size=5000,1", "algo=random",
                 "eval.baselines=[]", "eval.oracle=false", *launcher, f"hydra.sweep.dir={sweep}",
                 cwd=tmp_path, cache=shared_cache, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "recrl: error: 1 of 2 jobs failed (job 0)" in proc.stderr
    assert "Traceback" not in proc.stderr
    failed = json.loads((sweep / "0" / "status.json").read_text())
    assert (failed["status"], failed["exit_code"]) == ("failed", 2)
    assert failed["error"] == "env.slate_size=5000 exceeds the catalogue (500 items)"
    assert json.loads((sweep / "1" / "status.json").read_text())["status"] == "ok"
    assert (sweep / "1" / "report.json").is_file() and not (sweep / "0" / "report.json").exists()
    summary = pd.read_csv(sweep / "summary.csv")
    status = dict(zip(summary["configuration"], summary["status"], strict=True))
    assert status == {"env.slate_size=5000": "1 failed of 1", "env.slate_size=1": "ok"}
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert list(jobs["status"]) == ["failed", "ok"] and list(jobs["exit_code"]) == [2, 0]
    assert "## Jobs that did not succeed" in (sweep / "summary.md").read_text()


def test_the_pre_check_expands_grids_and_hands_search_syntax_through() -> None:
    assert _combinations(["algo=dqn,ppo", "seed=range(0,2)"]) == [
        ["algo=dqn", "seed=0"], ["algo=dqn", "seed=1"], ["algo=ppo", "seed=0"], ["algo=ppo", "seed=1"]]
    # an interval is checked at both ends (the key exists, takes numbers); the sweeper samples it
    ends = [["algo.lr=0.0001"], ["algo.lr=0.01"]]
    assert _combinations(["algo.lr=tag(log, interval(0.0001, 0.01))"]) == ends
    assert _combinations(["algo=glob(c*)"]) == [["algo=c51"], ["algo=cql"]]


def test_the_pre_check_keeps_deletions_and_additions_as_written() -> None:
    """``~group`` drops a defaults entry (README: ``~algo_trainer``, ``~dataset_behavior``); the
    pre-check hands it to Hydra once, not as ``~~group``, and the run's config is built without it."""
    overrides = ["~algo_trainer", "~dataset_behavior=synthetic_gru", "+eval.extra=1", "seed=0,1"]
    assert _combinations(overrides) == [
        ["~algo_trainer", "~dataset_behavior=synthetic_gru", "+eval.extra=1", f"seed={s}"] for s in (0, 1)]
    check_overrides("train", ["~algo_trainer", "~dataset_behavior"])  # composes, no error


@pytest.mark.parametrize(("args", "message"), [
    (["sweep", "algo.lr=interval(0.001,0.01)"], "interval() needs a search, not a grid: add search=<"),
    (["sweep", "algo.lrr=interval(0.001,0.01)"], "unknown key algo.lrr"),
    (["sweep", "algo.lr=interval(fast,slow)"], "cannot parse overrides"),
    (["sweep", "algo=glob(dq*)", "algo.lr=tag(log, interval(abc, 0.1))"], "cannot parse overrides"),
])
def test_sweep_syntax_errors_are_one_line(args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("args", "message"), [
    (["train", "algo=dqnn"], "valid options for algo: a2c, bc, bcq, c51, cql, dpo, dqn, epsilon_greedy"),
    (["train", "trainer.steps=abc"], "trainer.steps='abc' is not a valid int"),
    (["train", "trainer.stepz=1"], "unknown key trainer.stepz"),
    (["train", "seed=1.5"], "seed=1.5 is not a valid int"),
    (["train", "algo.gamma=1.5"], "algo.gamma=1.5 must be in [0, 1]"),
    (["train", "algo.n_step=0"], "algo.n_step=0 must be >= 1"),  # before the data is read
    (["train", "eval.select_on=simulator"], "eval.select_on is now trainer.select_by"),
    (["train", "trainer.select_by=gt"], "trainer.select_by='gt': use one of simulator, held_out_member, ope"),
    (["train", "ope.column=ips"], "ope.column='ips': use a per-session estimator"),
    (["train", "eval.ranking_split=train"], "eval.ranking_split='train': use test"),
    (["train", "eval.ground_truth_demonstrator=x"], "eval.ground_truth_demonstrator='x': use truth"),
    (["eval"], "recrl eval needs checkpoint="),
    (["eval", "checkpoint=/no/such/run"], "does not exist"),
    (["eval", "checkpoint=/no/such/run", "eval.ground_truth=/other/run"], "eval.ground_truth is the run's"),
    (["fly"], "unknown command"),
])
def test_bad_input_gives_one_line_and_exit_code_2(args: list[str], message: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (the subprocess test below checks that a real process exits the same way)."""
    lines = refused_in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["train", "trainer.stepz=1"], "unknown key trainer.stepz"),  # the config's pre-check
    (["eval", "checkpoint=/no/such/run"], "does not exist"),
])
def test_a_recrl_process_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = recrl(*args, cwd=tmp_path, cache=tmp_path / "cache", check=False, fresh=True)  # a new interpreter
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_incompatible_checkpoint_is_a_clear_error(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = trained_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = recrl("eval", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path,
                 cache=tmp_path / "cache", check=False)
    assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr
    # a checkpoint whose weights do not fit its config (history length changed)
    import torch
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    payload["config"] = payload["config"].replace("history_len: 4", "history_len: 7")
    torch.save(payload, tmp_path / "mismatch.pt")
    proc = recrl("eval", f"checkpoint={tmp_path / 'mismatch.pt'}", f"hydra.run.dir={tmp_path / 'e2'}",
                 cwd=tmp_path, cache=root / "cache", check=False)
    assert proc.returncode == 2 and "does not fit" in proc.stderr, proc.stderr


@pytest.fixture
def spawn(tmp_path: Path, shared_cache: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``recrl train`` in a child process (``inherited``: its SIGINT disposition); every
    child still running when the test ends, failed or timed out, is killed."""
    children: list[subprocess.Popen] = []

    def start(*args: str, inherited: signal.Handlers = signal.SIG_DFL) -> subprocess.Popen:
        env = {**os.environ, "RECRL_CACHE_DIR": str(shared_cache), "RECRL_DEBUG": ""}
        # pytest-xdist workers ignore SIGINT and an ignored signal stays ignored across exec:
        # set the child's disposition explicitly
        proc = subprocess.Popen([sys.executable, "-m", "recrl.cli", "train", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


@pytest.mark.parametrize(("sig", "inherited", "code", "message"), [
    (signal.SIGINT, signal.SIG_DFL, 130, "interrupted"),
    (signal.SIGINT, signal.SIG_IGN, 130, "interrupted"),  # as a background job of a non-interactive shell
    (signal.SIGTERM, signal.SIG_DFL, 143, "terminated (SIGTERM)"),
], ids=["ctrl_c", "ctrl_c_inherited_ignored", "sigterm"])
def test_a_signal_leaves_the_last_checkpoint_intact(tmp_path: Path, spawn: Callable[..., subprocess.Popen],
                                                    sig: signal.Signals, inherited: signal.Handlers,
                                                    code: int, message: str) -> None:
    run = tmp_path / "run"
    proc = spawn(*SMOKE, "trainer.steps=1000000", "trainer.checkpoint_every=5", "trainer.eval_every=1000000",
                 f"hydra.run.dir={run}", inherited=inherited)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.is_file() and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None and last.is_file(), "no checkpoint while training"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    line = f"{message}; checkpoints already written in {run / 'checkpoints'} are intact"
    assert err.strip().splitlines()[-1] == f"recrl: error: {line}", err
    assert f"[recrl.cli][ERROR] - {line} (exit code {code})" in (run / "cli.log").read_text()
    assert load_checkpoint(last)["step"] >= 5
    assert not list(last.parent.glob("*.tmp"))
