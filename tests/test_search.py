"""recrl sweep search=<name>: the Optuna sweeper, its search space, pruning, summaries and resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from tiny import refused_in_process, run_recrl

from recrl.search import (
    Dimension,
    SearchSettings,
    create_study,
    ground_truth,
    objective_value,
    parse_space,
    storage_url,
    tell,
    trial_reporter,
)
from recrl.sweep import JobStatus
from recrl.types import Pruned, RecrlError

optuna = pytest.importorskip("optuna", reason="the search extra is not installed: pip install -e '.[search]'")

SMOKE = ["experiment=smoke", "eval.baselines=[]", "eval.oracle=false"]


def recrl(*args: str, cwd: Path, cache: Path | None = None) -> subprocess.CompletedProcess:
    return run_recrl(*args, cwd=cwd, cache=cache or cwd / "cache", OMP_NUM_THREADS="1")


def test_the_space_turns_hydra_sweeps_into_optuna_dimensions() -> None:
    space = {"algo.lr": "tag(log, interval(0.0001, 0.01))", "algo.gamma": "interval(0.8, 0.9)",
             "algo.n_step": "choice(1, 3)", "trainer.steps": "int(interval(100, 200))",
             "algo.target_update": "range(100, 400, 100)"}
    dims, fixed = parse_space(space, ["search=dqn", "algo.gamma=interval(0.9, 0.99)", "seed=3"])
    by_key = {d.key: d for d in dims}
    assert by_key["algo.lr"] == Dimension("algo.lr", 0.0001, 0.01, log=True)
    assert by_key["algo.gamma"] == Dimension("algo.gamma", 0.9, 0.99)  # the command line wins
    assert by_key["algo.n_step"] == Dimension("algo.n_step", choices=(1, 3))
    assert by_key["trainer.steps"] == Dimension("trainer.steps", 100, 200, integer=True)
    assert by_key["algo.target_update"] == Dimension("algo.target_update", choices=(100, 200, 300))
    assert fixed == ["search=dqn", "seed=3"]
    with pytest.raises(RecrlError, match="is not interval"):
        parse_space({"algo": "glob(*)"}, [])
    with pytest.raises(RecrlError, match="search space"):
        parse_space({"algo.lr": "interval(a"}, [])


def test_settings_refuse_the_ground_truth_as_objective() -> None:
    with pytest.raises(RecrlError, match="never an objective"):
        SearchSettings(objective="ground_truth")
    assert SearchSettings(objective="behavior").direction == "minimize"
    assert SearchSettings().direction == "maximize"


def _cfg(tmp_path: Path, trial: int, **settings: object) -> object:
    node = {"_target_": "recrl.search.SearchSettings", "study": "s", "trial": trial,
            "storage": storage_url(tmp_path), "startup_trials": 1, "warmup_evals": 1, **settings}
    return OmegaConf.create({"search": node})


def test_a_trial_below_the_median_is_pruned_and_the_study_records_it(tmp_path: Path) -> None:
    settings = SearchSettings(study="s", startup_trials=1, warmup_evals=1)
    study = create_study(settings, "s", storage_url(tmp_path), resume=False)
    first = study.ask()
    values = iter([1.0, 2.0, 3.0])
    evaluate = trial_reporter(_cfg(tmp_path, first.number), lambda: {"eval/return": next(values)})
    assert [evaluate()["eval/return"] for _ in range(3)] == [1.0, 2.0, 3.0]
    study.tell(first, 3.0)
    second = study.ask()
    evaluate = trial_reporter(_cfg(tmp_path, second.number), lambda: {"eval/return": 0.5})
    evaluate()  # step 0: still warming up
    with pytest.raises(Pruned, match="trial 1 pruned after 2 evaluations"):
        evaluate()  # step 1: 0.5 < the first trial's 2.0
    job = tmp_path / "1"
    JobStatus("pruned", 0, "pruned").write(job)
    assert tell(study, second, job, settings) == "pruned"
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED
    assert study.trials[1].intermediate_values == {0: 0.5, 1: 0.5}


def test_outside_a_search_the_evaluator_is_untouched(tmp_path: Path) -> None:
    def evaluate() -> dict[str, float]:
        return {"eval/return": 1.0}

    assert trial_reporter(OmegaConf.create({"seed": 0}), evaluate) is evaluate


def test_failed_and_objectiveless_jobs_are_failed_trials(tmp_path: Path) -> None:
    settings = SearchSettings()
    study = create_study(settings, "s", storage_url(tmp_path), resume=False)
    failed, empty = study.ask(), study.ask()
    JobStatus("failed", 2, "bad value").write(tmp_path / "0")
    assert tell(study, failed, tmp_path / "0", settings) == "failed"
    JobStatus("ok", 0).write(tmp_path / "1")  # finished, but wrote no eval/return
    assert tell(study, empty, tmp_path / "1", settings) == "failed"
    assert json.loads((tmp_path / "1" / "status.json").read_text())["status"] == "failed"
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.FAIL}
    with pytest.raises(RecrlError, match=r"search\.resume=true"):
        create_study(settings, "s", storage_url(tmp_path), resume=False)


def test_search_runs_in_parallel_then_resumes(tmp_path: Path, shared_cache: Path) -> None:
    sweep = tmp_path / "outputs" / "train" / "multirun" / "first"
    args = ["sweep", "search=dqn", *SMOKE, "algo.lr=interval(0.001, 0.002)", "search.pruning=false"]
    first = recrl(*args, "search.trials=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  "trainer.threads=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, cache=shared_cache)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = pd.read_csv(sweep / "trials.csv")
    assert sorted(trials["trial"]) == [0, 1] and set(trials["state"]) == {"complete"}
    assert trials["algo.lr"].between(0.001, 0.002).all()  # the command line's interval
    assert trials["ground_truth"].notna().all()  # shown beside the objective, never optimised
    for trial in trials.itertuples():  # the delivered policy's final return in the simulator
        report = json.loads((sweep / str(trial.trial) / "report.json").read_text())
        assert trial.objective == pytest.approx(report["evaluation"]["simulator"]["dqn"]["return"]["mean"])
    search_md = (sweep / "search.md").read_text()
    best = trials.loc[trials["objective"].idxmax()]
    assert f"Best trial: {best.trial}, objective {best.objective:.4f}" in search_md
    assert (sweep / "summary.md").is_file() and (sweep / "study.db").is_file()

    # no folder given: the newest dqn study under outputs/train/multirun continues, in its own folder
    again = recrl(*args, "search.trials=3", "search.resume=true", cwd=tmp_path, cache=shared_cache)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = pd.read_csv(sweep / "trials.csv")
    assert sorted(resumed["trial"]) == [0, 1, 2]
    assert resumed.set_index("trial").loc[[0, 1], "objective"].tolist() == \
        trials.set_index("trial").loc[[0, 1], "objective"].tolist()
    assert (sweep / "2" / "report.json").is_file()
    assert [p.name for p in sweep.parent.iterdir() if (p / "study.db").exists()] == ["first"]


def test_search_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    lines = refused_in_process("sweep", "search=dqn", *SMOKE, "search.objective=ground_truth", cwd=tmp_path,
                               monkeypatch=monkeypatch, capsys=capsys)
    assert lines == ["recrl: error: search.objective='ground_truth' is not a valid one of "
                     "'simulator', 'ope', 'behavior'"]


def test_an_unknown_search_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    [line] = refused_in_process("sweep", "search=dqnn", *SMOKE, cwd=tmp_path, monkeypatch=monkeypatch,
                                capsys=capsys)
    assert "unknown option search=dqnn; valid options for search: behavior, c51, cql, dqn, ppo" in line


def test_trials_that_fail_are_recorded_and_the_search_exits_non_zero(tmp_path: Path,
                                                                     shared_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    # a slate larger than the catalogue the data turns out to have: every trial fails at run time
    proc = recrl("sweep", "search=dqn", *SMOKE, "search.trials=2", "env.slate_size=choice(5000)",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path, cache=shared_cache)
    assert proc.returncode == 1
    assert "recrl: error: 2 of 2 jobs failed (job 0, 1)" in proc.stderr
    trials = pd.read_csv(sweep / "trials.csv")
    assert list(trials["state"]) == ["fail", "fail"] and trials["objective"].isna().all()
    assert "Best trial" not in (sweep / "search.md").read_text()
    assert json.loads((sweep / "0" / "status.json").read_text())["error"] == \
        "env.slate_size=5000 exceeds the catalogue (500 items)"


def test_each_objective_reads_its_own_figure_and_never_the_ground_truth(tmp_path: Path) -> None:
    stat = {"mean": 0.0, "ci95": 0.1, "n": 1000}
    evaluation = {"simulator": {"dqn": {"return": {**stat, "mean": 4.8}}},
                  "ope": {"dqn": {"return": {**stat, "mean": 9.0}}},  # the test split's: never read
                  "ground_truth": {"dqn": {"return": {**stat, "mean": 5.6},
                                           "oracle_share": {**stat, "mean": 0.52}}}}
    report = {"algo": "dqn", "evaluation": evaluation, "behavior": {"valid_loss": 1.25}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    lines = [{"step": 500, "eval/return": 3.0}, {"step": 600, "train/loss": 0.1},
             {"step": 1000, "eval/return": 3.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)))
    assert objective_value(tmp_path, SearchSettings(objective="simulator")) == 4.8
    assert objective_value(tmp_path, SearchSettings(objective="ope")) == 3.5  # validation logs, last one
    assert objective_value(tmp_path, SearchSettings(objective="behavior")) == 1.25
    assert ground_truth(tmp_path) == (5.6, 0.52)
    assert objective_value(tmp_path / "missing", SearchSettings()) is None


def test_a_resumed_study_fails_the_trials_the_interruption_cut_short(tmp_path: Path) -> None:
    settings = SearchSettings()
    study = create_study(settings, "s", storage_url(tmp_path), resume=False)
    study.tell(study.ask(), 1.0)
    study.ask()  # running when the search was interrupted
    resumed = create_study(settings, "s", storage_url(tmp_path), resume=True)
    states = [t.state for t in resumed.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
