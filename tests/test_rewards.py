"""Tests for recrl.rewards: realised and expected rewards on a hand-made response."""

from __future__ import annotations

import pytest
import torch

from recrl.rewards import ClickReward, ConversionReward, MixReward, RatingReward, WatchReward
from recrl.types import RecrlError, Response


@pytest.fixture
def response() -> Response:
    """Two users, slates of 3: user 0 clicked and bought item 1, user 1 clicked nothing."""
    return Response(
        click_prob=torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.0, 0.4]]),
        click=torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        conversion_prob=torch.tensor([[0.5, 0.4, 1.0], [0.2, 0.9, 0.5]]),
        conversion=torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        rating=torch.tensor([[2.0, 4.0, 5.0], [1.0, 3.0, 2.5]]),
        leave_prob=torch.tensor([0.1, 0.2]),
        values={"watch": torch.tensor([[0.2, 1.5, 0.7], [0.9, 0.1, 3.0]])},
    )


def test_click_reward(response: Response) -> None:
    r = ClickReward()
    assert r.name == "ctr"
    torch.testing.assert_close(r(response), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(r.expected(response), response.click_prob)


def test_conversion_reward(response: Response) -> None:
    r = ConversionReward()
    assert r.name == "conversion"
    torch.testing.assert_close(r(response), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(r.expected(response), torch.tensor([[0.05, 0.2, 0.2], [0.06, 0.0, 0.2]]))


def test_rating_reward(response: Response) -> None:
    r = RatingReward()
    assert r.name == "rating"
    torch.testing.assert_close(r(response), torch.tensor([4.0, 0.0]))  # 0 without a click
    torch.testing.assert_close(r.expected(response), torch.tensor([[0.2, 2.0, 1.0], [0.3, 0.0, 1.0]]))


def test_watch_reward(response: Response) -> None:
    r = WatchReward()
    assert r.name == "watch" and r.signals == ("watch",)
    torch.testing.assert_close(r(response), torch.tensor([1.5, 0.0]))  # 0 without a click
    torch.testing.assert_close(r.expected(response), torch.tensor([[0.02, 0.75, 0.14], [0.27, 0.0, 1.2]]))


def test_mix_reward_with_watch_and_unknown_watch(response: Response) -> None:
    r = MixReward(ctr=1.0, conversion=0.0, watch=2.0)
    assert r.signals == ("watch",)
    torch.testing.assert_close(r(response), torch.tensor([1.0 + 2 * 1.5, 0.0]))
    unknown = Response(**{**response.__dict__, "values": {"watch": torch.full((2, 3), float("nan"))}})
    # a zero-weight part is left out, so an unknown watch does not turn the reward into NaN
    torch.testing.assert_close(MixReward()(unknown), MixReward()(response))
    assert MixReward().signals == ()


def test_mix_reward_weights_its_parts(response: Response) -> None:
    r = MixReward(ctr=1.0, conversion=2.0, rating=0.5)
    assert r.name == "mix"
    # user 0: 1 click + 2 * 1 conversion + 0.5 * rating 4 = 5
    torch.testing.assert_close(r(response), torch.tensor([5.0, 0.0]))
    want = torch.tensor([[0.1 + 2 * 0.05 + 0.5 * 0.2, 0.5 + 2 * 0.2 + 0.5 * 2.0, 0.2 + 2 * 0.2 + 0.5 * 1.0],
                         [0.3 + 2 * 0.06 + 0.5 * 0.3, 0.0, 0.4 + 2 * 0.2 + 0.5 * 1.0]])
    torch.testing.assert_close(r.expected(response), want)


def test_mix_reward_defaults_are_click_plus_conversion(response: Response) -> None:
    r = MixReward()
    torch.testing.assert_close(r(response), ClickReward()(response) + ConversionReward()(response))
    torch.testing.assert_close(r.expected(response),
                               ClickReward().expected(response) + ConversionReward().expected(response))
    with pytest.raises(RecrlError, match="every weight is 0"):
        MixReward(ctr=0.0, conversion=0.0, rating=0.0)


def test_rewards_count_several_clicks_per_slate() -> None:
    resp = Response(click_prob=torch.full((1, 2), 0.3), click=torch.ones(1, 2),
                    conversion_prob=torch.full((1, 2), 0.5), conversion=torch.tensor([[1.0, 0.0]]),
                    rating=torch.tensor([[3.0, 5.0]]), leave_prob=torch.zeros(1),
                    values={"watch": torch.tensor([[0.5, 2.0]])})
    assert float(ClickReward()(resp)[0]) == 2.0
    assert float(ConversionReward()(resp)[0]) == 1.0
    assert float(RatingReward()(resp)[0]) == 8.0
    assert float(WatchReward()(resp)[0]) == 2.5
