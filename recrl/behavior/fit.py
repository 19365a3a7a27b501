"""Supervised fitting of sequence user models on logged sessions, with early stopping."""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from recrl import distributed
from recrl.behavior.offline import NextItemTask, build_task, rank_task
from recrl.env.signals import SIGNALS
from recrl.metrics.prediction import auc, logloss
from recrl.types import Interactions, RecrlError

EARLY_STOPPING = ("loss", "ndcg@10")
NEGATIVE_SAMPLING = ("uniform", "popularity")
LOSSES = ("bce", "softmax", "bpr")
PRECISIONS = ("auto", "fp32", "bf16")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """How a behavior model is fitted (the ``behavior.training`` config node).

    Attributes:
        lr, weight_decay: Adam's step size and L2 penalty.
        epochs, batch_size: passes over the training users and users per mini-batch.
        bucket_by_length: batch users of similar history length together (batches in random
            order), so little compute goes to padding: several times faster on logs of short
            sessions with a long tail (Amazon, MovieLens).
        patience: epochs without a better validation score before stopping.
        max_len: each user's last rows used for fitting.
        seed: weight initialisation, batch order and sampled negatives.
        early_stopping: ``loss`` (validation loss) or ``ndcg@10`` (full-ranking NDCG@10 of the
            validation items).
        negative_sampling: ``uniform`` or ``popularity`` negatives for positive-only logs.
        loss: ``bce`` (clicks and sampled negatives as binary labels) or ``softmax``: adds a
            cross-entropy of each clicked item against the catalogue (or against
            ``softmax_negatives`` shared sampled items, with the log-q correction), the loss that
            drives full-ranking accuracy; the BCE terms stay so click probabilities keep an
            absolute scale for the simulator's no-click choice; or ``bpr`` (positive-only logs):
            ``-log sigmoid(click - sampled negative)`` on every clicked row in place of the click
            BCE terms (Rendle et al. 2009), the other heads' terms unchanged.
        softmax_negatives: sampled items per batch for ``loss=softmax``; 0 = the whole catalogue.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``.

    Example::

        settings = TrainingSettings(epochs=20, loss="softmax", softmax_negatives=1024)
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 256
    bucket_by_length: bool = False
    patience: int = 4
    max_len: int = 50
    seed: int = 0
    early_stopping: Literal["loss", "ndcg@10"] = "loss"
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    loss: Literal["bce", "softmax", "bpr"] = "bce"
    softmax_negatives: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        for name, options in (("early_stopping", EARLY_STOPPING), ("negative_sampling", NEGATIVE_SAMPLING),
                              ("loss", LOSSES), ("precision", PRECISIONS)):
            if getattr(self, name) not in options:
                raise RecrlError(f"behavior.training.{name}={getattr(self, name)!r}: use one of "
                                 f"{', '.join(options)}")
        for name in ("epochs", "batch_size", "patience", "max_len"):
            if getattr(self, name) < 1:
                raise RecrlError(f"behavior.training.{name}={getattr(self, name)} must be >= 1")
        if self.softmax_negatives < 0:
            raise RecrlError("behavior.training.softmax_negatives must be >= 0 (0 = whole catalogue)")

    def autocast(self, device: torch.device):
        """The mixed-precision context for forward passes on ``device``."""
        use_bf16 = self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")
        if not use_bf16:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class SessionTensors:
    """Each user's rows padded to ``[S, T]`` (slate size 1, padding after the last row).

    ``mask`` marks the rows that count in the loss (all real rows for training; only the
    validation rows, after the user's training history, for validation); ``leave_mask`` those
    of them whose leave label is known. ``negative`` holds sampled negative items (positive-only
    logs) or is ``None``. ``user`` ``[S]`` is each session's dense user id (static models such
    as MF read it; sequence models ignore it). ``signals`` maps each user signal
    (:mod:`recrl.env.signals`) with data to ``(values, mask)``: the rows' values (0 where
    unknown) and the counted rows that were clicked and whose value is known (a signal without
    any such row is left out; ``None``: no signal data).
    """

    user: Tensor
    item: Tensor
    click: Tensor
    conversion: Tensor
    rating: Tensor
    leave: Tensor
    mask: Tensor
    leave_mask: Tensor
    negative: Tensor | None = None
    signals: dict[str, tuple[Tensor, Tensor]] | None = None

    def _map(self, fn: Callable[[Tensor], Tensor]) -> SessionTensors:
        def apply(value: Any) -> Any:
            if isinstance(value, dict):
                return {name: (fn(values), fn(mask)) for name, (values, mask) in value.items()}
            return None if value is None else fn(value)

        return SessionTensors(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def rows(self, idx: Tensor) -> SessionTensors:
        """Sessions ``idx``."""
        return self._map(lambda t: t[idx])

    def to(self, device: torch.device) -> SessionTensors:
        """The same sessions on ``device``."""
        return self._map(lambda t: t.to(device))

    def trim(self, padding: int) -> SessionTensors:
        """The same sessions without the trailing steps that are padding in every row."""
        used = (self.item != padding).any(0).nonzero()
        steps = int(used.max()) + 1 if len(used) else 1
        return self._map(lambda t: t[:, :steps] if t.dim() == 2 else t)


def session_tensors(log: pd.DataFrame, n_items: int, max_len: int | None = None,
                    target: np.ndarray | None = None, negatives: bool = False,
                    seed: int = 0, signals: Sequence[str] | None = None) -> SessionTensors:
    """Pad the rows of ``log`` (sorted by user, time) per user, keeping each user's last
    ``max_len`` rows; ``target`` (bool per row, default all) selects the rows that count.
    ``signals``: the user signals to carry (default: every registered one)."""
    if log.empty:
        raise RecrlError("no logged interactions to fit the behavior model on: the split is empty")
    codes, user_ids = pd.factorize(log["user"], sort=True)
    position = log.groupby(codes).cumcount().to_numpy()
    length = np.bincount(codes)
    if max_len is not None:
        position = position - np.maximum(length[codes] - max_len, 0)
    keep = position >= 0
    codes, position = codes[keep], position[keep]
    s, t = len(length), int(position.max()) + 1
    kept = log[keep]

    def dense(values: np.ndarray, fill: float = 0.0, dtype=np.float32) -> Tensor:
        out = np.full((s, t), fill, dtype=dtype)
        out[codes, position] = values
        return torch.from_numpy(out)

    target_rows = np.ones(len(kept), bool) if target is None else np.asarray(target)[keep]
    leave = kept["leave"].to_numpy(dtype=np.float32)
    clicked = kept["click"].to_numpy() > 0
    carried: dict[str, tuple[Tensor, Tensor]] = {}
    for name in SIGNALS if signals is None else signals:
        values = kept[name].to_numpy(dtype=np.float32) if name in kept else np.full(len(kept), np.nan)
        known = target_rows & ~np.isnan(values) & clicked
        if known.any():
            carried[name] = (dense(np.nan_to_num(values)), dense(known.astype(np.float32)))
    negative = None
    if negatives:
        rng = np.random.default_rng(seed)
        negative = dense(rng.integers(0, n_items, len(kept)), fill=n_items, dtype=np.int64)
    user = torch.tensor(np.asarray(user_ids), dtype=torch.long)
    return SessionTensors(user=user, item=dense(kept["item"].to_numpy(), fill=n_items, dtype=np.int64),
                          click=dense(kept["click"].to_numpy(dtype=np.float32)),
                          conversion=dense(np.nan_to_num(kept["conversion"].to_numpy(dtype=np.float32))),
                          rating=dense(np.nan_to_num(kept["rating"].to_numpy(dtype=np.float32))),
                          leave=dense(np.nan_to_num(leave)),
                          mask=dense(target_rows.astype(np.float32)),
                          leave_mask=dense((target_rows & ~np.isnan(leave)).astype(np.float32)),
                          negative=negative, signals=carried or None)


class SequenceModel(Protocol):
    """What :func:`fit_sequence_model` needs from a model."""

    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits ``[S, T]`` for ``click``, ``conversion``, ``rating``, ``leave`` and every
        user signal the model has a head for (by name)."""
        ...

    def prepare_fit(self, train: SessionTensors, interactions: Interactions) -> None:
        """Called once with the training sessions (on the model's device) before the first step."""
        ...


@dataclass
class FitReport:
    """How fitting went: the validation figures that go into every run report."""

    epochs: int
    best_epoch: int
    seconds: float
    valid_loss: float
    valid_click_logloss: float
    valid_click_auc: float
    valid_leave_logloss: float
    valid_leave_auc: float
    train_sessions: int
    valid_sessions: int
    early_stopping: str = "loss"
    valid_ndcg10: float = float("nan")

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON reports."""
        return asdict(self)


def _masked_bce(logit: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def _positives(batch: SessionTensors, n_items: int) -> Tensor:
    """The counted clicks on real items (bool ``[S, T]``): the rows of the softmax loss."""
    return (batch.mask * batch.click).bool() & (batch.item < n_items)


def loss_masks(batch: SessionTensors, n_items: int) -> dict[str, Tensor]:
    """The rows each mean in the training loss averages over, by term: ``click`` (counted rows),
    ``leave`` (known leave labels), ``clicked`` (counted clicks: conversion, rating, BPR),
    ``positive`` (the softmax loss's clicks) and ``signal:<name>`` per user signal."""
    masks = {"click": batch.mask, "leave": batch.leave_mask, "clicked": batch.mask * batch.click,
             "positive": _positives(batch, n_items).float()}
    masks.update({f"signal:{name}": mask for name, (_, mask) in (batch.signals or {}).items()})
    return masks


@dataclass(frozen=True)
class BatchShare:
    """One rank's part of a global mini-batch in data-parallel fitting (:mod:`recrl.distributed`).

    ``counts`` holds the rows the whole global batch counts in each term of the loss
    (:func:`loss_masks`), ``world`` the number of ranks. Each term is a mean over its rows; scaled
    by :meth:`scale`, a rank's term becomes ``world x (sum over its rows) / (global count)``, so
    the mean over the ranks (what DistributedDataParallel's gradient averaging takes) is the
    single-process term of the global batch, whatever the sizes of the ranks' shares.

    Example::

        share = BatchShare({k: m.sum() for k, m in loss_masks(global_batch, n_items).items()}, world=2)
        loss = batch_loss(model, my_rows, settings, sampler, share)
    """

    counts: dict[str, Tensor]
    world: int

    def scale(self, term: str, mask: Tensor) -> Tensor:
        """The factor of ``term``, which this rank averaged over the rows of ``mask``."""
        return self.world * mask.float().sum().clamp(min=1.0) / self.counts[term].clamp(min=1.0)


def _term(value: Tensor, share: BatchShare | None, term: str, mask: Tensor) -> Tensor:
    """A mean-over-rows loss term, as this rank's share of the global batch's (see :class:`BatchShare`)."""
    return value if share is None else value * share.scale(term, mask)


def sequence_loss(logits: dict[str, Tensor], batch: SessionTensors,
                  share: BatchShare | None = None) -> Tensor:
    """Masked BCE for clicks (plus sampled negatives), leaving and conversions given a click,
    squared error of ratings given a click and each user signal's own loss of its values given a
    click (:meth:`recrl.env.signals.Signal.fit_loss`; ``watch``: 0.1 x Huber loss of
    ``softplus(logit)``, robust to the long tail of watch ratios). ``share``: this rank's part
    of a data-parallel global batch (:class:`BatchShare`)."""
    m = batch.mask
    clicked = m * batch.click
    rating_pred = 1.0 + 4.0 * torch.sigmoid(logits["rating"])
    rating_loss = ((rating_pred - batch.rating) ** 2 * clicked).sum() / clicked.sum().clamp(min=1.0)
    loss = (_term(_masked_bce(logits["click"], batch.click, m), share, "click", m)
            + _term(_masked_bce(logits["leave"], batch.leave, batch.leave_mask), share, "leave",
                    batch.leave_mask)
            + _term(_masked_bce(logits["conversion"], batch.conversion, clicked), share, "clicked", clicked)
            + 0.1 * _term(rating_loss, share, "clicked", clicked))
    if "click_negative" in logits:
        loss = loss + _term(_masked_bce(logits["click_negative"], torch.zeros_like(m), m), share, "click", m)
    for name, (values, mask) in (batch.signals or {}).items():
        if name in logits:  # a model built before the signal was registered has no head for it
            loss = loss + _term(SIGNALS[name].fit_loss(logits[name], values, mask), share, f"signal:{name}",
                                mask)
    return loss


def _auc_logloss(logit: Tensor, label: Tensor) -> tuple[float, float]:
    if len(label) == 0:
        return float("nan"), float("nan")
    prob = torch.sigmoid(logit)
    return auc(prob, label), logloss(prob, label)


@torch.no_grad()
def _validate(model: nn.Module, data: SessionTensors) -> dict[str, float]:
    model.eval()
    logits = model.sequence_logits(data)
    model.train()
    m, lm = data.mask.bool(), data.leave_mask.bool()
    click_logit, click_label = logits["click"][m], data.click[m]
    if "click_negative" in logits:  # positives against sampled negatives
        click_logit = torch.cat([click_logit, logits["click_negative"][m]])
        click_label = torch.cat([click_label, torch.zeros_like(click_label)])
    click_auc, click_ll = _auc_logloss(click_logit, click_label)
    leave_auc, leave_ll = _auc_logloss(logits["leave"][lm], data.leave[lm])
    return {"loss": float(sequence_loss(logits, data)), "click_logloss": click_ll,
            "click_auc": click_auc, "leave_logloss": leave_ll, "leave_auc": leave_auc}


def training_tensors(interactions: Interactions, max_len: int | None, seed: int,
                     signals: Sequence[str] | None = None) -> tuple[SessionTensors, SessionTensors]:
    """Training sequences (train rows) and validation sequences (train history followed by
    the validation rows, only the latter counted); sampled negatives for positive-only logs;
    the values of ``signals`` (default: every registered user signal)."""
    n, neg = interactions.n_items, interactions.positive_only
    train = session_tensors(interactions.train, n, max_len, negatives=neg, seed=seed, signals=signals)
    both = pd.concat([interactions.train, interactions.valid], ignore_index=True)
    both["_valid"] = np.r_[np.zeros(len(interactions.train), bool), np.ones(len(interactions.valid), bool)]
    both = both.sort_values(["user", "time", "_valid"], kind="stable")
    users = both.loc[both["_valid"], "user"].unique()
    both = both[both["user"].isin(users)]
    valid = session_tensors(both, n, max_len, target=both["_valid"].to_numpy(), negatives=neg,
                            seed=seed + 1, signals=signals)
    return train, valid



class NegativeSampler:
    """Fresh negative items for every training batch: uniform, or by training popularity
    (smoothed by one), never on padding positions.

    Example::

        sampler = NegativeSampler(interactions, "popularity", generator)
        batch = sampler(batch)            # batch.negative resampled
        items, log_q = sampler.shared(1024)
    """

    def __init__(self, interactions: Interactions, how: str, generator: torch.Generator) -> None:
        if how not in NEGATIVE_SAMPLING:
            raise RecrlError(f"behavior.negative_sampling={how!r}: use one of {', '.join(NEGATIVE_SAMPLING)}")
        self.n_items, self.generator = interactions.n_items, generator
        self.weights = None
        if how == "popularity":
            counts = np.bincount(interactions.train["item"].to_numpy(), minlength=self.n_items) + 1.0
            self.weights = torch.as_tensor(counts, dtype=torch.float)

    def draw(self, n: int) -> Tensor:
        """``n`` items drawn with replacement (on the CPU)."""
        if self.weights is None:
            return torch.randint(0, self.n_items, (n,), generator=self.generator)
        return torch.multinomial(self.weights, n, replacement=True, generator=self.generator)

    def log_prob(self, items: Tensor) -> Tensor:
        """Log-probability of drawing each of ``items`` (the sampled-softmax correction)."""
        if self.weights is None:
            return torch.full(items.shape, -float(np.log(self.n_items)), device=items.device)
        weights = self.weights.to(items.device)
        return torch.log(weights[items] / weights.sum())

    def shared(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` items shared by a whole batch and their log-probabilities."""
        items = self.draw(n)
        return items, self.log_prob(items)

    def __call__(self, batch: SessionTensors) -> SessionTensors:
        """``batch`` with newly drawn negatives (unchanged when it has none)."""
        if batch.negative is None:
            return batch
        drawn = self.draw(batch.item.numel()).view(batch.item.shape).to(batch.item.device)
        return replace(batch, negative=torch.where(batch.item < self.n_items, drawn, self.n_items))


def softmax_click_loss(model: nn.Module, click_state: Tensor, batch: SessionTensors,
                       sampler: NegativeSampler, n_negatives: int, share: BatchShare | None = None) -> Tensor:
    """Cross-entropy of every clicked item against the catalogue, or against ``n_negatives``
    items shared by the batch (log-q corrected, accidental hits masked).

    ``click_state`` ``[S, T, H]`` is what the click head reads before each step; the head must
    score the whole catalogue (``head(h)``), given items (``head(h, items)``) and items shared
    by all rows (``head.score_shared(h, items)``). ``share``: this rank's part of a data-parallel
    global batch (:class:`BatchShare`); the shared items are those of the global batch.
    """
    n_items = sampler.n_items
    target = _positives(batch, n_items)
    h, positive = click_state[target], batch.item[target]
    sampled = 0 < n_negatives < n_items
    any_click = len(positive) > 0 if share is None else bool(share.counts["positive"] > 0)
    if sampled and any_click:  # drawn on every rank alike: one random stream, as on one process
        negative, log_q = sampler.shared(n_negatives)
    if len(positive) == 0:
        return click_state.sum() * 0.0
    head = model.click_head
    if not sampled:
        return _term(F.cross_entropy(head(h).float(), positive), share, "positive", target)
    negative, log_q = negative.to(h.device), log_q.to(h.device)
    pos_logit = head(h, positive[:, None])[:, 0].float() - sampler.log_prob(positive)
    neg_logit = head.score_shared(h, negative).float() - log_q
    neg_logit = neg_logit.masked_fill(negative[None] == positive[:, None], float("-inf"))
    logits = torch.cat([pos_logit[:, None], neg_logit], 1)
    return _term(F.cross_entropy(logits, torch.zeros_like(positive)), share, "positive", target)


def batch_loss(model: nn.Module, batch: SessionTensors, settings: TrainingSettings,
               sampler: NegativeSampler, share: BatchShare | None = None) -> Tensor:
    """The training loss of one mini-batch under ``settings`` (see :class:`TrainingSettings`);
    ``share``: this rank's part of a data-parallel global batch (:class:`BatchShare`)."""
    with settings.autocast(batch.item.device):
        logits = model.sequence_logits(batch)
        loss = sequence_loss({k: v.float() for k, v in logits.items()}, batch, share)
        if settings.loss == "bpr":
            if "click_negative" not in logits:
                raise RecrlError("behavior.training.loss=bpr needs a positive-only log (it ranks clicks "
                                 "above sampled negatives); use bce or softmax")
            click, negative = logits["click"].float(), logits["click_negative"].float()
            m = batch.mask
            # sequence_loss without its two click BCE terms: the other heads' terms stay
            loss = (loss - _term(_masked_bce(click, batch.click, m), share, "click", m)
                    - _term(_masked_bce(negative, torch.zeros_like(m), m), share, "click", m))
            positive = m * batch.click
            pairwise = -F.logsigmoid(click - negative)
            loss = loss + _term((pairwise * positive).sum() / positive.sum().clamp(min=1.0), share, "clicked",
                                positive)
        if settings.loss == "softmax":
            loss = loss + softmax_click_loss(model, logits["click_state"], batch, sampler,
                                             settings.softmax_negatives, share)
    return loss


def _stopping_score(model: nn.Module, valid: SessionTensors, task: NextItemTask | None,
                    n_items: int) -> tuple[float, dict[str, float]]:
    """Validation figures and the score early stopping maximises (minus the loss, or NDCG@10)."""
    val = _validate(model, valid)
    if task is None:
        return -val["loss"], val
    model.eval()
    val["ndcg@10"] = rank_task(model, task, n_items, ks=(10,), n_negatives=None)["full"]["ndcg@10"]
    model.train()
    return val["ndcg@10"], val


def batch_order(lengths: Tensor, settings: TrainingSettings, generator: torch.Generator) -> list[Tensor]:
    """One epoch of mini-batches of session indices: a random permutation, or (with
    ``bucket_by_length``) sessions sorted by length with random ties, batches shuffled."""
    n = len(lengths)
    if not settings.bucket_by_length:
        return list(torch.randperm(n, generator=generator).split(settings.batch_size))
    jitter = torch.rand(n, generator=generator)
    order = torch.argsort(lengths.double() + jitter.double())
    batches = list(order.split(settings.batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@dataclass(frozen=True)
class EpochStats:
    """One epoch of fitting, as the ``on_epoch`` callbacks of :func:`fit_sequence_model` and
    :func:`serve_fits` see it.

    Attributes:
        epoch: its number, from 1.
        train_loss: the mean training loss of its global mini-batches (over every rank).
        valid_loss: the validation loss after it (NaN on ranks > 0, which do not validate).
        sessions: the training sessions (row indices) this rank fitted on, in order.
    """

    epoch: int
    train_loss: float
    valid_loss: float
    sessions: Tensor


EpochCallback = Callable[[EpochStats], None]


class _BatchLoss(nn.Module):
    """:func:`batch_loss` as a module's forward, so that DistributedDataParallel sees every
    parameter the loss reads (the click head of the softmax loss too)."""

    def __init__(self, model: nn.Module, settings: TrainingSettings, sampler: NegativeSampler) -> None:
        super().__init__()
        self.model, self.settings, self.sampler = model, settings, sampler

    def forward(self, batch: SessionTensors, share: BatchShare | None) -> Tensor:
        """The loss of ``batch`` (this rank's ``share`` of a global batch, or all of it)."""
        return batch_loss(self.model, batch, self.settings, self.sampler, share)


def _blank(batch: SessionTensors) -> SessionTensors:
    """``batch`` with every row left out of the loss."""
    zero = torch.zeros_like(batch.mask)
    signals = {name: (values, zero) for name, (values, _) in batch.signals.items()} if batch.signals else None
    return replace(batch, mask=zero, leave_mask=zero, signals=signals)


class _Steps:
    """One Adam step per global mini-batch of session indices: on the whole batch in one process;
    under torchrun on this rank's contiguous part of it (``batch_size / world`` users; every rank
    draws the global batch's negatives from the same stream and scales its loss by its
    :class:`BatchShare`, so the averaged gradient is the single-process one of the global batch)."""

    def __init__(self, model: nn.Module, interactions: Interactions, settings: TrainingSettings) -> None:
        self.device = next(model.parameters()).device
        self.n_items = interactions.n_items
        self.sampler = NegativeSampler(interactions, settings.negative_sampling,
                                       torch.Generator().manual_seed(settings.seed + 2))
        self.opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.world = distributed.world_size() if distributed.active() else 1
        loss = _BatchLoss(model, settings, self.sampler)
        self.loss = loss if self.world == 1 else distributed.data_parallel(loss, self.device)

    def __call__(self, train: SessionTensors, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Step on the sessions ``idx`` (on the CPU); this rank's loss and the sessions it fitted on."""
        batch = self.sampler(train.rows(idx.to(self.device)).trim(self.n_items))
        share = None
        if self.world > 1:
            batch, share, idx = self._share(batch, idx)
        loss = self.loss(batch, share)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), idx

    def _share(self, batch: SessionTensors, idx: Tensor) -> tuple[SessionTensors, BatchShare, Tensor]:
        """This rank's rows of the global ``batch``, its :class:`BatchShare` and its sessions."""
        share = BatchShare({term: m.sum() for term, m in loss_masks(batch, self.n_items).items()}, self.world)
        mine = torch.arange(len(idx)).tensor_split(self.world)[distributed.rank()]
        if len(mine) == 0:  # fewer users than ranks (a short last batch): a row that counts nowhere
            first = torch.zeros(1, dtype=torch.long, device=self.device)
            return _blank(batch.rows(first).trim(self.n_items)), share, idx[:0]
        return batch.rows(mine.to(self.device)).trim(self.n_items), share, idx[mine]


def _epochs(model: nn.Module, train: SessionTensors, interactions: Interactions,
            settings: TrainingSettings) -> Iterator[tuple[float, Tensor]]:
    """Fit epoch after epoch (up to ``settings.epochs``; the caller stops early): yields each
    epoch's mean training loss of its global mini-batches and the sessions this rank fitted on.
    Every rank makes the same batch order (the same seed)."""
    steps = _Steps(model, interactions, settings)
    g = torch.Generator().manual_seed(settings.seed)
    lengths = (train.item < interactions.n_items).sum(1).cpu()
    for _ in range(settings.epochs):
        done = [steps(train, idx) for idx in batch_order(lengths, settings, g)]
        mean_loss = torch.stack([loss for loss, _ in done]).mean()
        yield distributed.mean_over_ranks(mean_loss), torch.cat([seen for _, seen in done])


def _ranking_task(interactions: Interactions, settings: TrainingSettings,
                  ranking_users: int) -> NextItemTask | None:
    """Check the validation split; the ranking task of ``early_stopping=ndcg@10`` (``None`` for ``loss``)."""
    if interactions.valid.empty:
        raise RecrlError("the validation split is empty: the behavior model needs it for early stopping")
    if settings.early_stopping != "ndcg@10":
        return None
    task = build_task(interactions.train, interactions.valid, interactions.n_items, settings.max_len,
                      max_users=ranking_users, seed=settings.seed)
    if task is None:
        raise RecrlError("behavior.training.early_stopping=ndcg@10 needs clicked validation rows; use loss")
    return task


def _fit_tensors(model: nn.Module, interactions: Interactions,
                 settings: TrainingSettings) -> tuple[SessionTensors, SessionTensors]:
    """:func:`training_tensors` with the signals ``model`` has heads for."""
    signals = getattr(model, "signal_names", None)
    return training_tensors(interactions, settings.max_len, settings.seed, signals)


def _lead(model: nn.Module, interactions: Interactions, settings: TrainingSettings) -> None:
    """Rank 0 under torchrun: send the other ranks the unfitted model, the data and the settings,
    so that they fit along (:func:`serve_fits`)."""
    if not distributed.is_main():
        raise RecrlError("under torchrun only rank 0 calls fit_sequence_model; the other ranks call "
                         "recrl.behavior.fit.serve_fits() and fit along")
    distributed.init_once()
    buffer = io.BytesIO()
    torch.save({"model": model, "interactions": interactions, "settings": settings}, buffer)
    distributed.send((next(model.parameters()).device.type, buffer.getvalue()))
    logger.info("data-parallel fit on %d ranks (%s): each mini-batch of %d users is split across them",
                distributed.world_size(), distributed.backend(), settings.batch_size)


def fit_sequence_model(model: nn.Module, interactions: Interactions, settings: TrainingSettings,
                       ranking_users: int = 1000, on_epoch: EpochCallback | None = None) -> FitReport:
    """Mini-batch Adam on the training rows; keep the weights of the best validation epoch.

    ``settings.early_stopping="loss"`` keeps the lowest validation loss; ``"ndcg@10"`` the
    highest full-ranking NDCG@10 of each validation user's clicked validation item given their
    training history (up to ``ranking_users`` users, fixed by the seed). On positive-only logs
    every batch gets fresh negatives (``settings.negative_sampling``). ``on_epoch`` receives
    every epoch's :class:`EpochStats`.

    Under torchrun (:mod:`recrl.distributed`) rank 0 calls this and the other ranks fit along
    (:func:`serve_fits`): each global mini-batch of ``batch_size`` users is split across the
    ranks, DistributedDataParallel averages the gradients (the update is the single-process one
    of the global batch, see :class:`BatchShare`), rank 0 validates and decides when every rank
    stops.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    task = _ranking_task(interactions, settings, ranking_users)
    if distributed.active():
        _lead(model, interactions, settings)
    train, valid = (t.to(device) for t in _fit_tensors(model, interactions, settings))
    model.prepare_fit(train, interactions)
    best, best_state, best_epoch, stale = float("-inf"), None, 0, 0
    n = train.item.shape[0]
    name = type(model).__name__
    logger.info("fitting behavior model %s on %d training sessions (up to %d epochs, early stopping on %s) "
                "on %s", name, n, settings.epochs, settings.early_stopping, device)
    bar = tqdm(total=settings.epochs, desc="fit behavior", leave=False, disable=None)
    for epoch, (train_loss, sessions) in enumerate(_epochs(model, train, interactions, settings), 1):
        score, val = _stopping_score(model, valid, task, interactions.n_items)
        bar.update()
        bar.set_postfix(valid=f"{score:.4f}")
        stale = 0 if score > best + 1e-5 else stale + 1
        if score >= best:  # ties keep the later, longer-trained weights (NDCG saturates on small data)
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(EpochStats(epoch, train_loss, val["loss"], sessions))
        if distributed.agree(stale >= settings.patience):
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    _, final = _stopping_score(model, valid, task, interactions.n_items)
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("fitted behavior model %s in %.1fs: best epoch %d of %d, valid loss %.4f, click AUC %.4f",
                name, seconds, best_epoch, epoch, final["loss"], final["click_auc"])
    return FitReport(epochs=epoch, best_epoch=best_epoch, seconds=seconds, valid_loss=final["loss"],
                     valid_click_logloss=final["click_logloss"], valid_click_auc=final["click_auc"],
                     valid_leave_logloss=final["leave_logloss"], valid_leave_auc=final["leave_auc"],
                     train_sessions=n, valid_sessions=int(valid.item.shape[0]),
                     early_stopping=settings.early_stopping, valid_ndcg10=final.get("ndcg@10", float("nan")))


def serve_fits(on_epoch: EpochCallback | None = None) -> int:
    """Ranks > 0 under torchrun: fit along every behavior model rank 0 fits
    (:func:`fit_sequence_model`) until rank 0 releases this rank (:func:`recrl.distributed.release`);
    returns the number of fits. Writes nothing; ``on_epoch`` receives every epoch's :class:`EpochStats`."""
    distributed.init_once()
    served = 0
    while (message := distributed.receive()) is not None:
        _follow(*message, on_epoch=on_epoch)
        served += 1
    distributed.released()
    return served


def _follow(device_kind: str, payload: bytes, on_epoch: EpochCallback | None) -> None:
    """Fit this rank's parts of one model rank 0 sent; rank 0 validates and says when to stop."""
    device = distributed.local_device(device_kind)
    # rank 0 of this job pickled it a moment ago (not a file from elsewhere): a full unpickle is safe
    fit = torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    model, interactions, settings = fit["model"], fit["interactions"], fit["settings"]
    train = _fit_tensors(model, interactions, settings)[0].to(device)
    model.prepare_fit(train, interactions)
    for epoch, (train_loss, sessions) in enumerate(_epochs(model, train, interactions, settings), 1):
        if on_epoch is not None:
            on_epoch(EpochStats(epoch, train_loss, math.nan, sessions))
        if distributed.agree(False):
            break
