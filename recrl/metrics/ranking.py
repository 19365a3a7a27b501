"""Offline ranking evaluation: the two protocols, full ranking over the catalogue and sampled
ranking against ``n`` random unseen negatives (as in the SASRec paper), and their summary.

The metrics live in :mod:`recrl.metrics.prediction` (log-loss, AUC, RMSE, calibration) and
:mod:`recrl.metrics.topk` (target ranks, HR@k, NDCG@k, MRR, multi-target top-k metrics), negative
sampling in :mod:`recrl.metrics.negatives`; this module re-exports them, so
``from recrl.metrics.ranking import auc`` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from recrl.metrics.common import check_ks
from recrl.metrics.negatives import SeenIndex, sample_negatives
from recrl.metrics.prediction import auc, calibration_curve, expected_calibration_error, logloss, rmse
from recrl.metrics.topk import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ndcg_multi_at_k,
    precision_recall_f1_at_k,
    ranks_of_targets,
)

__all__ = [
    "RankingResult", "auc", "calibration_curve", "expected_calibration_error", "full_ranking",
    "hit_rate_at_k", "logloss", "mrr", "ndcg_at_k", "ndcg_multi_at_k", "precision_recall_f1_at_k",
    "ranks_of_targets", "rmse", "sample_negatives", "sampled_ranking", "summarize_ranking",
]


@dataclass(frozen=True)
class RankingResult:
    """Outcome of one ranking protocol.

    ``metrics`` holds only floats (``hr@k``, ``ndcg@k``, ``mrr``); the protocol label (``"full"`` or
    ``"sampled-<n>"``) is kept apart. ``ranks`` are the per-user 0-based target ranks (CPU, long), for
    confidence intervals or paired tests.

    Example::

        >>> r = RankingResult("full", {"mrr": 0.5}, n_users=2)
        >>> r.protocol, r.metrics["mrr"], r.n_users
        ('full', 0.5, 2)
    """

    protocol: str
    metrics: dict[str, float]
    n_users: int
    ranks: Tensor | None = field(default=None, repr=False, compare=False)


def full_ranking(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor,
    targets: Tensor,
    seen: Sequence[Tensor] | Tensor | None,
    ks: Sequence[int] = (5, 10, 20),
    chunk: int = 1024,
) -> RankingResult:
    """Rank each user's target against the whole catalogue (protocol ``"full"``).

    ``score_fn`` maps a chunk of ``users`` to scores ``[u, N]``. ``seen`` (aligned with ``users``: a list
    of item-id tensors or a ``[U, N]`` bool mask) marks items the user already interacted with; they are
    excluded, except the target. Ties count against the target. Metrics: ``hr@k`` and ``ndcg@k`` for each
    ``k`` in ``ks``, and ``mrr``; they do not depend on ``chunk``.

    Example::

        >>> scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
        >>> res = full_ranking(lambda u: scores[u], torch.tensor([0, 1]), torch.tensor([2, 2]),
        ...                    seen=[torch.tensor([0]), torch.tensor([], dtype=torch.long)], ks=(1,))
        >>> res.protocol, res.metrics["hr@1"], res.metrics["mrr"]
        ('full', 0.5, 0.75)
    """
    ks = check_ks(ks)
    n_users = _check_users(users, targets, chunk)
    index = SeenIndex.build(seen, n_users)
    ranks: list[Tensor] = []
    n_items: int | None = None
    with torch.no_grad():
        for lo in range(0, n_users, chunk):
            hi = min(lo + chunk, n_users)
            scores = score_fn(users[lo:hi])
            _check_scores(scores, hi - lo, n_items)
            n_items = scores.shape[1]
            exclude = index.dense(lo, hi, n_items, scores.device)
            ranks.append(ranks_of_targets(scores, targets[lo:hi].to(scores.device), exclude).cpu())
    return _result("full", torch.cat(ranks), ks)


def sampled_ranking(
    score_fn_items: Callable[[Tensor, Tensor], Tensor],
    users: Tensor,
    targets: Tensor,
    seen: Sequence[Tensor] | Tensor | None,
    n_items: int,
    n_negatives: int = 100,
    ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    chunk: int = 1024,
) -> RankingResult:
    """Rank each target against ``n_negatives`` sampled unseen items (protocol ``"sampled-<n>"``).

    For every user, ``n_negatives`` distinct items are drawn uniformly from the items the user never
    interacted with (``seen``, aligned with ``users``) and that differ from the target. Sampling runs on
    CPU with a ``torch.Generator`` seeded by ``seed``, so the negatives do not depend on the device or on
    ``chunk``. ``score_fn_items(users_chunk, items)`` scores ``items`` ``[u, 1 + n_negatives]`` (column 0
    is the target); ties count against the target. Raises ``ValueError`` if a user has fewer than
    ``n_negatives`` unseen items.

    Example::

        >>> table = torch.arange(20.0).repeat(2, 1)  # item i scores i for both users
        >>> res = sampled_ranking(lambda u, items: table[u[:, None], items], torch.tensor([0, 1]),
        ...                       torch.tensor([19, 0]), None, n_items=20, n_negatives=5, ks=(1,))
        >>> res.protocol, res.metrics["hr@1"], round(res.metrics["mrr"], 4)  # ranks 0 and 5
        ('sampled-5', 0.5, 0.5833)
    """
    ks = check_ks(ks)
    n_users = _check_users(users, targets, chunk)
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    negatives = sample_negatives(targets, seen, n_items, n_negatives, seed)
    items = torch.cat([targets.cpu().long().unsqueeze(1), negatives], 1).to(users.device)
    ranks: list[Tensor] = []
    with torch.no_grad():
        for lo in range(0, n_users, chunk):
            hi = min(lo + chunk, n_users)
            scores = score_fn_items(users[lo:hi], items[lo:hi])
            if tuple(scores.shape) != (hi - lo, n_negatives + 1):
                want = (hi - lo, n_negatives + 1)
                raise ValueError(f"score_fn_items returned {tuple(scores.shape)}, need {want}")
            first = torch.zeros(hi - lo, dtype=torch.long, device=scores.device)
            ranks.append(ranks_of_targets(scores, first).cpu())
    return _result(f"sampled-{n_negatives}", torch.cat(ranks), ks)


def summarize_ranking(results: Sequence[RankingResult]) -> dict[str, dict[str, float]]:
    """Metrics keyed by protocol label, with ``n_users``, for reports.

    Results sharing a label (e.g. disjoint user shards) are pooled: each metric is the ``n_users``-weighted
    mean, which is the metric over all their users. They must report the same metric names.

    Example::

        >>> a = RankingResult("full", {"mrr": 1.0}, n_users=1)
        >>> b = RankingResult("full", {"mrr": 0.5}, n_users=3)
        >>> summarize_ranking([a, b])
        {'full': {'mrr': 0.625, 'n_users': 4.0}}
    """
    groups: dict[str, list[RankingResult]] = {}
    for res in results:
        groups.setdefault(res.protocol, []).append(res)
    return {label: _pool(group) for label, group in groups.items()}


def _check_users(users: Tensor, targets: Tensor, chunk: int) -> int:
    if users.dim() != 1 or targets.shape != users.shape:
        raise ValueError(f"need users [U] and targets [U], got {tuple(users.shape)}, {tuple(targets.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if users.numel() == 0:
        raise ValueError("no users to evaluate")
    return users.numel()


def _check_scores(scores: Tensor, rows: int, n_items: int | None) -> None:
    if scores.dim() != 2 or scores.shape[0] != rows or (n_items is not None and scores.shape[1] != n_items):
        want = f"({rows}, {n_items if n_items is not None else 'N'})"
        raise ValueError(f"score_fn returned {tuple(scores.shape)}, need {want}")


def _result(protocol: str, ranks: Tensor, ks: tuple[int, ...]) -> RankingResult:
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"hr@{k}"] = hit_rate_at_k(ranks, k)
        metrics[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    metrics["mrr"] = mrr(ranks)
    return RankingResult(protocol, metrics, ranks.numel(), ranks)


def _pool(group: list[RankingResult]) -> dict[str, float]:
    names = list(group[0].metrics)
    if any(set(r.metrics) != set(names) for r in group):
        raise ValueError(f"results for protocol {group[0].protocol!r} report different metrics")
    total = sum(r.n_users for r in group)
    pooled = {m: sum(r.metrics[m] * r.n_users for r in group) / total for m in names}
    return {**pooled, "n_users": float(total)}
