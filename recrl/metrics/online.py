"""Online evaluation: run a policy for whole episodes in an environment and summarise them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recrl.env.simulator import RecEnv
from recrl.metrics.stats import summarize
from recrl.types import Policy


@dataclass(frozen=True)
class EpisodeStats:
    """Per-episode totals ``[n_episodes]`` and the set of items ever recommended."""

    returns: Tensor
    clicks: Tensor
    conversions: Tensor
    rating_sum: Tensor
    watch_sum: Tensor
    lengths: Tensor
    shown: Tensor  # [n_items] bool

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and 95% CI over episodes of return, CTR, conversion rate, rating, watch, length.

        ``ctr`` is clicks per recommendation step, ``conversion_rate`` conversions per click,
        ``mean_rating`` the mean rating of clicked items (episodes without clicks are left out
        of the last two), ``watch`` the total watch of the episode (only where the user model
        knows watch values), ``coverage`` the share of the catalogue recommended at least once.
        """
        clicks = self.clicks
        per_click = torch.where(clicks > 0, clicks, torch.full_like(clicks, float("nan")))
        out = {"return": summarize(self.returns),
               "ctr": summarize(clicks / self.lengths.clamp(min=1)),
               "conversion_rate": summarize(self.conversions / per_click),
               "mean_rating": summarize(self.rating_sum / per_click),
               "episode_length": summarize(self.lengths)}
        if not self.watch_sum.isnan().all():
            out["watch"] = summarize(self.watch_sum)
        out["coverage"] = {"mean": float(self.shown.float().mean()), "ci95": float("nan"), "n": 1}
        return out


@torch.no_grad()
def run_episodes(policy: Policy, env: RecEnv, n_episodes: int, seed: int,
                 batch_size: int = 1024) -> EpisodeStats:
    """Run ``n_episodes`` complete episodes of ``policy`` (no exploration) in ``env``.

    Episodes run in batches of ``batch_size`` users for ``env.horizon`` steps each; finished
    users are masked, so no step waits on the host. ``seed`` fixes the users and their draws.
    """
    env.autoreset = False
    totals: dict[str, list[Tensor]] = {k: [] for k in ("ret", "clk", "conv", "rat", "watch", "len")}
    shown = torch.zeros(env.n_items + 1, dtype=torch.bool, device=env.device)
    for chunk, start in enumerate(range(0, n_episodes, batch_size)):
        b = min(batch_size, n_episodes - start)
        obs = env.reset(b, seed=seed + chunk)
        acc = torch.zeros(6, b, device=env.device)
        for _ in range(env.horizon):
            slates = policy.act(obs, explore=False)
            alive = env.alive
            obs, reward, _, info = env.step(slates)
            live = alive.float()
            resp = info.response
            acc += torch.stack([reward, resp.click.sum(1) * live, resp.conversion.sum(1) * live,
                                (resp.click * resp.rating).sum(1) * live,
                                (resp.click * resp.watch).sum(1) * live, live])
            shown[torch.where(alive[:, None], slates, env.n_items)] = True
        for key, row in zip(totals, acc, strict=True):
            totals[key].append(row)
    ret, clk, conv, rat, watch, length = (torch.cat(v).cpu() for v in totals.values())
    return EpisodeStats(returns=ret, clicks=clk, conversions=conv, rating_sum=rat, watch_sum=watch,
                        lengths=length, shown=shown[:-1].cpu())
