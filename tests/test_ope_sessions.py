"""Tests for off-policy evaluation over logged sessions: sessions from a log, continuing them in a
model environment, the target's terms, and the estimates against the truth on the synthetic world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.algos.random import RandomPolicy
from recrl.behavior.gru import GRUBehavior
from recrl.config import build, build_algo_by_name, compose_config, validate
from recrl.data.preprocess import log_frame
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.metrics.online import run_episodes
from recrl.ope.evaluation import OffPolicyEvaluation, _users_up_to
from recrl.ope.sessions import LoggedSessions
from recrl.ope.target import immediate_terms, rollout_return
from recrl.rewards import ClickReward
from recrl.stages import build_stages
from recrl.train import selection_check
from recrl.types import AlgoContext, Obs, RecrlError


def small_log() -> pd.DataFrame:
    """User 0: 3 rows, left after the last; user 1: 5 rows, the log just ends; user 2: 1 row."""
    return log_frame({"user": [0, 0, 0, 1, 1, 1, 1, 1, 2], "item": [1, 2, 3, 4, 5, 6, 7, 8, 9],
                      "time": [0, 1, 2, 0, 1, 2, 3, 4, 0], "click": [1, 0, 1, 0, 0, 1, 1, 0, 1],
                      "leave": [0, 0, 1, 0, 0, 0, 0, 0, np.nan], "propensity": [0.1] * 9})


def test_sessions_cut_at_the_horizon_with_their_grid_and_what_a_model_may_value() -> None:
    sessions = LoggedSessions.from_log(small_log(), n_items=10, history_len=2, horizon=4,
                                       reward=ClickReward())
    assert (sessions.n_sessions, sessions.length, len(sessions)) == (3, 4, 8)  # user 1 loses its 5th row
    assert sessions.mask.tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False]]
    rewards = sessions.grid(sessions.steps.transitions.reward)
    assert rewards.tolist() == [[1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    # user 0 left: valued to the horizon; user 1 cut at the horizon; user 2's log just ends
    assert sessions.remaining.tolist() == [4, 3, 2, 4, 3, 2, 1, 1]
    assert sessions.first.tolist() == [0, 3, 7]
    obs = sessions.steps.transitions.obs
    assert obs.items[2, :, 0].tolist() == [1, 2] and obs.clicks[2, :, 0].tolist() == [1, 0]
    assert obs.items[3, :, 0].tolist() == [10, 10]  # a session starts with an empty history


def test_max_sessions_draws_whole_sessions() -> None:
    sessions = LoggedSessions.from_log(small_log(), 10, 2, 10, ClickReward(), max_sessions=2, seed=3)
    assert sessions.n_sessions == 2 and sessions.log.groupby("user").size().isin([1, 3, 5]).all()
    with pytest.raises(RecrlError, match="max_sessions"):
        LoggedSessions.from_log(small_log(), 10, 2, 10, ClickReward(), max_sessions=0)


def test_start_from_continues_the_observed_histories() -> None:
    world = SyntheticWorld(n_items=20, n_users=10, n_topics=3, horizon=5, seed=0)
    env = RecEnv(world, ClickReward(), horizon=5, history_len=2, no_repeat=True)
    obs = Obs(items=torch.tensor([[[3], [4]], [[20], [5]]]),
              clicks=torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]), step=torch.tensor([2, 5]))
    state = world.initial_state(2, torch.Generator().manual_seed(0))
    start = env.start_from(obs, state, seed=0)
    assert torch.equal(start.items, obs.items) and torch.equal(start.step, obs.step)
    assert env.alive.tolist() == [True, False]  # the second user is at the horizon already
    assert env.shown[0, [3, 4]].all() and env.shown[1, 5] and int(env.shown.sum()) == 3
    after, reward, done, _ = env.step(torch.tensor([[7], [8]]))
    assert after.items[0, :, 0].tolist() == [4, 7] and after.step.tolist() == [3, 5]
    assert reward[1] == 0 and bool(done[0]) is False
    with pytest.raises(RecrlError, match="histories of shape"):
        env.start_from(Obs(obs.items[:, :1], obs.clicks[:, :1], obs.step), state)


class LoggingPolicy:
    """The synthetic world's logging policy as a target (context-free item probabilities)."""

    def __init__(self, probs: torch.Tensor, seed: int = 0) -> None:
        self.probs, self.generator = probs, torch.Generator().manual_seed(seed)

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        drawn = torch.multinomial(self.probs, obs.batch_size, replacement=True, generator=self.generator)
        return drawn[:, None]

    def action_probs(self, obs: Obs) -> torch.Tensor:
        return self.probs.expand(obs.batch_size, 1, -1)


def world_and_logs(n_users: int = 3000) -> tuple[SyntheticWorld, pd.DataFrame]:
    world = SyntheticWorld(n_items=50, n_users=n_users, n_topics=4, horizon=8, test_share=0.5, seed=1)
    return world, world.load().test


def test_the_logging_policy_on_its_own_logs_earns_its_ground_truth_return() -> None:
    """Weights are all 1: PDIS and WPDIS are the logs' mean return, which is the logger's return in
    the world the logs came from (within 3 standard errors of both)."""
    world, test = world_and_logs()
    logger = LoggingPolicy(world.logging_probs())
    sessions = LoggedSessions.from_log(test, 50, 3, 8, ClickReward())
    ope = OffPolicyEvaluation(estimators=["ips", "pdis", "wpdis"], column="pdis", n_boot=0)
    section, column = ope.run({"logger": logger}, test, GRUBehavior(n_items=50, dim=4, hidden=8),
                              ClickReward(), None, 50, 3, 8, "cpu")
    found = section["policies"]["logger"]
    assert found["pdis"]["ess"] == pytest.approx(section["sessions"])
    assert found["pdis"]["value"] == pytest.approx(found["wpdis"]["value"])
    env = RecEnv(world, ClickReward(), horizon=8, history_len=3)
    truth = run_episodes(logger, env, 4000, seed=5, batch_size=2000).returns
    standard_error = float(np.hypot(float(truth.std()) / np.sqrt(len(truth)),
                                    sessions.grid(sessions.steps.transitions.reward).sum(1).std()
                                    / np.sqrt(sessions.n_sessions)))
    assert abs(found["pdis"]["value"] - float(truth.mean())) < 3 * standard_error
    assert column["logger"]["return"]["mean"] == found["pdis"]["value"]


def tiny_ctx(n_items: int = 50) -> AlgoContext:
    return AlgoContext(n_items=n_items, slate_size=1, history_len=3, horizon=8, device=torch.device("cpu"),
                       seed=0, item_popularity=torch.zeros(n_items), behavior=None, reward=ClickReward())


def test_immediate_terms_of_a_uniform_target() -> None:
    _, test = world_and_logs(400)
    sessions = LoggedSessions.from_log(test, 50, 3, 8, ClickReward())
    behavior = GRUBehavior(n_items=50, dim=4, hidden=8)
    terms = immediate_terms(RandomPolicy(tiny_ctx()), sessions, behavior, ClickReward())
    assert np.allclose(terms.p_target, 1 / 50)
    obs, items = sessions.steps.transitions.obs, sessions.steps.transitions.action
    q_all = ClickReward().expected(behavior.score_all(behavior.encode(obs))).double()
    assert np.allclose(terms.q_logged, q_all.gather(1, items)[:, 0].numpy())
    assert np.allclose(terms.v_target, q_all.mean(1).numpy())


def test_rollouts_stop_at_the_row_limits() -> None:
    world = SyntheticWorld(n_items=20, n_users=10, n_topics=3, horizon=6, leave_bias=-50.0, seed=0)
    env = RecEnv(world, ClickReward(), horizon=6, history_len=2)
    obs = Obs(torch.full((3, 2, 1), 20), torch.zeros(3, 2, 1), torch.zeros(3, dtype=torch.long))
    state = world.initial_state(3, torch.Generator().manual_seed(0))
    always = RandomPolicy(tiny_ctx(20))
    world.click_bias = 50.0  # every step is a click: the return counts the steps taken
    limited = rollout_return(always, env, obs, state, None, 1.0, 0, steps=torch.tensor([1, 3, 10]))
    assert limited.tolist() == [1.0, 3.0, 6.0]


def test_missing_propensities_are_estimated_or_counted() -> None:
    world, test = world_and_logs(600)
    interactions = world.load().interactions
    hidden = test.assign(propensity=np.where(test.index % 2 == 0, np.nan, test["propensity"]))
    behavior = GRUBehavior(n_items=50, dim=4, hidden=8)
    policy = {"random": RandomPolicy(tiny_ctx())}
    strict = OffPolicyEvaluation(estimators=["dm", "ips"], column="model", n_boot=0, propensity="logged")
    section, _ = strict.run(policy, hidden, behavior, ClickReward(), None, 50, 3, 8, "cpu")
    missing = int(np.isnan(hidden["propensity"]).sum())
    assert section["propensity"]["missing"] == missing > 0
    assert f"{missing} of {len(hidden)} rows" in section["skipped"]["ips"]
    assert "ips" not in section["policies"]["random"] and "dm" in section["policies"]["random"]
    auto = OffPolicyEvaluation(estimators=["ips"], column="pdis", n_boot=0)
    section, _ = auto.run(policy, hidden, behavior, ClickReward(), None, 50, 3, 8, "cpu",
                          interactions=interactions)
    counts = section["propensity"]
    assert counts["estimated"] == missing and counts["logged"] == len(hidden) - missing
    assert section["propensity"]["calibration"]["logged"]["pearson_log"] > 0.9  # the logger is context-free
    assert np.isfinite(section["policies"]["random"]["ips"]["value"])


def test_bad_settings_are_one_line_errors() -> None:
    for kwargs, message in (({"estimators": ["ipss"]}, "unknown ipss"), ({"column": "ips"}, "per-session"),
                            ({"epsilon": 2.0}, "epsilon"), ({"propensity": "guess"}, "ope.propensity")):
        with pytest.raises(RecrlError, match=message):
            OffPolicyEvaluation(**kwargs)



def test_selection_by_ope_reads_the_validation_split(tmp_path: Path) -> None:
    """trainer.select_by=ope: the check is the ope.column estimate on the validation split's logs,
    the same number OffPolicyEvaluation gives there, and never touches the test split."""
    cfg = compose_config("train", ["experiment=smoke", "dataset.n_users=300", f"cache_dir={tmp_path}",
                                   "trainer.select_by=ope", "ope.rollouts=1", "ope.n_boot=0"])
    validate(cfg)
    stages = build_stages(cfg, torch.device("cpu"))
    stages.splits.test = stages.splits.test.iloc[:0]  # nothing of the test split is needed
    algo = build_algo_by_name("popular", ctx=stages.ctx)
    trainer = build(cfg.trainer)
    check = selection_check(cfg, stages, algo, build(cfg.eval), trainer)
    value = check()["eval/return"]
    ope = build(cfg.ope)
    ctx = stages.ctx
    direct, _ = ope.run({"popular": algo}, stages.splits.interactions.valid, stages.behavior, stages.reward,
                        stages.model_env(), ctx.n_items, ctx.history_len, ctx.horizon, "cpu")
    assert value == pytest.approx(direct["policies"]["popular"]["model"]["value"])
    assert np.isfinite(value) and value > 0


def test_the_logging_policy_model_fits_on_a_bounded_sample_of_users() -> None:
    world, _ = world_and_logs(600)
    interactions = world.load().interactions
    ope = OffPolicyEvaluation(propensity_rows=300)
    sample = _users_up_to(interactions, 300, seed=0)
    assert 0 < len(sample.train) <= 300
    train = interactions.train
    whole = train[train["user"].isin(set(sample.train["user"]))].groupby("user").size()
    assert sample.train.groupby("user").size().equals(whole)  # whole users
    assert len(sample.valid) == len(interactions.valid)  # a split by user: other users' rows stay
    model = ope.logging_model(interactions, 3, "cpu")
    assert model.fit_info["train_rows"] == len(sample.train)
    assert ope.logging_model(interactions, 3, "cpu") is model  # fitted once per logs
    with pytest.raises(RecrlError, match="propensity_rows"):
        OffPolicyEvaluation(propensity_rows=0)
