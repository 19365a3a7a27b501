"""Tests for the attribute-recency term of the GRU user model (``behavior.recency``,
:class:`recrl.behavior.gru.AttributeRecency`): values by hand, learning a known boredom effect from
logs, the state it keeps in the simulator and in an ensemble, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.behavior.ensemble import BehaviorEnsemble
from recrl.behavior.features import side_features
from recrl.behavior.fit import TrainingSettings, training_tensors
from recrl.behavior.gru import AttributeRecency, GRUBehavior
from recrl.data.preprocess import log_frame
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import Interactions, RecrlError

N_TOPICS, PER_TOPIC, LENGTH = 4, 5, 12
N_ITEMS = N_TOPICS * PER_TOPIC
COLUMNS = ["user", "item", "time", "click", "conversion", "rating", "leave", "propensity"]


def topic_items() -> pd.DataFrame:
    """Item ``i`` has topic ``i % N_TOPICS``."""
    return pd.DataFrame({"topic": np.arange(N_ITEMS) % N_TOPICS})


def test_recency_by_hand() -> None:
    tokens = torch.eye(3)[torch.tensor([0, 0, 2])]          # items 0, 1: topic 0; item 2: topic 2
    recency = AttributeRecency(tokens)
    with torch.no_grad():
        recency.decay_logit.fill_(math.log(0.6 / 0.4))      # decay 0.6
        recency.weight.fill_(-2.0)
    exposure = torch.zeros(2, 3)
    exposure = recency.update(exposure, torch.tensor([[0], [2]]))
    exposure = recency.update(exposure, torch.tensor([[1], [3]]))   # 3 = padding: adds nothing
    torch.testing.assert_close(exposure, torch.tensor([[1.6, 0.0, 0.0], [0.0, 0.0, 0.6]]))
    torch.testing.assert_close(recency.term(exposure, torch.tensor([[1, 2], [0, 2]])),
                               torch.tensor([[-3.2, 0.0], [0.0, -1.2]]))
    torch.testing.assert_close(recency.term(exposure), torch.tensor([[-3.2, -3.2, 0.0], [0.0, 0.0, -1.2]]))


def bored_log(n_users: int, seed: int, penalty: float = 1.5, decay: float = 0.5) -> Interactions:
    """Random items; the click utility falls by ``penalty`` per unit of the user's decayed
    exposure to the item's topic (the synthetic world's boredom), from a base of 0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        bored = np.zeros(N_TOPICS)
        for t in range(LENGTH):
            item = int(rng.integers(N_ITEMS))
            topic = item % N_TOPICS
            p = 1.0 / (1.0 + math.exp(-(0.5 - penalty * bored[topic])))
            rows.append((user, item, t, int(rng.random() < p), 0, np.nan, np.nan, np.nan))
            bored *= decay
            bored[topic] += 1.0
    log = log_frame(pd.DataFrame(rows, columns=COLUMNS))
    is_valid = log["user"] >= int(0.8 * n_users)
    return Interactions(train=log[~is_valid].reset_index(drop=True),
                        valid=log[is_valid].reset_index(drop=True),
                        items=topic_items(), n_users=n_users, n_items=N_ITEMS, positive_only=False)


def recency_model(seed: int = 0, **kwargs) -> GRUBehavior:
    """A small GRU with the recency term (no user leaves before it is fitted)."""
    model = GRUBehavior(N_ITEMS, dim=8, hidden=8, features=["side"], recency=True,
                       item_features=side_features(topic_items(), N_ITEMS),
                       training=TrainingSettings(lr=0.03, epochs=25, patience=25, max_len=LENGTH, seed=seed),
                       **kwargs)
    model.leave_known.fill_(False)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_the_boredom_of_a_repeated_topic(seed: int) -> None:
    model = recency_model(seed)
    model.fit(bored_log(300, seed))
    # the logs' boredom (utility -1.5 per unit of exposure, decay 0.5) is learned as a clear
    # negative weight on the decayed exposure, and the simulated user tires of a repeated topic
    assert float(model.recency.weight.detach()) < -0.5
    assert 0.2 < float(model.recency.decay().detach()) < 0.8
    state = model.initial_state(1)
    probs = []
    with torch.no_grad():
        for _ in range(4):
            probs.append(float(torch.sigmoid(model.predict(state, torch.tensor([[0]])).click_logit)))
            state = model.next_state(state, torch.tensor([[0]]), torch.ones(1, 1), torch.zeros(1, 1))
    assert probs[3] < probs[0] - 0.15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_start_recovers_the_logged_boredom(seed: int) -> None:
    model = recency_model(seed)
    sessions, _ = training_tensors(bored_log(300, seed), LENGTH, seed=seed)
    model.recency.warm_start(sessions)
    assert float(model.recency.decay().detach()) == pytest.approx(0.5)   # the logs' decay, of the grid
    assert -2.0 < float(model.recency.weight.detach()) < -1.0            # the logs' -1.5


def test_state_carries_the_exposure_through_the_simulator_and_an_ensemble() -> None:
    single = recency_model().eval()
    width = single.hidden + N_TOPICS
    assert single.initial_state(3).shape == (3, width)
    ensemble = BehaviorEnsemble([recency_model(seed=k).eval() for k in range(2)])
    for model in (single, ensemble):
        env = RecEnv(model, ClickReward(), horizon=4, slate_size=2, history_len=3)
        env.reset(5, seed=0)
        for _ in range(3):
            env.step(torch.tensor([[0, 4]] * 5))        # two items of topic 0 each step
        state = env.state if model is single else env.state[:, 2:2 + width]  # member 0's state
        torch.testing.assert_close(state[:, single.hidden:][:, 0], torch.full((5,), 2 * (1 + 0.5 + 0.25)))
    # the whole-catalogue scores carry the term too: equal to scoring each item on its own
    state = single.next_state(single.initial_state(2), torch.tensor([[0], [1]]),
                              torch.ones(2, 1), torch.zeros(2, 1))
    with torch.no_grad():
        single.recency.weight.fill_(-1.0)
        every = single.predict(state).click_logit
        each = single.predict(state, torch.arange(N_ITEMS).expand(2, -1)).click_logit
    torch.testing.assert_close(every, each)


def test_recency_errors() -> None:
    with pytest.raises(RecrlError, match=r"behavior\.recency=true needs categorical item attributes"):
        GRUBehavior(N_ITEMS, recency=True)
    with pytest.raises(RecrlError, match=r"training\.loss=bce or bpr"):
        GRUBehavior(N_ITEMS, features=["side"], item_features=side_features(topic_items(), N_ITEMS),
                    recency=True, training=TrainingSettings(loss="softmax"))
