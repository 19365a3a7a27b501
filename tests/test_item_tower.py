"""Policy item towers (``algo.item_init``), the history summary and ``algo.skip_shown``."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from tiny import make_ctx as tiny_context
from tiny import random_obs

from recrl.algos.dqn import DQN
from recrl.algos.nets import HistoryEncoder, ItemPrior, behavior_item_prior, history_summary
from recrl.algos.ppo import PPO
from recrl.algos.slateq import SlateQ
from recrl.types import Interactions, Obs, RecrlError


def with_items(ctx, table: pd.DataFrame):
    empty = pd.DataFrame({"user": [], "item": []})
    return replace(ctx, interactions=Interactions(train=empty, valid=empty, items=table, n_users=1,
                                                  n_items=ctx.n_items))


def item_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"topic": [i % 3 for i in range(n)], "quality": [i / n for i in range(n)]})


def test_item_prior_is_standardised_and_maps_every_item() -> None:
    prior = ItemPrior(torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 40.0]]), dim=4, padding=True)
    torch.testing.assert_close(prior.prior[:3].mean(0), torch.zeros(2))
    assert prior.prior.shape == (4, 2) and prior.prior[3].abs().sum() == 0  # padding row
    assert prior.table().shape == (3, 4)
    torch.testing.assert_close(prior(torch.tensor([[0, 2]]))[0], prior.table()[[0, 2]])
    torch.testing.assert_close(prior(torch.tensor([3])), torch.zeros(1, 4))


def test_side_prior_reads_the_item_table_and_ids_start_at_zero() -> None:
    ctx = with_items(tiny_context(), item_table(tiny_context().n_items))
    prior = behavior_item_prior(ctx, "side")
    assert prior.shape[0] == ctx.n_items and prior.shape[1] >= 4  # 3 topic tokens + quality
    algo = DQN(ctx, item_init="side")
    assert algo.q.item_out.weight.abs().sum() == 0 and algo.q.encoder.item_emb.weight.abs().sum() == 0
    # two items with the same content score the same before any training
    table = algo.q.item_table()
    same = [i for i in range(ctx.n_items) if i % 3 == 0]
    assert not torch.allclose(table[same[0]], table[1])
    assert torch.isfinite(algo.q(random_obs(5, torch.Generator().manual_seed(0)))).all()


def test_slateq_towers_start_from_the_item_table() -> None:
    """SlateQ's choice model and item values read the prior too: before any training, items
    with the same content get the same utility and value, and the no-click column has its own."""
    n = tiny_context().n_items
    table = pd.DataFrame({"topic": [i % 3 for i in range(n)], "quality": [(i % 3) / 3 for i in range(n)]})
    ctx = with_items(tiny_context(), table)
    algo = SlateQ(ctx, dim=8, hidden=16, item_init="side")
    assert algo.choice.item_out.weight.abs().sum() == 0 and algo.q.item_out.weight.shape[0] == n + 1
    obs = random_obs(5, torch.Generator().manual_seed(0))
    utility, value = algo.choice(obs), algo.q(obs)
    assert value.shape == (5, n + 1)
    torch.testing.assert_close(utility[:, 0], utility[:, 3])
    torch.testing.assert_close(value[:, 1], value[:, 4])
    assert not torch.allclose(utility[:, 0], utility[:, 1])
    plain = SlateQ(ctx, dim=8, hidden=16)
    assert plain.q.prior is None and not torch.allclose(plain.choice(obs)[:, 0], plain.choice(obs)[:, 3])


def test_unknown_or_unavailable_item_init_is_a_clear_error() -> None:
    with pytest.raises(RecrlError, match="item_init='bogus'"):
        behavior_item_prior(tiny_context(), "bogus")
    with pytest.raises(RecrlError, match="behavior model"):
        behavior_item_prior(replace(tiny_context(), behavior=None), "behavior")
    with pytest.raises(RecrlError, match="item table"):
        behavior_item_prior(replace(tiny_context(), interactions=None), "side")
    assert behavior_item_prior(tiny_context(), "random") is None


def test_history_summary_hand_computed() -> None:
    emb = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])
    clicks = torch.tensor([[1.0, 0.0, 1.0]])
    real = torch.tensor([[True, True, False]])  # the last slot is padding
    out = history_summary(emb, clicks, real)
    torch.testing.assert_close(out, torch.tensor([[0.5, 1.0, 1.0, 0.0, 0.5]]))


def test_encoder_with_summary_and_prior_has_the_state_shape() -> None:
    ctx = tiny_context()
    enc = HistoryEncoder(ctx.n_items, ctx.history_len, ctx.slate_size, ctx.horizon, dim=8, hidden=16,
                         item_prior=torch.randn(ctx.n_items, 3), summary=True)
    assert enc(random_obs(4, torch.Generator().manual_seed(0))).shape == (4, 8)


@pytest.mark.parametrize("make", [lambda ctx: DQN(ctx, skip_shown=True, epsilon_start=0.0, epsilon_end=0.0),
                                  lambda ctx: PPO(ctx, skip_shown=True)])
def test_skip_shown_never_recommends_an_item_in_the_history(make) -> None:
    ctx = tiny_context()
    algo = make(ctx)
    slots = ctx.history_len * ctx.slate_size
    # every user has seen the first items: only the others may be recommended
    history = torch.arange(slots).repeat(4, 1).reshape(4, ctx.history_len, ctx.slate_size)
    obs = Obs(items=history, clicks=torch.zeros(history.shape), step=torch.full((4,), 3))
    allowed = set(range(slots, ctx.n_items))
    for explore in (False, True):
        assert set(algo.act(obs, explore=explore).flatten().tolist()) <= allowed
