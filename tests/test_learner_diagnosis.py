"""``scripts/learner_diagnosis.py``: the true-state observation it adds, and a tiny end-to-end run."""

from __future__ import annotations

import json
import runpy
import sys

import torch
from tiny import SCRIPTS, load_script, make_ctx

from recrl.algos.random import RandomPolicy
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import Obs


def test_true_state_env_observes_the_worlds_state_after_every_step() -> None:
    diagnosis = load_script("learner_diagnosis")
    world = SyntheticWorld(n_items=30, n_users=10, n_topics=3, horizon=5, seed=1)
    env = diagnosis.TrueStateEnv(RecEnv(world, ClickReward(), horizon=5, slate_size=1, history_len=3), world)
    assert env.obs_features == 2 * world.n_topics + 1 and env.horizon == 5  # the rest is the wrapped env's
    for flag in (True, False):  # the loop and the evaluation switch autoreset: it must reach the env
        env.autoreset = flag
        assert env.env.autoreset is flag
    walk = RandomPolicy(make_ctx(n_items=30, slate_size=1, history_len=3, horizon=5))
    obs = env.reset(8, seed=0)
    assert torch.equal(obs.features, env.env.state)
    for _ in range(3):
        obs, *_ = env.step(walk.act(obs, explore=True))
        assert obs.features.shape == (8, env.obs_features)
        assert torch.equal(obs.features, env.env.state)
        assert obs.features.data_ptr() != env.env.state.data_ptr()  # a copy: later steps cannot change it


def test_true_state_env_keeps_only_the_chosen_parts() -> None:
    diagnosis = load_script("learner_diagnosis")
    world = SyntheticWorld(n_items=30, n_users=10, n_topics=3, horizon=5, seed=1)
    inner = RecEnv(world, ClickReward(), horizon=5, slate_size=1, history_len=3)
    obs = diagnosis.TrueStateEnv(inner, world, ["interest"]).reset(4, seed=0)
    assert torch.equal(obs.features, inner.state[:, :3])
    env = diagnosis.TrueStateEnv(inner, world, ["boredom", "satisfaction"])  # state order, not argument order
    assert env.obs_features == 4
    obs, *_ = env.step(torch.zeros(4, 1, dtype=torch.long))
    assert torch.equal(obs.features, inner.state[:, 3:])


def test_topic_profile_by_hand() -> None:
    diagnosis = load_script("learner_diagnosis")
    world = SyntheticWorld(n_items=30, n_users=10, n_topics=3, horizon=5, seed=1, boredom_decay=0.5)
    a, b = (int(torch.nonzero(world.topic == t)[0]) for t in (0, 2))  # an item of topic 0, one of topic 2
    pad = world.n_items
    # history oldest first: padding, a (clicked), b, a (clicked)
    obs = Obs(items=torch.tensor([[[pad], [a], [b], [a]]]),
              clicks=torch.tensor([[[0.0], [1.0], [0.0], [1.0]]]),
              step=torch.tensor([3]))
    features = diagnosis.topic_profile(obs, world)
    clicked = torch.tensor([2.0, 0.0, 0.0]) / 2.0                      # two clicks on topic 0, unit norm
    shown = torch.tensor([0.25 + 1.0, 0.0, 0.5])                        # decayed 0.5 per step back
    torch.testing.assert_close(features, torch.cat([clicked, shown])[None])
    inner = RecEnv(world, ClickReward(), horizon=5, slate_size=1, history_len=4)
    env = diagnosis.HistoryFeatureEnv(inner, world, "topic_profile")
    assert env.obs_features == 6
    first = env.reset(2, seed=0)
    assert torch.equal(first.features, torch.zeros(2, 6))              # nothing observed yet


def test_estimated_state_env_observes_the_reference_rules_inputs() -> None:
    """With a history as long as the episode and nobody leaving, the replayed satisfaction and
    boredom are the true ones, and the interest is the unit sum of the clicked items' vectors."""
    diagnosis = load_script("learner_diagnosis")
    horizon = 6
    world = SyntheticWorld(n_items=30, n_users=10, n_topics=3, horizon=horizon, leave_bias=-20.0, seed=1)
    inner = RecEnv(world, ClickReward(), horizon=horizon, slate_size=1, history_len=horizon)
    env = diagnosis.HistoryFeatureEnv(inner, world, "estimated_state")
    assert env.obs_features == 2 * 3 + 1
    walk = RandomPolicy(make_ctx(n_items=30, slate_size=1, history_len=horizon, horizon=horizon))
    obs = env.reset(64, seed=0)
    assert torch.equal(obs.features[:, 3:], torch.zeros(64, 4))        # nothing replayed yet
    for _ in range(horizon - 1):
        obs, *_ = env.step(walk.act(obs, explore=True))
    torch.testing.assert_close(obs.features[:, 3:], inner.state[:, 3:])  # satisfaction, boredom
    items, clicks = obs.items.reshape(64, -1), obs.clicks.reshape(64, -1)
    summed = (world.item_emb[items.clamp(max=29)] * clicks.unsqueeze(-1)).sum(1)  # padding: no click
    torch.testing.assert_close(obs.features[:, :3], torch.nn.functional.normalize(summed, dim=1))
    assert (clicks.sum(1) > 0).any() and (obs.features[clicks.sum(1) == 0, :3] == 0).all()


def test_script_trains_both_observations_and_writes_json(tmp_path, monkeypatch, shared_cache) -> None:
    out = tmp_path / "diagnosis.json"
    monkeypatch.setenv("RECRL_CACHE_DIR", str(shared_cache))
    monkeypatch.setattr(sys, "argv", ["learner_diagnosis.py", "--seeds", "0", "1", "--out", str(out),
                                      "--variants", "history", "true_state", "estimated_state", "--",
                                      "experiment=smoke", "algo=dqn", "trainer.steps=20", "eval.episodes=16"])
    runpy.run_path(str(SCRIPTS / "learner_diagnosis.py"), run_name="__main__")
    data = json.loads(out.read_text())
    assert set(data["rows"]) == {"history", "true_state", "estimated_state", "oracle"}
    oracle = data["facts"]["oracle"]
    for name in ("history", "true_state", "estimated_state", "oracle"):
        served = data["rows"][name]["served"]
        assert -1.0 <= served["affinity"] <= 1.0 and 0.0 <= served["clickbait"] <= 1.0
        assert 0.0 < served["length"] <= 10  # experiment=smoke: horizon 10
    for name in ("history", "true_state", "estimated_state"):
        row = data["rows"][name]
        assert len(row["per_seed"]) == 2 and row["ci95"] is not None
        assert abs(row["oracle_share"] - row["return"] / oracle) < 1e-9
