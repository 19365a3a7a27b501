"""Policies as next-item recommenders: full ranking of the test users' next items by policies'
``scores``, and its section in a run's report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_cli import SMOKE, recrl

from recrl.behavior.offline import next_item_task, policy_ranking
from recrl.data.preprocess import log_frame
from recrl.report import render_markdown
from recrl.types import Interactions, Obs, Splits

N_ITEMS = 8


def log(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    return log_frame(pd.DataFrame(rows, columns=["user", "item", "time", "click"]))


def splits() -> Splits:
    """User 0 (seen 0-3, last observed item 3) clicks 4 first in the test rows; user 1 (seen 2 and
    6, last observed item 6) clicks 2 again: a repeat of an item in the history."""
    train = log([(0, 0, 1, 1.0), (0, 1, 2, 0.0), (1, 2, 1, 1.0), (1, 6, 2, 1.0)])
    valid = log([(0, 2, 3, 1.0)])
    test = log([(0, 3, 4, 0.0), (0, 4, 5, 1.0), (1, 2, 3, 1.0)])
    inter = Interactions(train=train, valid=valid, items=pd.DataFrame(index=range(N_ITEMS)), n_users=2,
                         n_items=N_ITEMS)
    return Splits(interactions=inter, test=test)


class OrderPolicy:
    """Ranks the items in ``orders[last observed item]`` first, in that order, the rest after
    them by id; with ``skip_shown`` items in the observed history score ``-inf``. Keeps the
    observations it saw."""

    def __init__(self, orders: dict[int, list[int]], skip_shown: bool = False) -> None:
        self.orders, self.skip_shown, self.seen = orders, skip_shown, []

    def ranking(self, last: int) -> torch.Tensor:
        order = self.orders[last] + [i for i in range(N_ITEMS) if i not in self.orders[last]]
        scores = torch.empty(N_ITEMS)
        scores[torch.tensor(order)] = -torch.arange(N_ITEMS, dtype=torch.float)
        return scores

    def scores(self, obs: Obs) -> torch.Tensor:
        self.seen.append(obs)
        scores = torch.stack([self.ranking(int(last)) for last in obs.items[:, -1, 0]])
        if self.skip_shown:
            for row, items in enumerate(obs.items.reshape(obs.batch_size, -1).tolist()):
                scores[row, [i for i in items if i < N_ITEMS]] = float("-inf")
        return scores

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        return self.scores(obs).topk(1, dim=1).indices


def test_target_first_and_at_rank_three() -> None:
    data = splits()
    assert next_item_task(data, history_len=3).targets.tolist() == [4, 2]
    first = OrderPolicy({3: [4], 6: [2]})
    # two unseen items ahead of each target (user 0's seen 0-3 and user 1's 6 are left out)
    third = OrderPolicy({3: [0, 5, 1, 6, 4], 6: [6, 4, 5, 2]})
    result = policy_ranking({"first": first, "third": third, "none": object()}, data, history_len=3,
                            horizon=2, ks=(1, 5, 10), slate_size=2)
    assert set(result) == {"first", "third"}  # a policy without scores is left out
    assert result["first"] == {"hr@1": 1.0, "ndcg@1": 1.0, "hr@5": 1.0, "ndcg@5": 1.0, "hr@10": 1.0,
                               "ndcg@10": 1.0, "mrr": 1.0, "target_masked": 0.0, "n_users": 2.0}
    assert result["third"]["hr@1"] == 0.0 and result["third"]["hr@5"] == 1.0
    assert math.isclose(result["third"]["ndcg@10"], 1 / math.log2(4))
    assert math.isclose(result["third"]["mrr"], 1 / 3)
    obs = first.seen[0]
    assert obs.items.shape == (2, 3, 2) and (obs.items[:, :, 1] == N_ITEMS).all()  # slates of 2, padded
    assert obs.items[:, :, 0].tolist() == [[1, 2, 3], [N_ITEMS, 2, 6]]
    assert obs.step.tolist() == [1, 1]  # 3 and 2 history rows, clamped to horizon - 1


def test_the_validation_task_reads_no_test_row() -> None:
    """split=valid: user 0's validation click (item 2) after their training rows; user 1 has no
    validation row and no test row is read, so the history stops before time 3."""
    task = next_item_task(splits(), history_len=3, split="valid")
    assert task.targets.tolist() == [2] and task.users.tolist() == [0]
    assert task.obs.items[:, :, 0].tolist() == [[N_ITEMS, 0, 1]]
    assert sorted(task.seen[0].tolist()) == [0, 1]
    result = policy_ranking({"first": OrderPolicy({1: [2]})}, splits(), history_len=3, horizon=20,
                            ks=(1, 10), split="valid")
    assert result["first"]["hr@1"] == 1.0 and result["first"]["n_users"] == 1.0
    with pytest.raises(ValueError, match="split='train'"):
        next_item_task(splits(), history_len=3, split="train")


def test_a_target_in_the_history_is_a_miss() -> None:
    # user 1's target 2 is in the observed history: a policy that skips shown items never serves it
    # (ranked last it would still be inside the top 10 of this 8-item catalogue)
    result = policy_ranking({"skip": OrderPolicy({3: [4], 6: [2]}, skip_shown=True)}, splits(), history_len=3,
                            horizon=20, ks=(5, 10, 20))
    values = result["skip"]
    assert values["target_masked"] == 0.5
    assert values["hr@20"] == 0.5 and values["ndcg@10"] == 0.5 and values["mrr"] == 0.5  # user 0: first
    assert values["n_users"] == 2


def test_no_policy_with_scores_or_no_test_clicks_gives_nothing() -> None:
    data = splits()
    assert policy_ranking({"none": object()}, data, history_len=3, horizon=20) == {}
    data.test["click"] = 0.0
    assert policy_ranking({"p": OrderPolicy({})}, data, history_len=3, horizon=20) == {}


def test_section_in_markdown() -> None:
    values = {"hr@5": 0.1, "ndcg@5": 0.05, "hr@10": 0.2, "ndcg@10": 0.1, "mrr": 0.07, "target_masked": 0.3,
              "n_users": 200.0}
    report = {"policy_ranking": {"ppo": values},
              "evaluation": {"simulator": {"ppo": {"return": {"mean": 1.5, "ci95": 0.1, "n": 64}}}}}
    text = render_markdown(report)
    assert "## Policies as next-item recommenders" in text
    assert "| policy | hr@10 | ndcg@10 | hr@5 | ndcg@5 | mrr | target_masked | return · simulator |" in text
    assert "| ppo | 0.2000 | 0.1000 | 0.1000 | 0.0500 | 0.0700 | 0.3000 | 1.500 ± 0.100 |" in text
    assert "the 200 users" in text


def test_section_in_a_smoke_run(tmp_path: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    recrl("train", *SMOKE, "algo=ppo", "ope.enabled=false", f"hydra.run.dir={run}", cwd=tmp_path,
          cache=shared_cache)
    report = json.loads((run / "report.json").read_text())
    ranking = report["policy_ranking"]
    assert {"ppo", "random", "popular", "greedy"} <= set(ranking)
    for values in ranking.values():
        assert values["n_users"] == report["offline"]["full"]["n_users"]  # the behavior model's users
        for metric in ("hr@5", "hr@10", "hr@20", "ndcg@10", "mrr", "target_masked"):
            assert 0.0 <= values[metric] <= 1.0, metric
    assert "## Policies as next-item recommenders" in (run / "report.md").read_text()
