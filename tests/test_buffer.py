"""Tests for recrl.buffer: the circular replay buffer, rollouts and discounted returns."""

from __future__ import annotations

import pytest
import torch

from recrl.buffer import ReplayBuffer, Rollout, discounted_returns
from recrl.types import Obs, Transition

L, K, N_ITEMS = 2, 3, 50


def make_transition(ids: list[int]) -> Transition:
    """Rows whose every field encodes the row id, so alignment can be checked after sampling."""
    idx = torch.tensor(ids)
    n = len(ids)
    obs = Obs(items=idx[:, None, None].expand(n, L, K).clone(),
              clicks=(idx[:, None, None] % 2).float().expand(n, L, K).clone(),
              step=idx.clone())
    next_obs = Obs(items=(idx + 1)[:, None, None].expand(n, L, K).clone(),
                   clicks=((idx + 1) % 2).float()[:, None, None].expand(n, L, K).clone(),
                   step=idx + 1)
    return Transition(obs=obs, action=idx[:, None].expand(n, K).clone(), reward=idx.float() * 10,
                      next_obs=next_obs, done=(idx % 3 == 0).float(), valid=(idx % 4 != 0).float())


def test_add_and_wraparound() -> None:
    buf = ReplayBuffer(capacity=5, history_len=L, slate_size=K, n_items=N_ITEMS)
    assert len(buf) == 0 and buf.cursor == 0
    assert bool((buf.items == N_ITEMS).all())  # preallocated as padding
    buf.add(make_transition([1, 2, 3]))
    assert len(buf) == 3 and buf.cursor == 3
    assert buf.reward.tolist() == [10.0, 20.0, 30.0, 0.0, 0.0]
    buf.add(make_transition([4, 5, 6, 7]))
    # slots 3, 4 get rows 4, 5; rows 6, 7 wrap over the oldest rows 1, 2
    assert len(buf) == 5 and buf.cursor == 2
    assert buf.step.tolist() == [6, 7, 3, 4, 5]
    assert buf.reward.tolist() == [60.0, 70.0, 30.0, 40.0, 50.0]
    assert buf.action[:, 0].tolist() == [6, 7, 3, 4, 5]
    assert buf.items[:, 0, 0].tolist() == [6, 7, 3, 4, 5]
    assert buf.next_items[:, 0, 0].tolist() == [7, 8, 4, 5, 6]
    assert buf.next_step.tolist() == [7, 8, 4, 5, 6]
    assert buf.done.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert buf.valid.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    buf.add(make_transition([8]))
    assert len(buf) == 5 and buf.cursor == 3 and buf.step.tolist() == [6, 7, 8, 4, 5]


def check_aligned(batch: Transition) -> list[int]:
    ids = batch.obs.step
    assert torch.equal(batch.obs.items, ids[:, None, None].expand_as(batch.obs.items))
    assert torch.equal(batch.obs.clicks, (ids % 2).float()[:, None, None].expand_as(batch.obs.clicks))
    assert torch.equal(batch.action, ids[:, None].expand_as(batch.action))
    torch.testing.assert_close(batch.reward, ids.float() * 10)
    assert torch.equal(batch.next_obs.step, ids + 1)
    assert torch.equal(batch.next_obs.items, (ids + 1)[:, None, None].expand_as(batch.next_obs.items))
    torch.testing.assert_close(batch.done, (ids % 3 == 0).float())
    torch.testing.assert_close(batch.valid, (ids % 4 != 0).float())
    return ids.tolist()


def test_sample_is_aligned_and_only_from_filled_rows() -> None:
    buf = ReplayBuffer(capacity=8, history_len=L, slate_size=K, n_items=N_ITEMS)
    buf.add(make_transition([3, 4, 5]))
    batch = buf.sample(200, torch.Generator().manual_seed(0))
    assert batch.action.shape == (200, K) and batch.obs.items.shape == (200, L, K)
    ids = check_aligned(batch)
    assert set(ids) == {3, 4, 5}  # never an empty (zero) row, and all filled rows appear
    buf.add(make_transition(list(range(10, 16))))  # slots 3..7 then wraps onto slot 0 (row 3)
    ids = check_aligned(buf.sample(400, torch.Generator().manual_seed(1)))
    assert set(ids) == {4, 5, 10, 11, 12, 13, 14, 15}


def test_sample_is_seeded_and_rejects_empty_buffer() -> None:
    buf = ReplayBuffer(capacity=8, history_len=L, slate_size=K, n_items=N_ITEMS)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, torch.Generator().manual_seed(0))
    buf.add(make_transition(list(range(8))))
    a = buf.sample(16, torch.Generator().manual_seed(5))
    b = buf.sample(16, torch.Generator().manual_seed(5))
    assert torch.equal(a.obs.step, b.obs.step)


def test_rollout_stack_and_flat_obs() -> None:
    t_len, b = 4, 3
    steps = [make_transition([10 * t + i for i in range(b)]) for t in range(t_len)]
    roll = Rollout.stack(steps)
    assert roll.obs.items.shape == (t_len, b, L, K)
    assert roll.obs.clicks.shape == (t_len, b, L, K)
    assert roll.obs.step.shape == (t_len, b)
    assert roll.action.shape == (t_len, b, K)
    assert roll.reward.shape == roll.done.shape == roll.valid.shape == (t_len, b)
    assert roll.obs.step[2].tolist() == [20, 21, 22]
    flat = roll.flat_obs()
    assert flat.items.shape == (t_len * b, L, K) and flat.step.shape == (t_len * b,)
    assert flat.clicks.shape == (t_len * b, L, K)
    # time-major flattening: row t * B + b is user b at time t
    assert flat.step.tolist() == [10 * t + i for t in range(t_len) for i in range(b)]
    assert torch.equal(flat.items[7], roll.obs.items[2, 1])


def test_discounted_returns_hand_computed() -> None:
    reward = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    done = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    got = discounted_returns(reward, done, 0.5)
    # column 0: G2 = 5, G1 = 3 + .5 * 5 = 5.5, G0 = 1 + .5 * 5.5 = 3.75
    # column 1: G2 = 6, G1 = 4 (done: no bootstrap), G0 = 2 + .5 * 4 = 4
    torch.testing.assert_close(got, torch.tensor([[3.75, 4.0], [5.5, 4.0], [5.0, 6.0]]))


def test_discounted_returns_docstring_and_edge_cases() -> None:
    got = discounted_returns(torch.tensor([[1.0], [1.0], [1.0]]), torch.tensor([[0.0], [1.0], [0.0]]), 0.5)
    torch.testing.assert_close(got, torch.tensor([[1.5], [1.0], [1.0]]))
    r = torch.tensor([[1.0], [1.0], [1.0]])
    none = torch.zeros(3, 1)
    torch.testing.assert_close(discounted_returns(r, none, 0.0), r)
    torch.testing.assert_close(discounted_returns(r, none, 1.0), torch.tensor([[3.0], [2.0], [1.0]]))
    torch.testing.assert_close(discounted_returns(r, none, 0.9), torch.tensor([[2.71], [1.9], [1.0]]))
