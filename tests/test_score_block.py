"""Less work per learner step: acting writes its catalogue scores into one reused block
(``ScoreBlock``), item-major on a CPU for catalogues from ``ITEM_MAJOR_ITEMS`` items on, and
DQN's TD loss scores only the taken items (``score_items``); all give exactly what the
catalogue-wide computation gives."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tiny import N_ITEMS, make_ctx, random_obs

from recrl.algos import nets
from recrl.algos.dqn import DQN, DuelingScorer
from recrl.algos.nets import (
    HistoryEncoder,
    ItemScorer,
    ScoreBlock,
    best_item,
    catalogue_scores,
    chunk_rows,
    is_item_major,
    top_k_by_chunks,
)


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


def test_an_item_major_block_is_an_items_by_users_block_seen_transposed() -> None:
    block, like = ScoreBlock(), torch.zeros(1)
    out = block.take(4, 10, like, item_major=True)
    assert out.shape == (4, 10) and out.stride() == (1, 4) and is_item_major(out)
    assert out.data_ptr() == block.take(4, 10, like).data_ptr()  # the same memory in either layout
    first_three = out[:3]  # a last, shorter chunk: three users' columns of every item
    assert first_three.shape == (3, 10) and first_three.stride() == (1, 4)
    assert not is_item_major(block.take(4, 10, like)) and not is_item_major(torch.zeros(1, 10))


@pytest.mark.parametrize("item_major", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_chunks_written_into_a_block_give_the_fresh_chunks_top_k(monkeypatch, k: int,
                                                                 item_major: bool) -> None:
    monkeypatch.setattr(nets, "CACHE_SCORES", 7 * N_ITEMS)  # user-major: 7 users a chunk, 205 = 29 x 7 + 2
    monkeypatch.setattr(nets, "MIN_CHUNK_USERS", 2)  # item-major: 8 (a power of two), 205 = 25 x 8 + 5
    monkeypatch.setattr(nets, "ITEM_MAJOR_ITEMS", N_ITEMS if item_major else N_ITEMS + 1)
    chunks, last = (26, 5) if item_major else (30, 2)
    gen = torch.Generator().manual_seed(k)
    users, items = torch.randn(205, 5, generator=gen), torch.randn(N_ITEMS, 5, generator=gen)
    written = []

    def scores_of(rows: slice, out: torch.Tensor | None) -> torch.Tensor:
        written.append(out)
        return catalogue_scores(users[rows], items, out)

    expected = torch.topk(users @ items.T, k, dim=1).indices
    block = ScoreBlock()
    chosen = top_k_by_chunks(scores_of, 205, k, N_ITEMS, users.device, block=block, like=users)
    assert torch.equal(chosen, expected)
    assert len(written) == chunks and written[-1].shape == (last, N_ITEMS)
    assert {out.data_ptr() for out in written} == {block.memory.data_ptr()}
    assert all(is_item_major(out) == item_major for out in written)
    written.clear()
    assert torch.equal(top_k_by_chunks(scores_of, 205, k, N_ITEMS, users.device), expected)
    assert written == [None] * chunks  # without a block every chunk is fresh
    written.clear()
    monkeypatch.setattr(nets, "CACHE_SCORES", 205 * N_ITEMS)  # one chunk
    monkeypatch.setattr(nets, "MIN_CHUNK_USERS", 256)
    assert torch.equal(top_k_by_chunks(scores_of, 205, k, N_ITEMS, users.device, block=ScoreBlock(),
                                       like=users), expected)
    assert len(written) == 1 and (written[0] is not None) == item_major  # user-major: fresh


def test_chunk_rows_are_a_cache_of_scores_a_power_of_two_users_when_item_major() -> None:
    cpu = torch.device("cpu")
    assert nets.CACHE_SCORES == 1 << 20 and nets.ITEM_MAJOR_ITEMS == 512
    assert chunk_rows(1024, 10_000, cpu) == 128       # 104.9 scores' worth -> 2^7
    assert chunk_rows(1024, 5_000, cpu) == 256        # 209.7 -> 2^8
    assert chunk_rows(1024, 100_000, cpu) == 32       # 10.5 -> at least MIN_CHUNK_USERS
    assert chunk_rows(1024, 100, cpu) == (1 << 20) // 100  # user-major: the cache's worth
    assert chunk_rows(1024, 10_000, torch.device("cuda")) == 1024  # a GPU: every user at once


def test_catalogue_scores_are_item_major_from_the_threshold_on(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 4, generator=gen), torch.randn(nets.ITEM_MAJOR_ITEMS, 4, generator=gen)
    scores = catalogue_scores(users, items)
    assert is_item_major(scores)
    torch.testing.assert_close(scores, users @ items.T)
    assert torch.equal(best_item(scores), (users @ items.T).max(1).indices)
    assert not is_item_major(catalogue_scores(users, items[:-1]))  # one item fewer: user-major


@pytest.mark.parametrize("item_major", [False, True])
def test_dqn_acts_the_same_with_and_without_its_score_block(monkeypatch, item_major: bool) -> None:
    monkeypatch.setattr(nets, "CACHE_SCORES", 5 * N_ITEMS)
    monkeypatch.setattr(nets, "MIN_CHUNK_USERS", 5)
    monkeypatch.setattr(nets, "ITEM_MAJOR_ITEMS", N_ITEMS if item_major else N_ITEMS + 1)
    dqn = DQN(make_ctx(slate_size=2), demonstrations=0)
    obs = random_obs(64, torch.Generator().manual_seed(3), k=2)
    with_block = dqn.act(obs, explore=False)
    assert dqn.score_block.memory is not None
    dqn.score_block = None
    assert torch.equal(dqn.act(obs, explore=False), with_block)
    monkeypatch.setattr(nets, "ITEM_MAJOR_ITEMS", N_ITEMS + 1)
    assert torch.equal(dqn.act(obs, explore=False), with_block)  # and user-major, fresh


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
