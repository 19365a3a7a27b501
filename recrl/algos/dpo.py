"""Direct Preference Optimization from the training log (``algo=dpo``): offline preference
fine-tuning of a pretrained next-item policy.

The policy ``pi`` is the softmax over the catalogue of a :class:`~recrl.algos.backbone.Backbone`
scorer, started from ``algo.init_from`` (the supervised next-item model by default, or a saved
run); the reference ``pi_ref`` is a frozen copy of it as it started. Each preference pair
``(s, c, r)`` says that at the logged state ``s`` the user preferred item ``c`` to item ``r``.
With the implicit reward ``h(a|s) = beta * (log pi(a|s) - log pi_ref(a|s))`` the loss per pair
is::

    L = -log sigmoid( beta * [(log pi(c|s) - log pi_ref(c|s)) - (log pi(r|s) - log pi_ref(r|s))] )
      = -log sigmoid( h(c|s) - h(r|s) )

averaged over a batch of pairs (``log pi`` is the log-softmax over the whole catalogue, nothing
masked). It raises the chosen item's probability relative to the rejected one's, measured
against the reference, so ``beta`` sets how far the policy may drift from its start: small
``beta`` (0.1) lets it move further before the loss saturates.

Pairs (built once from the training log, :func:`preference_pairs`): every CLICKED row gives the
state ``s`` before it (the observation of :class:`~recrl.algos.logged.LoggedSteps`) and the
chosen item ``c``, the row's item. The rejected item ``r`` (``algo.negatives``):

* ``shown``: the item of the same user's nearest row in time that was shown and NOT clicked
  (ties: the later row, whose item is not in the click's history, so one the policy could serve
  at ``s``); clicked rows whose user has no such row, or whose nearest one is the same item,
  are dropped.
* ``sampled``: a uniformly random item other than ``c``, drawn afresh for every batch with the
  algorithm's own generator (S-DPO's sampled negatives, one per pair).
* ``auto``: ``shown`` when the log has non-clicked rows, else ``sampled``: logs of positive
  events only (Amazon Beauty's reviews) have no shown-but-ignored item to prefer against.

It acts like :class:`~recrl.algos.supervised.Supervised`: the top-``K`` of the policy's logits,
items already in the history skipped (``skip_shown``); ``explore`` samples from the softmax. A
run started from the pretrained model also reports that model as the row ``supervised``.

References: Rafailov et al. Direct preference optimization: your language model is secretly a
reward model. NeurIPS 2023. Chen et al. On softmax direct preference optimization for
recommendation (S-DPO). NeurIPS 2024.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.algos.backbone import Backbone, PretrainSettings, copy_frozen, initialise
from recrl.algos.learner_state import LearnerState
from recrl.algos.logged import LoggedSteps
from recrl.algos.nets import adam, gradient_step, masked_scores, sample_top_k, skips_shown, top_k
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.algos.supervised import Supervised
from recrl.types import AlgoContext, Obs, RecrlError

logger = logging.getLogger(__name__)

NEGATIVES = ("auto", "shown", "sampled")
"""Where a pair's rejected item comes from (``algo.negatives``, see the module docstring)."""


@dataclass(frozen=True)
class PreferencePairs:
    """``N`` preference pairs: at state ``obs`` the item ``chosen`` was preferred to ``rejected``.

    Attributes:
        obs: ``[N]`` logged states (the history before each clicked row).
        chosen: ``[N]`` the clicked items.
        rejected: ``[N]`` the shown-not-clicked items, or ``None`` when they are sampled afresh
            for every batch (:func:`sampled_rejections`).

    Example::

        pairs = preference_pairs(ctx, "shown")
        batch = pairs.sample(256, generator)      # what the training loop hands to DPO.update
    """

    obs: Obs
    chosen: Tensor
    rejected: Tensor | None

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.chosen.device

    def index(self, idx: Tensor) -> PreferencePairs:
        """Pairs ``idx``."""
        return PreferencePairs(obs=self.obs.index(idx), chosen=self.chosen[idx],
                               rejected=None if self.rejected is None else self.rejected[idx])

    def sample(self, batch_size: int, generator: torch.Generator) -> PreferencePairs:
        """A uniformly random batch of pairs (with replacement)."""
        idx = torch.randint(0, len(self), (batch_size,), device=self.device, generator=generator)
        return self.index(idx)


def shown_rejections(log: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, rejected)``: the clicked rows of ``log`` (sorted by user, then time) that have a
    shown-not-clicked row of the same user, and the item of the nearest such row in time (ties:
    the later one); rows whose nearest one shows the clicked item itself are left out.

    Vectorised: each click's neighbouring non-clicked rows are found by one binary search.

    Example::

        log: user 0 rows (item, click) = (5, 1), (2, 0), (7, 1)  ->  rows [0, 2], rejected [2, 2]
    """
    user = log["user"].to_numpy()
    time = log["time"].to_numpy(dtype=np.float64)
    item = log["item"].to_numpy(dtype=np.int64)
    clicked_mask = log["click"].to_numpy() > 0
    clicked, ignored = np.flatnonzero(clicked_mask), np.flatnonzero(~clicked_mask)
    if clicked.size == 0 or ignored.size == 0:
        return clicked[:0], item[:0]
    after = np.searchsorted(ignored, clicked)  # position in ``ignored`` of the next non-click
    nxt = ignored[np.minimum(after, ignored.size - 1)]
    prv = ignored[np.maximum(after - 1, 0)]
    has_next = (after < ignored.size) & (user[nxt] == user[clicked])
    has_prev = (after > 0) & (user[prv] == user[clicked])
    gap_next = np.where(has_next, time[nxt] - time[clicked], np.inf)
    gap_prev = np.where(has_prev, time[clicked] - time[prv], np.inf)
    source = np.where(gap_next <= gap_prev, nxt, prv)
    keep = (has_next | has_prev) & (item[source] != item[clicked])
    return clicked[keep], item[source[keep]]


def resolve_negatives(log: pd.DataFrame, negatives: str) -> str:
    """``shown`` or ``sampled``: ``auto`` is ``shown`` when ``log`` has non-clicked rows."""
    if negatives not in NEGATIVES:
        raise RecrlError(f"algo.negatives={negatives!r}: use one of {', '.join(NEGATIVES)}")
    if negatives != "auto":
        return negatives
    return "shown" if bool((log["click"].to_numpy() <= 0).any()) else "sampled"


def preference_pairs(ctx: AlgoContext, negatives: str = "auto") -> PreferencePairs:
    """The training log's preference pairs on ``ctx.device`` (see the module docstring)."""
    steps = LoggedSteps.from_context(ctx)  # checks that there are logs of single items
    log = ctx.interactions.train  # type: ignore[union-attr]
    mode = resolve_negatives(log, negatives)
    if mode == "shown":
        rows, rejected = shown_rejections(log)
    else:
        rows, rejected = np.flatnonzero(log["click"].to_numpy() > 0), None
        if ctx.n_items < 2:
            raise RecrlError("algo.negatives=sampled needs a catalogue of at least 2 items")
    if rows.size == 0 and mode == "shown":
        raise RecrlError("algo=dpo: no clicked row of the training log has a shown-not-clicked row of its "
                         "user to prefer it to (algo.negatives=shown); use algo.negatives=sampled")
    if rows.size == 0:
        raise RecrlError("algo=dpo learns from the training log's clicked rows, but it has none; use a "
                         "dataset with clicks in its training split")
    idx = torch.as_tensor(rows, device=ctx.device)
    logger.info("dpo: %d preference pairs from %d logged rows (negatives=%s)", rows.size, len(log), mode)
    logged = None if rejected is None else torch.as_tensor(rejected, device=ctx.device)
    return PreferencePairs(obs=steps.transitions.obs.index(idx), chosen=steps.transitions.action[idx, 0],
                           rejected=logged)


def sampled_rejections(chosen: Tensor, n_items: int, generator: torch.Generator) -> Tensor:
    """A uniformly random item ``[B]`` other than each ``chosen`` item (``n_items >= 2``)."""
    draw = torch.randint(0, n_items - 1, chosen.shape, device=chosen.device, generator=generator)
    return draw + (draw >= chosen).long()  # skip the chosen item: uniform over the other n - 1


def implicit_reward(logits: Tensor, ref_logits: Tensor, items: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward ``beta * (log pi(a|s) - log pi_ref(a|s))`` ``[B]`` of ``items`` ``[B]``,
    both policies the softmax of their logits ``[B, n_items]`` over the whole catalogue."""
    log_pi = torch.log_softmax(logits, 1).gather(1, items[:, None])[:, 0]
    log_ref = torch.log_softmax(ref_logits, 1).gather(1, items[:, None])[:, 0]
    return beta * (log_pi - log_ref)


def dpo_loss(margin: Tensor) -> Tensor:
    """The DPO loss ``-log sigmoid(margin)`` per pair, ``margin = h(chosen) - h(rejected)``."""
    return -F.logsigmoid(margin)


class DPO(LearnerState, ActsGreedily):
    """Direct Preference Optimization of a pretrained policy on the training log's preference
    pairs (see the module docstring); learns from the log only.

    Example::

        algo = DPO(ctx, dim=32, beta=0.1, negatives="shown")
        stats = algo.update(algo.dataset.sample(256, generator))
        slates = algo.act(obs, explore=False)
    """

    networks = ("policy", "reference")

    mode = "offline"

    @seeded_init
    def __init__(self, ctx: AlgoContext, encoder: str = "transformer", dim: int = 64, hidden: int = 128,
                 layers: int = 2, heads: int = 2, item_init: str = "auto", item_ids: bool = True,
                 summary: bool = False, skip_shown: bool = True, lr: float = 1e-4, beta: float = 0.1,
                 grad_clip: float = 10.0, init_from: str | None = "pretrain",
                 pretrain: PretrainSettings | None = None,
                 negatives: Literal["auto", "shown", "sampled"] = "auto") -> None:
        if beta <= 0 or lr <= 0:
            raise RecrlError(f"algo.beta={beta} and algo.lr={lr} must be > 0 (DPO's usual beta: 0.1)")
        backbone = Backbone(encoder, dim, hidden, layers, heads, item_init, item_ids, summary)
        self.ctx, self.beta, self.grad_clip = ctx, float(beta), grad_clip
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.dataset = preference_pairs(ctx, negatives)
        self.policy = backbone.scorer(ctx)
        self.init_from = initialise(self.policy, ctx, init_from, backbone, pretrain)
        if self.init_from is None:
            raise RecrlError("algo=dpo fine-tunes a starting policy against itself: set algo.init_from="
                             "pretrain, behavior or a run folder")
        self.reference = copy_frozen(self.policy)  # the starting policy: DPO's pi_ref
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = adam(self.params, lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    def pretrained_policy(self) -> tuple[str, Any]:
        """``(row name, policy)`` of the reference, for the report: ``supervised`` for
        ``init_from=pretrain``, ``pretrained`` for another source."""
        return Supervised.starting_row(self.ctx, self.init_from, self.reference, self.skip_shown)

    def rejected(self, batch: PreferencePairs) -> Tensor:
        """The batch's rejected items: the logged ones, or fresh samples (``negatives=sampled``)."""
        if batch.rejected is not None:
            return batch.rejected
        return sampled_rejections(batch.chosen, self.ctx.n_items, self.generator)

    def update(self, batch: PreferencePairs) -> dict[str, Tensor]:
        """One gradient step of the DPO loss on a batch of preference pairs."""
        rejected = self.rejected(batch)
        with torch.no_grad():
            ref_logits = self.reference(batch.obs)
        logits = self.policy(batch.obs)
        margin = (implicit_reward(logits, ref_logits, batch.chosen, self.beta)
                  - implicit_reward(logits, ref_logits, rejected, self.beta))
        loss = dpo_loss(margin).mean()
        gradient_step(self.optimizer, loss, self.params, self.grad_clip)
        self.updates += 1
        margin = margin.detach()
        return {"train/loss": loss.detach(), "train/reward_margin": margin.mean(),
                "train/accuracy": (margin > 0).float().mean()}

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """The policy's logits ``[B, n_items]``, items in the history at ``-inf`` (``skip_shown``)."""
        return masked_scores(self.policy, obs, self.skip_shown)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """The top-``K`` items, or a slate sampled from the softmax with ``explore``."""
        scores = self.scores(obs)
        if explore:
            return sample_top_k(scores, self.ctx.slate_size, self.generator)
        return top_k(scores, self.ctx.slate_size)
