"""Per-user item sets and negative sampling for the sampled ranking protocol.

:class:`SeenIndex` holds the items each user interacted with in CSR form; :func:`sample_negatives`
draws distinct unseen items per user by vectorized rejection sampling on CPU, with an exact
fallback for dense histories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from recrl.metrics.common import check_items, first_occurrence

_SAMPLE_ROUNDS = 8  # bounded rejection-sampling rounds before the exact fallback
_FALLBACK_CELLS = 1 << 24  # max user x item cells materialized at once by the exact fallback


@dataclass(frozen=True)
class SeenIndex:
    """Per-user item sets in CSR form: ``items[indptr[u]:indptr[u + 1]]`` belong to user row ``u``."""

    rows: Tensor
    items: Tensor
    indptr: Tensor
    n_users: int

    @staticmethod
    def build(seen: Sequence[Tensor] | Tensor | None, n_users: int) -> SeenIndex:
        """The index of ``seen``: ``None`` (no items), a ``[n_users, N]`` bool mask or one item-id
        tensor per user; raises ``ValueError`` when it does not match ``n_users``."""
        if seen is None:
            empty = torch.zeros(0, dtype=torch.long)
            return SeenIndex(empty, empty, torch.zeros(n_users + 1, dtype=torch.long), n_users)
        if isinstance(seen, Tensor):
            if seen.dim() != 2 or seen.shape[0] != n_users or seen.dtype != torch.bool:
                got = f"{seen.dtype} {tuple(seen.shape)}"
                raise ValueError(f"seen mask must be bool [{n_users}, N], got {got}")
            rows, items = seen.nonzero(as_tuple=True)
            check_items(items, seen.shape[1], "seen")
        else:
            if len(seen) != n_users:
                raise ValueError(f"seen has {len(seen)} entries for {n_users} users")
            flat = [s.reshape(-1) for s in seen]
            items = torch.cat(flat).long() if flat else torch.zeros(0, dtype=torch.long)
            lengths = torch.tensor([s.numel() for s in flat], dtype=torch.long, device=items.device)
            rows = torch.repeat_interleave(torch.arange(n_users, device=items.device), lengths)
        indptr = torch.zeros(n_users + 1, dtype=torch.long, device=items.device)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n_users), 0)
        return SeenIndex(rows, items, indptr, n_users)

    def with_targets(self, targets: Tensor, n_items: int) -> SeenIndex:
        """The sets plus each user's target, on CPU, sorted by ``row * n_items + item`` without repeats."""
        check_items(targets, n_items, "targets")
        check_items(self.items, n_items, "seen")
        rows = torch.cat([self.rows.cpu(), torch.arange(self.n_users)])
        keys = torch.unique(rows * n_items + torch.cat([self.items.cpu(), targets.cpu().long()]))
        rows = torch.div(keys, n_items, rounding_mode="floor")
        indptr = torch.zeros(self.n_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=self.n_users), 0)
        return SeenIndex(rows, keys - rows * n_items, indptr, self.n_users)

    def counts(self) -> Tensor:
        """Number of items in each user's set (``[n_users]``)."""
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
        check_items(items, n_items, "seen")
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
    index = SeenIndex.build(seen, n_users).with_targets(targets, n_items)
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


def _rejection_round(
    out: Tensor, filled: Tensor, active: Tensor, index: SeenIndex, n_items: int, gen: torch.Generator
) -> None:
    """One vectorized round: draw candidates for ``active`` users, keep new allowed ones, fill ``out``."""
    n_neg = out.shape[1]
    cand = torch.randint(0, n_items, (active.numel(), 2 * n_neg + 16), generator=gen)
    cand[index.contains(active.unsqueeze(1).expand_as(cand), cand, n_items)] = -1
    pool = torch.cat([out[active], cand], 1)  # earlier picks first, so they win repeats
    new = (first_occurrence(pool) & (pool >= 0))[:, n_neg:]
    order = torch.cumsum(new, 1)
    need = n_neg - filled[active]
    take = new & (order <= need.unsqueeze(1))
    r, c = take.nonzero(as_tuple=True)
    out[active[r], filled[active][r] + order[r, c] - 1] = cand[r, c]
    filled[active] += take.sum(1)
