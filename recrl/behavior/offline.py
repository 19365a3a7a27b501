"""Offline next-item ranking of a fitted behavior model on held-out test rows.

For every test user the target is their first clicked test item; the model reads the user's
logged history before it (train + valid rows, the last ``history_len`` of them) through its own
``encode`` and scores the catalogue with its click head. Two protocols, labelled in every report:
``full`` (rank among all items the user has not interacted with) and ``sampled-100`` (rank among
100 uniformly sampled unseen items, fixed seed, as in the SASRec paper). The same users ranked
by training popularity give the reference rows ``popularity · full`` / ``popularity · sampled-100``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.metrics.ranking import full_ranking, sampled_ranking, summarize_ranking
from recrl.types import Obs, Splits


@dataclass(frozen=True)
class NextItemTask:
    """Histories (as observations), targets, the items each user has seen and the dense user ids
    (static models such as MF know users by id)."""

    obs: Obs
    targets: Tensor
    seen: list[Tensor]
    users: Tensor


def next_item_task(splits: Splits, history_len: int, max_users: int | None = None,
                   seed: int = 0) -> NextItemTask | None:
    """The test task: each test user's first clicked test item, after everything before it."""
    inter = splits.interactions
    known = pd.concat([inter.train, inter.valid, splits.test], ignore_index=True)
    return build_task(known, splits.test, inter.n_items, history_len, max_users, seed)


def build_task(known: pd.DataFrame, candidates: pd.DataFrame, n_items: int, history_len: int,
               max_users: int | None = None, seed: int = 0) -> NextItemTask | None:
    """Each user's first clicked row of ``candidates`` is the target; the user's rows of ``known``
    before it are the history (``None`` when no candidate row is a click)."""
    clicked = candidates[candidates["click"] > 0]
    if clicked.empty:
        return None
    first = clicked.sort_values(["user", "time"], kind="stable").drop_duplicates("user")
    if max_users is not None and len(first) > max_users:
        first = first.sample(max_users, random_state=seed).sort_values("user")
    history = known[known["user"].isin(first["user"])]
    cutoff = history["user"].map(first.set_index("user")["time"])
    history = history[history["time"] < cutoff].sort_values(["user", "time"], kind="stable")
    users = first["user"].to_numpy()
    row_of = pd.Series(np.arange(len(users)), index=users)
    rank_from_end = history.groupby("user").cumcount(ascending=False).to_numpy()
    keep = rank_from_end < history_len
    rows = row_of[history["user"].to_numpy()[keep]].to_numpy()
    slot = history_len - 1 - rank_from_end[keep]  # oldest first, padding at the front
    items = np.full((len(users), history_len, 1), n_items, dtype=np.int64)
    clicks = np.zeros((len(users), history_len, 1), dtype=np.float32)
    items[rows, slot, 0] = history["item"].to_numpy()[keep]
    clicks[rows, slot, 0] = history["click"].to_numpy()[keep]
    steps = np.bincount(rows, minlength=len(users))
    obs = Obs(items=torch.from_numpy(items), clicks=torch.from_numpy(clicks), step=torch.from_numpy(steps))
    seen_groups = history.groupby("user")["item"].unique()
    empty = np.zeros(0, dtype=np.int64)
    seen = [torch.tensor(seen_groups.get(u, empty), dtype=torch.long) for u in users]
    return NextItemTask(obs=obs, targets=torch.tensor(first["item"].to_numpy(), dtype=torch.long),
                        seen=seen, users=torch.tensor(users, dtype=torch.long))


@torch.no_grad()
def offline_ranking(model: Any, splits: Splits, history_len: int = 50, ks: tuple[int, ...] = (5, 10, 20),
                    n_negatives: int = 100, max_users: int | None = None, seed: int = 0,
                    chunk: int = 512) -> dict[str, dict[str, float]]:
    """``{protocol: {metric: value}}`` for ``model`` (needs ``encode`` and ``score_all``), plus
    the popularity reference rows."""
    task = next_item_task(splits, history_len, max_users, seed)
    if task is None:
        return {}
    n_items = splits.interactions.n_items
    popularity = torch.as_tensor(splits.interactions.item_popularity(), dtype=torch.float)
    reference = rank_task(lambda idx: popularity.expand(len(idx), -1), task, n_items, ks, n_negatives,
                          seed, chunk)
    return {**rank_task(model, task, n_items, ks, n_negatives, seed, chunk),
            **{f"popularity · {protocol}": values for protocol, values in reference.items()}}


Scorer = Callable[[Tensor], Tensor]


def model_scorer(model: Any, task: NextItemTask) -> Scorer:
    """Click probabilities ``[len(idx), n_items]`` of task rows ``idx`` from a behavior model."""
    device = model.device

    def scores(idx: Tensor) -> Tensor:
        state = model.encode(task.obs.index(idx).to(device), task.users[idx].to(device))
        return model.score_all(state).click_prob

    return scores


@torch.no_grad()
def rank_task(model: Any, task: NextItemTask, n_items: int, ks: tuple[int, ...] = (5, 10, 20),
              n_negatives: int | None = 100, seed: int = 0, chunk: int = 512) -> dict[str, dict[str, float]]:
    """Full ranking (and sampled ranking unless ``n_negatives`` is ``None``) of ``task``;
    ``model`` is a behavior model or already a :data:`Scorer` of task rows."""
    rows = torch.arange(len(task.targets))
    score_all = model_scorer(model, task) if hasattr(model, "score_all") else model

    def score_items(idx: Tensor, items: Tensor) -> Tensor:
        scores = score_all(idx)
        return scores.gather(1, items.to(scores.device))

    results = [full_ranking(score_all, rows, task.targets, task.seen, ks=ks, chunk=chunk)]
    if n_negatives is not None and n_items - 1 - max(len(s) for s in task.seen) >= n_negatives:
        results.append(sampled_ranking(score_items, rows, task.targets, task.seen, n_items,
                                       n_negatives=n_negatives, ks=(1, *ks), seed=seed, chunk=chunk))
    return summarize_ranking(results)
