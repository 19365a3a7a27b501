"""Tests for recrl.ope.propensity: the logging-policy model recovers known loggers, calibration
figures on a hand-computed case, and per-row propensities with their sources."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.ope.propensity import (
    LoggingPolicyModel,
    bin_edges,
    calibration,
    fill_propensities,
    fit_logging_policy,
    history_steps,
)
from recrl.types import Interactions, RecrlError


def session_log(items: np.ndarray, propensity: np.ndarray | None = None) -> pd.DataFrame:
    """A log of sessions ``items`` ``[users, steps]`` (one row per step, clicks alternate)."""
    users, steps = items.shape
    log = pd.DataFrame({"user": np.repeat(np.arange(users), steps), "item": items.reshape(-1),
                        "time": np.tile(np.arange(steps), users),
                        "click": (np.arange(users * steps) % 2).astype(np.float32)})
    log["propensity"] = np.nan if propensity is None else propensity.reshape(-1)
    return log


def interactions(log: pd.DataFrame, n_items: int,
                 valid_share: float = 0.2) -> tuple[Interactions, pd.DataFrame]:
    """Train/valid interactions by user (the first 20% of users valid, the last 20% the returned
    held-out test log)."""
    users = log["user"].to_numpy()
    n = users.max() + 1
    valid = users < valid_share * n
    test = users >= (1 - valid_share) * n
    train = ~valid & ~test
    part = [log[m].reset_index(drop=True) for m in (train, valid, test)]
    return Interactions(train=part[0], valid=part[1], items=pd.DataFrame(), n_users=int(n),
                        n_items=n_items), part[2]


# ------------------------------------------------------------------------------------- known loggers
ZIPF = 1.0 / np.arange(1, 51) ** 0.8
ZIPF /= ZIPF.sum()


def context_free_log(users: int = 3000, steps: int = 10) -> pd.DataFrame:
    """Every item drawn from the fixed Zipf distribution ``ZIPF`` over 50 items, whatever came before."""
    rng = np.random.default_rng(0)
    items = rng.choice(50, size=(users, steps), p=ZIPF)
    return session_log(items, ZIPF[items])


def shift_log(users: int = 2000, steps: int = 15, n_items: int = 20, stay: float = 0.8) -> pd.DataFrame:
    """Next item = last item + 1 (mod ``n_items``) with probability ``stay``, else uniform; the first
    item uniform. Propensities are the true ones."""
    rng = np.random.default_rng(1)
    items = np.zeros((users, steps), dtype=np.int64)
    prop = np.zeros((users, steps))
    items[:, 0] = rng.integers(0, n_items, users)
    prop[:, 0] = 1.0 / n_items
    for t in range(1, steps):
        follow = rng.random(users) < stay
        items[:, t] = np.where(follow, (items[:, t - 1] + 1) % n_items, rng.integers(0, n_items, users))
        shifted = items[:, t] == (items[:, t - 1] + 1) % n_items
        prop[:, t] = np.where(shifted, stay + (1 - stay) / n_items, (1 - stay) / n_items)
    return session_log(items, prop)


def test_context_free_logger_is_recovered_as_the_item_frequency() -> None:
    inter, test = interactions(context_free_log(), 50)
    model = fit_logging_policy(inter, history_len=3, seed=0)
    est = fill_propensities(test, model, mode="estimated").propensity
    ratio = np.abs(np.log(est) - np.log(test["propensity"].to_numpy()))
    assert ratio.mean() < 0.06, ratio.mean()
    # without history the model is the training frequency (its maximum-likelihood answer)
    flat = fit_logging_policy(inter, history_len=0, seed=0)
    counts = np.bincount(inter.train["item"], minlength=50)
    probs = flat.probs(history_steps(test.head(3), 50, 0).transitions.obs).numpy()
    np.testing.assert_allclose(probs, np.tile(counts / counts.sum(), (3, 1)), rtol=0.03)


def test_history_dependent_logger_is_captured() -> None:
    inter, test = interactions(shift_log(), 20)
    model = fit_logging_policy(inter, history_len=2, seed=0)
    truth = test["propensity"].to_numpy()
    est = fill_propensities(test, model, mode="estimated").propensity
    followed = truth > 0.5
    assert abs(est[followed].mean() - 0.81) < 0.03
    assert abs(est[~followed].mean() - truth[~followed].mean()) < 0.01
    assert np.abs(np.log(est) - np.log(truth)).mean() < 0.2
    report = calibration(model, test)
    entropy = -np.log(truth).mean()
    assert report["log_loss"] < entropy + 0.05 and report["logged"]["pearson_log"] > 0.95
    # a context-free model cannot: its log-loss stays near log(20)
    flat = calibration(fit_logging_policy(inter, history_len=0, seed=0), test)
    assert flat["log_loss"] > math.log(20) - 0.05


def test_fit_is_deterministic_and_leaves_the_global_seed_alone() -> None:
    inter, _ = interactions(shift_log(users=300), 20)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = fit_logging_policy(inter, history_len=2, seed=5, max_epochs=2)
    assert torch.equal(torch.rand(1), before)
    second = fit_logging_policy(inter, history_len=2, seed=5, max_epochs=2)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert first.fit_info["train_rows"] == len(inter.train) and first.fit_info["stop_rows"] == "valid"


def test_without_valid_rows_training_users_stop_the_fit() -> None:
    inter, _ = interactions(shift_log(users=300), 20)
    inter.valid = inter.valid.iloc[:0]
    model = fit_logging_policy(inter, history_len=2, seed=0, max_epochs=2)
    assert model.fit_info["stop_rows"] == "held-out training users"
    assert model.fit_info["train_rows"] + model.fit_info["stop_rows_count"] == len(inter.train)


def test_bad_settings_are_one_line_errors() -> None:
    inter, _ = interactions(shift_log(users=50), 20)
    with pytest.raises(RecrlError, match=r"unknown setting\(s\) epochs; use batch_size"):
        fit_logging_policy(inter, history_len=1, epochs=3)
    with pytest.raises(RecrlError, match=r"lr > 0"):
        fit_logging_policy(inter, history_len=1, lr=0.0)
    inter.train = inter.train.iloc[:0]
    with pytest.raises(RecrlError, match="training split is empty"):
        fit_logging_policy(inter, history_len=1)


def test_history_steps_take_earlier_context_rows_as_history() -> None:
    train = pd.DataFrame({"user": [0, 0, 1], "item": [3, 4, 5], "time": [0, 1, 0], "click": [1.0, 0.0, 1.0]})
    valid = pd.DataFrame({"user": [1, 0], "item": [6, 7], "time": [1, 2], "click": [0.0, 1.0]})
    steps = history_steps(valid, n_items=10, history_len=3, context=train)
    obs = steps.transitions.obs
    assert obs.items[:, :, 0].tolist() == [[10, 10, 5], [10, 3, 4]]  # valid's order, padding = 10
    assert obs.clicks[:, :, 0].tolist() == [[0, 0, 1], [0, 1, 0]]
    assert steps.transitions.action[:, 0].tolist() == [6, 7] and steps.row.tolist() == [0, 1]
    alone = history_steps(valid.sort_values(["user", "time"]), n_items=10, history_len=3)
    assert alone.transitions.obs.items[:, :, 0].tolist() == [[10, 10, 10], [10, 10, 10]]


# ------------------------------------------------------------------------------------- calibration
def two_item_model() -> LoggingPolicyModel:
    """A context-free model with P(item 0) = 0.75, P(item 1) = 0.25."""
    model = LoggingPolicyModel(n_items=2, history_len=0)
    with torch.no_grad():
        model.item_bias.copy_(torch.log(torch.tensor([0.75, 0.25])))
    return model


def test_calibration_hand_computed() -> None:
    log = pd.DataFrame({"user": [0, 0, 1, 1], "item": [0, 0, 1, 1], "time": [0, 1, 0, 1],
                        "click": [1.0, 0.0, 1.0, 0.0], "propensity": [0.6, 0.7, 0.2, np.nan]})
    report = calibration(two_item_model(), log)
    # pairs: p = 0.75 four times (logged twice), p = 0.25 four times (logged twice)
    assert report["rows"] == 4
    assert [(b["count"], b["mean_predicted"], b["observed"]) for b in report["bins"]] == [
        (4, pytest.approx(0.25), 0.5), (4, pytest.approx(0.75), 0.5)]
    assert report["ece"] == pytest.approx(0.25)  # |0.25 - 0.5| and |0.75 - 0.5|, equal weights
    assert report["log_loss"] == pytest.approx(-(2 * math.log(0.75) + 2 * math.log(0.25)) / 4)
    assert report["uniform_log_loss"] == pytest.approx(math.log(2))
    agree = report["logged"]  # rows 1-3: estimated 0.75, 0.75, 0.25 against 0.6, 0.7, 0.2
    ratios = np.abs(np.log([0.75 / 0.6, 0.75 / 0.7, 0.25 / 0.2]))
    assert agree["rows"] == 3
    assert agree["median_abs_log_ratio"] == pytest.approx(np.median(ratios))
    assert agree["mean_abs_log_ratio"] == pytest.approx(ratios.mean())
    a, b = np.log([0.75, 0.75, 0.25]), np.log([0.6, 0.7, 0.2])
    assert agree["pearson_log"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert 0.99 < agree["pearson_log"] < 1


def test_calibration_bins_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    edges = bin_edges(100, 15)
    assert len(edges) == 16 and edges[0] == 0 and edges[1] == pytest.approx(1e-4) and edges[-1] == 1
    inter, test = interactions(shift_log(users=200), 20)
    model = fit_logging_policy(inter, history_len=2, seed=0, max_epochs=2)
    whole = calibration(model, test)
    monkeypatch.setattr("recrl.ope.propensity._CHUNK_ELEMS", 40)  # two rows at a time
    chunked = calibration(model, test)
    assert chunked["ece"] == pytest.approx(whole["ece"])
    for a, b in zip(chunked["bins"], whole["bins"], strict=True):
        assert a == pytest.approx(b)
    assert sum(b["count"] for b in whole["bins"]) == len(test) * 20
    assert whole["logged"]["rows"] == len(test)
    with pytest.raises(RecrlError, match="n_bins=1"):
        calibration(model, test, n_bins=1)


# ------------------------------------------------------------------------------------- fill_propensities
def test_fill_keeps_logged_and_estimates_and_counts_missing() -> None:
    log = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 1], "time": [0, 1, 0], "click": [1.0, 0.0, 1.0],
                        "propensity": [0.5, np.nan, np.nan]})
    filled = fill_propensities(log, two_item_model())
    np.testing.assert_allclose(filled.propensity, [0.5, 0.25, 0.25], rtol=1e-6)
    assert filled.source.tolist() == ["logged", "estimated", "estimated"]
    assert filled.counts == {"logged": 1, "estimated": 2}
    every = fill_propensities(log, two_item_model(), mode="estimated")
    assert every.counts == {"logged": 0, "estimated": 3} and every.propensity[0] == pytest.approx(0.75)
    known = fill_propensities(log.head(1), None, mode="logged")
    assert known.counts == {"logged": 1, "estimated": 0}
    without = fill_propensities(log.drop(columns="propensity"), two_item_model())
    assert without.counts == {"logged": 0, "estimated": 3}


@pytest.mark.parametrize(("change", "message"), [
    ({"mode": "logged"}, r"mode=logged but 2 row\(s\) have no logged propensity"),
    ({"model": None}, r"2 row\(s\) have no logged propensity and no logging-policy model"),
    ({"mode": "guess"}, r"mode='guess'; use one of auto, logged, estimated"),
    ({"propensity": [0.0, 1.5, np.nan]}, r"2 row\(s\) of the log's propensity column are not a probability"),
    ({"propensity": ["x", 0.5, np.nan]}, r"1 row\(s\) of the log's propensity column"),
])
def test_fill_errors(change: dict, message: str) -> None:
    log = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 1], "time": [0, 1, 0], "click": [1.0, 0.0, 1.0],
                        "propensity": change.pop("propensity", [0.5, np.nan, np.nan])})
    kwargs = {"model": two_item_model(), "mode": "auto", **change}
    with pytest.raises(RecrlError, match=message) as err:
        fill_propensities(log, kwargs.pop("model"), **kwargs)
    assert "\n" not in str(err.value)
