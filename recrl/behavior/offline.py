"""Offline next-item ranking of a fitted behavior model on held-out test rows.

For every test user the target is their first clicked test item; the model reads the user's
logged history before it (train + valid rows, the last ``history_len`` of them) through its own
``encode`` and scores the catalogue with its click head. Two protocols, labelled in every report:
``full`` (rank among all items the user has not interacted with) and ``sampled-100`` (rank among
100 uniformly sampled unseen items, fixed seed, as in the SASRec paper). The same users ranked
by training popularity give the reference rows ``popularity · full`` / ``popularity · sampled-100``.

:func:`policy_ranking` ranks the same users' next items with recommendation *policies* (anything
with ``scores(obs)``), reading the observation a policy sees in the environment: the last
``history_len`` logged rows, one per slate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.metrics.ranking import full_ranking, hit_rate_at_k, ndcg_at_k, sampled_ranking, summarize_ranking
from recrl.types import Obs, Splits


@dataclass(frozen=True)
class NextItemTask:
    """Histories (as observations), targets, the items each user has seen and the dense user ids
    (static models such as MF know users by id)."""

    obs: Obs
    targets: Tensor
    seen: list[Tensor]
    users: Tensor


RANKING_SPLITS = ("test", "valid")


def next_item_task(splits: Splits, history_len: int, max_users: int | None = None,
                   seed: int = 0, split: str = "test") -> NextItemTask | None:
    """The ``test`` task: each test user's first clicked test item, after everything before it;
    ``valid``: each validation user's first clicked validation item after their training rows
    (no test row is read), for choosing settings without looking at the test users."""
    inter = splits.interactions
    if split == "valid":
        known = pd.concat([inter.train, inter.valid], ignore_index=True)
        return build_task(known, inter.valid, inter.n_items, history_len, max_users, seed)
    if split != "test":
        raise ValueError(f"split={split!r}: use one of {RANKING_SPLITS}")
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
                    chunk: int = 512, split: str = "test") -> dict[str, dict[str, float]]:
    """``{protocol: {metric: value}}`` for ``model`` (needs ``encode`` and ``score_all``), plus
    the popularity reference rows, on the ``split`` users (:func:`next_item_task`)."""
    task = next_item_task(splits, history_len, max_users, seed, split)
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


@torch.no_grad()
def policy_ranking(policies: Mapping[str, Any], splits: Splits, history_len: int, horizon: int,
                   max_users: int | None = None, seed: int = 0, ks: tuple[int, ...] = (5, 10, 20),
                   slate_size: int = 1, device: torch.device | str = "cpu",
                   chunk: int = 512, split: str = "test") -> dict[str, dict[str, float]]:
    """``{policy: {metric: value}}``: full ranking of each ``split`` user's next item (test by
    default, :func:`next_item_task`) by every policy of ``policies`` that has ``scores(obs)``
    (the others are left out).

    The users are those of :func:`offline_ranking` with the same ``max_users`` and ``seed``; each
    policy reads the observation it would see in the environment (:func:`policy_view`) and ranks
    the whole catalogue, the user's other seen items left out as in the ``full`` protocol. An item
    the policy scores ``-inf`` (e.g. one in the observed history, which it never re-serves) can
    never be served: a target scored so is a miss at every ``k`` (reciprocal rank 0), and
    ``target_masked`` is the share of such users. Metrics: ``hr@k``, ``ndcg@k``, ``mrr``,
    ``target_masked`` and ``n_users``.
    """
    rankers = {name: policy for name, policy in policies.items() if callable(getattr(policy, "scores", None))}
    task = next_item_task(splits, history_len, max_users, seed, split) if rankers else None
    if task is None:
        return {}
    task = policy_view(task, splits.interactions.n_items, horizon, slate_size)
    return {name: rank_policy(policy.scores, task, ks, device, chunk) for name, policy in rankers.items()}


def policy_view(task: NextItemTask, n_items: int, horizon: int, slate_size: int = 1) -> NextItemTask:
    """``task`` as a policy observes it: each logged row a slate of ``slate_size`` slots (the
    item first, padding id ``n_items`` after it) and ``step`` the number of rows in the history,
    at most ``horizon - 1`` (an episode that far in has exactly that history)."""
    obs = task.obs
    pad = slate_size - obs.items.shape[2]
    items = F.pad(obs.items, (0, pad), value=n_items) if pad > 0 else obs.items
    clicks = F.pad(obs.clicks, (0, pad)) if pad > 0 else obs.clicks
    step = obs.step.clamp(max=max(horizon - 1, 0))
    return replace(task, obs=Obs(items=items, clicks=clicks, step=step))


@torch.no_grad()
def rank_policy(scores: Callable[[Obs], Tensor], task: NextItemTask, ks: tuple[int, ...] = (5, 10, 20),
                device: torch.device | str = "cpu", chunk: int = 512) -> dict[str, float]:
    """Full-ranking metrics of ``task`` under a policy's ``scores(obs) -> [B, n_items]``, a
    target scored ``-inf`` (or NaN) counted as a miss (see :func:`policy_ranking`)."""
    masked: list[Tensor] = []

    def score_rows(idx: Tensor) -> Tensor:
        values = scores(task.obs.index(idx).to(device)).float()
        target = values.gather(1, task.targets[idx, None].to(values.device))[:, 0]
        masked.append(~(target > float("-inf")).cpu())
        return values

    rows = torch.arange(len(task.targets))
    ranks = full_ranking(score_rows, rows, task.targets, task.seen, ks=ks, chunk=chunk).ranks
    blocked = torch.cat(masked)
    ranks = ranks.masked_fill(blocked, max(ks))  # beyond every k
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"hr@{k}"] = hit_rate_at_k(ranks, k)
        metrics[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    reciprocal = torch.where(blocked, 0.0, 1.0 / (ranks.double() + 1.0))
    return {**metrics, "mrr": float(reciprocal.mean()), "target_masked": float(blocked.double().mean()),
            "n_users": float(len(ranks))}
