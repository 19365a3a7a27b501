"""Supervised fitting of sequence user models on logged sessions, with early stopping."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from recrl.metrics.ranking import auc, logloss
from recrl.types import Interactions, RecrlError


@dataclass(frozen=True)
class SessionTensors:
    """Logged sessions padded to ``[S, T]`` (slate size 1); ``mask`` marks real steps."""

    item: Tensor
    click: Tensor
    conversion: Tensor
    rating: Tensor
    leave: Tensor
    mask: Tensor

    def rows(self, idx: Tensor) -> SessionTensors:
        """Sessions ``idx``."""
        return SessionTensors(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def to(self, device: torch.device) -> SessionTensors:
        """The same sessions on ``device``."""
        return SessionTensors(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def session_tensors(log: pd.DataFrame, n_items: int) -> SessionTensors:
    """Pad the sessions of ``log`` (sorted by session, step) into tensors."""
    if log.empty:
        raise RecrlError("no logged sessions to fit the behavior model on: the split is empty")
    codes, sessions = pd.factorize(log["session"], sort=True)
    position = log.groupby(codes).cumcount().to_numpy()
    s, t = len(sessions), int(position.max()) + 1
    item = np.full((s, t), n_items, dtype=np.int64)
    item[codes, position] = log["item"].to_numpy()

    def dense(col: str) -> Tensor:
        out = np.zeros((s, t), dtype=np.float32)
        out[codes, position] = np.nan_to_num(log[col].to_numpy(dtype=np.float32))
        return torch.from_numpy(out)

    mask = np.zeros((s, t), dtype=np.float32)
    mask[codes, position] = 1.0
    return SessionTensors(item=torch.from_numpy(item), click=dense("click"),
                          conversion=dense("conversion"), rating=dense("rating"),
                          leave=dense("leave"), mask=torch.from_numpy(mask))


class SequenceModel(Protocol):
    """What :func:`fit_sequence_model` needs from a model."""

    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits ``[S, T]`` for ``click``, ``conversion``, ``rating``, ``leave``."""
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

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON reports."""
        return asdict(self)


def sequence_loss(logits: dict[str, Tensor], batch: SessionTensors) -> Tensor:
    """Masked sum of BCE (click, leave), BCE on clicked steps (conversion) and rating MSE."""
    m = batch.mask
    clicked = m * batch.click

    def masked_bce(logit: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        return (loss * weight).sum() / weight.sum().clamp(min=1.0)

    rating_pred = 1.0 + 4.0 * torch.sigmoid(logits["rating"])
    rating_loss = ((rating_pred - batch.rating) ** 2 * clicked).sum() / clicked.sum().clamp(min=1.0)
    return (masked_bce(logits["click"], batch.click, m)
            + masked_bce(logits["leave"], batch.leave, m)
            + masked_bce(logits["conversion"], batch.conversion, clicked)
            + 0.1 * rating_loss)


@torch.no_grad()
def _validate(model: nn.Module, data: SessionTensors) -> dict[str, float]:
    model.eval()
    logits = model.sequence_logits(data)
    m = data.mask.bool()
    click_p = torch.sigmoid(logits["click"][m])
    leave_p = torch.sigmoid(logits["leave"][m])
    model.train()
    return {"loss": float(sequence_loss(logits, data)),
            "click_logloss": logloss(click_p, data.click[m]),
            "click_auc": auc(click_p, data.click[m]),
            "leave_logloss": logloss(leave_p, data.leave[m]),
            "leave_auc": auc(leave_p, data.leave[m])}


def fit_sequence_model(model: nn.Module, interactions: Interactions, *, lr: float,
                       weight_decay: float, epochs: int, batch_size: int, patience: int,
                       seed: int) -> FitReport:
    """Mini-batch Adam on the training users; keep the weights of the best validation loss."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    train = session_tensors(interactions.subset("train"), interactions.n_items).to(device)
    valid = session_tensors(interactions.subset("valid"), interactions.n_items).to(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch, stale = float("inf"), None, 0, 0
    n = train.item.shape[0]
    bar = tqdm(range(epochs), desc="fit behavior", leave=False, disable=None)
    for epoch in bar:
        for idx in torch.randperm(n, generator=g).split(batch_size):
            batch = train.rows(idx.to(device))
            loss = sequence_loss(model.sequence_logits(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = _validate(model, valid)
        bar.set_postfix(valid_loss=f"{val['loss']:.4f}")
        if val["loss"] < best - 1e-5:
            best, best_epoch, stale = val["loss"], epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    final = _validate(model, valid)
    model.eval()
    return FitReport(epochs=epoch + 1, best_epoch=best_epoch,
                     seconds=time.perf_counter() - start, valid_loss=final["loss"],
                     valid_click_logloss=final["click_logloss"], valid_click_auc=final["click_auc"],
                     valid_leave_logloss=final["leave_logloss"], valid_leave_auc=final["leave_auc"],
                     train_sessions=n, valid_sessions=int(valid.item.shape[0]))
