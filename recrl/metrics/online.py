"""Online evaluation: run a policy for whole episodes in an environment and summarise them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from recrl.metrics.stats import summarize
from recrl.types import Env, Policy


@dataclass(frozen=True)
class EpisodeStats:
    """Per-episode totals ``[n_episodes]``, how often each item was recommended and, where item
    categories are known, each episode's category diversity. ``signal_sums`` holds the total of
    each user signal the environment's responses carry (click x value, e.g. ``watch``; NaN
    where the user model does not know the signal)."""

    returns: Tensor
    clicks: Tensor
    conversions: Tensor
    rating_sum: Tensor
    lengths: Tensor
    exposure: Tensor  # [n_items] recommendations of each item over all episodes
    top_items: Tensor  # [n_episodes] the item recommended most often in each episode
    category_diversity: Tensor | None = None  # [n_episodes] Gini-Simpson index of shown categories
    signal_sums: dict[str, Tensor] = field(default_factory=dict)  # signal -> [n_episodes]

    @property
    def shown(self) -> Tensor:
        """``[n_items]`` bool: recommended at least once."""
        return self.exposure > 0

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and 95% CI over episodes of return, CTR, conversion rate, rating, length, each
        user signal's total, and the diversity of what the policy served.

        ``ctr`` is clicks per recommendation step, ``conversion_rate`` conversions per click,
        ``mean_rating`` the mean rating of clicked items (episodes without clicks are left out
        of the last two), then for each user signal (e.g. ``watch``) its total over the episode
        (only where the user model knows the signal). Diversity (see :func:`diversity_summary`):
        ``coverage`` (share of the catalogue recommended at least once), ``exposure_gini`` (0:
        every item recommended equally often, 1: one item gets everything), ``same_top_item``
        (each user's top item is the one recommended to them most often in the session; the
        share of users whose top item is the most common one: 1 when everyone is served the same
        thing) and, with item categories, ``category_diversity`` (within a session, the chance
        that two recommendations drawn at random have different categories; mean over sessions).
        """
        clicks = self.clicks
        per_click = torch.where(clicks > 0, clicks, torch.full_like(clicks, float("nan")))
        out = {"return": summarize(self.returns),
               "ctr": summarize(clicks / self.lengths.clamp(min=1)),
               "conversion_rate": summarize(self.conversions / per_click),
               "mean_rating": summarize(self.rating_sum / per_click),
               "episode_length": summarize(self.lengths)}
        for name, total in self.signal_sums.items():
            if not total.isnan().all():
                out[name] = summarize(total)
        return {**out, **diversity_summary(self.exposure, self.top_items, self.category_diversity)}


def _single(value: float) -> dict[str, float]:
    """A figure with no confidence interval (one value for the whole evaluation)."""
    return {"mean": value, "ci95": float("nan"), "n": 1}


def gini(counts: Tensor) -> float:
    """Gini coefficient of non-negative ``counts``: 0 when all are equal, ``1 - 1/n`` when one
    holds everything (0 for an all-zero vector).

    Example::

        >>> gini(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        0.0
        >>> gini(torch.tensor([0.0, 0.0, 0.0, 4.0]))
        0.75
    """
    x = counts.double().sort().values
    n, total = x.numel(), float(x.sum())
    if n == 0 or total == 0.0:
        return 0.0
    rank = torch.arange(1, n + 1, dtype=x.dtype)
    return float(((2 * rank - n - 1) * x).sum() / (n * total))


def diversity_summary(exposure: Tensor, top_items: Tensor,
                      category_diversity: Tensor | None) -> dict[str, dict[str, float]]:
    """``coverage``, ``exposure_gini``, ``same_top_item`` and (with categories)
    ``category_diversity`` of an evaluation (see :meth:`EpisodeStats.summary`)."""
    out = {"coverage": _single(float((exposure > 0).float().mean())),
           "exposure_gini": _single(gini(exposure)),
           "same_top_item": _single(float(torch.bincount(top_items).max()) / max(1, top_items.numel()))}
    if category_diversity is not None:
        out["category_diversity"] = summarize(category_diversity)
    return out


def gini_simpson(counts: Tensor) -> Tensor:
    """Per row of ``counts`` ``[B, C]``: ``1 - sum_c p_c^2`` with ``p`` the row's shares (0 for an
    empty row): the chance that two draws with replacement fall in different categories."""
    total = counts.sum(1, keepdim=True)
    share = counts / total.clamp(min=1.0)
    return torch.where(total[:, 0] > 0, 1.0 - (share**2).sum(1), torch.zeros_like(total[:, 0]))


@torch.no_grad()
def run_episodes(policy: Policy, env: Env, n_episodes: int, seed: int,
                 batch_size: int = 1024, categories: Tensor | None = None) -> EpisodeStats:
    """Run ``n_episodes`` complete episodes of ``policy`` (no exploration) in ``env``.

    Episodes run in batches of ``batch_size`` users for ``env.horizon`` steps each; finished
    users are masked, so no step waits on the host. ``seed`` fixes the users and their draws.
    ``categories`` ``[n_items]`` (long, -1 unknown) turns on the per-session category diversity.
    """
    env.autoreset = False
    totals: dict[str, list[Tensor]] = {k: [] for k in ("ret", "clk", "conv", "rat", "len")}
    signal_totals: dict[str, list[Tensor]] = {}
    exposure = torch.zeros(env.n_items + 1, device=env.device)
    top: list[Tensor] = []
    diversity: list[Tensor] = []
    if categories is not None:
        categories = categories.to(env.device).long()
        n_categories = int(categories.max()) + 2  # slot 0: unknown category or a finished user
    for chunk, start in enumerate(range(0, n_episodes, batch_size)):
        b = min(batch_size, n_episodes - start)
        obs = env.reset(b, seed=seed + chunk)
        acc = torch.zeros(5, b, device=env.device)
        signal_acc: dict[str, Tensor] = {}
        per_user = torch.zeros(b, env.n_items + 1, device=env.device)
        per_category = torch.zeros(b, n_categories, device=env.device) if categories is not None else None
        for _ in range(env.horizon):
            slates = policy.act(obs, explore=False)
            alive = env.alive
            obs, reward, _, info = env.step(slates)
            live = alive.float()
            resp = info.response
            acc += torch.stack([reward, resp.click.sum(1) * live, resp.conversion.sum(1) * live,
                                (resp.click * resp.rating).sum(1) * live, live])
            for name, value in resp.values.items():
                signal_acc.setdefault(name, torch.zeros(b, device=env.device))
                signal_acc[name] += (resp.click * value).sum(1) * live
            served = torch.where(alive[:, None], slates, env.n_items)
            per_user.scatter_add_(1, served, torch.ones_like(served, dtype=per_user.dtype))
            if per_category is not None:
                codes = torch.where(alive[:, None], categories[slates] + 1, 0)
                per_category.scatter_add_(1, codes, torch.ones_like(codes, dtype=per_category.dtype))
        for key, row in zip(totals, acc, strict=True):
            totals[key].append(row)
        for name, row in signal_acc.items():
            signal_totals.setdefault(name, []).append(row)
        exposure += per_user.sum(0)
        top.append(per_user[:, :-1].argmax(1))
        if per_category is not None:
            diversity.append(gini_simpson(per_category[:, 1:]))
    ret, clk, conv, rat, length = (torch.cat(v).cpu() for v in totals.values())
    return EpisodeStats(returns=ret, clicks=clk, conversions=conv, rating_sum=rat,
                        lengths=length, exposure=exposure[:-1].cpu(), top_items=torch.cat(top).cpu(),
                        category_diversity=torch.cat(diversity).cpu() if diversity else None,
                        signal_sums={name: torch.cat(v).cpu() for name, v in signal_totals.items()})
