"""Tests for recrl.metrics: offline AUC / log-loss and online episode statistics."""

from __future__ import annotations

import math

import pytest
import torch

from recrl.algos.popular import PopularPolicy
from recrl.algos.random import RandomPolicy
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.metrics.online import EpisodeStats, gini, gini_simpson, run_episodes
from recrl.metrics.prediction import auc, logloss
from recrl.rewards import ClickReward, MixReward
from recrl.types import AlgoContext


# ----------------------------------------------------------------------------- AUC / log-loss
def pairwise_auc(score: list[float], label: list[int]) -> float:
    """Reference: the share of (positive, negative) pairs ranked right, ties counting one half."""
    pos = [s for s, y in zip(score, label, strict=True) if y]
    neg = [s for s, y in zip(score, label, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize(
    ("score", "label", "expected"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 1.0),
        ([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied
        # pos 0.5 ties neg 0.5 (1/2) and beats 0.2 (1); pos 0.9 beats both (2): 3.5 / 4
        ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 0.875),
        ([0.3, 0.3, 0.3, 0.7, 0.1], [1, 0, 0, 1, 0], (1.0 + 0.5 + 0.5 + 3.0) / 6),
    ],
)
def test_auc_hand_cases(score: list[float], label: list[int], expected: float) -> None:
    assert auc(torch.tensor(score), torch.tensor(label)) == pytest.approx(expected, abs=1e-12)
    # float labels and a bool mask are accepted too
    assert auc(torch.tensor(score), torch.tensor(label, dtype=torch.float32)) == pytest.approx(expected)


def test_auc_with_one_class_is_nan() -> None:
    assert math.isnan(auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1, 1, 1])))
    assert math.isnan(auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 0, 0])))


def test_auc_matches_pairwise_reference_with_many_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        score = torch.randint(0, 6, (60,), generator=gen).float() / 5  # heavy ties
        label = (torch.rand(60, generator=gen) < 0.4).long()
        want = pairwise_auc(score.tolist(), label.tolist())
        assert auc(score, label) == pytest.approx(want, abs=1e-12)
        assert auc(-score, label) == pytest.approx(1.0 - want, abs=1e-12)


def test_logloss_hand_values() -> None:
    assert logloss(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == pytest.approx(math.log(2), rel=1e-6)
    want = -(math.log(0.9) + math.log(0.8)) / 2
    assert logloss(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0])) == pytest.approx(want, rel=1e-6)
    # certain and wrong: clamped to eps, finite
    got = logloss(torch.tensor([0.0]), torch.tensor([1.0]))
    assert math.isfinite(got) and got == pytest.approx(-math.log(1e-7), rel=1e-3)
    assert logloss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) < 1e-5


# ----------------------------------------------------------------------------- online
N_ITEMS, HORIZON = 25, 6


def make_env(reward=None) -> RecEnv:
    world = SyntheticWorld(n_items=N_ITEMS, n_users=10, n_topics=3, horizon=HORIZON, seed=0)
    return RecEnv(world, reward or ClickReward(), horizon=HORIZON, slate_size=2, history_len=3)


def make_ctx(seed: int = 0) -> AlgoContext:
    return AlgoContext(n_items=N_ITEMS, slate_size=2, history_len=3, horizon=HORIZON,
                       device=torch.device("cpu"), seed=seed,
                       item_popularity=torch.linspace(10, 0, N_ITEMS), behavior=None, reward=ClickReward())


def test_run_episodes_totals_match_a_manual_rollout() -> None:
    reward = MixReward(ctr=1.0, conversion=2.0, rating=0.5)
    policy = PopularPolicy(make_ctx())
    stats = run_episodes(policy, make_env(reward), n_episodes=10, seed=7, batch_size=4)
    assert stats.returns.shape == stats.clicks.shape == stats.lengths.shape == (10,)
    assert stats.shown.shape == (N_ITEMS,) and stats.shown.dtype == torch.bool
    # replay the same chunks (4, 4, 2 users, seeds 7, 8, 9) by hand
    env = make_env(reward)
    returns, lengths, clicks, shown = [], [], [], set()
    for chunk, b in enumerate((4, 4, 2)):
        obs = env.reset(b, seed=7 + chunk)
        ret, length, clk = torch.zeros(b), torch.zeros(b), torch.zeros(b)
        for _ in range(HORIZON):
            slates = policy.act(obs, explore=False)
            alive = env.alive.clone()
            obs, r, _, info = env.step(slates)
            ret += r
            length += alive.float()
            clk += info.response.click.sum(1) * alive.float()
            shown |= set(slates[alive].flatten().tolist())
        returns.append(ret)
        lengths.append(length)
        clicks.append(clk)
    torch.testing.assert_close(stats.returns, torch.cat(returns))
    torch.testing.assert_close(stats.lengths, torch.cat(lengths))
    torch.testing.assert_close(stats.clicks, torch.cat(clicks))
    assert set(torch.nonzero(stats.shown).flatten().tolist()) == shown
    # the mix reward is exactly clicks + 2 conversions + 0.5 * ratings of clicked items
    torch.testing.assert_close(stats.returns, stats.clicks + 2 * stats.conversions + 0.5 * stats.rating_sum)
    assert bool((stats.lengths >= 1).all()) and bool((stats.lengths <= HORIZON).all())
    assert bool((stats.conversions <= stats.clicks).all())
    assert bool((stats.clicks <= stats.lengths).all())  # at most one click per step (MNL)


def test_summary_values() -> None:
    stats = run_episodes(PopularPolicy(make_ctx()), make_env(), n_episodes=40, seed=0, batch_size=16)
    torch.testing.assert_close(stats.returns, stats.clicks)  # ClickReward
    s = stats.summary()
    assert set(s) == {"return", "ctr", "conversion_rate", "mean_rating", "watch", "episode_length",
                      "coverage", "exposure_gini", "same_top_item"}
    assert s["return"]["mean"] == pytest.approx(float(stats.returns.double().mean()), rel=1e-6)
    assert s["return"]["n"] == 40
    assert s["episode_length"]["mean"] == pytest.approx(float(stats.lengths.double().mean()), rel=1e-6)
    assert s["ctr"]["mean"] == pytest.approx(float((stats.clicks / stats.lengths).double().mean()), rel=1e-6)
    clicked = stats.clicks > 0
    assert s["conversion_rate"]["n"] == int(clicked.sum())  # episodes without clicks are left out
    assert s["mean_rating"]["mean"] == pytest.approx(
        float((stats.rating_sum[clicked] / stats.clicks[clicked]).double().mean()), rel=1e-6)
    assert 1.0 <= s["mean_rating"]["mean"] <= 5.0
    # the synthetic world's watch is the share of an item consumed: at most one per click
    watch = stats.signal_sums["watch"]
    assert bool((watch <= stats.clicks).all()) and bool((watch >= 0).all())
    assert 0.0 <= s["coverage"]["mean"] <= 1.0
    assert s["coverage"]["mean"] == pytest.approx(float(stats.shown.float().mean()))
    assert s["return"]["ci95"] > 0


def test_summary_hand_made_stats() -> None:
    stats = EpisodeStats(returns=torch.tensor([2.0, 0.0]), clicks=torch.tensor([2.0, 0.0]),
                         conversions=torch.tensor([1.0, 0.0]), rating_sum=torch.tensor([7.0, 0.0]),
                         lengths=torch.tensor([4.0, 2.0]), exposure=torch.tensor([3.0, 0.0, 3.0, 0.0]),
                         top_items=torch.tensor([0, 0]), signal_sums={"watch": torch.tensor([1.5, 0.0])})
    s = stats.summary()
    assert s["return"]["mean"] == 1.0 and s["episode_length"]["mean"] == 3.0
    assert s["ctr"]["mean"] == pytest.approx(0.25)  # (2/4 + 0/2) / 2
    assert s["conversion_rate"] == {"mean": 0.5, "ci95": pytest.approx(float("nan"), nan_ok=True), "n": 1}
    assert s["mean_rating"]["mean"] == 3.5 and s["mean_rating"]["n"] == 1
    assert s["coverage"]["mean"] == 0.5 and s["coverage"]["n"] == 1
    assert s["watch"]["mean"] == 0.75
    assert s["exposure_gini"]["mean"] == pytest.approx(0.5)  # half the items share everything equally
    assert s["same_top_item"]["mean"] == 1.0
    nan = torch.full((2,), float("nan"))
    unknown = EpisodeStats(**{**stats.__dict__, "signal_sums": {"watch": nan}}).summary()
    assert "watch" not in unknown  # a user model without watch values reports none


def test_run_episodes_is_deterministic_given_the_seed() -> None:
    a = run_episodes(PopularPolicy(make_ctx()), make_env(), n_episodes=12, seed=3, batch_size=5)
    b = run_episodes(PopularPolicy(make_ctx()), make_env(), n_episodes=12, seed=3, batch_size=5)
    for field in ("returns", "clicks", "conversions", "rating_sum", "lengths", "shown"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.signal_sums.keys() == b.signal_sums.keys() == {"watch"}
    assert torch.equal(a.signal_sums["watch"], b.signal_sums["watch"])
    c = run_episodes(PopularPolicy(make_ctx()), make_env(), n_episodes=12, seed=4, batch_size=5)
    assert not torch.equal(a.returns, c.returns) or not torch.equal(a.lengths, c.lengths)
    # a seeded random policy evaluated twice from the same policy seed gives the same numbers
    r1 = run_episodes(RandomPolicy(make_ctx(seed=1)), make_env(), n_episodes=12, seed=3, batch_size=12)
    r2 = run_episodes(RandomPolicy(make_ctx(seed=1)), make_env(), n_episodes=12, seed=3, batch_size=12)
    assert torch.equal(r1.returns, r2.returns) and torch.equal(r1.shown, r2.shown)


def test_run_episodes_turns_autoreset_off() -> None:
    env = make_env()
    env.autoreset = True
    stats = run_episodes(RandomPolicy(make_ctx()), env, n_episodes=8, seed=0, batch_size=8)
    assert env.autoreset is False
    assert bool((stats.lengths <= HORIZON).all())
    # random slates of 2 over 8 users for up to 6 steps cover a good part of 25 items
    assert 0.2 < float(stats.shown.float().mean()) <= 1.0


def test_gini_and_gini_simpson_hand_computed() -> None:
    assert gini(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 0.0
    assert gini(torch.tensor([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)
    # sorted 1, 2, 3: sum (2i - n - 1) x_i / (n sum x) = (-2 + 0 + 6) / 18
    assert gini(torch.tensor([3.0, 1.0, 2.0])) == pytest.approx(4 / 18)
    assert gini(torch.zeros(3)) == 0.0
    # shares (1/2, 1/4, 1/4): 1 - (1/4 + 1/16 + 1/16); one category: 0; nothing shown: 0
    counts = torch.tensor([[2.0, 1.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(gini_simpson(counts), torch.tensor([0.625, 0.0, 0.0]))


class OneTopicPolicy:
    """Serves items of a single category to everyone (the first ``K`` items of category 0)."""

    def act(self, obs, explore: bool) -> torch.Tensor:
        return torch.arange(2).expand(obs.batch_size, 2)


class UserOwnItem:
    """Serves user row ``b`` the items ``2b, 2b + 1`` (every user a different pair)."""

    def act(self, obs, explore: bool) -> torch.Tensor:
        rows = torch.arange(obs.batch_size)[:, None]
        return (2 * rows + torch.arange(2)) % N_ITEMS


def test_diversity_metrics_of_one_item_for_all_versus_one_each() -> None:
    categories = torch.arange(N_ITEMS) % 5  # items 0..4 in categories 0..4, then again
    same = run_episodes(OneTopicPolicy(), make_env(), n_episodes=6, seed=0, batch_size=6,
                        categories=torch.zeros(N_ITEMS, dtype=torch.long)).summary()
    assert same["same_top_item"]["mean"] == 1.0
    assert same["coverage"]["mean"] == pytest.approx(2 / N_ITEMS)
    assert same["exposure_gini"]["mean"] == pytest.approx(1 - 2 / N_ITEMS)  # two equal items hold it all
    assert same["category_diversity"]["mean"] == 0.0
    each = run_episodes(UserOwnItem(), make_env(), n_episodes=6, seed=0, batch_size=6,
                        categories=categories).summary()
    assert each["same_top_item"]["mean"] == pytest.approx(1 / 6)
    assert each["coverage"]["mean"] == pytest.approx(12 / N_ITEMS)
    # every session shows two items of two different categories every step: shares (1/2, 1/2)
    assert each["category_diversity"]["mean"] == pytest.approx(0.5)
