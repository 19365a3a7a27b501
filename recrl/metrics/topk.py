"""Ranking metrics, vectorized over users (tensors may live on any device): the rank of each
user's single target (HR@k, NDCG@k, MRR from those ranks) and multi-target top-k metrics
(precision, recall, F1 and NDCG at k against several relevant items)."""

from __future__ import annotations

import torch
from torch import Tensor

from recrl.metrics.common import check_items, check_k, first_occurrence, mean_or_nan


def ranks_of_targets(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """0-based rank of each user's target item among the items not excluded, ties counted pessimistically.

    ``scores`` is ``[U, N]``, ``targets`` ``[U]`` item indices, ``exclude`` an optional ``[U, N]`` bool
    mask of items to leave out (the target itself is never left out). The rank is the number of other
    candidate items scoring ``>=`` the target; NaN scores, the target's or another item's, count against
    the target.

    Example::

        >>> ranks_of_targets(torch.tensor([[0.1, 0.9, 0.5, 0.5]]), torch.tensor([2]))
        tensor([2])
        >>> ranks_of_targets(torch.tensor([[0.1, 0.9, 0.5, 0.5]]), torch.tensor([2]),
        ...                  exclude=torch.tensor([[False, True, False, False]]))
        tensor([1])
    """
    if scores.dim() != 2 or targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        shapes = f"{tuple(scores.shape)}, {tuple(targets.shape)}"
        raise ValueError(f"need scores [U, N] and targets [U], got {shapes}")
    if exclude is not None and exclude.shape != scores.shape:
        raise ValueError(f"exclude has shape {tuple(exclude.shape)}, scores {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    check_items(targets, scores.shape[1], "targets")
    index = targets.to(scores.device).long().unsqueeze(1)
    ahead = ~(scores < scores.gather(1, index))  # >=, and True whenever a NaN is involved
    if exclude is not None:
        ahead &= ~exclude.to(ahead.device).bool()
    ahead.scatter_(1, index, False)
    return ahead.sum(1)


def hit_rate_at_k(ranks: Tensor, k: int) -> float:
    """Share of users whose single target is ranked in the top ``k`` (``rank < k``); NaN for no users.

    Example::

        >>> round(hit_rate_at_k(torch.tensor([0, 1, 5]), k=2), 4)
        0.6667
    """
    check_k(k)
    return mean_or_nan(ranks < k)


def ndcg_at_k(ranks: Tensor, k: int) -> float:
    """Mean NDCG@k with one relevant item per user: ``1 / log2(rank + 2)`` if ``rank < k`` else 0.

    Example::

        >>> round(ndcg_at_k(torch.tensor([0, 1, 5]), k=2), 4)
        0.5436
    """
    check_k(k)
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return mean_or_nan(torch.where(ranks < k, gain, torch.zeros_like(gain)))


def mrr(ranks: Tensor) -> float:
    """Mean reciprocal rank ``1 / (rank + 1)`` over users; NaN for no users.

    Example::

        >>> round(mrr(torch.tensor([0, 1, 5])), 4)
        0.5556
    """
    return mean_or_nan(1.0 / (ranks.double() + 1.0))


def precision_recall_f1_at_k(topk: Tensor, relevant: Tensor, k: int) -> dict[str, float]:
    """Precision, recall and F1 at ``k`` for users with several held-out items.

    ``topk`` is ``[U, K]`` recommended item ids (best first, ``K >= k``), ``relevant`` ``[U, T]`` the
    relevant item ids padded with ``-1``. Per user: precision = hits / k, recall = hits / #relevant,
    F1 = their harmonic mean (0 without hits); each is then averaged over the users that have at least
    one relevant item. Repeated ids count once. Returns ``{"precision@k", "recall@k", "f1@k"}``.

    Example::

        >>> topk = torch.tensor([[1, 2, 3], [4, 5, 6]])
        >>> relevant = torch.tensor([[2, 9], [7, -1]])
        >>> {m: round(v, 4) for m, v in precision_recall_f1_at_k(topk, relevant, k=2).items()}
        {'precision@2': 0.25, 'recall@2': 0.25, 'f1@2': 0.25}
    """
    hits, n_rel = _multi_hits(topk, relevant, k)
    users = n_rel > 0
    n_hits = hits.sum(1)[users].double()
    precision = n_hits / k
    recall = n_hits / n_rel[users]
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return {f"precision@{k}": mean_or_nan(precision), f"recall@{k}": mean_or_nan(recall),
            f"f1@{k}": mean_or_nan(f1)}


def ndcg_multi_at_k(topk: Tensor, relevant: Tensor, k: int) -> float:
    """Mean NDCG@k with binary relevance over several relevant items per user.

    DCG sums ``1 / log2(pos + 2)`` over the hits in the top ``k``; the ideal DCG places
    ``min(#relevant, k)`` hits first. Users without relevant items (all ``-1``) are left out.

    Example::

        >>> topk = torch.tensor([[1, 2, 3], [4, 5, 6]])
        >>> relevant = torch.tensor([[2, 9], [7, -1]])
        >>> round(ndcg_multi_at_k(topk, relevant, k=2), 4)  # (1 / log2(3)) / (1 + 1 / log2(3)) / 2
        0.1934
    """
    hits, n_rel = _multi_hits(topk, relevant, k)
    users = n_rel > 0
    discount = 1.0 / torch.log2(torch.arange(k, device=hits.device, dtype=torch.float64) + 2.0)
    dcg = (hits[users].double() * discount).sum(1)
    ideal = torch.cumsum(discount, 0)[n_rel[users].clamp_max(k) - 1]
    return mean_or_nan(dcg / ideal)


def _multi_hits(topk: Tensor, relevant: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Hit mask ``[U, k]`` of the top ``k`` (repeats count once) and #distinct relevant items per user."""
    check_k(k)
    if topk.dim() != 2 or relevant.dim() != 2 or topk.shape[0] != relevant.shape[0]:
        shapes = f"{tuple(topk.shape)}, {tuple(relevant.shape)}"
        raise ValueError(f"need topk [U, K] and relevant [U, T], got {shapes}")
    if topk.shape[1] < k:
        raise ValueError(f"topk has {topk.shape[1]} columns, fewer than k={k}")
    top = topk[:, :k].long()
    rel = relevant.to(top.device).long()
    valid = rel >= 0
    in_rel = ((top.unsqueeze(2) == rel.unsqueeze(1)) & valid.unsqueeze(1)).any(2)
    n_rel = (first_occurrence(torch.where(valid, rel, -1)) & valid).sum(1)
    return in_rel & first_occurrence(top), n_rel
