"""Tests for recrl.behavior.sasrec.SASRecBehavior: shapes, incremental/full consistency,
causality, fitting, and use inside the simulator and the config system."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recrl.behavior.fit import SessionTensors, TrainingSettings
from recrl.behavior.sasrec import SASRecBehavior
from recrl.config import CONF_DIR, check_node, without_ensemble
from recrl.data.preprocess import log_frame
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import Interactions, Obs, RecrlError

N_ITEMS, K, B, T = 12, 3, 5, 7


def small(window: int = 10, **kwargs) -> SASRecBehavior:
    model = SASRecBehavior(n_items=N_ITEMS, dim=16, layers=2, heads=2, window=window, **kwargs)
    return model.eval()


def sessions(n: int, t: int, gen: torch.Generator, negatives: bool = False) -> SessionTensors:
    """Random sessions of slate size 1 (no padding)."""
    click = (torch.rand(n, t, generator=gen) < 0.5).float()
    conversion = click * (torch.rand(n, t, generator=gen) < 0.5).float()
    ones = torch.ones(n, t)
    return SessionTensors(user=torch.arange(n), item=torch.randint(0, N_ITEMS, (n, t), generator=gen),
                          click=click,
                          conversion=conversion, rating=torch.rand(n, t, generator=gen) * 4 + 1,
                          leave=torch.zeros(n, t), mask=ones, leave_mask=ones,
                          negative=torch.randint(0, N_ITEMS, (n, t), generator=gen) if negatives else None)


def feed(model: SASRecBehavior, batch: SessionTensors, steps: int) -> list[torch.Tensor]:
    """States after 0..steps events of ``batch``, fed one at a time through ``next_state``."""
    states = [model.initial_state(batch.item.shape[0])]
    with torch.no_grad():
        for t in range(steps):
            states.append(model.next_state(states[-1], batch.item[:, t:t + 1], batch.click[:, t:t + 1],
                                           batch.conversion[:, t:t + 1]))
    return states


def test_shapes() -> None:
    model, gen = small(), torch.Generator().manual_seed(0)
    logits = model.sequence_logits(sessions(B, T, gen, negatives=True))
    assert set(logits) == {"click", "conversion", "rating", "watch", "leave", "click_negative", "click_state"}
    assert logits.pop("click_state").shape == (B, T, model.dim)
    assert all(v.shape == (B, T) for v in logits.values())
    assert "click_negative" not in model.sequence_logits(sessions(B, T, gen))
    state = model.initial_state(B, gen)
    assert state.shape == (B, model.state_size)
    slates = torch.randint(0, N_ITEMS, (B, K), generator=gen)
    response, nxt = model.respond(state, slates, gen)
    assert nxt.shape == state.shape and response.click.shape == (B, K)
    assert response.leave_prob.shape == (B,) and bool((response.click.sum(1) <= 1).all())
    assert bool((response.rating >= 1).all() and (response.rating <= 5).all())
    scores = model.score_all(nxt)
    assert scores.click_prob.shape == (B, N_ITEMS) and scores.leave_prob.shape == (B,)
    obs = Obs(items=torch.randint(0, N_ITEMS, (B, 4, K), generator=gen),
              clicks=torch.zeros(B, 4, K), step=torch.zeros(B, dtype=torch.long))
    assert model.encode(obs).shape == state.shape


def test_incremental_state_matches_full_sequence() -> None:
    model, gen = small(window=10), torch.Generator().manual_seed(1)
    batch = sessions(B, 9, gen)  # 9 events + start token fit the window of window + 1
    states = feed(model, batch, 9)
    with torch.no_grad():
        full = model.sequence_hidden(batch)
        logits = model.sequence_logits(batch)
    for t, state in enumerate(states):
        torch.testing.assert_close(model.output(state), full[:, t], atol=1e-5, rtol=1e-5)
        assert state[:, -1].tolist() == [float(t)] * B  # step counter
    for t in range(9):
        item = batch.item[:, t:t + 1]
        scores = model.score_all(states[t])
        torch.testing.assert_close(scores.click_prob.gather(1, item)[:, 0],
                                   torch.sigmoid(logits["click"][:, t]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores.conversion_prob.gather(1, item)[:, 0],
                                   torch.sigmoid(logits["conversion"][:, t]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.leave_logit(states[t + 1]), logits["leave"][:, t],
                                   atol=1e-5, rtol=1e-5)


def test_sliding_window_past_window() -> None:
    model, gen = small(window=4), torch.Generator().manual_seed(2)
    batch = sessions(B, 12, gen)
    states = feed(model, batch, 12)
    with torch.no_grad():
        full = model.sequence_hidden(batch)  # banded mask of the same window
    for t, state in enumerate(states):
        assert bool(torch.isfinite(state).all()) and state.shape == (B, model.state_size)
        assert bool(torch.isfinite(model.score_all(state).click_prob).all())
        torch.testing.assert_close(model.output(state), full[:, t], atol=1e-5, rtol=1e-5)


def test_causality() -> None:
    model, gen = small(), torch.Generator().manual_seed(3)
    batch = sessions(B, T, gen)
    t = 3
    item = batch.item.clone()
    item[:, t + 1:] = (item[:, t + 1:] + 1) % N_ITEMS
    click = batch.click.clone()
    click[:, t + 1:] = 1 - click[:, t + 1:]
    conversion = batch.conversion.clone()
    conversion[:, t + 1:] = click[:, t + 1:]
    changed = SessionTensors(user=batch.user, item=item, click=click, conversion=conversion,
                             rating=batch.rating,
                             leave=batch.leave, mask=batch.mask, leave_mask=batch.leave_mask)
    with torch.no_grad():
        a, b = model.sequence_logits(batch), model.sequence_logits(changed)
        # the state before step t+1 (position t+1, after the start token) has not seen it
        torch.testing.assert_close(model.sequence_hidden(batch)[:, :t + 2],
                                   model.sequence_hidden(changed)[:, :t + 2])
    for key in ("click", "conversion", "rating", "watch", "leave"):
        torch.testing.assert_close(a[key][:, :t + 1], b[key][:, :t + 1])
        assert not torch.allclose(a[key][:, t + 2:], b[key][:, t + 2:])


def test_encode_skips_padding() -> None:
    model, gen = small(), torch.Generator().manual_seed(4)
    items = torch.randint(0, N_ITEMS, (B, 3, K), generator=gen)
    clicks = torch.zeros(B, 3, K)
    clicks[:, :, 0] = 1.0
    padded = torch.cat([torch.full((B, 2, K), N_ITEMS), items], 1)
    step = torch.zeros(B, dtype=torch.long)
    short = model.encode(Obs(items=items, clicks=clicks, step=step))
    long = model.encode(Obs(items=padded, clicks=torch.cat([torch.zeros(B, 2, K), clicks], 1), step=step))
    torch.testing.assert_close(short, long)
    empty = model.encode(Obs(items=torch.full((B, 2, K), N_ITEMS), clicks=torch.zeros(B, 2, K), step=step))
    torch.testing.assert_close(empty, model.initial_state(B))


@pytest.mark.parametrize(("window", "length"), [(10, 6), (4, 9), (3, 3)])
def test_parallel_encode_equals_feeding_events_one_by_one(window: int, length: int) -> None:
    """Left-padded histories of different lengths, shorter and longer than the window."""
    from recrl.behavior.base import SequenceUserModel

    model, gen = small(window=window), torch.Generator().manual_seed(9)
    items = torch.randint(0, N_ITEMS, (B, length, K), generator=gen)
    clicks = (torch.rand(B, length, K, generator=gen) < 0.3).float()
    for row, pad in enumerate([0, 1, length - 1, length, 2][:B]):
        items[row, :pad], clicks[row, :pad] = N_ITEMS, 0.0
    obs = Obs(items=items, clicks=clicks, step=torch.zeros(B, dtype=torch.long))
    torch.testing.assert_close(model.encode(obs), SequenceUserModel.encode(model, obs), atol=1e-5, rtol=1e-5)


def test_encode_with_padding_inside_the_history_takes_the_step_path() -> None:
    from recrl.behavior.base import SequenceUserModel

    model, gen = small(), torch.Generator().manual_seed(10)
    items = torch.randint(0, N_ITEMS, (B, 5, K), generator=gen)
    items[:, 2] = N_ITEMS
    obs = Obs(items=items, clicks=torch.zeros(B, 5, K), step=torch.zeros(B, dtype=torch.long))
    torch.testing.assert_close(model.encode(obs), SequenceUserModel.encode(model, obs))


def pattern_interactions(n_users: int = 48, length: int = 14, leave: bool = False) -> Interactions:
    """Positive-only logs where item ``k`` is always followed by item ``k + 1`` (mod n_items)."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for t in range(length):
            left = float(t == length - 1) if leave else np.nan
            rows.append((user, (start + t) % N_ITEMS, t, 1, 0, np.nan, left, np.nan))
    log = log_frame(pd.DataFrame(rows, columns=["user", "item", "time", "click", "conversion", "rating",
                                                "leave", "propensity"]))
    is_valid = log["time"] >= length - 2
    return Interactions(train=log[~is_valid].reset_index(drop=True),
                        valid=log[is_valid].reset_index(drop=True), items=pd.DataFrame(index=range(N_ITEMS)),
                        n_users=n_users, n_items=N_ITEMS, positive_only=True)


def test_overfits_a_deterministic_pattern() -> None:
    data = pattern_interactions()
    model = SASRecBehavior(n_items=N_ITEMS, dim=32, layers=1, heads=2, window=20, dropout=0.0,
                           training=TrainingSettings(lr=1e-2, epochs=60, patience=60, max_len=20))
    report = model.fit(data)
    assert not model.training and report.epochs >= 1
    assert bool(model.leave_known) is False  # no leave labels in these logs
    hits, total = 0, 0
    for _, rows in data.train.groupby("user"):
        items = torch.tensor(rows["item"].to_numpy())
        state = model.initial_state(1)
        for t in range(len(items) - 1):
            state = model.next_state(state, items[None, t:t + 1], torch.ones(1, 1), torch.zeros(1, 1))
            hits += int(model.score_all(state).click_prob[0].argmax() == items[t + 1])
            total += 1
    assert hits / total >= 0.9


def test_fit_sets_leave_known() -> None:
    model = SASRecBehavior(n_items=N_ITEMS, dim=8, layers=1, heads=2, window=8,
                           training=TrainingSettings(epochs=1, max_len=8))
    model.fit(pattern_interactions(n_users=4, length=6, leave=True))
    assert bool(model.leave_known) is True
    model.fit(pattern_interactions(n_users=4, length=6, leave=False))
    assert bool(model.leave_known) is False
    state = model.initial_state(3)
    assert model.leave_prob(state).tolist() == [0.0] * 3


def test_env_runs_with_autoreset() -> None:
    model = small(window=2)
    env = RecEnv(model, ClickReward(), horizon=2, slate_size=K, history_len=4, autoreset=True)
    obs = env.reset(B, seed=0)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        slates = torch.rand(B, N_ITEMS, generator=gen).topk(K, dim=1).indices
        obs, reward, _, _ = env.step(slates)
        assert reward.shape == (B,) and obs.items.shape == (B, 4, K)
        assert bool(env.alive.all()) and env.state.shape == (B, model.state_size)
        assert bool(torch.isfinite(env.state).all())


def test_state_round_trip_through_row_resets() -> None:
    model, gen = small(), torch.Generator().manual_seed(6)
    fresh = model.initial_state(B, gen)
    state = fresh
    for _ in range(3):
        _, state = model.respond(state, torch.randint(0, N_ITEMS, (B, K), generator=gen), gen)
    reset = torch.tensor([True, False, True, False, False])
    mixed = torch.where(reset[:, None], model.initial_state(B, gen), state)
    torch.testing.assert_close(mixed[reset], fresh[reset])
    torch.testing.assert_close(mixed[~reset], state[~reset])
    assert mixed[:, -1].tolist() == [0.0, 3.0, 0.0, 3.0, 3.0]
    a = model.score_all(mixed).click_prob
    torch.testing.assert_close(a[reset], model.score_all(fresh).click_prob[reset])
    _, nxt = model.respond(mixed, torch.randint(0, N_ITEMS, (B, K), generator=gen), gen)
    assert bool(torch.isfinite(nxt).all())


def test_bad_head_split_is_rejected() -> None:
    with pytest.raises(RecrlError, match="heads"):
        SASRecBehavior(n_items=N_ITEMS, dim=10, heads=4)


@pytest.mark.parametrize(("name", "dim", "layers"), [("sasrec", 64, 2), ("sasrec_large", 256, 4)])
def test_yaml_instantiates(name: str, dim: int, layers: int) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        node = without_ensemble(compose("train", overrides=[f"behavior={name}"]).behavior)
    check_node(node, "behavior")
    model = instantiate(node)(n_items=N_ITEMS, device="cpu")
    assert isinstance(model, SASRecBehavior)
    assert model.dim == dim and model.layers == layers and model.max_len == 50 and model.window == 51
    assert model.initial_state(2).shape == (2, model.state_size)
