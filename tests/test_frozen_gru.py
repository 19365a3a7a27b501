"""Tests for the GRU simulator's frozen step (:class:`recrl.behavior.gru.FrozenGRU`, what
:class:`recrl.env.simulator.RecEnv` steps for a GRU user model): the per-item tables give the
model's own responses, for slates and every head, with item content, the recency term and lean
outputs, and an environment takes a new snapshot at every reset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.behavior import gru as gru_module
from recrl.behavior.features import side_features
from recrl.behavior.gru import FrozenGRU, GRUBehavior
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward

N_ITEMS = 24


def perturbed_gru(content: bool, seed: int = 0) -> GRUBehavior:
    """A small GRU with every weight moved off its initialisation (so no table is trivially
    zero); ``content``: items known by a topic column alone, with the recency term."""
    torch.manual_seed(seed)
    if content:
        items = pd.DataFrame({"topic": np.arange(N_ITEMS) % 4})
        model = GRUBehavior(N_ITEMS, dim=8, hidden=12, features=["side"], recency=True, item_ids=False,
                            item_features=side_features(items, N_ITEMS))
    else:
        model = GRUBehavior(N_ITEMS, dim=8, hidden=12)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.4 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("content", [False, True])
@pytest.mark.parametrize("heads", [None, frozenset({"rating"}), frozenset()])
def test_frozen_step_gives_the_models_own_response(content: bool, heads: frozenset[str] | None) -> None:
    model = perturbed_gru(content)
    g = torch.Generator().manual_seed(0)
    state = model.initial_state(9, g)
    for _ in range(2):  # a state with history (and attribute exposure)
        shown = torch.randint(0, N_ITEMS, (9, 3), generator=g)
        click = (torch.rand(9, 3, generator=g) < 0.4).float()
        state = model.next_state(state, shown, click, torch.zeros(9, 3))
    slates = torch.randint(0, N_ITEMS, (9, 3), generator=g)
    expected, expected_next = model.respond(state, slates, torch.Generator().manual_seed(1), heads=heads)
    got, got_next = model.frozen().respond(state, slates, torch.Generator().manual_seed(1), heads=heads)
    assert torch.equal(expected.click, got.click) and torch.equal(expected.conversion, got.conversion)
    for name in ("click_prob", "conversion_prob", "rating", "leave_prob"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), equal_nan=True)
    for name, value in expected.values.items():
        torch.testing.assert_close(got.values[name], value, equal_nan=True)
    torch.testing.assert_close(got_next, expected_next)
    assert got.rating.isnan().all() == (heads is not None and "rating" not in heads)


class _Unfrozen:
    """The model without :meth:`~recrl.behavior.gru.GRUBehavior.frozen`: an environment over it
    steps the model's own :meth:`respond`."""

    def __init__(self, model: GRUBehavior) -> None:
        self.model = model

    def __getattr__(self, name: str) -> object:
        if name == "frozen":
            raise AttributeError(name)
        return getattr(self.model, name)


def test_an_environment_steps_the_snapshot_of_its_reset() -> None:
    """The environment's trajectory is the one the model's own step gives (same draws, same
    clicks, leaving and autoresets), and a weight change before a reset is in the next snapshot."""
    model = perturbed_gru(content=True)
    envs = [RecEnv(m, ClickReward(), horizon=5, slate_size=2, history_len=3, autoreset=True)
            for m in (model, _Unfrozen(model))]
    for env in envs:
        env.reset(64, seed=0)
    assert isinstance(envs[0].responder, FrozenGRU) and envs[1].responder is envs[1].model
    g = torch.Generator().manual_seed(2)
    for _ in range(8):
        slates = torch.randint(0, N_ITEMS, (64, 2), generator=g)
        (obs, reward, done, _), (obs_m, reward_m, done_m, _) = (env.step(slates) for env in envs)
        assert torch.equal(obs.clicks, obs_m.clicks) and torch.equal(done, done_m)
        assert torch.equal(reward, reward_m)
        torch.testing.assert_close(envs[0].state, envs[1].state)
    with torch.no_grad():
        model.click_head.bias.add_(5.0)
    before = envs[0].responder.stack.head_bias[0].clone()
    envs[0].reset(64, seed=0)
    torch.testing.assert_close(envs[0].responder.stack.head_bias[0], before + 5.0)


@pytest.mark.parametrize("content", [False, True])
def test_a_compiled_snapshot_looks_the_input_gates_up(content: bool) -> None:
    """``frozen(compiled=True)``: with one-item slates the GRU's input gates come from the
    per-(item, outcome) table, and the responses and next states are the model's own; every
    outcome (no click, click, click and conversion) is drawn on the way."""
    model = perturbed_gru(content)
    snapshot = model.frozen(compiled=True)
    assert snapshot.input_gates.shape == ((N_ITEMS + 1) * 3, 3 * model.hidden)
    g = torch.Generator().manual_seed(3)
    state = model.initial_state(256, g)
    outcomes = set()
    for step in range(4):
        slates = torch.randint(0, N_ITEMS, (256, 1), generator=g)
        expected, expected_next = model.respond(state, slates, torch.Generator().manual_seed(step))
        got, got_next = snapshot.respond(state, slates, torch.Generator().manual_seed(step))
        assert torch.equal(expected.click, got.click) and torch.equal(expected.conversion, got.conversion)
        torch.testing.assert_close(got_next, expected_next)
        torch.testing.assert_close(got.leave_prob, expected.leave_prob)
        outcomes |= set((got.click + got.conversion).flatten().tolist())
        state = expected_next
    assert outcomes == {0.0, 1.0, 2.0}


def test_the_outcome_table_is_the_steps_input_gates_by_hand() -> None:
    """Row ``(item, outcome)`` of the table is the input-gate product of the event layer after
    that item alone was shown with that outcome (the step's own arithmetic, one user)."""
    model = perturbed_gru(content=False)
    table = model.frozen(compiled=True).input_gates.view(N_ITEMS + 1, 3, -1)
    item_in = model.item_in.weight
    for item in (0, 7, N_ITEMS):  # N_ITEMS: the padding row, a zero vector
        for outcome, (click, conversion) in enumerate(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))):
            vector = item_in[item]
            event = torch.cat([vector, click * vector, torch.tensor([click, conversion])])
            x = torch.relu(model.event.weight @ event + model.event.bias)
            expected = model.cell.weight_ih @ x + model.cell.bias_ih
            torch.testing.assert_close(table[item, outcome], expected.detach(), rtol=1e-5, atol=1e-5)


def test_eager_snapshots_and_large_tables_keep_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """No table for an eager step (its bits stay those of the product), above
    ``OUTCOME_TABLE_BYTES``, or in use for slates of more than one item; a compiled
    environment takes compiled snapshots, at every reset."""
    model = perturbed_gru(content=False)
    assert model.frozen().input_gates is None
    monkeypatch.setattr(gru_module, "OUTCOME_TABLE_BYTES", (N_ITEMS + 1) * 3 * 3 * model.hidden * 4 - 1)
    assert model.frozen(compiled=True).input_gates is None
    monkeypatch.undo()
    env = RecEnv(model, ClickReward(), horizon=5, slate_size=2, history_len=3)
    env.reset(8, seed=0)
    assert env.responder.input_gates is None
    env.expect_compiled()
    assert env.responder.input_gates is not None  # retaken at once
    env.reset(8, seed=0)
    assert env.responder.input_gates is not None
    g = torch.Generator().manual_seed(4)
    eager = RecEnv(model, ClickReward(), horizon=5, slate_size=2, history_len=3)
    eager.reset(8, seed=0)
    for _ in range(3):  # two-item slates step the product either way
        slates = torch.randint(0, N_ITEMS, (8, 2), generator=g)
        (_, reward, done, _), (_, eager_reward, eager_done, _) = env.step(slates), eager.step(slates)
        assert torch.equal(reward, eager_reward) and torch.equal(done, eager_done)
        assert torch.equal(env.state, eager.state)
