"""User signals as data: a toy signal (``like``, registered at runtime) flows end to end.

Registering a :class:`~recrl.env.signals.Signal` is all a new signal takes: its log column
survives preprocessing, a behavior model fitted on logs with it gets a head and predicts it (NaN
where the logs lack it), responses carry it, :class:`~recrl.rewards.SignalReward` pays click x
value, the evaluation reports its total, the gymnasium adapters put it in ``info`` and a reward
that declares it is checked against the logs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from recrl.behavior.deepfm import DeepFMBehavior
from recrl.behavior.ensemble import BehaviorEnsemble, OwnMemberSimulator
from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior, GRUStack
from recrl.behavior.mf import MFBehavior
from recrl.behavior.sasrec import SASRecBehavior
from recrl.data.preprocess import Preprocessing, RawLog, log_frame
from recrl.env.gym import RecVectorEnv
from recrl.env.signals import SIGNALS, Signal, register, signal_names, unregister
from recrl.env.simulator import RecEnv
from recrl.metrics.online import run_episodes
from recrl.rewards import ClickReward, SignalReward, WatchReward
from recrl.stages import check_reward_data
from recrl.types import LOG_COLUMNS, Interactions, RecrlError, Response, log_columns

N_ITEMS = 6
LIKED = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # item i is liked iff i is even


@pytest.fixture
def like() -> Iterator[Signal]:
    """The toy signal ``like`` (a 0/1 value given a click), registered for one test only."""
    signal = register(Signal("like", link=torch.sigmoid, loss="bce", weight=1.0, label="like"))
    try:
        yield signal
    finally:
        unregister("like")


def like_log(with_like: bool) -> Interactions:
    """Every row clicked, no watch values; ``like`` (when given) is :data:`LIKED` of the item."""
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(40) for t, i in enumerate(rng.integers(0, N_ITEMS, 10))]
    frame = pd.DataFrame(rows, columns=["user", "item", "time"]).assign(click=1.0)
    if with_like:
        frame["like"] = LIKED.numpy()[frame["item"]]
    log = log_frame(frame)
    last = log["time"] == 9
    return Interactions(train=log[~last].reset_index(drop=True), valid=log[last].reset_index(drop=True),
                        items=pd.DataFrame(index=range(N_ITEMS)), n_users=40, n_items=N_ITEMS)


def fitted_gru(interactions: Interactions, seed: int = 0) -> GRUBehavior:
    settings = TrainingSettings(lr=3e-2, epochs=25, patience=25, max_len=10, batch_size=8, seed=seed)
    model = GRUBehavior(n_items=N_ITEMS, n_users=40, dim=8, hidden=16, training=settings)
    model.fit(interactions)
    return model


def test_watch_is_the_built_in_signal_and_registration_is_checked(like: Signal) -> None:
    assert signal_names() == ("watch", "like") and SIGNALS["like"] is like
    assert LOG_COLUMNS == ("user", "item", "time", "click", "conversion", "rating", "watch", "leave",
                           "propensity")
    assert log_columns() == (*LOG_COLUMNS[:7], "like", "leave", "propensity")
    with pytest.raises(ValueError, match="already registered"):
        register(Signal("like"))
    for bad in ("click", "rating", "not a name"):
        with pytest.raises(ValueError, match="signal name"):
            Signal(bad)
    with pytest.raises(ValueError, match="loss="):
        Signal("dwell", loss="hinge")


def test_the_log_column_survives_preprocessing(like: Signal) -> None:
    raw = pd.DataFrame({"user": ["a"] * 4 + ["b"] * 4, "item": [10, 11, 12, 13] * 2, "time": list(range(8)),
                        "click": [1, 0, 1, 1, 0, 1, 1, 0], "like": [1, None, 0, 1, None, 0, 1, None]})
    splits = Preprocessing(split="leave_last_out")(RawLog(log=raw))
    for frame in (splits.interactions.train, splits.interactions.valid, splits.test):
        assert tuple(frame.columns) == log_columns() and frame["like"].dtype == np.float32
    both = pd.concat([splits.interactions.train, splits.interactions.valid, splits.test])
    assert sorted(both["like"].dropna().tolist()) == [0.0, 0.0, 1.0, 1.0, 1.0]
    # a log without the column gets it as NaN, as it gets watch
    assert log_frame({"user": [0], "item": [1], "time": [0], "click": [1.0]})["like"].isna().all()


def test_a_gru_fitted_on_logs_with_the_column_learns_and_serves_it(like: Signal) -> None:
    model = fitted_gru(like_log(with_like=True))
    assert isinstance(model.like_head, torch.nn.Module) and bool(model.like_known)
    assert not bool(model.watch_known)  # the logs have no watch values
    state = model.initial_state(4, torch.Generator().manual_seed(0))
    slates = torch.arange(N_ITEMS).expand(4, -1)
    response, _ = model.respond(state, slates, torch.Generator().manual_seed(1))
    assert set(response.values) == {"watch", "like"} and response.watch.isnan().all()
    liked = response.values["like"]
    assert not liked.isnan().any()
    torch.testing.assert_close(liked, LIKED.expand(4, -1), atol=0.2, rtol=0.0)
    torch.testing.assert_close(model.score_all(state).values["like"], liked)


def test_a_model_fitted_without_the_column_predicts_nan(like: Signal) -> None:
    model = fitted_gru(like_log(with_like=False))
    assert not bool(model.like_known)
    state = model.initial_state(2, torch.Generator().manual_seed(0))
    assert model.score_all(state).values["like"].isnan().all()


def test_adding_a_signal_leaves_every_other_weight_unchanged(like: Signal) -> None:
    with_like = GRUBehavior(n_items=N_ITEMS, dim=8, hidden=16).state_dict()
    unregister("like")
    try:
        without = GRUBehavior(n_items=N_ITEMS, dim=8, hidden=16).state_dict()
    finally:
        register(like)
    assert set(with_like) - set(without) == {k for k in with_like if k.startswith("like_")}
    assert all(torch.equal(with_like[k], v) for k, v in without.items())


def test_signal_reward_is_click_times_value(like: Signal) -> None:
    response = Response(click_prob=torch.tensor([[0.2, 0.5], [0.4, 0.1]]),
                        click=torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
                        conversion_prob=torch.zeros(2, 2), conversion=torch.zeros(2, 2),
                        rating=torch.ones(2, 2), leave_prob=torch.zeros(2),
                        values={"like": torch.tensor([[1.0, 0.5], [0.25, 1.0]])})
    reward = SignalReward(signal="like")
    assert reward.name == "like" and reward.signals == ("like",)
    torch.testing.assert_close(reward(response), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(reward.expected(response), torch.tensor([[0.2, 0.25], [0.1, 0.1]]))
    assert isinstance(WatchReward(), SignalReward) and WatchReward().signals == ("watch",)
    with pytest.raises(RecrlError, match="gives no 'watch' values"):
        WatchReward()(response)


def test_the_environment_rewards_reports_and_exposes_the_signal(like: Signal) -> None:
    model = fitted_gru(like_log(with_like=True))
    env = RecEnv(model, SignalReward("like"), horizon=4, slate_size=2, history_len=2)
    obs = env.reset(8, seed=0)
    _, reward, _, info = env.step(torch.tensor([[0, 1]]).expand(obs.batch_size, -1))
    response = info.response
    torch.testing.assert_close(reward, (response.click * response.values["like"]).sum(1))

    class Fixed:
        def act(self, obs, explore: bool) -> torch.Tensor:
            return torch.tensor([[0, 2]]).expand(obs.batch_size, -1)

    summary = run_episodes(Fixed(), env, n_episodes=16, seed=0).summary()
    assert "like" in summary and "watch" not in summary  # watch is unknown to this model
    assert summary["like"]["mean"] == pytest.approx(summary["return"]["mean"], rel=1e-5)
    vector = RecVectorEnv(model, ClickReward(), num_envs=3, horizon=4, slate_size=2, history_len=2)
    vector.reset(seed=0)
    *_, extra = vector.step(np.array([[0, 1]] * 3))
    assert extra["like"].shape == (3, 2) and not np.isnan(extra["like"]).any()


def test_an_ensemble_of_grus_carries_the_signal(like: Signal) -> None:
    members = [fitted_gru(like_log(with_like=True), seed=k) for k in range(2)]
    assert GRUStack.supports(members)
    ensemble = BehaviorEnsemble(members).eval()
    state = ensemble.initial_state(4, torch.Generator().manual_seed(0))
    slates = torch.arange(N_ITEMS).expand(4, -1)
    response, _ = ensemble.respond(state, slates, torch.Generator().manual_seed(1))
    one = members[int(state[0, :2].argmax())]  # row 0's member (state: one-hot member weights first)
    alone, _ = one.respond(one.initial_state(1), slates[:1], torch.Generator().manual_seed(1))
    torch.testing.assert_close(response.values["like"][:1], alone.values["like"])


@pytest.mark.parametrize("model_class", [SASRecBehavior, MFBehavior, DeepFMBehavior])
def test_every_model_kind_fits_a_head_for_the_signal(like: Signal, model_class: type) -> None:
    settings = TrainingSettings(lr=3e-2, epochs=2, max_len=10, batch_size=16)
    model = model_class(n_items=N_ITEMS, n_users=40, dim=8, training=settings)
    model.fit(like_log(with_like=True))
    assert model.signal_names == ("watch", "like") and bool(model.like_known)
    state = model.initial_state(3, torch.Generator().manual_seed(0))
    values = model.score_all(state).values
    assert values["like"].shape == (3, N_ITEMS) and not values["like"].isnan().any()
    assert values["watch"].isnan().all()


def test_an_ensemble_of_sasrec_members_carries_the_signal_through_vmap(like: Signal) -> None:
    members = [SASRecBehavior(n_items=N_ITEMS, n_users=40, dim=8, dropout=0.0,
                              training=TrainingSettings(epochs=1, max_len=10, batch_size=16, seed=k))
               for k in range(2)]
    ensemble = BehaviorEnsemble(members)
    ensemble.fit(like_log(with_like=True))
    slates = torch.tensor([[0, 1]]).expand(4, -1)
    for simulator in (ensemble, OwnMemberSimulator(ensemble)):
        state = simulator.initial_state(4, torch.Generator().manual_seed(0))
        response, _ = simulator.respond(state, slates, torch.Generator().manual_seed(1))
        assert response.values["like"].shape == (4, 2) and not response.values["like"].isnan().any()


def test_a_reward_declaring_a_signal_the_logs_lack_is_a_one_line_error(like: Signal) -> None:
    cfg = OmegaConf.create({"dataset": {"_target_": "recrl.data.tabular.TabularDataset"}})
    check_reward_data(cfg, SignalReward("like"), like_log(with_like=True), "training log")
    with pytest.raises(RecrlError) as err:
        check_reward_data(cfg, SignalReward("like"), like_log(with_like=False), "training log")
    message = str(err.value)
    assert "\n" not in message and message.startswith("reward=like needs like values")
    assert "dataset.columns.like=<column>" in message and "(TabularDataset)" in message
    with pytest.raises(RecrlError, match="'dislike', which is not registered"):
        check_reward_data(cfg, SignalReward("dislike"), like_log(with_like=True), "training log")
