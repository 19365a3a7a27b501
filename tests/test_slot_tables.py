"""The history encoder's per-slot first-layer tables (``SlotTables``) and the block search of
``best_item``: the same answers as the direct computation, built and dropped when they should be."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tiny import make_ctx, random_obs

from recrl.algos.dqn import DQN
from recrl.algos.nets import BLOCK_ARGMAX_ITEMS, HistoryEncoder, adam, best_item, top_k
from recrl.types import Obs

N_ITEMS, L, K, H = 12, 2, 3, 5


def encoder(features: int = 0, prior: bool = True, seed: int = 0) -> HistoryEncoder:
    """A small encoder in eval mode (where it uses tables)."""
    torch.manual_seed(seed)
    return HistoryEncoder(N_ITEMS, L, K, H, dim=8, hidden=16, features=features,
                          item_prior=torch.randn(N_ITEMS, 3) if prior else None).eval()


def direct(enc: HistoryEncoder, obs: Obs) -> torch.Tensor:
    """The encoder's output through the flattened history (train mode: no tables)."""
    enc.train()
    with torch.no_grad():
        out = enc(obs)
    enc.eval()
    return out


def with_features(obs: Obs, gen: torch.Generator, n: int) -> Obs:
    return Obs(items=obs.items, clicks=obs.clicks, step=obs.step,
               features=torch.randn(obs.batch_size, n, generator=gen))


@pytest.mark.parametrize("features, prior", [(0, True), (0, False), (4, True)])
def test_tables_give_the_direct_first_layer(features: int, prior: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    enc = encoder(features, prior)
    obs = random_obs(64, gen)
    if features:
        obs = with_features(obs, gen, features)
    with torch.no_grad():
        out = enc(obs)
    assert enc.slot_tables.tables is not None
    torch.testing.assert_close(out, direct(enc, obs), rtol=1e-5, atol=1e-6)
    padded = Obs(items=torch.full_like(obs.items, N_ITEMS), clicks=torch.zeros_like(obs.clicks),
                 step=obs.step, features=obs.features)  # padding slots add nothing but the bias
    with torch.no_grad():
        torch.testing.assert_close(enc(padded), direct(enc, padded), rtol=1e-5, atol=1e-6)


def test_tables_only_in_eval_mode_without_gradients_and_rebuilt_after_every_weight_change() -> None:
    gen = torch.Generator().manual_seed(2)
    enc = encoder().train()
    obs = random_obs(10, gen)
    with torch.no_grad():
        enc(obs)
    assert enc.slot_tables.tables is None  # train mode: never
    enc.eval()
    enc(obs).sum().backward()  # gradients wanted: the direct pass, and the weights get them
    assert enc.slot_tables.tables is None and enc.mlp[0].weight.grad.abs().sum() > 0
    changes = [lambda: enc.mlp[0].weight.add_(0.5), lambda: enc.item_emb.weight.add_(0.3),
               lambda: enc.prior.proj.weight.add_(0.1),
               lambda: enc.load_state_dict(encoder(seed=7).state_dict())]
    for change in changes:
        with torch.no_grad():
            enc(obs)
            before = enc.slot_tables.tables
            change()
            out = enc(obs)
        assert enc.slot_tables.tables is not before
        torch.testing.assert_close(out, direct(enc, obs), rtol=1e-5, atol=1e-6)
    optimizer = adam(enc.parameters(), lr=0.1)  # fused: it does not bump the version counters
    enc(obs).sum().backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(enc(obs), direct(enc, obs), rtol=1e-5, atol=1e-6)


def test_a_copy_builds_its_own_tables() -> None:
    enc = encoder()
    with torch.no_grad():
        enc(random_obs(64, torch.Generator().manual_seed(3)))
    clone = copy.deepcopy(enc)
    assert enc.slot_tables.tables is not None and clone.slot_tables.tables is None
    unpickled = pickle.loads(pickle.dumps(enc))
    assert unpickled.slot_tables.tables is None and unpickled.slot_tables.weights is None
    with torch.no_grad():
        clone.item_emb.weight.add_(1.0)
    obs = random_obs(64, torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(clone(obs), direct(clone, obs), rtol=1e-5, atol=1e-6)


def test_dqn_acts_with_tables_and_learns_without_them() -> None:
    ctx = make_ctx(slate_size=1)
    dqn = DQN(ctx, demonstrations=0, average=0.9)
    obs = random_obs(200, torch.Generator().manual_seed(5), k=1)
    acting = dqn.average.acting()
    acting.train()
    with torch.no_grad():
        expected = dqn.greedy(obs, acting)  # the direct pass
    acting.eval()
    assert torch.equal(dqn.act(obs, explore=False), expected)
    assert acting.encoder.slot_tables.tables is not None
    for net in (dqn.q, dqn.q_target):  # what the learner computes its loss and targets with
        with torch.no_grad():
            net(obs)
        assert net.encoder.training and net.encoder.slot_tables.tables is None


@pytest.mark.parametrize("n", [12, 101, BLOCK_ARGMAX_ITEMS, BLOCK_ARGMAX_ITEMS + 7, 10_000])
def test_best_item_is_max_indices_with_ties_and_infinities(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    scores = torch.randn(40, n, generator=gen)
    scores[0] = 0.0                          # all tied: the first
    scores[1, [5, n - 1]] = 9.0              # tie between the first block and the tail
    scores[2, n - 1] = 9.0                   # the best in the tail
    scores[3, :] = float("-inf")
    scores[3, n // 2] = -5.0                 # one allowed item among masked ones
    expected = scores.max(1).indices
    assert torch.equal(best_item(scores), expected)
    assert expected[:4].tolist() == [0, 5, n - 1, n // 2]
    assert torch.equal(top_k(scores, 1)[:, 0], expected)
    item_major = scores.T.contiguous().T  # the same scores laid out item by item, as acting writes them
    assert torch.equal(best_item(item_major), expected)
    assert torch.equal(best_item(item_major[:, :n - 3]), scores[:, :n - 3].max(1).indices)
