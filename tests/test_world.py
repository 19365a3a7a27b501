"""Tests for recrl.data.synthetic: the choice model, the ground-truth world and its logs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.data.synthetic import SyntheticWorld
from recrl.env.choice import mnl_probs, sample_choice
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import LOG_COLUMNS, Splits

# Non-default coefficients so that a formula using the wrong knob is caught.
COEFS = dict(click_bias=-0.7, click_affinity=1.3, click_quality=0.9, click_bait=1.7, click_boredom=0.25,
             boredom_decay=0.6, satisfaction_decay=0.8, satisfaction_gain=1.2, bait_penalty=0.65,
             no_click_penalty=0.15, leave_bias=-2.5, leave_satisfaction=1.1, interest_drift=0.3)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def small_world(**kwargs) -> SyntheticWorld:
    args = dict(n_items=20, n_users=60, n_topics=3, horizon=6, seed=0)
    args.update(kwargs)
    return SyntheticWorld(**args)


def hand_state() -> torch.Tensor:
    """Two users, 3 topics: [interest (3) | satisfaction (1) | boredom (3)]."""
    return torch.tensor([[0.6, 0.8, 0.0, 0.4, 1.0, 0.0, 2.0],
                         [0.0, 0.0, 1.0, -1.2, 0.5, 0.5, 0.0]])


def hand_slates(world: SyntheticWorld) -> torch.Tensor:
    """Slates of 3 items mixing clickbait and regular items (row 2 reversed)."""
    bait = torch.nonzero(world.is_bait > 0).flatten().tolist()
    good = torch.nonzero(world.is_bait == 0).flatten().tolist()
    assert bait and len(good) >= 2, "the test world needs both kinds of items"
    row = [bait[0], good[0], good[1]]
    return torch.tensor([row, row[::-1]])


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- choice model
def test_mnl_probs_hand_values() -> None:
    torch.testing.assert_close(mnl_probs(torch.tensor([[0.0, 0.0]])), torch.tensor([[1 / 3, 1 / 3]]))
    # exp(ln 2) = 2, exp(0) = 1, no-click 1  ->  2/4, 1/4
    torch.testing.assert_close(mnl_probs(torch.tensor([[math.log(2.0), 0.0]])), torch.tensor([[0.5, 0.25]]))
    # huge utilities stay finite: no-click probability vanishes
    torch.testing.assert_close(mnl_probs(torch.tensor([[100.0, 100.0]])), torch.tensor([[0.5, 0.5]]))
    p = mnl_probs(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))
    assert bool((p > 0).all()) and bool((p.sum(1) < 1).all())


def test_mnl_probs_single_item_is_sigmoid() -> None:
    u = torch.linspace(-6, 6, 25)[:, None]
    torch.testing.assert_close(mnl_probs(u), torch.sigmoid(u))


def test_sample_choice_respects_probabilities() -> None:
    probs = torch.tensor([[0.2, 0.0, 0.5], [0.0, 0.0, 0.0], [0.1, 0.3, 0.6], [0.0, 0.9, 0.0]])
    n = 20_000
    rows = probs.repeat(n, 1)  # row r of the pattern sits at r, r + 4, ...
    click = sample_choice(rows, torch.Generator().manual_seed(0))
    assert click.shape == rows.shape and click.dtype == rows.dtype
    assert set(click.unique().tolist()) <= {0.0, 1.0}
    assert float(click.sum(1).max()) <= 1.0  # at most one click per slate
    assert not bool(click[rows == 0].any())  # zero-probability slots are never clicked
    freq = click.reshape(n, 4, 3).mean(0)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_sample_choice_is_seeded() -> None:
    probs = torch.full((500, 2), 0.3)
    a = sample_choice(probs, torch.Generator().manual_seed(7))
    b = sample_choice(probs, torch.Generator().manual_seed(7))
    c = sample_choice(probs, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_choice_never_clicks_twice_at_rounding_boundaries(monkeypatch) -> None:
    probs = mnl_probs(2 * torch.randn(1000, 5, generator=torch.Generator().manual_seed(0)))
    cum = probs.cumsum(1)
    prev = torch.cat([torch.zeros(1000, 1), cum[:, :-1]], 1)
    rows, slots = torch.nonzero(cum - probs < prev, as_tuple=True)
    assert len(rows) > 0  # float32 rounding makes neighbouring intervals overlap
    row, u = probs[rows[:1]], (cum - probs)[rows[0], slots[0]].reshape(1, 1)
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: u.clone())  # a draw inside the overlap
    click = sample_choice(row, torch.Generator())
    assert float(click.sum()) <= 1.0


# ----------------------------------------------------------------------------- the world
def test_items_tables_are_consistent() -> None:
    w = small_world()
    assert w.item_emb.shape == (20, 3)
    torch.testing.assert_close(w.item_emb.norm(dim=1), torch.ones(20))
    assert bool(((w.topic >= 0) & (w.topic < 3)).all())
    assert bool(((w.quality >= 0) & (w.quality <= 1)).all())
    assert float(w.quality[w.is_bait > 0].max()) <= 0.3  # clickbait is low quality
    assert bool(((w.price >= 0) & (w.price <= 1)).all())
    p = w.logging_probs()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(p.min()) >= w.logging_epsilon / w.n_items - 1e-7
    # a world is a pure function of its arguments
    torch.testing.assert_close(small_world().item_emb, w.item_emb)
    assert not torch.equal(small_world(seed=1).item_emb, w.item_emb)


def test_initial_state_layout() -> None:
    w = small_world()
    s = w.initial_state(5, torch.Generator().manual_seed(0))
    assert s.shape == (5, 2 * 3 + 1)
    torch.testing.assert_close(s[:, :3].norm(dim=1), torch.ones(5))
    assert bool((s[:, 3:] == 0).all())  # neutral satisfaction, no boredom


def test_click_utility_hand_computed() -> None:
    w = small_world(**COEFS)
    state, slates = hand_state(), hand_slates(w)
    got = w.click_utility(state, slates)
    assert got.shape == (2, 3)
    for b in range(2):
        interest, boredom = state[b, :3].tolist(), state[b, 4:].tolist()
        for k in range(3):
            i = int(slates[b, k])
            want = (-0.7 + 1.3 * dot(interest, w.item_emb[i].tolist()) + 0.9 * float(w.quality[i])
                    + 1.7 * float(w.is_bait[i]) - 0.25 * boredom[int(w.topic[i])])
            assert float(got[b, k]) == pytest.approx(want, abs=1e-5)


def test_conversion_rating_and_leave_hand_computed() -> None:
    w = small_world(**COEFS)
    state, slates = hand_state(), hand_slates(w)
    conv, rating, leave = w.conversion_prob(state, slates), w.rating(state, slates), w.leave_prob(state)
    for b in range(2):
        interest = state[b, :3].tolist()
        for k in range(3):
            i = int(slates[b, k])
            aff = dot(interest, w.item_emb[i].tolist())
            q, price = float(w.quality[i]), float(w.price[i])
            assert float(conv[b, k]) == pytest.approx(sigmoid(-1.0 + 2.0 * q - 1.5 * price + aff), abs=1e-6)
            assert float(rating[b, k]) == pytest.approx(1.0 + 4.0 * sigmoid(3.0 * (q - 0.5) + aff), abs=1e-5)
    assert leave.shape == (2,)
    assert float(leave[0]) == pytest.approx(sigmoid(-2.5 - 1.1 * 0.4), abs=1e-6)
    assert float(leave[1]) == pytest.approx(sigmoid(-2.5 - 1.1 * -1.2), abs=1e-6)
    assert bool(((rating >= 1) & (rating <= 5)).all())


def test_update_hand_computed() -> None:
    w = small_world(**COEFS)
    state = torch.cat([hand_state(), hand_state()[:1]])  # 3 users
    slates = torch.cat([hand_slates(w), hand_slates(w)[:1]])
    bait_item, good_item = int(slates[0, 0]), int(slates[1, 0])
    # row 0 clicks the clickbait item, row 1 a regular item, row 2 nothing
    click = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    nxt = w.update(state, slates, click)
    assert nxt.shape == state.shape
    for b in range(3):
        old_interest, sat, boredom = state[b, :3].tolist(), float(state[b, 3]), state[b, 4:].tolist()
        shown = [0.0, 0.0, 0.0]
        for i in slates[b].tolist():
            shown[int(w.topic[i])] += 1.0
        want_boredom = [0.6 * x + s for x, s in zip(boredom, shown, strict=True)]
        torch.testing.assert_close(nxt[b, 4:], torch.tensor(want_boredom))
        if b == 0:
            want_sat = 0.8 * sat + 1.2 * (float(w.quality[bait_item]) - 0.5) - 0.65
            clicked = w.item_emb[bait_item]
        elif b == 1:
            want_sat = 0.8 * sat + 1.2 * (float(w.quality[good_item]) - 0.5)
            clicked = w.item_emb[good_item]
        else:
            want_sat = 0.8 * sat - 0.15
            clicked = torch.zeros(3)
        assert float(nxt[b, 3]) == pytest.approx(want_sat, abs=1e-5)
        raw = torch.tensor(old_interest) + 0.3 * clicked
        torch.testing.assert_close(nxt[b, :3], raw / raw.norm())
        assert float(nxt[b, :3].norm()) == pytest.approx(1.0, abs=1e-5)
        if b < 2:  # interest drifts toward the clicked item
            assert float(nxt[b, :3] @ clicked) > float(torch.tensor(old_interest) @ clicked)
    torch.testing.assert_close(nxt[2, :3], state[2, :3])  # no click: no drift


def test_respond_is_consistent_with_the_formulas() -> None:
    w = small_world(**COEFS)
    state, slates = hand_state(), hand_slates(w)
    resp, nxt = w.respond(state, slates, torch.Generator().manual_seed(3))
    torch.testing.assert_close(resp.click_prob, mnl_probs(w.click_utility(state, slates)))
    torch.testing.assert_close(resp.conversion_prob, w.conversion_prob(state, slates))
    torch.testing.assert_close(resp.rating, w.rating(state, slates))
    torch.testing.assert_close(nxt, w.update(state, slates, resp.click))
    torch.testing.assert_close(resp.leave_prob, w.leave_prob(nxt))  # leaving after this step
    assert bool((resp.conversion <= resp.click).all())


def test_clickbait_is_clickable_but_hurts_satisfaction() -> None:
    w = SyntheticWorld(n_items=30, n_users=10, n_topics=4, horizon=10, seed=0)
    bait = w.is_bait > 0
    assert bool(bait.any()) and bool((~bait).any())
    users = w.initial_state(2000, torch.Generator().manual_seed(0))
    slates = torch.arange(30).expand(2000, 30)
    utility = w.click_utility(users, slates).mean(0)
    assert float(utility[bait].mean()) > float(utility[~bait].mean()) + 1.0
    # after a click, any clickbait item leaves users less satisfied than any regular item
    state = users[:1].expand(30, -1)
    after = w.update(state, torch.arange(30)[:, None], torch.ones(30, 1))
    assert float(after[bait, w.n_topics].max()) < float(after[~bait, w.n_topics].min())
    assert float(w.leave_prob(after)[bait].min()) > float(w.leave_prob(after)[~bait].max())

    # the long-term effect: serving the most clickable bait item wins the first step only
    best_bait = int(torch.where(bait, utility, torch.tensor(-1e9)).argmax())
    best_good = int(torch.where(~bait, w.quality, torch.tensor(-1e9)).argmax())
    results = {}
    for item in (best_bait, best_good):
        env = RecEnv(w, ClickReward(), horizon=10, slate_size=1, history_len=2)
        env.reset(1000, seed=1)
        total, length, first_ctr = torch.zeros(1000), torch.zeros(1000), None
        for _ in range(10):
            alive = env.alive.clone()
            _, reward, _, info = env.step(torch.full((1000, 1), item))
            first_ctr = float(info.response.click_prob.mean()) if first_ctr is None else first_ctr
            total += reward
            length += alive.float()
        results[item] = (first_ctr, float(total.mean()), float(length.mean()))
    assert results[best_bait][0] > results[best_good][0] + 0.1  # more clicks now
    assert results[best_bait][2] < results[best_good][2] - 2.0  # users leave much sooner
    assert results[best_bait][1] < results[best_good][1]  # fewer clicks over the session


def test_to_and_ground_truth_keep_the_tables() -> None:
    w = small_world()
    gt = w.ground_truth("cpu")
    assert gt is not w
    torch.testing.assert_close(gt.quality, w.quality)
    assert w.to("cpu") is w and w.device == torch.device("cpu")


# ----------------------------------------------------------------------------- logs
def full_log(data: Splits) -> pd.DataFrame:
    parts = [data.interactions.train, data.interactions.valid, data.test]
    return pd.concat(parts).sort_values(["user", "time"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def logs_world() -> tuple[SyntheticWorld, Splits]:
    w = small_world(n_users=80, horizon=6)
    return w, w.load()


def test_load_columns_and_sessions(logs_world) -> None:
    w, data = logs_world
    log = full_log(data)
    assert list(log.columns) == list(LOG_COLUMNS)
    assert data.interactions.n_users == 80 and data.interactions.n_items == 20
    assert sorted(log["user"].unique().tolist()) == list(range(80))  # every user logged
    for col in ("user", "time", "item"):
        assert log[col].dtype == np.int64
    assert log["item"].between(0, 19).all()
    for _, rows in log.groupby("user"):
        assert rows["time"].tolist() == list(range(len(rows)))  # contiguous, sorted
        assert len(rows) <= w.horizon


def test_load_leave_only_on_last_row(logs_world) -> None:
    w, data = logs_world
    log = full_log(data)
    for _, rows in log.groupby("user"):
        leave = rows["leave"].to_numpy()
        assert set(np.unique(leave).tolist()) <= {0.0, 1.0}
        assert leave[:-1].sum() == 0
        if len(rows) < w.horizon:  # a session only ends early because the user left
            assert leave[-1] == 1.0
    assert log["leave"].sum() > 0


def test_load_outcomes_and_propensities(logs_world) -> None:
    w, data = logs_world
    log = full_log(data)
    probs = w.logging_probs().numpy()
    np.testing.assert_allclose(log["propensity"].to_numpy(), probs[log["item"].to_numpy()], rtol=1e-6)
    assert (log["rating"].isna() == (log["click"] == 0)).all()  # rating only with a click
    assert log["rating"].dropna().between(1, 5).all()
    assert (log["conversion"] <= log["click"]).all()
    assert 0 < log["click"].sum() < len(log)
    items = data.interactions.items
    np.testing.assert_allclose(items["quality"].to_numpy(), w.quality.numpy())
    np.testing.assert_allclose(items["clickbait"].to_numpy(), w.is_bait.numpy())
    assert items["topic"].tolist() == w.topic.tolist()


def test_load_follows_the_logging_policy() -> None:
    w = SyntheticWorld(n_items=10, n_users=6000, n_topics=3, horizon=1, seed=3)
    log = full_log(w.load())
    freq = np.bincount(log["item"].to_numpy(), minlength=10) / len(log)
    np.testing.assert_allclose(freq, w.logging_probs().numpy(), atol=0.02)


def test_load_is_deterministic(logs_world) -> None:
    _, data = logs_world
    again = small_world(n_users=80, horizon=6).load()
    pd.testing.assert_frame_equal(full_log(data), full_log(again))
    pd.testing.assert_frame_equal(data.test, again.test)
    other = small_world(n_users=80, horizon=6, seed=5).load()
    assert not full_log(data)[["item", "click"]].head(80).equals(full_log(other)[["item", "click"]].head(80))


def test_split_is_a_partition_of_users(logs_world) -> None:
    _, data = logs_world
    frames = {"train": data.interactions.train, "valid": data.interactions.valid, "test": data.test}
    parts = {p: set(f["user"].unique().tolist()) for p, f in frames.items()}
    assert not parts["train"] & parts["valid"] and not parts["train"] & parts["test"]
    assert not parts["valid"] & parts["test"]
    assert parts["train"] | parts["valid"] | parts["test"] == set(range(80))
    assert sum(len(f) for f in frames.values()) == len(full_log(data))
    assert len(parts["train"]) > len(parts["valid"])
    pop = data.interactions.item_popularity()
    assert pop.shape == (20,) and pop.sum() == frames["train"]["click"].sum()
    assert not hasattr(data.interactions, "test")  # training code cannot reach the test rows


def test_split_shares_are_respected() -> None:
    w = SyntheticWorld(n_items=5, n_users=4000, n_topics=2, horizon=1, valid_share=0.2, test_share=0.3)
    split = w.user_split(4000)
    assert (split == "valid").mean() == pytest.approx(0.2, abs=0.03)
    assert (split == "test").mean() == pytest.approx(0.3, abs=0.03)
