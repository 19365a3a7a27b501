"""The Bayes-optimal predictor of ``scripts/fidelity_ceiling.py``: known answers on a small world, and
the script end to end on a trained smoke run's slates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import load_script, make_ctx, run_recrl

from recrl.algos.random import RandomPolicy
from recrl.behavior.fidelity import pearson
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward

HORIZON = 8


def make_env() -> RecEnv:
    world = SyntheticWorld(n_items=20, n_users=10, n_topics=3, horizon=HORIZON, leave_bias=-20.0, seed=2)
    return RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=HORIZON)


def test_without_history_it_predicts_the_population_mean() -> None:
    ceiling = load_script("fidelity_ceiling")
    env = make_env()
    world = env.model
    bayes = ceiling.BayesPredictor(world, particles=4096, seed=0)
    obs = env.reset(3, seed=0)
    predicted = bayes.score_all(bayes.encode(obs)).click_prob
    # the mean over fresh users of the true click probability, by an independent Monte Carlo
    fresh = world.initial_state(200_000, torch.Generator().manual_seed(5))
    mean = torch.sigmoid(world.click_utility(fresh, None)).mean(0)
    assert torch.allclose(predicted, mean.expand(3, -1), atol=0.01)
    assert torch.allclose(bayes.leave_prob(bayes.encode(obs)), world.leave_prob(env.state), atol=1e-6)


def test_history_sharpens_the_prediction_toward_the_truth() -> None:
    """After a random walk the posterior prediction is closer to each user's true click
    probabilities than the prior's (the same users, the same items)."""
    ceiling = load_script("fidelity_ceiling")
    env = make_env()
    world = env.model
    bayes = ceiling.BayesPredictor(world, particles=2048, seed=0)
    walk = RandomPolicy(make_ctx(n_items=20, slate_size=1, history_len=HORIZON, horizon=HORIZON))
    obs = env.reset(256, seed=1)
    prior = bayes.score_all(bayes.encode(obs)).click_prob
    for _ in range(HORIZON - 1):
        obs, *_ = env.step(walk.act(obs, explore=True))
    truth = torch.sigmoid(world.click_utility(env.state, None))
    posterior = bayes.score_all(bayes.encode(obs)).click_prob
    # satisfaction and boredom are replayed exactly: the leave probability is the true one
    assert torch.allclose(bayes.leave_prob(bayes.encode(obs)), world.leave_prob(env.state), atol=1e-5)
    flat = truth.flatten().double()
    assert pearson(posterior.flatten().double(), flat) > pearson(prior.flatten().double(), flat) + 0.1


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_counts_below_one_are_refused_in_one_line(value: str, capsys) -> None:
    ceiling = load_script("fidelity_ceiling")
    with pytest.raises(SystemExit) as exit_info:
        ceiling.main(["--users", value])
    assert exit_info.value.code == 2
    assert f"argument --users: {value!r} is not a whole number of at least 1" in capsys.readouterr().err


def test_content_world_knows_items_by_their_topic_mean() -> None:
    """Every item's vector is its topic's mean vector (by hand), the rest of the items' truth is
    kept, and the world itself is untouched."""
    ceiling = load_script("fidelity_ceiling")
    world = make_env().model
    original = world.item_emb.clone()
    content = ceiling.content_world(world)
    for item in range(world.n_items):
        same = world.topic == world.topic[item]
        torch.testing.assert_close(content.item_emb[item], original[same].mean(0))
    assert torch.equal(world.item_emb, original)
    for name in ("topic", "quality", "price", "is_bait"):
        assert torch.equal(getattr(content, name), getattr(world, name))


def test_the_ceiling_on_a_trained_policys_slates(tmp_path: Path, shared_cache: Path, monkeypatch) -> None:
    """``--policy RUN`` adds the slates of a trained run (end to end on a smoke run): every
    predictor is scored there too, the Bayes predictor's leave probability is the true one (it
    replays satisfaction exactly when it sees the whole session), and a run of another world is
    refused in one line."""
    run, whole_session = tmp_path / "run", "env.history_len=10"  # the smoke horizon
    proc = run_recrl("train", "experiment=smoke", whole_session, f"hydra.run.dir={run}", cwd=tmp_path,
                     cache=shared_cache, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ceiling = load_script("fidelity_ceiling")
    monkeypatch.setenv("RECRL_CACHE_DIR", str(shared_cache))
    torch.set_num_threads(1)
    out = tmp_path / "ceiling.json"
    ceiling.main(["--particles", "64", "--users", "64", "--out", str(out), "--policy", str(run), "--",
                  "experiment=smoke", whole_session])
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"behavior model", "Bayes-optimal (true items, posterior interest)",
                         "Bayes, items by content (topic-mean vectors)"}
    for by_slates in rows.values():
        assert list(by_slates) == ["random slates", "quality_first slates", "dqn (run) slates"]
        assert all(-1.0 <= value <= 1.0 for value in by_slates["dqn (run) slates"].values()
                   if isinstance(value, float) and value == value)
    bayes = rows["Bayes-optimal (true items, posterior interest)"]["dqn (run) slates"]
    assert bayes["leave_prob_pearson"] > 0.999
    with pytest.raises(SystemExit, match="was trained with another dataset"):
        ceiling.main(["--out", str(out), "--policy", str(run), "--", "experiment=smoke",
                      whole_session, "dataset.n_items=300"])
