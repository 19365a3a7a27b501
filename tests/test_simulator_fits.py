"""``scripts/simulator_fits.py``: a behavior-model fit per training seed, scored, compared pair by pair."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import SCRIPTS, load_script

from recrl.data.synthetic import HistoryBelief, SyntheticWorld
from recrl.types import Obs

SMALL = ["experiment=smoke", "dataset.n_users=200", "dataset.n_items=40", "trainer.device=cpu"]


def test_fits_differ_by_training_seed_and_repeat_exactly(tmp_path: Path) -> None:
    """Two training seeds give two fits (different held-out losses); the same seed again is the
    same cached fit, scored to the same numbers; every measure is a number in its range."""
    fits = load_script("simulator_fits")
    overrides = [*SMALL, f"cache_dir='{tmp_path}'"]
    first, second = (fits.score_fit(overrides, seed, users=32) for seed in (0, 1))
    again = fits.score_fit(overrides, 0, users=32)
    slopes, again_slopes = first.pop("slopes"), again.pop("slopes")
    assert first == again
    for name, pair in slopes.items():  # least squares may round differently from call to call
        assert pair == pytest.approx(again_slopes[name], rel=1e-9)
    first["slopes"] = slopes
    assert first["valid_click_logloss"] != second["valid_click_logloss"]
    assert first["truth_planner"] == second["truth_planner"]  # the truth does not depend on the fit
    for row in (first, second):
        assert {key for key, _, _ in (*fits.MEASURES, *fits.ATTRIBUTION)} <= row.keys()
        assert all(row[key] > 0.0 for key, _, _ in fits.ATTRIBUTION) and row["truth_planner"] > 0.0
        assert 0.0 < row["valid_click_logloss"] < 1.0 and 0.0 < row["valid_leave_logloss"] < 1.0
        assert all(-1.0 <= row[k] <= 1.0 for k in ("click_random", "leave_random", "click_planner"))
        assert row["planner_return"] > 0.0 and row["planner_sim_return"] > 0.0
        assert row["sim_over_truth"] == pytest.approx(row["planner_sim_return"] / row["planner_return"])
        assert set(row["slopes"]) == {"quality", "price"}  # the synthetic item table's numeric columns
    # the logs' slopes come from the logs alone: the same for every fit
    assert first["slopes"]["quality"]["logs"] == second["slopes"]["quality"]["logs"]


def test_logistic_fit_recovers_known_coefficients() -> None:
    fits = load_script("simulator_fits")
    g = torch.Generator().manual_seed(0)
    design = torch.cat([torch.randn(40_000, 2, generator=g, dtype=torch.float64),
                        torch.ones(40_000, 1, dtype=torch.float64)], 1)
    beta = torch.tensor([0.8, -0.5, 0.2], dtype=torch.float64)
    labels = torch.bernoulli(torch.sigmoid(design @ beta), generator=g)
    assert torch.allclose(fits.logistic_fit(design, labels), beta, atol=0.06)


def test_paired_differences_by_hand() -> None:
    """B minus A per seed, its mean and t interval, and on how many seeds B is better (lower
    log-loss, higher return; no verdict on the simulated return)."""
    fits = load_script("simulator_fits")
    keys = [key for key, _, _ in fits.MEASURES]
    a = {0: dict.fromkeys(keys, 1.0), 1: dict.fromkeys(keys, 1.0), 2: dict.fromkeys(keys, 1.0)}
    b = {s: dict.fromkeys(keys, 1.0) for s in a}
    for seed, delta in zip(a, (0.1, 0.2, -0.3), strict=True):
        b[seed]["planner_return"] += delta
        b[seed]["valid_click_logloss"] += delta
        b[seed]["planner_sim_return"] += delta
    out = fits.paired([0, 1, 2], a, b)
    assert out["planner_return"]["mean"] == pytest.approx(0.0)
    assert out["planner_return"]["b_better_on"] == 2
    assert out["valid_click_logloss"]["b_better_on"] == 1
    assert out["planner_sim_return"]["b_better_on"] is None
    # sd of (0.1, 0.2, -0.3) is sqrt(0.07); t(0.975, 2) = 4.302653
    assert out["planner_return"]["ci95"] == pytest.approx(4.302653 * math.sqrt(0.07 / 3), rel=1e-5)


def test_main_writes_both_configurations_and_the_comparison(tmp_path: Path) -> None:
    fits = load_script("simulator_fits")
    out = tmp_path / "fits.json"
    fits.main(["--seeds", "0", "1", "--users", "32", "--against", "behavior.recency=false",
               "--ablate", "boredom", "--out", str(out), "--", *SMALL, f"cache_dir='{tmp_path}'"])
    result = json.loads(out.read_text())
    assert result["ablate"] == ["boredom"]
    assert {"planner_true_leaving", "planner_true_responses_without_boredom"} <= result["summary"]["A"].keys()
    assert "planner_true_responses_without_boredom" in result["b_minus_a"]
    assert result["configs"]["B"][-1] == "behavior.recency=false"
    assert set(result["fits"]) == {"A", "B"} and set(result["fits"]["A"]) == {"0", "1"}
    diff = result["b_minus_a"]["valid_click_logloss"]
    by_seed = [result["fits"]["B"][s]["valid_click_logloss"] - result["fits"]["A"][s]["valid_click_logloss"]
               for s in ("0", "1")]
    assert diff["mean"] == pytest.approx(sum(by_seed) / 2)


def test_the_truth_without_one_click_term() -> None:
    """Each ablation removes one term of the truth's click utility, on a copy: the world itself
    keeps it; without the interest the history's clicks leave the interest estimate at zero."""
    fits = load_script("simulator_fits")
    world = SyntheticWorld(n_items=12, n_users=10, n_topics=3, horizon=5, seed=0)
    obs = Obs(items=torch.tensor([[[1], [2]]]), clicks=torch.tensor([[[1.0], [1.0]]]), step=torch.tensor([2]))
    truth = HistoryBelief(world)
    state = truth.encode(obs)
    assert state[:, :3].abs().sum() > 0
    boredom = state[0, 4:]  # [interest (3) | satisfaction | boredom (3)]
    terms = {"boredom": -world.click_boredom * boredom[world.topic],
             "quality": world.click_quality * world.quality, "clickbait": world.click_bait * world.is_bait}
    for part, parameter in fits.ABLATIONS.items():
        without = fits.truth_without(world, part)
        changed = without.encode(obs)
        if parameter is None:
            assert torch.equal(changed[:, :3], torch.zeros(1, 3))
            assert torch.equal(changed[:, 3:], state[:, 3:])
            continue
        assert getattr(without.world, parameter) == 0.0 and getattr(world, parameter) != 0.0
        removed = world.click_utility(state, None) - without.world.click_utility(state, None)
        assert torch.allclose(removed[0], terms[part], atol=1e-6)


def test_a_wrong_key_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    """The scripts on ``reference_policies.synthetic_run`` refuse a wrong override as ``recrl
    train`` does: one line, no traceback, nothing written."""
    out = tmp_path / "fits.json"
    command = [sys.executable, str(SCRIPTS / "simulator_fits.py"), "--seeds", "0", "--out", str(out),
               "--", "behavior.nonexistent=1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: unknown key behavior.nonexistent (check the spelling")
    assert not out.exists()
