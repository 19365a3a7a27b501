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


def topic_log(n_users: int, seed: int, base: float, weight: float, decay: float,
              clicks_only: bool = False, click_weight: float = 0.0, click_decay: float = 0.0) -> Interactions:
    """Random items; the click utility is ``base + weight * profile[topic of the item]``, the
    profile being the user's decayed count of the topics shown so far (``clicks_only``: of the
    topics clicked), plus ``click_weight`` times a second profile of the topics clicked, decayed
    ``click_decay`` a step."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        profile, clicked = np.zeros(N_TOPICS), np.zeros(N_TOPICS)
        for t in range(LENGTH):
            item = int(rng.integers(N_ITEMS))
            topic = item % N_TOPICS
            utility = base + weight * profile[topic] + click_weight * clicked[topic]
            click = int(rng.random() < 1.0 / (1.0 + math.exp(-utility)))
            rows.append((user, item, t, click, 0, np.nan, np.nan, np.nan))
            profile *= decay
            profile[topic] += click if clicks_only else 1.0
            clicked *= click_decay
            clicked[topic] += click
    log = log_frame(pd.DataFrame(rows, columns=COLUMNS))
    is_valid = log["user"] >= int(0.8 * n_users)
    return Interactions(train=log[~is_valid].reset_index(drop=True),
                        valid=log[is_valid].reset_index(drop=True),
                        items=topic_items(), n_users=n_users, n_items=N_ITEMS, positive_only=False)


def bored_log(n_users: int, seed: int) -> Interactions:
    """The click utility falls by 1.5 per unit of the user's exposure to the item's topic,
    decayed 0.5 a step (the synthetic world's boredom), from a base of 0.5."""
    return topic_log(n_users, seed, base=0.5, weight=-1.5, decay=0.5)


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


def test_click_profile_by_hand() -> None:
    """The second channel keeps the clicked items' attributes, decayed at its own rate, and adds
    its own term; the exposure channel is as without it."""
    tokens = torch.eye(3)[torch.tensor([0, 0, 2])]
    profile = AttributeRecency(tokens, clicks=True)
    assert profile.width == 6 and profile.channels == 2
    with torch.no_grad():
        profile.decay_logit.fill_(math.log(0.6 / 0.4))        # exposure decay 0.6
        profile.click_decay_logit.fill_(math.log(0.8 / 0.2))  # click-profile decay 0.8
        profile.weight.fill_(-2.0)
        profile.click_weight.fill_(1.0)
    state = torch.zeros(2, 6)
    state = profile.update(state, torch.tensor([[0], [2]]), click=torch.tensor([[1.0], [0.0]]))
    state = profile.update(state, torch.tensor([[1], [2]]), click=torch.tensor([[1.0], [1.0]]))
    torch.testing.assert_close(state, torch.tensor([[1.6, 0.0, 0.0, 1.8, 0.0, 0.0],
                                                    [0.0, 0.0, 1.6, 0.0, 0.0, 1.0]]))
    # item 1 (topic 0) for user 0: -2 x 1.6 + 1 x 1.8; item 2 (topic 2) for user 1: -2 x 1.6 + 1 x 1.0
    torch.testing.assert_close(profile.term(state, torch.tensor([[1], [2]])), torch.tensor([[-1.4], [-2.2]]))
    torch.testing.assert_close(profile.term(state), torch.tensor([[-1.4, -1.4, 0.0], [0.0, 0.0, -2.2]]))
    with pytest.raises(RecrlError, match="needs the clicks"):
        profile.update(state, torch.tensor([[0], [2]]))


def loyal_log(n_users: int, seed: int) -> Interactions:
    """The click utility rises by 1.5 per unit of the user's count of clicks on the item's
    topic, decayed 0.7 a step (users like again what they clicked), from a base of -0.3."""
    return topic_log(n_users, seed, base=-0.3, weight=1.5, decay=0.7, clicks_only=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_start_recovers_the_logged_click_profile(seed: int) -> None:
    """On logs where clicks on a topic make the next ones likelier and mere exposure does
    nothing, the click channel gets the pull (1.5 at decay 0.7) and the exposure channel about 0."""
    model = recency_model(seed, click_profile=True)
    sessions, _ = training_tensors(loyal_log(300, seed), LENGTH, seed=seed)
    model.recency.warm_start(sessions)
    weight, click_weight = model.recency.weights().tolist()
    assert 1.0 < click_weight < 2.0 and abs(weight) < 0.4
    click_decay = float(model.recency.decays()[1].detach())
    assert min(abs(click_decay - grid) for grid in (0.5, 0.7, 0.9)) < 1e-6   # a decay of the grid, not 0.3


def bored_but_drawn_back_log(n_users: int, seed: int) -> Interactions:
    """Boredom (-1.0 per unit of exposure to the item's topic, decay 0.7) and, apart from it, a
    pull toward clicked topics (+1.5 per unit of the decayed clicks on it, decay 0.9)."""
    return topic_log(n_users, seed, base=0.0, weight=-1.0, decay=0.7, click_weight=1.5, click_decay=0.9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holding_the_clicks_apart_recovers_the_boredom_the_exposure_alone_understates(seed: int) -> None:
    """An exposure is also a chance to click, and clicks pull users back to the topic: fitted
    alone the exposure's weight mixes both; fitted beside a click profile it is the boredom's."""
    sessions, _ = training_tensors(bored_but_drawn_back_log(400, seed), LENGTH, seed=seed)
    alone, held = recency_model(seed).recency, recency_model(seed).recency
    alone.warm_start(sessions)
    held.warm_start(sessions, hold_clicks=True)
    assert held.channels == 1 and held.width == N_TOPICS  # still one channel: only its fit held clicks apart
    assert float(held.decay().detach()) == pytest.approx(0.7)
    assert -1.3 < float(held.weight.detach()) < -0.7                       # the logs' -1.0
    assert float(alone.weight.detach()) > float(held.weight.detach()) + 0.2  # understated alone


def test_a_term_fitted_from_the_logs_stays_as_the_logs_say() -> None:
    """``recency_fit="logs"``: the model starts from the held-apart fit and keeps it (the rest of
    the model is fitted); ``joint`` trains the term on from its warm start."""
    log = bored_but_drawn_back_log(300, 0)
    sessions, _ = training_tensors(log, LENGTH, seed=0)
    expected = recency_model().recency
    expected.warm_start(sessions, hold_clicks=True)
    fixed, joint = recency_model(recency_fit="logs"), recency_model(recency_fit="joint")
    start = joint.recency.weight.detach().clone()
    fixed.fit(log)
    joint.fit(log)
    assert not any(p.requires_grad for p in fixed.recency.parameters())
    assert float(fixed.recency.weight) == float(expected.weight.detach())
    assert float(fixed.recency.decay()) == float(expected.decay().detach())
    assert all(p.requires_grad for p in joint.recency.parameters())
    assert float(joint.recency.weight.detach()) != float(start)


def test_a_term_from_the_logs_needs_logged_non_clicks() -> None:
    log = bored_log(50, 0)
    positive = Interactions(train=log.train[log.train["click"] > 0].reset_index(drop=True),
                            valid=log.valid[log.valid["click"] > 0].reset_index(drop=True), items=log.items,
                            n_users=log.n_users, n_items=log.n_items, positive_only=True)
    with pytest.raises(RecrlError, match=r"recency_fit=logs .* use behavior\.recency_fit=joint"):
        recency_model(recency_fit="logs").fit(positive)


def test_click_profile_state_in_the_simulator_and_an_ensemble() -> None:
    """The click profile follows the sampled clicks: in a single model's environment and in an
    ensemble's, each member's profile of topic 0 is the decayed count of its users' clicks."""
    single = recency_model(click_profile=True).eval()
    width = single.hidden + 2 * N_TOPICS
    assert single.initial_state(3).shape == (3, width)
    ensemble = BehaviorEnsemble([recency_model(seed=k, click_profile=True).eval() for k in range(2)])
    for model in (single, ensemble):
        env = RecEnv(model, ClickReward(), horizon=4, slate_size=1, history_len=3)
        env.reset(64, seed=0)
        decay = float(model.recency.decays()[1] if model is single else model.members[0].recency.decays()[1])
        expected = torch.zeros(64)
        for _ in range(3):
            _, _, _, info = env.step(torch.zeros(64, 1, dtype=torch.long))   # item 0: topic 0
            expected = decay * expected + info.response.click[:, 0]
        state = env.state if model is single else env.state[:, 2:2 + width]     # member 0's state
        torch.testing.assert_close(state[:, single.hidden + N_TOPICS], expected)
        assert expected.min() < expected.max()  # some users clicked, some did not


def test_click_profile_needs_recency() -> None:
    with pytest.raises(RecrlError, match=r"click_profile=true .* set behavior\.recency=true"):
        GRUBehavior(N_ITEMS, features=["side"], item_features=side_features(topic_items(), N_ITEMS),
                    click_profile=True)
