"""The hand-written reference policies of ``scripts/reference_policies.py``: what they read of the
history, by known answers on a small world."""

from __future__ import annotations

import torch
from tiny import load_script, make_ctx

from recrl.algos.nets import mask_shown
from recrl.algos.planner import SurvivalPlanner
from recrl.algos.random import RandomPolicy
from recrl.data.synthetic import HistoryBelief, SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward

HORIZON = 6


def make_env() -> RecEnv:
    world = SyntheticWorld(n_items=30, n_users=10, n_topics=3, horizon=HORIZON, leave_bias=-20.0, seed=1)
    return RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=HORIZON)


def test_estimated_state_replays_satisfaction_and_boredom_exactly() -> None:
    """With a history as long as the episode and nobody leaving, the replayed satisfaction and
    topic boredom are the true ones; the interest points along the clicked items."""
    refs = load_script("reference_policies")
    env = make_env()
    world = env.model
    policy = refs.EstimatedState(world, ClickReward(), env)
    walk = RandomPolicy(make_ctx(n_items=30, slate_size=1, history_len=HORIZON, horizon=HORIZON))
    obs = env.reset(64, seed=0)
    for _ in range(HORIZON - 1):
        obs, *_ = env.step(walk.act(obs, explore=True))
    estimate = policy.estimate(obs)
    t = world.n_topics
    assert torch.allclose(estimate[:, t], env.state[:, t], atol=1e-5)            # satisfaction
    assert torch.allclose(estimate[:, t + 1:], env.state[:, t + 1:], atol=1e-5)  # boredom
    clicked = obs.clicks.reshape(64, -1).sum(1) > 0
    assert torch.allclose(estimate[clicked, :t].norm(dim=1), torch.ones(int(clicked.sum())), atol=1e-5)
    assert torch.all(estimate[~clicked, :t] == 0)


def test_state_without_interest_keeps_satisfaction_and_boredom_and_drops_the_interest() -> None:
    refs = load_script("reference_policies")
    env = make_env()
    full = refs.EstimatedState(env.model, ClickReward(), env)
    blind = refs.StateWithoutInterest(env.model, ClickReward(), env)
    walk = RandomPolicy(make_ctx(n_items=30, slate_size=1, history_len=HORIZON, horizon=HORIZON))
    obs = env.reset(32, seed=1)
    for _ in range(3):
        obs, *_ = env.step(walk.act(obs, explore=True))
    t = env.model.n_topics
    estimate, without = full.estimate(obs), blind.estimate(obs)
    assert torch.all(without[:, :t] == 0) and torch.equal(without[:, t:], estimate[:, t:])
    assert estimate[:, :t].abs().sum() > 0  # someone clicked, so the full estimate has an interest
    assert blind.act(obs).shape == (32, 1)


def test_estimated_topics_reads_the_interest_from_the_clicked_topics() -> None:
    """The interest estimate is the shrunk unit vector of clicks per topic (a hand count); the
    replayed satisfaction and boredom are the full estimate's."""
    refs = load_script("reference_policies")
    env = make_env()
    world = env.model
    full = refs.EstimatedState(world, ClickReward(), env)
    topics = refs.EstimatedTopics(world, ClickReward(), env)
    walk = RandomPolicy(make_ctx(n_items=30, slate_size=1, history_len=HORIZON, horizon=HORIZON))
    obs = env.reset(32, seed=2)
    for _ in range(4):
        obs, *_ = env.step(walk.act(obs, explore=True))
    t = world.n_topics
    estimate = topics.estimate(obs)
    assert torch.equal(estimate[:, t:], full.estimate(obs)[:, t:])
    for row in range(32):
        counts = torch.zeros(t)
        for item, click in zip(obs.items[row, :, 0].tolist(), obs.clicks[row, :, 0].tolist(), strict=True):
            if item < world.n_items and click > 0:
                counts[world.topic[item]] += 1.0
        expected = refs.TOPIC_SHRINK * counts / counts.norm() if counts.sum() > 0 else counts
        assert torch.allclose(estimate[row, :t], expected, atol=1e-6)
    assert topics.act(obs).shape == (32, 1)


def test_quality_first_serves_the_best_unseen_non_bait_items_in_order() -> None:
    refs = load_script("reference_policies")
    env = make_env()
    world = env.model
    policy = refs.QualityFirst(world)
    order = (world.quality - 10.0 * world.is_bait).argsort(descending=True)
    obs = env.reset(4, seed=0)
    served = []
    for _ in range(3):
        items = policy.act(obs)
        served.append(items[:, 0])
        obs, *_ = env.step(items)
    served = torch.stack(served, 1)
    assert torch.equal(served, order[:3].expand(4, -1))
    assert float(world.is_bait[served].max()) == 0.0


def test_the_planner_on_the_history_belief_at_caution_one_is_the_estimated_state_rule() -> None:
    """``SurvivalPlanner`` on :class:`HistoryBelief` (what a learner trained in the ground truth
    takes demonstrations from) scores every item as ``estimated_state`` does at caution 1."""
    refs = load_script("reference_policies")
    env = make_env()
    ctx = make_ctx(n_items=30, slate_size=1, history_len=HORIZON, horizon=HORIZON)
    planner = SurvivalPlanner(ctx, caution=1.0, model=HistoryBelief(env.model, env.choice))
    rule = refs.EstimatedState(env.model, ClickReward(), env)
    walk = RandomPolicy(ctx)
    obs = env.reset(48, seed=3)
    for _ in range(3):
        obs, *_ = env.step(walk.act(obs, explore=True))
    remaining = (HORIZON - 1 - obs.step).clamp(min=0)
    expected = mask_shown(rule.base.base_scores(rule.estimate(obs), remaining), obs)
    assert torch.allclose(planner.scores(obs), expected, atol=1e-6)
    assert torch.equal(planner.act(obs, explore=False), rule.act(obs))


def test_the_history_belief_replays_whole_slates() -> None:
    """With slates of two items the belief replays each observed slate as one step of the world:
    satisfaction and topic boredom come out as the true ones."""
    world = SyntheticWorld(n_items=30, n_users=10, n_topics=3, horizon=HORIZON, leave_bias=-20.0, seed=1)
    env = RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=2, history_len=HORIZON)
    walk = RandomPolicy(make_ctx(n_items=30, slate_size=2, history_len=HORIZON, horizon=HORIZON))
    obs = env.reset(32, seed=4)
    for _ in range(HORIZON - 1):
        obs, *_ = env.step(walk.act(obs, explore=True))
    belief = HistoryBelief(world, env.choice)
    estimate, t = belief.encode(obs), world.n_topics
    assert torch.allclose(estimate[:, t:], env.state[:, t:], atol=1e-5)
    alone = belief.score_all(estimate)
    assert alone.click_prob.shape == (32, 30)
    assert torch.allclose(belief.leave_prob_after_click(estimate, alone.conversion_prob), alone.leave_prob)
