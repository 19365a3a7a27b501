"""Choice models, no-repeat and leave rules of the environment, checked by hand."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor

from recrl.behavior.features import item_categories
from recrl.env.choice import MNL, Choice, ChoiceModel, alone_probs, cascade_probs, mnl_probs
from recrl.env.leave import BoredomRule, SatisfactionRule
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import RecrlError, Response

ROOT = Path(__file__).resolve().parent.parent


class FixedUtility:
    """A static user model: item ``i`` has click utility ``utility[i]`` for everyone, no leaving."""

    def __init__(self, utility: list[float]) -> None:
        self.utility = torch.tensor(utility)
        self.n_items = len(utility)

    def initial_state(self, n_users: int, generator: torch.Generator) -> Tensor:
        return torch.zeros(n_users, 1)

    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator, choice: Choice = MNL,
                available: Tensor | None = None) -> tuple[Response, Tensor]:
        utility = self.utility[slates]
        if available is not None:
            utility = utility.masked_fill(~available, float("-inf"))
        prob, click = choice.sample(utility, generator)
        zeros = torch.zeros_like(prob)
        return Response(click_prob=prob, click=click, conversion_prob=zeros, conversion=zeros,
                        rating=zeros + 3.0, leave_prob=torch.zeros(len(state))), state


def test_cascade_probabilities_by_hand() -> None:
    # attraction 0.5 then 0.8: P(first) = 0.5, P(second) = 0.5 * 0.8, no click 0.1
    p = cascade_probs(torch.tensor([[0.0, math.log(4.0)]]))
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.4]]))
    # position matters: the same item lower in the slate is clicked less often
    p = cascade_probs(torch.tensor([[1.0, 1.0, 1.0]]))
    assert p[0, 0] > p[0, 1] > p[0, 2]


def test_mnl_no_click_utility_by_hand() -> None:
    # utilities 0, 0 and an outside option of log 2: 1/4, 1/4 (no click 1/2)
    torch.testing.assert_close(mnl_probs(torch.tensor([[0.0, 0.0]]), no_click=math.log(2.0)),
                               torch.tensor([[0.25, 0.25]]))


class ScaledMNL:
    """A choice model of its own (not a ``Choice``): MNL on twice the utilities."""

    def probs(self, utility: Tensor) -> Tensor:
        return mnl_probs(2.0 * utility)


@pytest.mark.parametrize("choice", [MNL, Choice("mnl", no_click=math.log(2.0)), Choice("cascade"),
                                    ScaledMNL()])
def test_items_shown_alone_click_as_one_item_slates(choice: ChoiceModel) -> None:
    utility = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    general = choice.probs(utility.reshape(-1, 1)).view_as(utility)
    torch.testing.assert_close(alone_probs(choice, utility), general, rtol=1e-6, atol=1e-7)
    # by hand: MNL with a no-click utility of log 2 clicks an item of utility log 2 half the time
    assert alone_probs(Choice("mnl", no_click=math.log(2.0)), torch.tensor([[math.log(2.0)]])).item() \
        == pytest.approx(0.5)


def test_unavailable_items_are_never_clicked() -> None:
    utility = torch.tensor([[5.0, 0.0]]).masked_fill(torch.tensor([[False, True]]), float("-inf"))
    for kind in ("mnl", "cascade"):
        p = Choice(kind).probs(utility)
        assert p[0, 1] == 0.0 and p[0, 0] > 0.0


def test_sampled_cascade_clicks_match_probabilities() -> None:
    utility = torch.tensor([[0.0, math.log(4.0)]]).expand(20000, -1)
    _, click = Choice("cascade").sample(utility, torch.Generator().manual_seed(0))
    assert bool((click.sum(1) <= 1).all())
    torch.testing.assert_close(click.mean(0), torch.tensor([0.5, 0.4]), atol=0.015, rtol=0)


def test_unknown_choice_is_a_clear_error() -> None:
    with pytest.raises(RecrlError, match=r"env\.choice='logit'"):
        Choice("logit")


def test_no_repeat_makes_a_shown_item_unclickable_until_the_user_is_replaced() -> None:
    env = RecEnv(FixedUtility([20.0, 20.0]), ClickReward(), horizon=3, no_repeat=True, autoreset=True)
    env.reset(4, seed=0)
    item0 = torch.zeros(4, 1, dtype=torch.long)
    _, reward, _, _ = env.step(item0)
    assert reward.tolist() == [1.0] * 4  # utility 20: clicked for sure the first time
    _, reward, _, _ = env.step(item0)
    assert reward.tolist() == [0.0] * 4  # already shown: ignored
    _, reward, done, _ = env.step(torch.ones(4, 1, dtype=torch.long))
    assert reward.tolist() == [1.0] * 4 and bool(done.all())  # horizon: users replaced
    _, reward, _, _ = env.step(item0)
    assert reward.tolist() == [1.0] * 4  # fresh users have seen nothing


def test_boredom_fires_exactly_when_a_category_exceeds_the_limit() -> None:
    categories = torch.tensor([0, 0, 1])
    env = RecEnv(FixedUtility([0.0, 0.0, 0.0]), ClickReward(), horizon=50,
                 boredom=BoredomRule(window=3, max_repeats=2), item_categories=categories)
    env.reset(2, seed=0)
    # user 0 sees category 0 every step; user 1 alternates categories
    plans = [[0, 2], [1, 0], [0, 2], [1, 0]]
    dones = []
    for items in plans:
        info = env.step(torch.tensor(items)[:, None])[3]
        dones.append(info.terminated.tolist())
    # user 0: 3 category-0 items in the window at step 3 -> leaves then; user 1 never has > 2
    assert dones == [[False, False], [False, False], [True, False], [False, False]]
    assert bool(env.alive.tolist() == [False, True])


def test_boredom_window_forgets_old_items() -> None:
    rule = BoredomRule(window=2, max_repeats=1)
    rule.bind(torch.tensor([0, 1]))
    rule.reset(1, torch.device("cpu"))
    resp = None
    fired = [bool(rule.step(torch.tensor([[i]]), resp, torch.tensor([t + 1])))
             for t, i in enumerate([0, 1, 0, 1])]
    assert fired == [False, False, False, False]  # never twice the same category within 2 steps
    assert bool(rule.step(torch.tensor([[1]]), resp, torch.tensor([5])))  # 1, 1 in the window


def test_satisfaction_rule_by_hand() -> None:
    env = RecEnv(FixedUtility([-30.0, 30.0]), ClickReward(), horizon=50,
                 satisfaction=SatisfactionRule(decay=0.5, threshold=0.3, initial=1.0, min_steps=1),
                 autoreset=True)
    env.reset(1, seed=0)
    # levels: never clicked item 0 -> 0.5, 0.25 (< 0.3: leaves at the 2nd step)
    _, _, d1, _ = env.step(torch.tensor([[0]]))
    _, _, d2, info = env.step(torch.tensor([[0]]))
    assert not bool(d1) and bool(d2) and bool(info.terminated)
    assert bool(env.alive.all())  # replaced: the batch stays full
    # the new user starts at 1.0 again: one ignored item brings them to 0.5 only
    _, _, d3, _ = env.step(torch.tensor([[0]]))
    assert not bool(d3)


def test_item_categories_from_tables() -> None:
    table = pd.DataFrame({"title": ["a b", "c d", "e f", "g h"], "genres": ["X|Y", "Y", "X", "Y"],
                          "kind:coat": [1, 0, 0, 1], "kind:hat": [0, 1, 1, 0]})
    assert item_categories(table, 4, "genres").tolist() == [0, 1, 0, 1]  # first genre
    assert item_categories(table, 4, "kind").tolist() == [0, 1, 1, 0]
    assert item_categories(table, 5, "kind").tolist() == [0, 1, 1, 0, -1]  # item 4 not in the table
    with pytest.raises(RecrlError, match="'colour' is not a categorical column"):
        item_categories(table, 4, "colour")


def test_boredom_without_categories_is_a_clear_error() -> None:
    with pytest.raises(RecrlError, match="item categories"):
        RecEnv(FixedUtility([0.0]), ClickReward(), boredom=BoredomRule())


def test_train_with_cascade_slates_and_leave_rules_end_to_end(tmp_path: Path, shared_cache: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recrl.cli", "train", "experiment=smoke", "env.slate_size=3",
         "env.choice.kind=cascade", "env.no_repeat=true",
         "env.boredom={_target_: recrl.env.leave.BoredomRule, window: 4, max_repeats: 6}",
         "env.satisfaction={_target_: recrl.env.leave.SatisfactionRule, threshold: 0.1}",
         f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={shared_cache}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "report.json").is_file()


def test_same_seed_same_trajectory_with_cascade_and_rules() -> None:
    def rollout(seed: int) -> list[list[float]]:
        env = RecEnv(FixedUtility([0.5, -0.5, 1.0, 0.0]), ClickReward(), horizon=6, slate_size=3,
                     choice=Choice("cascade"), no_repeat=True, autoreset=True,
                     boredom=BoredomRule(window=3, max_repeats=4), item_categories=torch.tensor([0, 0, 1, 1]),
                     satisfaction=SatisfactionRule(decay=0.7, threshold=0.3))
        env.reset(16, seed=seed)
        actions = torch.Generator().manual_seed(99)
        rewards = []
        for _ in range(12):
            slates = torch.rand(16, 4, generator=actions).topk(3, dim=1).indices
            rewards.append(env.step(slates)[1].tolist())
        return rewards

    assert rollout(3) == rollout(3)
    assert rollout(3) != rollout(4)
