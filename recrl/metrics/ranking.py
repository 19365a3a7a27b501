"""Offline prediction and ranking metrics, vectorized over all examples.

Point metrics (log-loss, AUC, RMSE, calibration), single-target ranking metrics (HR@k, NDCG@k, MRR) from
target ranks, multi-target top-k metrics, and two evaluation protocols: full ranking over the catalogue
and sampled ranking against ``n`` random unseen negatives (as in the SASRec paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


def logloss(prob: Tensor, label: Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``prob`` against 0/1 ``label``.

    Example::

        >>> round(logloss(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])), 4)
        0.6931
    """
    p = prob.clamp(eps, 1 - eps)
    return float(-(label * p.log() + (1 - label) * (1 - p).log()).mean())


def auc(score: Tensor, label: Tensor) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    Ties count one half (average ranks). Returns NaN when a class is missing.

    Example::

        >>> auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    label = label.bool()
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(score.double())
    sorted_scores = score.double()[order]
    positions = torch.arange(1, len(score) + 1, dtype=torch.float64, device=score.device)
    # tied scores share the average of their positions
    uniq, inverse = torch.unique(sorted_scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64, device=score.device).index_add_(0, inverse, positions)
    ones = torch.ones_like(positions)
    counts = torch.zeros(len(uniq), dtype=torch.float64, device=score.device).index_add_(0, inverse, ones)
    ranks = torch.empty_like(sorted_scores)
    ranks[order] = (sums / counts)[inverse]
    rank_sum = float(ranks[label].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ============================================================================ ranking metrics
# Everything below is vectorized over users; tensors may live on any device.

_SAMPLE_ROUNDS = 8  # bounded rejection-sampling rounds before the exact fallback
_FALLBACK_CELLS = 1 << 24  # max user x item cells materialized at once by the exact fallback


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
    _check_items(targets, scores.shape[1], "targets")
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
    _check_k(k)
    return _mean(ranks < k)


def ndcg_at_k(ranks: Tensor, k: int) -> float:
    """Mean NDCG@k with one relevant item per user: ``1 / log2(rank + 2)`` if ``rank < k`` else 0.

    Example::

        >>> round(ndcg_at_k(torch.tensor([0, 1, 5]), k=2), 4)
        0.5436
    """
    _check_k(k)
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return _mean(torch.where(ranks < k, gain, torch.zeros_like(gain)))


def mrr(ranks: Tensor) -> float:
    """Mean reciprocal rank ``1 / (rank + 1)`` over users; NaN for no users.

    Example::

        >>> round(mrr(torch.tensor([0, 1, 5])), 4)
        0.5556
    """
    return _mean(1.0 / (ranks.double() + 1.0))


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
    return {f"precision@{k}": _mean(precision), f"recall@{k}": _mean(recall), f"f1@{k}": _mean(f1)}


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
    return _mean(dcg / ideal)


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error between predictions and targets of the same shape.

    Example::

        >>> rmse(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 6.0]))
        1.0
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    diff = pred.double() - target.to(pred.device).double()
    return float(torch.sqrt((diff * diff).mean()))


def calibration_curve(prob: Tensor, label: Tensor, bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Reliability curve over ``bins`` equal-width bins of ``[0, 1]``.

    Bin ``i`` holds ``i / bins <= prob < (i + 1) / bins`` (the last bin includes 1). Returns, for each
    non-empty bin in order, the mean predicted probability, the observed frequency of ``label == 1``
    and the number of examples (float64, long), on ``prob``'s device.

    Example::

        >>> prob = torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64)
        >>> mean_p, freq, count = calibration_curve(prob, torch.tensor([0, 1, 1, 1]))
        >>> mean_p.tolist(), freq.tolist(), count.tolist()
        ([0.1, 0.9], [0.5, 1.0], [2, 2])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, y = _flat_prob_label(prob, label)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    which = torch.bucketize(p, edges, right=True)
    count = torch.bincount(which, minlength=bins)
    sum_p = torch.zeros(bins, dtype=torch.float64, device=p.device).index_add_(0, which, p)
    sum_y = torch.zeros(bins, dtype=torch.float64, device=p.device).index_add_(0, which, y)
    keep = count > 0
    n = count[keep]
    return sum_p[keep] / n, sum_y[keep] / n, n


def expected_calibration_error(prob: Tensor, label: Tensor, bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted mean of ``|mean predicted - observed frequency|``.

    Uses the equal-width bins of :func:`calibration_curve`; NaN for no examples.

    Example::

        >>> prob = torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64)
        >>> round(expected_calibration_error(prob, torch.tensor([0, 1, 1, 1])), 12)  # 0.4 * 0.5 + 0.1 * 0.5
        0.25
    """
    mean_p, freq, count = calibration_curve(prob, label, bins)
    if count.numel() == 0:
        return float("nan")
    weight = count.double() / count.sum()
    return float((weight * (mean_p - freq).abs()).sum())


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
    ks = _check_ks(ks)
    n_users = _check_users(users, targets, chunk)
    index = _SeenIndex.build(seen, n_users)
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
    ks = _check_ks(ks)
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


def sample_negatives(
    targets: Tensor, seen: Sequence[Tensor] | Tensor | None, n_items: int, n_negatives: int, seed: int = 0
) -> Tensor:
    """Draw ``n_negatives`` distinct items per user, uniformly among items neither seen nor the target.

    Vectorized rejection sampling on CPU (a ``torch.Generator`` seeded by ``seed``) for a bounded number
    of rounds; users still short afterwards (dense histories) get an exact draw over their allowed items.
    Returns a CPU long tensor ``[U, n_negatives]``. Raises ``ValueError`` if a user has fewer than
    ``n_negatives`` allowed items.

    Example::

        >>> negatives = sample_negatives(torch.tensor([0]), [torch.tensor([1, 2])], n_items=5, n_negatives=2)
        >>> negatives.sort().values
        tensor([[3, 4]])
    """
    n_users = targets.shape[0]
    index = _SeenIndex.build(seen, n_users).with_targets(targets, n_items)
    free = n_items - index.counts()
    short = (free < n_negatives).nonzero().flatten()
    if short.numel():
        i = int(short[0])
        raise ValueError(
            f"{short.numel()} user(s) have fewer than {n_negatives} unseen items "
            f"(user at position {i} has {int(free[i])} of {n_items})"
        )
    gen = torch.Generator().manual_seed(seed)
    out = torch.full((n_users, n_negatives), -1, dtype=torch.long)
    filled = torch.zeros(n_users, dtype=torch.long)
    for _ in range(_SAMPLE_ROUNDS):
        active = (filled < n_negatives).nonzero().flatten()
        if active.numel() == 0:
            return out
        _rejection_round(out, filled, active, index, n_items, gen)
    rest = (filled < n_negatives).nonzero().flatten()
    step = max(1, _FALLBACK_CELLS // max(n_items, 1))
    for lo in range(0, rest.numel(), step):
        rows = rest[lo : lo + step]
        keys = torch.rand(rows.numel(), n_items, generator=gen, dtype=torch.float64)
        keys[index.dense_rows(rows, n_items)] = 2.0  # forbidden items sort last
        out[rows] = keys.topk(n_negatives, dim=1, largest=False).indices
    return out


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


# ---------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class _SeenIndex:
    """Per-user item sets in CSR form: ``items[indptr[u]:indptr[u + 1]]`` belong to user row ``u``."""

    rows: Tensor
    items: Tensor
    indptr: Tensor
    n_users: int

    @staticmethod
    def build(seen: Sequence[Tensor] | Tensor | None, n_users: int) -> _SeenIndex:
        if seen is None:
            empty = torch.zeros(0, dtype=torch.long)
            return _SeenIndex(empty, empty, torch.zeros(n_users + 1, dtype=torch.long), n_users)
        if isinstance(seen, Tensor):
            if seen.dim() != 2 or seen.shape[0] != n_users or seen.dtype != torch.bool:
                got = f"{seen.dtype} {tuple(seen.shape)}"
                raise ValueError(f"seen mask must be bool [{n_users}, N], got {got}")
            rows, items = seen.nonzero(as_tuple=True)
            _check_items(items, seen.shape[1], "seen")
        else:
            if len(seen) != n_users:
                raise ValueError(f"seen has {len(seen)} entries for {n_users} users")
            flat = [s.reshape(-1) for s in seen]
            items = torch.cat(flat).long() if flat else torch.zeros(0, dtype=torch.long)
            lengths = torch.tensor([s.numel() for s in flat], dtype=torch.long, device=items.device)
            rows = torch.repeat_interleave(torch.arange(n_users, device=items.device), lengths)
        indptr = torch.zeros(n_users + 1, dtype=torch.long, device=items.device)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n_users), 0)
        return _SeenIndex(rows, items, indptr, n_users)

    def with_targets(self, targets: Tensor, n_items: int) -> _SeenIndex:
        """The sets plus each user's target, on CPU, sorted by ``row * n_items + item`` without repeats."""
        _check_items(targets, n_items, "targets")
        _check_items(self.items, n_items, "seen")
        rows = torch.cat([self.rows.cpu(), torch.arange(self.n_users)])
        keys = torch.unique(rows * n_items + torch.cat([self.items.cpu(), targets.cpu().long()]))
        rows = torch.div(keys, n_items, rounding_mode="floor")
        indptr = torch.zeros(self.n_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=self.n_users), 0)
        return _SeenIndex(rows, keys - rows * n_items, indptr, self.n_users)

    def counts(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def contains(self, rows: Tensor, items: Tensor, n_items: int) -> Tensor:
        """Membership of ``(rows, items)`` pairs; needs the sorted, repeat-free :meth:`with_targets` form."""
        keys = self.rows * n_items + self.items
        query = rows * n_items + items
        pos = torch.searchsorted(keys, query).clamp_max(max(keys.numel() - 1, 0))
        return keys[pos] == query if keys.numel() else torch.zeros_like(query, dtype=torch.bool)

    def dense(self, lo: int, hi: int, n_items: int, device: torch.device) -> Tensor | None:
        """Bool mask ``[hi - lo, n_items]`` of the rows ``lo:hi``; None when no user has seen items."""
        if self.items.numel() == 0:
            return None
        start, stop = int(self.indptr[lo]), int(self.indptr[hi])
        items = self.items[start:stop]
        _check_items(items, n_items, "seen")
        mask = torch.zeros(hi - lo, n_items, dtype=torch.bool, device=device)
        mask[(self.rows[start:stop] - lo).to(device), items.to(device)] = True
        return mask

    def dense_rows(self, rows: Tensor, n_items: int) -> Tensor:
        """Bool mask ``[len(rows), n_items]`` of arbitrary CPU user rows."""
        starts, counts = self.indptr[rows], self.counts()[rows]
        local = torch.repeat_interleave(torch.arange(rows.numel()), counts)
        row_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        offset = torch.arange(int(counts.sum())) - row_start
        mask = torch.zeros(rows.numel(), n_items, dtype=torch.bool)
        mask[local, self.items[starts[local] + offset]] = True
        return mask


def _rejection_round(
    out: Tensor, filled: Tensor, active: Tensor, index: _SeenIndex, n_items: int, gen: torch.Generator
) -> None:
    """One vectorized round: draw candidates for ``active`` users, keep new allowed ones, fill ``out``."""
    n_neg = out.shape[1]
    cand = torch.randint(0, n_items, (active.numel(), 2 * n_neg + 16), generator=gen)
    cand[index.contains(active.unsqueeze(1).expand_as(cand), cand, n_items)] = -1
    pool = torch.cat([out[active], cand], 1)  # earlier picks first, so they win repeats
    new = (_first_occurrence(pool) & (pool >= 0))[:, n_neg:]
    order = torch.cumsum(new, 1)
    need = n_neg - filled[active]
    take = new & (order <= need.unsqueeze(1))
    r, c = take.nonzero(as_tuple=True)
    out[active[r], filled[active][r] + order[r, c] - 1] = cand[r, c]
    filled[active] += take.sum(1)


def _first_occurrence(x: Tensor) -> Tensor:
    """Bool mask of the entries of each row that are the first (leftmost) of their value."""
    values, order = torch.sort(x, dim=1, stable=True)
    first_sorted = torch.ones_like(values, dtype=torch.bool)
    first_sorted[:, 1:] = values[:, 1:] != values[:, :-1]
    return torch.empty_like(first_sorted).scatter_(1, order, first_sorted)


def _multi_hits(topk: Tensor, relevant: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Hit mask ``[U, k]`` of the top ``k`` (repeats count once) and #distinct relevant items per user."""
    _check_k(k)
    if topk.dim() != 2 or relevant.dim() != 2 or topk.shape[0] != relevant.shape[0]:
        shapes = f"{tuple(topk.shape)}, {tuple(relevant.shape)}"
        raise ValueError(f"need topk [U, K] and relevant [U, T], got {shapes}")
    if topk.shape[1] < k:
        raise ValueError(f"topk has {topk.shape[1]} columns, fewer than k={k}")
    top = topk[:, :k].long()
    rel = relevant.to(top.device).long()
    valid = rel >= 0
    in_rel = ((top.unsqueeze(2) == rel.unsqueeze(1)) & valid.unsqueeze(1)).any(2)
    n_rel = (_first_occurrence(torch.where(valid, rel, -1)) & valid).sum(1)
    return in_rel & _first_occurrence(top), n_rel


def _flat_prob_label(prob: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    if prob.shape != label.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and label {tuple(label.shape)} differ in shape")
    p = prob.reshape(-1).double()
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("probabilities must lie in [0, 1]")
    return p, label.reshape(-1).to(p.device).double()


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if x.numel() else float("nan")


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(dict.fromkeys(int(k) for k in ks))
    for k in out:
        _check_k(k)
    return out


def _check_items(items: Tensor, n_items: int, name: str) -> None:
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ValueError(f"{name} must hold item ids in [0, {n_items})")


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
