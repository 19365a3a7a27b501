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


def token_prior(items: int = 400, columns: int = 90, seed: int = 0) -> torch.Tensor:
    """A wide multi-hot prior (2% of the tokens set) with one numeric column, as a category vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    prior = (torch.rand(items, columns, generator=gen) < 0.02).float()
    prior[:, 0] = torch.randn(items, generator=gen)
    return prior


@pytest.mark.parametrize("padding", [False, True])
def test_a_wide_sparse_prior_gives_the_dense_products_values_and_gradients(padding: bool) -> None:
    """From SPARSE_PRIOR_FROM columns on, the table is the columns' commonest values plus a sparse
    rest: the dense product's values and weight gradient up to float rounding, padding row included."""
    prior = ItemPrior(token_prior(), dim=8, padding=padding)
    assert prior.base is not None  # split
    assert prior.rest_values.numel() < 0.1 * prior.prior.numel()  # the numeric column and a few tokens
    for with_padding in [False, True] if padding else [False]:
        rows = prior.prior.shape[0] if with_padding else prior.n_items
        dense = prior.proj(prior.prior[:rows])
        table = prior.table(with_padding)
        torch.testing.assert_close(table, dense, rtol=1e-5, atol=1e-5)
        upstream = torch.randn(table.shape, generator=torch.Generator().manual_seed(1))
        (sparse_grad,) = torch.autograd.grad((table * upstream).sum(), prior.proj.weight)
        (dense_grad,) = torch.autograd.grad((dense * upstream).sum(), prior.proj.weight)
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-4, atol=1e-4)  # sums of 400 rows
        if with_padding:
            torch.testing.assert_close(table[-1], torch.zeros(8), rtol=0, atol=1e-5)


def test_the_split_is_rebuilt_from_a_loaded_prior_and_never_saved() -> None:
    """Checkpoints hold ``prior`` and the projection alone; loading one into a prior built from
    other data splits the loaded values (a narrow or dense prior keeps the exact dense product)."""
    source = ItemPrior(token_prior(seed=0), dim=8)
    assert set(source.state_dict()) == {"prior", "proj.weight"}
    target = ItemPrior(torch.randn(400, 90), dim=8)  # dense: no split
    assert target.base is None
    target.load_state_dict(source.state_dict())
    assert target.base is not None
    torch.testing.assert_close(target.table(), source.table(), rtol=0, atol=0)
    narrow = ItemPrior(token_prior(columns=13), dim=8)  # the synthetic world's width: the dense product
    assert narrow.base is None
    assert torch.equal(narrow.table(), narrow.proj(narrow.prior))


def test_a_compiled_table_takes_the_dense_product() -> None:
    """Compiled graphs multiply the dense prior (sparse tensors stay out of them): equal to eager's
    sparse path up to float rounding."""
    prior = ItemPrior(token_prior(), dim=8)
    compiled = torch.compile(lambda: prior.table(), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(), prior.table(), rtol=1e-5, atol=1e-5)


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
