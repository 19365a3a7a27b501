"""Logging propensities for off-policy evaluation: a fitted logging-policy model, its calibration,
and the per-row propensities OPE uses (logged where the data records them, estimated elsewhere).

The logging policy is modelled as a softmax over the whole catalogue given the observation a
policy sees at each logged row (:class:`~recrl.types.Obs`: the last ``history_len`` items with
their clicks), see :class:`LoggingPolicyModel`::

    logits(item | obs) = bias[item] + <h(obs), e_out[item]>
    h(obs) = sum_l a_l e_in[item_l, click_l] / sum_l a_l       (real history slots only)

with one input embedding per (item, clicked) pair, learned recency weights ``a_l = exp(w_l)``
per history slot and ``h = 0`` without history, where the model is a plain softmax of the item
biases: fitted by maximum likelihood, the (smoothed) logged item frequencies.

:func:`fit_logging_policy` fits it with full-softmax cross-entropy on the training rows and
early stopping on the validation rows' log-loss; :func:`calibration` measures it on held-out
rows; :func:`fill_propensities` gives each row of a log its propensity and says where each came
from.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.algos.logged import LoggedSteps, logged_steps
from recrl.data.reader import propensity_problems
from recrl.types import Interactions, Obs, RecrlError, Response

SOURCES = ("logged", "estimated")
"""Where a row's propensity came from (:func:`fill_propensities`)."""
MODES = ("auto", "logged", "estimated")
"""How :func:`fill_propensities` chooses: logged where known (``auto``), logged only, estimated only."""
_CHUNK_ELEMS = 1 << 22  # rows x items scored at once by calibration() and probs_in_chunks()


def _no_reward(response: Response) -> Tensor:
    """The reward ``logged_steps`` needs but propensity fitting ignores: the click."""
    return response.click[:, 0]


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class LoggingPolicyModel(nn.Module):
    """P(logged item | observation) over the whole catalogue (see the module docstring).

    Args:
        n_items: catalogue size; history slots holding ``n_items`` are padding.
        history_len: history slots ``L`` of the observations it is fitted on (0: context-free).
        dim: embedding width.
        generator: initialises the history embeddings (the global torch seed is never touched);
            the item embeddings start at 0, so a fresh model ignores the history until fitting
            finds it helps.

    Example::

        model = fit_logging_policy(splits.interactions, history_len=10)
        p = model.propensity(steps.transitions.obs, steps.transitions.action[:, 0])
    """

    def __init__(self, n_items: int, history_len: int, dim: int = 32,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_items < 1 or history_len < 0 or dim < 1:
            raise RecrlError(f"logging policy model: n_items={n_items}, history_len={history_len} and "
                             f"dim={dim} must be >= 1, >= 0 and >= 1")
        self.n_items, self.history_len, self.dim = n_items, history_len, dim
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        history = torch.randn(2 * n_items + 1, dim, generator=g) * dim ** -0.5
        history[2 * n_items] = 0.0  # padding
        self.history_emb = nn.Parameter(history)
        self.item_emb = nn.Parameter(torch.zeros(n_items, dim))  # starts as the bias-only model
        self.position = nn.Parameter(torch.zeros(max(history_len, 1)))
        self.fit_info: dict[str, Any] = {}

    def state(self, obs: Obs) -> Tensor:
        """``[B, dim]`` weighted mean of the history slots' embeddings (0 without history)."""
        items = obs.items.reshape(obs.batch_size, -1)
        if items.shape[1] == 0:
            return torch.zeros(obs.batch_size, self.dim, device=self.item_bias.device)
        clicks = obs.clicks.reshape(items.shape).to(items.device)
        real = items < self.n_items
        idx = torch.where(real, items + self.n_items * (clicks > 0).long(), 2 * self.n_items)
        slots = torch.arange(items.shape[1], device=items.device) % self.position.shape[0]
        weight = self.position.exp()[slots][None, :] * real.float()
        norm = weight.sum(1, keepdim=True).clamp_min(1e-12)
        embedded = F.embedding(idx, self.history_emb, padding_idx=2 * self.n_items)
        return torch.einsum("bl,bld->bd", weight / norm, embedded)

    def forward(self, obs: Obs) -> Tensor:
        """Logits ``[B, n_items]`` of the logged item."""
        return self.item_bias + self.state(obs) @ self.item_emb.T

    @torch.no_grad()
    def probs(self, obs: Obs) -> Tensor:
        """P(item | obs) ``[B, n_items]`` (rows sum to 1)."""
        return torch.softmax(self(obs.to(self.item_bias.device)), dim=1)

    @torch.no_grad()
    def propensity(self, obs: Obs, items: Tensor) -> Tensor:
        """P(``items`` ``[B]`` | obs) ``[B]``, in chunks of bounded memory."""
        out = []
        for start, stop in _chunks(obs.batch_size, self.n_items):
            rows = torch.arange(start, stop, device=obs.items.device)
            logp = torch.log_softmax(self(obs.index(rows).to(self.item_bias.device)), dim=1)
            out.append(logp.gather(1, items[start:stop].to(logp.device).long()[:, None])[:, 0].exp())
        return torch.cat(out) if out else torch.zeros(0, device=self.item_bias.device)


def _chunks(n_rows: int, n_items: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of at most :data:`_CHUNK_ELEMS` row x item scores each."""
    size = max(1, _CHUNK_ELEMS // max(n_items, 1))
    return [(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


# ---------------------------------------------------------------------------------------------
# Observations of held-out rows, with the earlier rows of the same users as history
# ---------------------------------------------------------------------------------------------

def history_steps(log: pd.DataFrame, n_items: int, history_len: int, device: torch.device | str = "cpu",
                  context: pd.DataFrame | None = None) -> LoggedSteps:
    """The logged steps of the rows of ``log``, in ``log``'s order, whose histories also hold the
    ``context`` rows of the same user that come before them in time (e.g. the training rows
    before a validation row of a row-split dataset). Without ``context``, :func:`logged_steps`.
    """
    if context is None or context.empty:
        return logged_steps(log, n_items, history_len, _no_reward, device)
    if log.empty:
        raise RecrlError("no logged rows to score: the log is empty")
    both = pd.concat([context.assign(_target=-1), log.assign(_target=np.arange(len(log)))],
                     ignore_index=True)
    both = both.sort_values(["user", "time"], kind="stable").reset_index(drop=True)
    steps = logged_steps(both, n_items, history_len, _no_reward, device)
    target = both["_target"].to_numpy()
    rows = np.flatnonzero(target >= 0)
    rows = rows[np.argsort(target[rows], kind="stable")]
    picked = steps.index(torch.as_tensor(rows, device=steps.device))
    return LoggedSteps(transitions=picked.transitions, propensity=picked.propensity,
                       session=picked.session, row=torch.arange(len(rows), device=steps.device))


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoggingPolicySettings:
    """How :func:`fit_logging_policy` fits (every field is a keyword of it).

    Attributes:
        dim: embedding width.
        batch_size: rows per gradient step.
        lr: Adam's learning rate.
        weight_decay: L2 penalty on the embeddings (not the item biases).
        max_epochs: passes over the training rows at most.
        patience: epochs without a better validation log-loss before stopping.
        holdout_share: share of training users held out for early stopping when the log has no
            validation rows.
    """

    dim: int = 32
    batch_size: int = 1024
    lr: float = 0.01
    weight_decay: float = 1e-5
    max_epochs: int = 30
    patience: int = 2
    holdout_share: float = 0.1

    @staticmethod
    def parse(settings: dict[str, Any]) -> LoggingPolicySettings:
        """Settings from keywords; an unknown or out-of-range one is a one-line error."""
        known = {f.name for f in fields(LoggingPolicySettings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise RecrlError(f"fit_logging_policy: unknown setting(s) {', '.join(unknown)}; "
                             f"use {', '.join(sorted(known))}")
        out = LoggingPolicySettings(**settings)
        if min(out.dim, out.batch_size, out.max_epochs) < 1 or out.patience < 0 or out.lr <= 0 \
                or out.weight_decay < 0 or not 0 < out.holdout_share < 1:
            raise RecrlError(f"fit_logging_policy: bad settings {asdict(out)}; dim, batch_size and "
                             "max_epochs must be >= 1, lr > 0, weight_decay and patience >= 0, "
                             "holdout_share in (0, 1)")
        return out


@dataclass
class _Data:
    """Training and stopping rows as observations and logged items."""

    train: LoggedSteps
    stop: LoggedSteps
    stop_source: str = field(default="valid")


def _fit_data(interactions: Interactions, history_len: int, device: torch.device | str,
              settings: LoggingPolicySettings, g: torch.Generator) -> _Data:
    """The training rows and the early-stopping rows (``valid``, else held-out training users)."""
    n_items, train = interactions.n_items, interactions.train
    if train.empty:
        raise RecrlError("fit_logging_policy: the training split is empty; nothing to fit the logging "
                         "policy on")
    if not interactions.valid.empty:
        return _Data(train=history_steps(train, n_items, history_len, device),
                     stop=history_steps(interactions.valid, n_items, history_len, device, context=train))
    users = train["user"].unique()
    held = users[torch.rand(len(users), generator=g).numpy() < settings.holdout_share]
    is_held = train["user"].isin(held).to_numpy()
    if is_held.all() or not is_held.any():
        return _Data(train=history_steps(train, n_items, history_len, device),
                     stop=history_steps(train, n_items, history_len, device), stop_source="train")
    return _Data(train=history_steps(train[~is_held], n_items, history_len, device),
                 stop=history_steps(train[is_held], n_items, history_len, device),
                 stop_source="held-out training users")


def _mean_log_loss(model: LoggingPolicyModel, steps: LoggedSteps) -> float:
    """Mean ``-log P(logged item | obs)`` over ``steps``."""
    p = model.propensity(steps.transitions.obs, steps.transitions.action[:, 0])
    return float(-torch.log(p.double().clamp_min(1e-300)).mean())


def _init_bias(model: LoggingPolicyModel, items: Tensor) -> None:
    """Item biases at the log of the smoothed training frequencies (the context-free optimum)."""
    counts = torch.bincount(items, minlength=model.n_items).double() + 0.5
    with torch.no_grad():
        model.item_bias.copy_(torch.log(counts / counts.sum()).float())


def _epoch(model: LoggingPolicyModel, steps: LoggedSteps, optimizer: torch.optim.Optimizer,
           batch_size: int, g: torch.Generator) -> None:
    """One shuffled pass of full-softmax cross-entropy steps."""
    model.train()
    order = torch.randperm(len(steps), generator=g).to(steps.device)
    for start in range(0, len(steps), batch_size):
        batch = steps.index(order[start:start + batch_size])
        loss = F.cross_entropy(model(batch.transitions.obs), batch.transitions.action[:, 0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def fit_logging_policy(interactions: Interactions, history_len: int, device: torch.device | str = "cpu",
                       seed: int = 0, **settings: Any) -> LoggingPolicyModel:
    """Fit a :class:`LoggingPolicyModel` on ``interactions.train`` with early stopping.

    Each epoch is one shuffled pass of full-softmax cross-entropy over the training rows; after it
    the mean log-loss of the logged items of the validation rows (their histories include the
    user's earlier training rows) is measured, and fitting stops after ``patience`` epochs without
    improvement, keeping the best weights. Without validation rows, a ``holdout_share`` of the
    training users stops it instead. All randomness comes from a ``torch.Generator`` seeded with
    ``seed``. ``settings`` are :class:`LoggingPolicySettings` fields. ``model.fit_info`` records
    the epochs, losses, rows and seconds.
    """
    opts = LoggingPolicySettings.parse(settings)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    data = _fit_data(interactions, history_len, device, opts, g)
    model = LoggingPolicyModel(interactions.n_items, history_len, opts.dim, g).to(device)
    _init_bias(model, data.train.transitions.action[:, 0])
    decay = [p for name, p in model.named_parameters() if name != "item_bias"]
    optimizer = torch.optim.Adam([{"params": [model.item_bias], "weight_decay": 0.0},
                                  {"params": decay, "weight_decay": opts.weight_decay}], lr=opts.lr)
    initial = _mean_log_loss(model, data.stop)
    best, best_epoch, losses = initial, 0, []
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for epoch in range(1, opts.max_epochs + 1):
        _epoch(model, data.train, optimizer, opts.batch_size, g)
        losses.append(_mean_log_loss(model, data.stop))
        if losses[-1] < best - 1e-6:
            best, best_epoch = losses[-1], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch > opts.patience:
            break
    model.load_state_dict(best_state)
    model.fit_info = {"epochs": len(losses), "best_epoch": best_epoch, "stop_log_loss": best,
                      "frequency_log_loss": initial, "stop_rows": data.stop_source,
                      "train_rows": len(data.train), "stop_rows_count": len(data.stop),
                      "seconds": time.perf_counter() - start, "settings": asdict(opts)}
    return model


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

def bin_edges(n_items: int, n_bins: int = 15) -> np.ndarray:
    """``n_bins + 1`` probability bin edges: ``0``, then equal steps in ``log10 p`` from
    ``0.01 / n_items`` to 1 (probabilities over a catalogue are mostly near ``1 / n_items``, so
    equal-width bins would put nearly every one in the first bin)."""
    if n_bins < 2:
        raise RecrlError(f"calibration: n_bins={n_bins} must be at least 2")
    low = min(0.01 / n_items, 0.01)
    return np.concatenate([[0.0], np.geomspace(low, 1.0, n_bins)])


def _steps_of(model: LoggingPolicyModel, data: LoggedSteps | pd.DataFrame,
              context: pd.DataFrame | None) -> LoggedSteps:
    """``data`` as logged steps (a log is turned into the model's observations)."""
    if isinstance(data, LoggedSteps):
        return data
    return history_steps(data, model.n_items, model.history_len, model.item_bias.device, context)


@torch.no_grad()
def _reliability(model: LoggingPolicyModel, steps: LoggedSteps,
                 edges: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per bin: summed predicted probability, logged-item count, (row, item) count; and the
    logged item's probability per row. Chunked: at most :data:`_CHUNK_ELEMS` scores at once."""
    n_bins = edges.numel() - 1
    sums = torch.zeros(3, n_bins, dtype=torch.float64, device=edges.device)
    logged = []
    obs, items = steps.transitions.obs, steps.transitions.action[:, 0]
    for start, stop in _chunks(len(steps), model.n_items):
        rows = torch.arange(start, stop, device=steps.device)
        p = model.probs(obs.index(rows)).double()
        hit = torch.zeros_like(p).scatter_(1, items[start:stop].to(p.device)[:, None], 1.0)
        which = (torch.bucketize(p.reshape(-1), edges[1:-1], right=True)).to(edges.device)
        for k, values in enumerate((p.reshape(-1), hit.reshape(-1), torch.ones_like(hit).reshape(-1))):
            sums[k] += torch.bincount(which, weights=values.to(edges.device), minlength=n_bins)
        logged.append(p.gather(1, items[start:stop].to(p.device)[:, None])[:, 0])
    return sums[0], sums[1], sums[2], torch.cat(logged)


def _agreement(estimated: np.ndarray, logged: np.ndarray) -> dict[str, Any]:
    """How the estimated propensities agree with the logged ones, on rows where those are known."""
    known = np.isfinite(logged) & (logged > 0)
    if not known.any():
        return {"rows": 0}
    ratio = np.log(estimated[known]) - np.log(logged[known])
    a, b = np.log(estimated[known]), np.log(logged[known])
    pearson = float(np.corrcoef(a, b)[0, 1]) if known.sum() > 1 and a.std() > 0 and b.std() > 0 \
        else float("nan")
    return {"rows": int(known.sum()), "pearson_log": pearson,
            "median_abs_log_ratio": float(np.median(np.abs(ratio))),
            "mean_abs_log_ratio": float(np.mean(np.abs(ratio))),
            "mean_log_ratio": float(np.mean(ratio))}


def calibration(model: LoggingPolicyModel, data: LoggedSteps | pd.DataFrame, *,
                context: pd.DataFrame | None = None, n_bins: int = 15) -> dict[str, Any]:
    """Multiclass calibration of ``model`` on held-out rows (``LoggedSteps`` or a log).

    Every (row, item) pair is one prediction ``p = P(item | obs)`` with outcome 1 for the logged
    item and 0 for the others. Predictions fall into ``n_bins`` bins (:func:`bin_edges`); each bin
    reports its mean predicted probability, observed frequency of the logged item and count.

    Returns a dict: ``rows``; ``ece``: the expected calibration error ``sum_b n_b / n |mean p_b -
    freq_b|`` over all ``rows x n_items`` pairs (tiny by construction, as most pairs have tiny
    probabilities; ``ece * n_items`` is the per-row count of logged items predicted in the wrong
    bins); ``bins``: the reliability table (``low``, ``high``, ``mean_predicted``, ``observed``,
    ``count``; empty bins left out); ``log_loss``: mean ``-log p`` of the logged items, next to
    ``uniform_log_loss = log n_items``; ``logged``: agreement with the rows' logged propensities
    where known (``rows``; ``pearson_log``: Pearson correlation of the log propensities;
    ``median_abs_log_ratio``, ``mean_abs_log_ratio`` and ``mean_log_ratio`` of estimated / logged).
    A log's rows get histories from ``context`` rows of the same users before them (see
    :func:`history_steps`).
    """
    steps = _steps_of(model, data, context)
    if len(steps) == 0:
        raise RecrlError("calibration: no held-out rows to measure on")
    edges_np = bin_edges(model.n_items, n_bins)
    edges = torch.as_tensor(edges_np, dtype=torch.float64, device=model.item_bias.device)
    pred, hits, count, logged_p = _reliability(model, steps, edges)
    nonempty = count > 0
    gap = torch.where(nonempty, (pred - hits).abs() / count.clamp_min(1), torch.zeros_like(pred))
    bins = [{"low": float(edges_np[b]), "high": float(edges_np[b + 1]),
             "mean_predicted": float(pred[b] / count[b]), "observed": float(hits[b] / count[b]),
             "count": int(count[b])} for b in range(n_bins) if bool(nonempty[b])]
    est = logged_p.cpu().numpy()
    return {"rows": len(steps), "n_items": model.n_items,
            "ece": float((gap * count).sum() / count.sum()), "bins": bins,
            "log_loss": float(-np.log(np.clip(est, 1e-300, None)).mean()),
            "uniform_log_loss": math.log(model.n_items),
            "logged": _agreement(est, steps.propensity.double().cpu().numpy())}


# ---------------------------------------------------------------------------------------------
# Per-row propensities for OPE
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilledPropensities:
    """Each row's propensity and where it came from.

    Attributes:
        propensity: ``[N]`` the logging probability of each row's item, all in (0, 1] (estimates
            at least 1e-12).
        source: ``[N]`` ``"logged"`` or ``"estimated"`` per row.
        counts: rows per source, ``{"logged": ..., "estimated": ...}`` (both keys always there).
    """

    propensity: np.ndarray
    source: np.ndarray
    counts: dict[str, int]


def _logged_values(log: pd.DataFrame) -> np.ndarray:
    """The log's ``propensity`` column (NaN where unknown or absent); other values outside (0, 1]
    are a one-line error."""
    if "propensity" not in log:
        return np.full(len(log), np.nan)
    bad = sum(propensity_problems(log["propensity"]).values())
    if bad:
        raise RecrlError(f"fill_propensities: {bad} row(s) of the log's propensity column are not a "
                         "probability in (0, 1]; fix them or set them to NaN (unknown) to estimate them")
    return pd.to_numeric(log["propensity"], errors="coerce").to_numpy(dtype=np.float64)


def fill_propensities(log: pd.DataFrame, model: LoggingPolicyModel | None, *,
                      context: pd.DataFrame | None = None, mode: str = "auto") -> FilledPropensities:
    """The propensity of every row of ``log``: the logged one where the data records it
    (``mode="auto"``), else the ``model``'s estimate given the row's history.

    ``mode="estimated"`` estimates every row (e.g. to compare with the logged ones);
    ``mode="logged"`` uses the logged ones only and is an error when some are missing. Rows with
    a NaN propensity are estimated and counted in ``counts["estimated"]``, never dropped.
    ``context``: earlier rows of the same users (e.g. the training rows when ``log`` is a
    validation or test split), which the histories include (:func:`history_steps`).
    """
    if mode not in MODES:
        raise RecrlError(f"fill_propensities: mode={mode!r}; use one of {', '.join(MODES)}")
    logged = _logged_values(log)
    need = np.ones(len(log), dtype=bool) if mode == "estimated" else np.isnan(logged)
    if need.any() and mode == "logged":
        raise RecrlError(f"fill_propensities: mode=logged but {int(need.sum())} row(s) have no logged "
                         "propensity; use mode=auto to estimate them")
    values = logged.copy()
    if need.any():
        if model is None:
            raise RecrlError(f"fill_propensities: {int(need.sum())} row(s) have no logged propensity and "
                             "no logging-policy model was given; fit one with fit_logging_policy")
        steps = history_steps(log, model.n_items, model.history_len, model.item_bias.device, context)
        rows = torch.as_tensor(np.flatnonzero(need), device=steps.device)
        picked = steps.index(rows)
        est = model.propensity(picked.transitions.obs, picked.transitions.action[:, 0])
        values[need] = est.double().cpu().numpy().clip(1e-12, 1.0)  # never 0, even if a softmax underflows
    source = np.where(need, "estimated", "logged")
    return FilledPropensities(propensity=values, source=source,
                              counts={"logged": int((~need).sum()), "estimated": int(need.sum())})
