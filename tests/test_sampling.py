"""Drawing items from a softmax policy: Gumbel top-``k`` (``sample_top_k``) and, for one item on a
CPU from ``SAMPLE_BY_BLOCKS_ITEMS`` items on, the two-stage draw by block masses
(``sample_by_blocks``), which must give the same distribution."""

from __future__ import annotations

import pytest
import torch
from tiny import make_ctx, random_obs

from recrl.algos import nets
from recrl.algos.nets import draw_by_mass, sample_by_blocks, sample_top_k
from recrl.algos.ppo import PPO


def test_draw_by_mass_by_hand() -> None:
    mass = torch.tensor([[1.0, 0.0, 3.0], [1.0, 3.0, 0.0]])

    def draw(u0: float, u1: float) -> list[int]:
        return draw_by_mass(mass, torch.tensor([u0, u1])).tolist()

    assert draw(0.2, 0.2) == [0, 0]     # 0.8 of 4 falls in the first item's mass
    assert draw(0.25, 0.25) == [2, 1]   # exactly 1.0: the next item with mass, never item 1 (none) of row 0
    assert draw(0.99, 0.99) == [2, 1]
    assert draw(1.0, 1.0) == [2, 1]     # past the total (rounding): the last item with mass


@pytest.mark.parametrize("n", [7, 12, 30, 101])
def test_the_draw_by_blocks_follows_the_softmax_and_never_draws_a_masked_item(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    logits = 2 * torch.randn(n, generator=gen)
    logits[[1, n - 1]] = float("-inf")  # masked, one of them in the tail where n is not a square
    rows = 100_000
    drawn = sample_by_blocks(logits.expand(rows, n).contiguous(), gen)
    freq = torch.bincount(drawn, minlength=n).double() / rows
    p = torch.softmax(logits.double(), 0)
    assert freq[1] == 0 and freq[n - 1] == 0
    sigma = (p * (1 - p) / rows).sqrt().clamp(min=1e-6)
    assert ((freq - p).abs() / sigma).max() < 5  # a seeded stream: the same on every machine


def test_half_precision_logits_are_drawn_in_float32() -> None:
    logits = torch.tensor([[0.0, 0.0, float("-inf"), 0.0]] * 4000, dtype=torch.bfloat16)
    drawn = sample_by_blocks(logits, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=4)
    assert counts[2] == 0 and ((counts[[0, 1, 3]] - 4000 / 3).abs() < 5 * 30).all()


def test_one_item_on_a_large_catalogue_is_drawn_by_blocks_and_slates_by_gumbel(monkeypatch) -> None:
    logits = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(nets, "SAMPLE_BY_BLOCKS_ITEMS", 40)
    one = sample_top_k(logits, 1, torch.Generator().manual_seed(1))
    assert one.shape == (64, 1)
    assert torch.equal(one[:, 0], sample_by_blocks(logits, torch.Generator().manual_seed(1)))
    slates = sample_top_k(logits, 3, torch.Generator().manual_seed(1))  # without replacement: Gumbel
    assert slates.shape == (64, 3) and all(len(set(row)) == 3 for row in slates.tolist())
    monkeypatch.setattr(nets, "SAMPLE_BY_BLOCKS_ITEMS", 41)  # below the threshold: Gumbel for one item too
    gumbel = sample_top_k(logits, 1, torch.Generator().manual_seed(1))
    assert torch.equal(gumbel, sample_top_k(logits, 3, torch.Generator().manual_seed(1))[:, :1])


def test_ppo_exploring_on_a_large_catalogue_draws_allowed_items(monkeypatch) -> None:
    """PPO's training-time draw goes through the two-stage sampler from 512 items on and never
    serves an item of the observed history (``skip_shown``)."""
    calls = []
    monkeypatch.setattr(nets, "sample_by_blocks", lambda logits, gen, *rest: calls.append(1) or
                        sample_by_blocks(logits, gen, *rest))
    ppo = PPO(make_ctx(n_items=600, slate_size=1), demonstrations=0, skip_shown=True)
    obs = random_obs(256, torch.Generator().manual_seed(0), k=1)
    slates = ppo.act(obs, explore=True)
    assert calls == [1] and slates.shape == (256, 1)
    assert ((slates >= 0) & (slates < 600)).all()
    assert not obs.shown_mask(600).gather(1, slates).any()


@pytest.mark.parametrize("in_place", [False, True])
def test_item_major_logits_give_the_user_major_draws(in_place: bool) -> None:
    """Logits laid out item by item (acting's chunks on a CPU) are drawn from as the same logits
    user by user: the same uniform numbers, the same items (block sums in another order move a
    boundary only by rounding); ``in_place`` overwrites the scratch logits with their masses."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 1000, generator=gen) * 3
    logits[:, ::97] = float("-inf")
    item_major = logits.T.contiguous().T
    assert nets.is_item_major(item_major)
    user_draw = sample_by_blocks(logits, torch.Generator().manual_seed(5))
    scratch = item_major.clone().T.contiguous().T if in_place else item_major
    item_draw = sample_by_blocks(scratch, torch.Generator().manual_seed(5), in_place)
    assert (item_draw == user_draw).float().mean() > 0.99
    assert not (item_draw % 97 == 0).any()  # never a masked item
    assert in_place == (not torch.equal(scratch, item_major))  # masses where the logits lay


@pytest.mark.parametrize("sample", [False, True])
def test_ppo_acts_by_chunks_as_from_the_whole_batchs_logits(monkeypatch, sample: bool) -> None:
    """PPO makes, masks and draws from its logits a chunk of users at a time (item-major on a
    CPU from 512 items on, three chunks of 256 users and a partial one here): greedy slates are
    the whole batch's top items exactly; drawn ones come from the same random numbers, so the
    same items but where rounding moves a block boundary."""
    monkeypatch.setattr(nets, "CACHE_SCORES", 256 * 2000)
    ppo = PPO(make_ctx(n_items=2000, slate_size=1), demonstrations=0, skip_shown=True,
              sample_in_eval=sample)
    obs = random_obs(700, torch.Generator().manual_seed(0), k=1)
    assert nets.chunk_rows(700, 2000, torch.device("cpu")) == 256
    state = ppo.generator.get_state()
    chunked = ppo.act(obs, explore=False)
    ppo.generator.set_state(state)
    with torch.no_grad():
        logits = ppo.logits(obs)
    whole = sample_top_k(logits, 1, ppo.generator) if sample else nets.top_k(logits, 1)
    assert chunked.shape == (700, 1) and not obs.shown_mask(2000).gather(1, chunked).any()
    if sample:
        assert (chunked == whole).float().mean() > 0.99
    else:
        assert torch.equal(chunked, whole)
