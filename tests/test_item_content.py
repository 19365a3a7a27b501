"""The item content encoder's token lists (large vocabularies) against the multi-hot product
they replace, which small vocabularies keep to the bit."""

from __future__ import annotations

import pytest
import torch

from recrl.behavior import features as features_module
from recrl.behavior.features import ItemContentEncoder, ItemFeatures


def _features(seed: int) -> ItemFeatures:
    """9 items over 7 tokens, 0 to 3 tokens each (item 4 none, item 6 a token counted twice),
    and 2 dense columns."""
    gen = torch.Generator().manual_seed(seed)
    tokens = (torch.rand(9, 7, generator=gen) < 0.3).float()
    tokens[4] = 0.0
    tokens[6] = 0.0
    tokens[6, [1, 5]] = torch.tensor([2.0, 1.0])
    return ItemFeatures(tokens=tokens, dense=torch.randn(9, 2, generator=gen))


def _multi_hot(encoder: ItemContentEncoder, features: ItemFeatures,
               items: torch.Tensor | None) -> torch.Tensor:
    """The encoder's old formula: the token counts' shares times the token matrix, plus the dense map."""
    shares = features.tokens / features.tokens.sum(1, keepdim=True).clamp(min=1.0)
    rows = slice(None) if items is None else items
    return shares[rows] @ encoder.token_emb.weight.T + encoder.dense_proj(features.dense[rows])


@pytest.fixture
def token_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token lists for any vocabulary (the tests' has 7 tokens)."""
    monkeypatch.setattr(features_module, "TOKEN_LISTS_FROM", 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_lists_give_the_multi_hot_products_and_gradients(seed: int, token_lists: None) -> None:
    features = _features(seed)
    torch.manual_seed(seed)
    encoder = ItemContentEncoder(features, dim=5)
    assert encoder.token_lists
    assert encoder.token_ids.shape[1] == int((features.tokens != 0).sum(1).max())
    for items in (None, torch.tensor([[6, 4, 0], [8, 8, 2]])):
        got, want = encoder(items), _multi_hot(encoder, features, items)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
        weight = torch.randn_like(got)
        grad_got = torch.autograd.grad((got * weight).sum(), encoder.token_emb.weight)[0]
        grad_want = torch.autograd.grad((want * weight).sum(), encoder.token_emb.weight)[0]
        torch.testing.assert_close(grad_got, grad_want)


def test_an_item_without_tokens_gets_its_dense_part_and_a_counted_token_its_share(token_lists: None) -> None:
    features = _features(0)
    encoder = ItemContentEncoder(features, dim=3)
    with torch.no_grad():
        encoder.token_emb.weight.copy_(torch.arange(21.0).view(3, 7))
        dense = encoder.dense_proj(features.dense)
        out = encoder()
    torch.testing.assert_close(out[4], dense[4])
    # item 6: token 1 twice, token 5 once -> 2/3 of column 1 plus 1/3 of column 5
    torch.testing.assert_close(out[6] - dense[6], torch.tensor([1 * 2 / 3 + 5 / 3, 8 * 2 / 3 + 12 / 3,
                                                               15 * 2 / 3 + 19 / 3]))


def test_tokens_alone_and_dense_alone(token_lists: None) -> None:
    features = _features(1)
    tokens_only = ItemContentEncoder(ItemFeatures(tokens=features.tokens, dense=None), dim=4)
    shares = features.tokens / features.tokens.sum(1, keepdim=True).clamp(min=1.0)
    torch.testing.assert_close(tokens_only(torch.tensor([3, 6])),
                               shares[[3, 6]] @ tokens_only.token_emb.weight.T)
    dense_only = ItemContentEncoder(ItemFeatures(tokens=None, dense=features.dense), dim=4)
    torch.testing.assert_close(dense_only(), dense_only.dense_proj(features.dense))


def test_a_small_vocabulary_keeps_the_multi_hot_product_to_the_bit() -> None:
    features = _features(2)
    encoder = ItemContentEncoder(features, dim=5)
    assert features.n_tokens < features_module.TOKEN_LISTS_FROM and not encoder.token_lists
    for items in (None, torch.tensor([[6, 4, 0], [8, 8, 2]])):
        assert torch.equal(encoder(items), _multi_hot(encoder, features, items))
