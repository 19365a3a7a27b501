"""Simulator fidelity checks: calibration, randomized exposures, agreement with the true model."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from recrl.behavior.ensemble import BehaviorEnsemble
from recrl.behavior.fidelity import click_figures, fidelity_report, pearson, randomized_log_view
from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import Interactions, Splits


def test_click_figures_by_hand() -> None:
    prob, label = torch.tensor([0.1, 0.1, 0.9, 0.9]), torch.tensor([0.0, 1.0, 1.0, 1.0])
    figures = click_figures(prob, label)
    assert math.isclose(figures["click_ece"], 0.25, abs_tol=1e-6)
    # pairs (positive, negative): (0.1, 0.1) tie = 0.5, (0.9, 0.1) twice = 1 each -> 2.5 / 3
    assert math.isclose(figures["click_auc"], 2.5 / 3, abs_tol=1e-9)
    assert math.isclose(figures["click_logloss"], -(3 * math.log(0.9) + math.log(0.1)) / 4, abs_tol=1e-6)
    assert figures["calibration"]["count"] == [2, 2] and figures["rows"] == 4


def test_fidelity_on_the_synthetic_world(tmp_path: Path) -> None:
    world = SyntheticWorld(n_items=30, n_users=400, n_topics=3, horizon=8, seed=1)
    splits = world.load()
    model = GRUBehavior(n_items=30, dim=8, hidden=16, training=TrainingSettings(epochs=3))
    model.fit(splits.interactions)
    env = RecEnv(world.ground_truth("cpu"), ClickReward(), horizon=8, history_len=4)
    report = fidelity_report(model, splits, env, ground_truth_is_true_model=True,
                             plot=tmp_path / "calibration.png")
    assert report["validation"]["rows"] == len(splits.interactions.valid)
    assert 0.0 <= report["validation"]["click_ece"] <= 1.0
    true = report["true_model"]
    assert true["pairs"] > 0 and -1.0 <= true["click_prob_pearson"] <= 1.0
    assert "randomized" not in report  # the synthetic logs have no randomized exposures
    assert (tmp_path / "calibration.png").stat().st_size > 0


def test_randomized_exposures_follow_the_training_history() -> None:
    rows = [(0, 1, 5, 1.0), (0, 2, 6, 0.0), (1, 0, 1, 1.0)]
    columns = ["user", "item", "time", "click"]
    frame = pd.DataFrame(rows, columns=columns).assign(conversion=0.0, rating=float("nan"),
                                                       leave=float("nan"), propensity=float("nan"))
    exposures = frame.iloc[[0, 2]].assign(item=[3, 4], time=0)
    inter = Interactions(train=frame, valid=frame.iloc[:0], items=pd.DataFrame(index=range(5)), n_users=2,
                         n_items=5)
    gt = Interactions(train=exposures, valid=exposures.iloc[:0], items=inter.items, n_users=2, n_items=5)
    view = randomized_log_view(Splits(interactions=inter, test=frame.iloc[:0], ground_truth=gt))
    assert view is not None and view.valid["item"].tolist() == [3, 4]
    assert (view.valid["time"] > inter.train["time"].max()).all()


class StepItems:
    """A fixed policy: item ``step mod 5`` for everyone (its own state distribution)."""

    def act(self, obs, explore: bool) -> torch.Tensor:
        return (obs.step % 5)[:, None]


def test_fidelity_under_the_policy_and_per_ensemble_member() -> None:
    world = SyntheticWorld(n_items=30, n_users=300, n_topics=3, horizon=8, seed=1)
    splits = world.load()
    members = [GRUBehavior(n_items=30, dim=8, hidden=16, training=TrainingSettings(epochs=2, seed=s))
               for s in range(2)]
    ensemble = BehaviorEnsemble(members)
    ensemble.fit(splits.interactions)
    env = RecEnv(world.ground_truth("cpu"), ClickReward(), horizon=8, history_len=4)
    report = fidelity_report(ensemble, splits, env, ground_truth_is_true_model=True, policy=StepItems())
    for check in ("true_model", "true_model_policy"):
        for key in ("click_prob_pearson", "conversion_prob_pearson", "leave_prob_pearson"):
            assert -1.0 <= report[check][key] <= 1.0, (check, key)
    assert len(report["members"]) == 2
    assert all("true_model_policy" in m and "validation" in m for m in report["members"])
    member_logloss = [m["validation"]["click_logloss"] for m in report["members"]]
    assert member_logloss[0] != member_logloss[1]


def test_pearson_by_hand() -> None:
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert math.isclose(pearson(a, 2 * a + 1), 1.0) and math.isclose(pearson(a, -a), -1.0)
    assert math.isnan(pearson(a, torch.ones(3, dtype=torch.float64)))
    assert math.isnan(pearson(a[:1], a[:1]))
