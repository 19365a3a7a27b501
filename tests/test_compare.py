"""Tests for ``recrl compare``: grouping runs, the paired difference by hand, the pages end to end,
the error path and the HTML page in a headless browser."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import yaml
from tiny import run_recrl

from recrl.cli import main as recrl_main
from recrl.compare import (
    PAIRED_PNG,
    RETURNS_PNG,
    SAME_CONFIG,
    SCATTER_PNG,
    collect_runs,
    compare,
    flatten,
    group_runs,
    paired_differences,
    paired_env,
    seed_returns,
)
from recrl.types import RecrlError

CHROMIUM = Path("/usr/bin/chromium")
T_975_DF2 = 4.302652729749  # Student-t 97.5% quantile, 2 degrees of freedom
BASE_CONFIG = {"task": "train", "cache_dir": "/somewhere", "trainer": {"steps": 300, "progress": False},
               "algo": {"_target_": "recrl.algos.dqn.DQN", "lr": 0.001}, "reward": {"kind": "ctr"}}
PPO = {"_target_": "recrl.algos.ppo.PPO", "lr": 0.0003, "clip": 0.2}


def make_run(run_dir: Path, seed: int, algo: str, truth: float | None, sim: float, *,
             algo_config: dict | None = None, config: dict | None = None, hydra_algo: bool = True) -> Path:
    """A fake run folder: ``report.json`` (trained policy + a random baseline), ``metrics.jsonl``
    with an ``eval/return`` curve ending at ``sim`` and ``.hydra/hydra.yaml`` with the algo choice."""
    cfg = json.loads(json.dumps(config or BASE_CONFIG))
    cfg["seed"] = seed
    if algo_config is not None:
        cfg["algo"] = algo_config
    evaluation = {"simulator": {algo: {"return": {"mean": sim, "ci95": 0.5, "n": 64}},
                                "random": {"return": {"mean": 1.0, "ci95": 0.2, "n": 64}}}}
    if truth is not None:
        evaluation["ground_truth"] = {algo: {"return": {"mean": truth, "ci95": 0.4, "n": 64}},
                                      "random": {"return": {"mean": 1.1, "ci95": 0.2, "n": 64}}}
    run_dir.mkdir(parents=True)
    report = {"task": "train", "algo": algo, "seed": seed, "config": cfg, "evaluation": evaluation}
    (run_dir / "report.json").write_text(json.dumps(report))
    lines = [{"step": 10, "train/loss": 1.0}, {"step": 100, "eval/return": sim - 1.0},
             {"step": 200, "eval/return": sim}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if hydra_algo:
        (run_dir / ".hydra").mkdir()
        choices = {"algo": algo, "reward": "ctr", "hydra/launcher": "basic"}
        hydra_yaml = {"hydra": {"runtime": {"choices": choices}}}
        (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra_yaml))
    return run_dir


# ground-truth returns by seed: dqn [5, 7, 6] on seeds 0-2; ppo [4, 4, 5, 9] on seeds 0-3
# (seed 3 has no partner); paired dqn − ppo: [1, 3, 1] -> mean 5/3, sd sqrt(4/3)
DQN_TRUTH = [5.0, 7.0, 6.0]
PPO_TRUTH = [4.0, 4.0, 5.0, 9.0]


@pytest.fixture
def sweep_and_runs(tmp_path: Path) -> tuple[Path, Path]:
    """A sweep folder (dqn on seeds 0-2, ppo on seeds 0-2) and a loose run folder (ppo, seed 3)."""
    sweep = tmp_path / "sweep"
    for seed, truth in enumerate(DQN_TRUTH):
        make_run(sweep / str(seed), seed, "dqn", truth, truth + 2.0)
    for seed, truth in enumerate(PPO_TRUTH[:3]):
        make_run(sweep / str(3 + seed), seed, "ppo", truth, truth + 1.0, algo_config=PPO)
    (sweep / "summary.md").write_text("# a sweep summary, not a run\n")
    loose = make_run(tmp_path / "ppo_seed3", 3, "ppo", PPO_TRUTH[3], 10.0, algo_config=PPO)
    return sweep, loose


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, "x"]}, "d": None, "e": {}}) == {
        "a.b": "1", "a.c": '[1, "x"]', "d": "null", "e": "{}"}
    assert flatten({}) == {}


def test_runs_group_by_config_minus_seed(sweep_and_runs: tuple[Path, Path]) -> None:
    sweep, loose = sweep_and_runs
    runs = collect_runs([sweep, loose])
    assert len(runs) == 7  # summary.md is no run; the loose folder is one
    groups = group_runs(runs)
    assert list(groups) == ["algo=dqn", "algo=ppo"]  # the algo choice, not the keys below algo
    assert [r.seed for r in groups["algo=ppo"]] == [0, 1, 2, 3]
    assert [r.label for r in groups["algo=dqn"]] == ["algo=dqn seed=0", "algo=dqn seed=1", "algo=dqn seed=2"]
    assert groups["algo=ppo"][-1].curve == ([100.0, 200.0], [9.0, 10.0])


def test_labels_name_the_keys_that_differ(tmp_path: Path) -> None:
    longer = json.loads(json.dumps(BASE_CONFIG))
    longer["trainer"]["steps"] = 600
    longer["cache_dir"] = "/elsewhere"  # where files live: not a difference
    make_run(tmp_path / "a", 0, "dqn", 1.0, 2.0)
    make_run(tmp_path / "b", 0, "dqn", 1.0, 2.0, config=longer)
    make_run(tmp_path / "c", 0, "dqn", 1.0, 2.0, algo_config={**BASE_CONFIG["algo"], "lr": 0.01})
    make_run(tmp_path / "d", 0, "ppo", 1.0, 2.0, algo_config=PPO)
    groups = group_runs(collect_runs([tmp_path]))
    assert list(groups) == ["algo=dqn algo.lr=0.001 trainer.steps=300",
                            "algo=dqn algo.lr=0.001 trainer.steps=600",
                            "algo=dqn algo.lr=0.01 trainer.steps=300",
                            "algo=ppo trainer.steps=300"]


def test_same_config_and_duplicate_labels(tmp_path: Path) -> None:
    make_run(tmp_path / "x" / "run", 0, "dqn", 1.0, 2.0)
    make_run(tmp_path / "y" / "run", 0, "dqn", 3.0, 2.0)
    make_run(tmp_path / "z", 1, "dqn", 2.0, 2.0, hydra_algo=False)
    groups = group_runs(collect_runs([tmp_path / "x", tmp_path / "y", tmp_path / "z"]))
    assert list(groups) == [SAME_CONFIG]
    labels = [r.label for r in groups[SAME_CONFIG]]
    assert labels[2] == "seed=1"
    assert labels[0].startswith("seed=0 [") and labels[0] != labels[1]  # the folder tells them apart
    assert seed_returns(groups[SAME_CONFIG], "ground_truth") == {0: 2.0, 1: 2.0}  # seed 0 averaged


def test_paired_difference_by_hand(sweep_and_runs: tuple[Path, Path]) -> None:
    groups = group_runs(collect_runs(list(sweep_and_runs)))
    runs = [r for g in groups.values() for r in g]
    assert paired_env(runs) == "ground_truth"
    [pair] = paired_differences(groups, "ground_truth")
    assert (pair.a, pair.b, pair.n, pair.seeds) == ("algo=dqn", "algo=ppo", 3, (0, 1, 2))
    assert pair.mean == pytest.approx(5.0 / 3.0)
    sd = math.sqrt(((1 - 5 / 3) ** 2 + (3 - 5 / 3) ** 2 + (1 - 5 / 3) ** 2) / 2)
    assert sd == pytest.approx(math.sqrt(4.0 / 3.0))
    assert pair.ci95 == pytest.approx(T_975_DF2 * sd / math.sqrt(3), abs=1e-6)
    assert pair.ci95 == pytest.approx(2.868435, abs=1e-6)
    # simulator returns are truth + 2 (dqn) and truth + 1 (ppo): every difference one more
    [sim_pair] = paired_differences(groups, "simulator")
    assert sim_pair.mean == pytest.approx(8.0 / 3.0) and sim_pair.ci95 == pytest.approx(pair.ci95)


def test_paired_falls_back_to_the_simulator_and_one_pair_has_no_ci(tmp_path: Path) -> None:
    make_run(tmp_path / "a0", 0, "dqn", None, 4.0)
    make_run(tmp_path / "a1", 1, "dqn", None, 6.0)
    make_run(tmp_path / "b1", 1, "ppo", None, 2.5, algo_config=PPO)
    make_run(tmp_path / "b2", 2, "ppo", None, 3.0, algo_config=PPO)
    groups = group_runs(collect_runs([tmp_path]))
    runs = [r for g in groups.values() for r in g]
    assert paired_env(runs) == "simulator"
    [pair] = paired_differences(groups, "simulator")
    assert (pair.n, pair.seeds, pair.mean) == (1, (1,), 3.5)
    assert math.isnan(pair.ci95)


def test_compare_writes_the_pages(sweep_and_runs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    md_path, html_path, n_runs, n_configs = compare(list(sweep_and_runs), out)
    assert (n_runs, n_configs) == (7, 2)
    for name in ("compare.md", "compare.html", "learning_curves.png", RETURNS_PNG, SCATTER_PNG, PAIRED_PNG):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = md_path.read_text()
    assert "| algo=dqn | algo=ppo | 1.667 | 2.868 | [-1.202, 4.535] | 3 | 0, 1, 2 |" in md
    for png in ("learning_curves.png", RETURNS_PNG, SCATTER_PNG, PAIRED_PNG):
        assert f"]({png})" in md and f'src="{png}"' in html_path.read_text()
    assert "| algo=ppo seed=3 | – | 1.000 ± 0.200 | 10.000 ± 0.500 |" in md
    assert "| algo=dqn seed=1 | dqn | 9.000 ± 0.500 | 7.000 ± 0.400 | -2.000 |" in md


def test_compare_single_configuration_and_no_ground_truth(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "a", 0, "dqn", None, 2.0)
    (run / "metrics.jsonl").write_text('{"step": 1}\n{not json\n{"step": 2}\n')  # unreadable: no curve
    _, html_path, _, n_configs = compare([tmp_path / "runs" / "a"], tmp_path / "out")
    assert n_configs == 1
    text = html_path.read_text()
    assert "Needs at least two configurations" in text and "No policy was evaluated in both" in text
    assert "No run logged <code>eval/return</code>" in text
    for png in ("learning_curves.png", SCATTER_PNG, PAIRED_PNG):
        assert not (tmp_path / "out" / png).exists(), png


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RecrlError, match="does not exist"):
        collect_runs([tmp_path / "missing"])
    (tmp_path / "empty" / "job").mkdir(parents=True)
    with pytest.raises(RecrlError, match=r"no report\.json under"):
        collect_runs([tmp_path / "empty"])
    (tmp_path / "behavior").mkdir()
    (tmp_path / "behavior" / "report.json").write_text(json.dumps({"task": "behavior", "offline": {}}))
    with pytest.raises(RecrlError, match="has evaluation results"):
        collect_runs([tmp_path / "behavior"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{not json")
    with pytest.raises(RecrlError, match="cannot read"):
        collect_runs([tmp_path / "broken"])
    assert recrl_main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("recrl: error: no report.json under")
    assert not (tmp_path / "out").exists()  # nothing written on bad input
    assert recrl_main(["compare"]) == 2
    assert recrl_main(["compare", str(tmp_path), "--out"]) == 2
    assert recrl_main(["compare", str(tmp_path), "--outt", "x"]) == 2
    err = capsys.readouterr().err
    assert "use `recrl compare" in err and "--out needs a folder" in err and "unknown option --outt" in err


def test_compare_command_end_to_end(sweep_and_runs: tuple[Path, Path], tmp_path: Path) -> None:
    sweep, loose = sweep_and_runs
    proc = run_recrl("compare", str(sweep), str(loose), cwd=tmp_path)  # default --out
    assert proc.returncode == 0, proc.stderr
    [out] = (tmp_path / "outputs" / "compare").iterdir()
    written = out.relative_to(tmp_path) / "compare.html"
    assert "compared 7 runs (2 configurations)" in proc.stdout and str(written) in proc.stdout
    for name in ("compare.md", "compare.html", PAIRED_PNG):
        assert (out / name).is_file(), name
    proc = run_recrl("compare", str(tmp_path / "missing"), "--out=elsewhere", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"recrl: error: run or sweep folder {tmp_path / 'missing'} "
                                                 "does not exist"]
    assert not (tmp_path / "elsewhere").exists()


def test_html_renders_in_a_headless_browser(sweep_and_runs: tuple[Path, Path], tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is absent")
    from matplotlib.image import imread

    _, html_path, _, _ = compare(list(sweep_and_runs), tmp_path / "out")
    problems: list[str] = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("requestfailed", lambda req: problems.append(f"failed: {req.url}"))
            page.goto(html_path.as_uri(), wait_until="load", timeout=60_000)
            images = page.evaluate("Array.from(document.images).map(i => [i.src, i.naturalWidth])")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(images) == 4 and all(width > 0 for _, width in images), images
    assert "Paired comparison across seeds" in headings
    pixels = imread(io.BytesIO(png))
    assert pixels.shape[0] > 900 and pixels.std() > 0.01  # a long page, not a blank one
