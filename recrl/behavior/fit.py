"""Supervised fitting of sequence user models on logged sessions, with early stopping."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

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


def sequence_loss(logits: dict[str, Tensor], batch: SessionTensors) -> Tensor:
    """Masked BCE for clicks (plus sampled negatives), leaving and conversions given a click,
    squared error of ratings given a click and each user signal's own loss of its values given a
    click (:meth:`recrl.env.signals.Signal.fit_loss`; ``watch``: 0.1 x Huber loss of
    ``softplus(logit)``, robust to the long tail of watch ratios)."""
    m = batch.mask
    clicked = m * batch.click
    rating_pred = 1.0 + 4.0 * torch.sigmoid(logits["rating"])
    rating_loss = ((rating_pred - batch.rating) ** 2 * clicked).sum() / clicked.sum().clamp(min=1.0)
    loss = (_masked_bce(logits["click"], batch.click, m)
            + _masked_bce(logits["leave"], batch.leave, batch.leave_mask)
            + _masked_bce(logits["conversion"], batch.conversion, clicked)
            + 0.1 * rating_loss)
    if "click_negative" in logits:
        loss = loss + _masked_bce(logits["click_negative"], torch.zeros_like(m), m)
    for name, (values, mask) in (batch.signals or {}).items():
        if name in logits:  # a model built before the signal was registered has no head for it
            loss = loss + SIGNALS[name].fit_loss(logits[name], values, mask)
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
                       sampler: NegativeSampler, n_negatives: int) -> Tensor:
    """Cross-entropy of every clicked item against the catalogue, or against ``n_negatives``
    items shared by the batch (log-q corrected, accidental hits masked).

    ``click_state`` ``[S, T, H]`` is what the click head reads before each step; the head must
    score the whole catalogue (``head(h)``), given items (``head(h, items)``) and items shared
    by all rows (``head.score_shared(h, items)``).
    """
    n_items = sampler.n_items
    target = (batch.mask * batch.click).bool() & (batch.item < n_items)
    h, positive = click_state[target], batch.item[target]
    if len(positive) == 0:
        return click_state.sum() * 0.0
    head = model.click_head
    if n_negatives == 0 or n_negatives >= n_items:
        return F.cross_entropy(head(h).float(), positive)
    negative, log_q = sampler.shared(n_negatives)
    negative, log_q = negative.to(h.device), log_q.to(h.device)
    pos_logit = head(h, positive[:, None])[:, 0].float() - sampler.log_prob(positive)
    neg_logit = head.score_shared(h, negative).float() - log_q
    neg_logit = neg_logit.masked_fill(negative[None] == positive[:, None], float("-inf"))
    logits = torch.cat([pos_logit[:, None], neg_logit], 1)
    return F.cross_entropy(logits, torch.zeros_like(positive))


def batch_loss(model: nn.Module, batch: SessionTensors, settings: TrainingSettings,
               sampler: NegativeSampler) -> Tensor:
    """The training loss of one mini-batch under ``settings`` (see :class:`TrainingSettings`)."""
    with settings.autocast(batch.item.device):
        logits = model.sequence_logits(batch)
        loss = sequence_loss({k: v.float() for k, v in logits.items()}, batch)
        if settings.loss == "bpr":
            if "click_negative" not in logits:
                raise RecrlError("behavior.training.loss=bpr needs a positive-only log (it ranks clicks "
                                 "above sampled negatives); use bce or softmax")
            click, negative = logits["click"].float(), logits["click_negative"].float()
            # sequence_loss without its two click BCE terms: the other heads' terms stay
            loss = loss - _masked_bce(click, batch.click, batch.mask) - _masked_bce(
                negative, torch.zeros_like(batch.mask), batch.mask)
            positive = batch.mask * batch.click
            pairwise = -F.logsigmoid(click - negative)
            loss = loss + (pairwise * positive).sum() / positive.sum().clamp(min=1.0)
        if settings.loss == "softmax":
            loss = loss + softmax_click_loss(model, logits["click_state"], batch, sampler,
                                             settings.softmax_negatives)
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


def fit_sequence_model(model: nn.Module, interactions: Interactions, settings: TrainingSettings,
                       ranking_users: int = 1000) -> FitReport:
    """Mini-batch Adam on the training rows; keep the weights of the best validation epoch.

    ``settings.early_stopping="loss"`` keeps the lowest validation loss; ``"ndcg@10"`` the
    highest full-ranking NDCG@10 of each validation user's clicked validation item given their
    training history (up to ``ranking_users`` users, fixed by the seed). On positive-only logs
    every batch gets fresh negatives (``settings.negative_sampling``).
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    if interactions.valid.empty:
        raise RecrlError("the validation split is empty: the behavior model needs it for early stopping")
    task = None
    if settings.early_stopping == "ndcg@10":
        task = build_task(interactions.train, interactions.valid, interactions.n_items, settings.max_len,
                          max_users=ranking_users, seed=settings.seed)
        if task is None:
            raise RecrlError("behavior.training.early_stopping=ndcg@10 needs clicked validation rows; "
                             "use loss")
    signals = getattr(model, "signal_names", None)  # the signals the model has heads for
    train, valid = (t.to(device) for t in training_tensors(interactions, settings.max_len, settings.seed,
                                                           signals))
    model.prepare_fit(train, interactions)
    g = torch.Generator().manual_seed(settings.seed)
    sampler = NegativeSampler(interactions, settings.negative_sampling,
                              torch.Generator().manual_seed(settings.seed + 2))
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best, best_state, best_epoch, stale = float("-inf"), None, 0, 0
    n = train.item.shape[0]
    name = type(model).__name__
    logger.info("fitting behavior model %s on %d training sessions (up to %d epochs, early stopping on %s) "
                "on %s", name, n, settings.epochs, settings.early_stopping, device)
    bar = tqdm(range(settings.epochs), desc="fit behavior", leave=False, disable=None)
    lengths = (train.item < interactions.n_items).sum(1).cpu()
    for epoch in bar:
        for idx in batch_order(lengths, settings, g):
            batch = train.rows(idx.to(device)).trim(interactions.n_items)
            loss = batch_loss(model, sampler(batch), settings, sampler)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score, _ = _stopping_score(model, valid, task, interactions.n_items)
        bar.set_postfix(valid=f"{score:.4f}")
        stale = 0 if score > best + 1e-5 else stale + 1
        if score >= best:  # ties keep the later, longer-trained weights (NDCG saturates on small data)
            best, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        if stale >= settings.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    _, final = _stopping_score(model, valid, task, interactions.n_items)
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("fitted behavior model %s in %.1fs: best epoch %d of %d, valid loss %.4f, click AUC %.4f",
                name, seconds, best_epoch, epoch + 1, final["loss"], final["click_auc"])
    return FitReport(epochs=epoch + 1, best_epoch=best_epoch, seconds=seconds, valid_loss=final["loss"],
                     valid_click_logloss=final["click_logloss"], valid_click_auc=final["click_auc"],
                     valid_leave_logloss=final["leave_logloss"], valid_leave_auc=final["leave_auc"],
                     train_sessions=n, valid_sessions=int(valid.item.shape[0]),
                     early_stopping=settings.early_stopping, valid_ndcg10=final.get("ndcg@10", float("nan")))
