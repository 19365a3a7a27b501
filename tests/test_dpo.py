"""Direct Preference Optimization from logs (``algo=dpo``): the loss by hand, the preference pairs
of a hand-made log, learning a preference, saving and the command line."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import make_ctx, train_smoke

from recrl.algos.backbone import PretrainSettings
from recrl.algos.dpo import (
    DPO,
    dpo_loss,
    implicit_reward,
    preference_pairs,
    sampled_rejections,
    shown_rejections,
)
from recrl.checkpoint import save_checkpoint
from recrl.data.preprocess import log_frame
from recrl.types import Interactions, RecrlError

SMALL = dict(encoder="transformer", dim=8, hidden=16, layers=1, heads=2, item_init="random")
QUICK = PretrainSettings(steps=20, batch_size=32)


def logged_ctx(log: pd.DataFrame, n_items: int, history_len: int = 3, seed: int = 0):
    """A context whose training split is ``log`` (single-item slates)."""
    interactions = Interactions(train=log, valid=log.iloc[:0], items=pd.DataFrame(index=range(n_items)),
                                n_users=int(log["user"].max()) + 1, n_items=n_items)
    return make_ctx(slate_size=1, n_items=n_items, history_len=history_len, horizon=8, seed=seed,
                    item_popularity=torch.zeros(n_items), interactions=interactions)


def hand_log() -> pd.DataFrame:
    """Two users; ``click`` 0 rows are the shown-not-clicked items a click is preferred to."""
    rows = [  # (user, time, item, click)
        (0, 0, 5, 1),  # row 0: no earlier non-click; the next is row 1 (item 2)
        (0, 1, 2, 0),  # row 1
        (0, 2, 7, 1),  # row 2: row 1 is 1 step away, row 4 two -> item 2
        (0, 3, 3, 1),  # row 3: row 4 is nearer -> item 4
        (0, 4, 4, 0),  # row 4
        (0, 5, 6, 1),  # row 5: rows 4 and 6 equally near -> the later one, item 1
        (0, 6, 1, 0),  # row 6
        (1, 0, 0, 1),  # row 7: user 0's row 6 is not this user's; row 9 shows item 0 itself -> dropped
        (1, 2, 3, 1),  # row 8: row 9 -> item 0
        (1, 5, 0, 0),  # row 9
    ]
    user, time, item, click = (np.array(c) for c in zip(*rows, strict=True))
    return log_frame({"user": user, "time": time, "item": item, "click": click.astype(np.float32)})


def clicks_only_log(n_users: int = 30, n_items: int = 6) -> pd.DataFrame:
    """Every row clicked (a positive-only log such as Amazon reviews)."""
    rng = np.random.default_rng(0)
    n = n_users * 4
    return log_frame({"user": np.repeat(np.arange(n_users), 4), "time": np.tile(np.arange(4), n_users),
                      "item": rng.integers(0, n_items, n), "click": np.ones(n, np.float32)})


def preference_log(n_users: int = 60) -> pd.DataFrame:
    """Each user clicks a random item of 2..5, then item A = 0, and is then shown item B = 1 and
    ignores it: both clicks are preferred to B."""
    rng = np.random.default_rng(1)
    items = np.stack([rng.integers(2, 6, n_users), np.zeros(n_users, int), np.ones(n_users, int)], 1)
    click = np.tile([1.0, 1.0, 0.0], n_users).astype(np.float32)
    return log_frame({"user": np.repeat(np.arange(n_users), 3), "time": np.tile(np.arange(3), n_users),
                      "item": items.reshape(-1), "click": click})


# ----------------------------------------------------------------------------- the loss
def test_dpo_loss_by_hand_on_three_items() -> None:
    logits, ref = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.5, 0.5, 1.0]])
    beta, chosen, rejected = 0.5, torch.tensor([1]), torch.tensor([2])

    def log_softmax(row: list[float], i: int) -> float:
        return row[i] - math.log(sum(math.exp(v) for v in row))

    pi, pr = [1.0, 2.0, 0.5], [0.5, 0.5, 1.0]
    h_c = beta * (log_softmax(pi, 1) - log_softmax(pr, 1))
    h_r = beta * (log_softmax(pi, 2) - log_softmax(pr, 2))
    expected = -math.log(1.0 / (1.0 + math.exp(-(h_c - h_r))))
    margin = implicit_reward(logits, ref, chosen, beta) - implicit_reward(logits, ref, rejected, beta)
    assert float(margin) == pytest.approx(h_c - h_r, rel=1e-6)
    assert float(dpo_loss(margin)) == pytest.approx(expected, rel=1e-6)
    # the logits' common shift (the softmax's normaliser) changes nothing
    moved, ref_moved = logits + 3.0, ref - 1.0
    shifted = (implicit_reward(moved, ref_moved, chosen, beta)
               - implicit_reward(moved, ref_moved, rejected, beta))
    assert float(dpo_loss(shifted)) == pytest.approx(expected, rel=1e-5)


def test_the_first_update_starts_at_log_two() -> None:
    """The policy starts as its reference: every implicit reward is 0, the loss is log 2."""
    algo = DPO(logged_ctx(hand_log(), 8), **SMALL, pretrain=QUICK)
    stats = algo.update(algo.dataset.sample(16, torch.Generator().manual_seed(0)))
    assert float(stats["train/loss"]) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(stats["train/reward_margin"]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["train/accuracy"]) == 0.0
    later = algo.update(algo.dataset.sample(16, torch.Generator().manual_seed(1)))
    assert float(later["train/loss"]) < math.log(2.0)


# ----------------------------------------------------------------------------- the pairs
def test_shown_negatives_of_a_hand_made_log() -> None:
    rows, rejected = shown_rejections(hand_log())
    assert rows.tolist() == [0, 2, 3, 5, 8]
    assert rejected.tolist() == [2, 2, 4, 1, 0]
    pairs = preference_pairs(logged_ctx(hand_log(), 8), "shown")
    assert pairs.chosen.tolist() == [5, 7, 3, 6, 3]
    assert pairs.rejected is not None and pairs.rejected.tolist() == [2, 2, 4, 1, 0]
    assert pairs.obs.step.tolist() == [0, 2, 3, 5, 1]  # each click's position in its session
    assert pairs.obs.items[1, :, 0].tolist() == [8, 5, 2]  # row 2's history, padded (id 8) first
    assert preference_pairs(logged_ctx(hand_log(), 8)).rejected is not None  # auto: the log has non-clicks


def test_sampled_negatives_are_never_the_chosen_item() -> None:
    chosen = torch.arange(5).repeat(2000)
    draws = sampled_rejections(chosen, 5, torch.Generator().manual_seed(0))
    assert bool((draws != chosen).all()) and bool(((draws >= 0) & (draws < 5)).all())
    counts = torch.bincount(draws[chosen == 0], minlength=5).float() / 2000
    assert counts[0] == 0 and bool(((counts[1:] - 0.25).abs() < 0.04).all())  # uniform over the others
    # auto on a log of clicks only: sampled, one pair per row, fresh rejected items in every update
    algo = DPO(logged_ctx(clicks_only_log(), 6), **SMALL, pretrain=QUICK)
    assert algo.dataset.rejected is None and len(algo.dataset) == 120
    batch = algo.dataset.sample(256, torch.Generator().manual_seed(0))
    first, second = algo.rejected(batch), algo.rejected(batch)
    assert bool((first != batch.chosen).all()) and not torch.equal(first, second)


def test_unusable_logs_say_what_to_do() -> None:
    with pytest.raises(RecrlError, match=r"algo\.negatives=sampled"):
        preference_pairs(logged_ctx(clicks_only_log(), 6), "shown")
    with pytest.raises(RecrlError, match="negatives"):
        preference_pairs(logged_ctx(hand_log(), 8), "ignored")
    no_clicks = hand_log().assign(click=np.float32(0.0))
    with pytest.raises(RecrlError, match="has none"):
        preference_pairs(logged_ctx(no_clicks, 8), "sampled")
    with pytest.raises(RecrlError, match="init_from"):
        DPO(logged_ctx(hand_log(), 8), **SMALL, init_from=None)
    with pytest.raises(RecrlError, match="beta"):
        DPO(logged_ctx(hand_log(), 8), **SMALL, beta=0.0)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_moves_probability_to_the_preferred_item(seed: int) -> None:
    ctx = logged_ctx(preference_log(), 6, seed=seed)
    pretrain = PretrainSettings(steps=10, batch_size=32, lr=0.01, seed=seed)  # a reference per seed
    algo = DPO(ctx, **SMALL, lr=0.003, beta=0.1, pretrain=pretrain)
    clicks_a = algo.dataset.chosen == 0
    obs = algo.dataset.obs.index(clicks_a.nonzero().squeeze(1))  # states where A was clicked over B

    def gap(net: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            log_p = torch.log_softmax(net(obs), 1)
        return (log_p[:, 0] - log_p[:, 1]).mean()  # log pi(A|s) - log pi(B|s)

    before = gap(algo.reference)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(30):
        stats = algo.update(algo.dataset.sample(64, generator))
    # measured: +5.9 to +9.2 nats over seeds 0-5; the odds of A against B grew e-fold at least
    assert float(gap(algo.policy) - before) > 1.0
    assert float(stats["train/accuracy"]) > 0.9 and float(stats["train/reward_margin"]) > 0
    assert float(stats["train/loss"]) < math.log(2.0) - 0.1
    assert torch.equal(gap(algo.reference), before)  # the reference stays frozen


# ----------------------------------------------------------------------------- saving, acting
def test_state_dict_round_trip_and_init_from_a_saved_run(tmp_path: Path) -> None:
    ctx = logged_ctx(hand_log(), 8)
    algo = DPO(ctx, **SMALL, lr=0.01, pretrain=QUICK, negatives="sampled")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        algo.update(algo.dataset.sample(16, generator))
    twin = DPO(replace(ctx, seed=5), **SMALL, lr=0.01, pretrain=QUICK, negatives="sampled")
    twin.load_state_dict(copy.deepcopy(algo.state_dict()))  # as through a file: no shared tensors
    assert twin.updates == 3
    batch = algo.dataset.sample(16, generator)
    first, second = algo.update(batch), twin.update(batch)  # same generator: same sampled negatives
    assert float(first["train/loss"]) == float(second["train/loss"])
    for key, value in algo.policy.state_dict().items():
        assert torch.equal(twin.policy.state_dict()[key], value), key
    for key, value in algo.reference.state_dict().items():
        assert torch.equal(twin.reference.state_dict()[key], value), key
    # a saved DPO run is a starting point too: policy and reference start as its policy
    save_checkpoint(tmp_path / "last.pt", {"algo": algo.state_dict()})
    again = DPO(ctx, **SMALL, init_from=str(tmp_path / "last.pt"))
    for key, value in algo.policy.state_dict().items():
        assert torch.equal(again.policy.state_dict()[key], value), key
        assert torch.equal(again.reference.state_dict()[key], value), key
    assert again.pretrained_policy()[0] == "pretrained" and algo.pretrained_policy()[0] == "supervised"


def test_acting_skips_the_history_and_explores_by_sampling() -> None:
    algo = DPO(logged_ctx(hand_log(), 8), **SMALL, pretrain=QUICK)
    obs = algo.dataset.obs
    shown = obs.items[:, :, 0]
    greedy = algo.act(obs, explore=False)[:, 0]
    assert not bool((shown == greedy[:, None]).any())  # never an item of the history
    sampled = torch.cat([algo.act(obs, explore=True) for _ in range(50)])[:, 0]
    assert not bool((shown.repeat(50, 1) == sampled[:, None]).any())
    assert len(set(sampled.tolist())) > 1
    torch.testing.assert_close(algo.action_probs(obs)[:, 0].argmax(1), greedy)
    supervised = algo.pretrained_policy()[1]
    assert torch.equal(supervised.act(obs, explore=False), algo.act(obs, explore=False))  # not trained yet


# ----------------------------------------------------------------------------- command line
def test_cli_trains_dpo_from_the_pretrained_model_and_reports_both(tmp_path: Path,
                                                                   shared_cache: Path) -> None:
    report, rows = train_smoke(tmp_path, "algo=dpo", "algo.dim=8", "algo.layers=1", "algo.pretrain.steps=20",
                               "eval.offline_users=0", "ope.enabled=false", cache=shared_cache)
    assert {"dpo", "supervised"} <= report["evaluation"]["ground_truth"].keys()
    assert report["init_from"]["source"] == "pretrain"
    assert any({"train/loss", "train/reward_margin", "train/accuracy"} <= r.keys() for r in rows)
