"""Less work per learner step: acting writes its catalogue scores into one reused block
(``ScoreBlock``), and DQN's TD loss scores only the taken items (``score_items``); both give
exactly what the catalogue-wide computation gives."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tiny import N_ITEMS, make_ctx, random_obs

from recrl.algos import nets
from recrl.algos.dqn import DQN, DuelingScorer
from recrl.algos.nets import HistoryEncoder, ItemScorer, ScoreBlock, top_k_by_chunks


def test_a_score_block_hands_out_the_same_memory_and_grows_when_asked_for_more() -> None:
    block, like = ScoreBlock(), torch.zeros(1)
    first = block.take(4, 10, like)
    assert first.shape == (4, 10)
    again = block.take(3, 10, like)
    assert again.data_ptr() == first.data_ptr() and again.shape == (3, 10)
    bigger = block.take(8, 10, like)
    assert bigger.shape == (8, 10) and block.memory.numel() == 80
    assert block.take(2, 5, like.double()).dtype == torch.float64  # another dtype: new memory
    assert copy.deepcopy(block).memory is None  # scratch memory is not copied
    assert pickle.loads(pickle.dumps(block)).memory is None  # nor pickled


@pytest.mark.parametrize("k", [1, 3])
def test_chunks_written_into_a_block_give_the_fresh_chunks_top_k(monkeypatch, k: int) -> None:
    monkeypatch.setattr(nets, "CACHE_SCORES", 7 * N_ITEMS)  # 7 users a chunk: 200 = 28 x 7 + 4
    gen = torch.Generator().manual_seed(k)
    users, items = torch.randn(200, 5, generator=gen), torch.randn(N_ITEMS, 5, generator=gen)
    written = []

    def scores_of(rows: slice, out: torch.Tensor | None) -> torch.Tensor:
        written.append(out)
        return torch.matmul(users[rows], items.T, out=out)

    expected = torch.topk(users @ items.T, k, dim=1).indices
    block = ScoreBlock()
    chosen = top_k_by_chunks(scores_of, 200, k, N_ITEMS, users.device, block=block, like=users)
    assert torch.equal(chosen, expected)
    assert len(written) == 29 and written[-1].shape == (4, N_ITEMS)
    assert {out.data_ptr() for out in written} == {block.memory.data_ptr()}
    written.clear()
    assert torch.equal(top_k_by_chunks(scores_of, 200, k, N_ITEMS, users.device), expected)
    assert written == [None] * 29  # without a block every chunk is fresh
    written.clear()
    monkeypatch.setattr(nets, "CACHE_SCORES", 200 * N_ITEMS)  # one chunk: fresh, block or not
    assert torch.equal(top_k_by_chunks(scores_of, 200, k, N_ITEMS, users.device, block=ScoreBlock(),
                                       like=users), expected)
    assert written == [None]


def test_dqn_acts_the_same_with_and_without_its_score_block(monkeypatch) -> None:
    monkeypatch.setattr(nets, "CACHE_SCORES", 5 * N_ITEMS)
    dqn = DQN(make_ctx(slate_size=2), demonstrations=0)
    obs = random_obs(64, torch.Generator().manual_seed(3), k=2)
    with_block = dqn.act(obs, explore=False)
    assert dqn.score_block.memory is not None
    dqn.score_block = None
    assert torch.equal(dqn.act(obs, explore=False), with_block)


@pytest.mark.parametrize("scorer", [ItemScorer, DuelingScorer])
def test_scores_of_the_taken_items_are_the_catalogue_scores_at_those_items(scorer) -> None:
    torch.manual_seed(0)
    net = scorer(HistoryEncoder(N_ITEMS, 2, 3, 5, dim=8, hidden=16), n_items=N_ITEMS, dim=8)
    state = torch.randn(30, 8)
    slates = torch.randint(0, N_ITEMS, (30, 3))
    taken = net.score_items(state, slates)
    torch.testing.assert_close(taken, net.score(state).gather(1, slates), rtol=1e-6, atol=1e-6)
    taken.sum().backward()  # gradients reach the item table through the taken rows only
    grad = net.item_out.weight.grad
    assert grad[torch.unique(slates)].abs().sum() > 0
    untaken = torch.ones(N_ITEMS, dtype=torch.bool)
    untaken[slates.flatten()] = False
    if untaken.any():
        assert scorer is DuelingScorer or grad[untaken].abs().sum() == 0  # dueling: via the item mean
