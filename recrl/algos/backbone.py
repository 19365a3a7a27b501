"""Large-model policies: the backbone a policy scores items with, where its weights start
(``algo.init_from``) and the KL leash that keeps RL fine-tuning close to where it started.

* :class:`Backbone`: how a policy encodes a history and scores items (``algo.encoder``: ``mlp``,
  ``gru`` or ``transformer``, with ``dim``, ``hidden``, ``layers``, ``heads``, the item tower's
  prior ``item_init`` and ``item_ids``).
* ``algo.init_from`` (:func:`initialise`): ``pretrain`` (a supervised next-item model fitted on
  the training logs, :func:`pretrained_state`, cached under ``<cache_dir>/pretrain/`` like the
  behavior model), ``behavior`` (the run's own SASRec behavior model, whose transformer and
  click head a ``transformer`` backbone of the same size copies exactly) or a run folder /
  checkpoint (a saved policy with the same backbone).
* :class:`KLPenalty`: ``kl_coef * KL(pi || pi_ref)`` against the frozen starting policy, with
  the adaptive coefficient of Ziegler et al. (2019) when ``kl_target`` is set.

References: Kang & McAuley. Self-attentive sequential recommendation. ICDM 2018. Ziegler et al.
Fine-tuning language models from human preferences. arXiv:1909.08593, 2019.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import recrl
from recrl.algos.logged import LoggedSteps, logged_steps
from recrl.algos.nets import (
    ItemScorer,
    adam,
    behavior_item_prior,
    gradient_step,
    history_encoder,
)
from recrl.algos.seeding import own_random_stream
from recrl.cachelock import build_once
from recrl.checkpoint import load_checkpoint, save_checkpoint
from recrl.types import AlgoContext, RecrlError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """How a policy encodes histories and scores items (the ``algo.*`` keys of the same names).

    Attributes:
        encoder: ``mlp`` (position-wise MLP), ``gru`` or ``transformer`` (SASRec-style, its item
            table shared with scoring).
        dim, hidden: state and item-vector width; the MLP/GRU hidden width.
        layers, heads: the transformer's depth and attention heads (``behavior=sasrec_large``'s
            size: ``dim=256 layers=4 heads=4``).
        item_init: the item tower's pretrained prior (:func:`~recrl.algos.nets.behavior_item_prior`).
        item_ids: ``False``: a transformer knows items by their prior (content) alone.
        summary: the MLP encoder's order-free history summary.

    Example::

        scorer = Backbone(encoder="transformer", dim=64).scorer(ctx)    # an ItemScorer
    """

    encoder: str = "mlp"
    dim: int = 32
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    item_init: str = "random"
    item_ids: bool = True
    summary: bool = False

    def __post_init__(self) -> None:
        if not self.item_ids and self.encoder != "transformer":
            raise RecrlError("algo.item_ids=false needs algo.encoder=transformer")

    def prior(self, ctx: AlgoContext) -> Tensor | None:
        """The item tower's prior ``[n_items, P]`` (``None``: ids only)."""
        return behavior_item_prior(ctx, self.item_init)

    def encoder_for(self, ctx: AlgoContext, prior: Tensor | None) -> nn.Module:
        """A fresh history encoder (weights from the current random stream)."""
        return history_encoder(self.encoder, ctx, self.dim, self.hidden, self.layers, self.heads,
                               item_prior=prior, summary=self.summary, item_ids=self.item_ids)

    def scorer(self, ctx: AlgoContext, prior: Tensor | None = None) -> ItemScorer:
        """A fresh :class:`ItemScorer` on ``ctx.device`` (``prior``: computed when not given)."""
        prior = self.prior(ctx) if prior is None else prior
        return ItemScorer(self.encoder_for(ctx, prior), ctx.n_items, self.dim, prior).to(ctx.device)


WEIGHTINGS = ("none", "return", "rating", "conversion", "watch")


@dataclass(frozen=True)
class PretrainSettings:
    """The supervised pretraining stage (``algo.pretrain``, ``conf/algo/pretrain/default.yaml``).

    A next-item model: the policy's own scorer fitted by cross-entropy to the item each logged
    click went to, given the history before it (the training split only; on logs of clicks
    only, such as Amazon reviews, every row). Like the behavior model it does not depend on the
    run's ``seed`` (its own ``seed``), so a sweep over seeds pretrains once.

    ``weighting="return"`` draws the clicked rows in proportion to ``exp(z / temperature)``,
    ``z`` the standardised logged return-to-go of the row's session from that row on (discount
    ``gamma``, the run's reward), as advantage-weighted regression weighs actions (Peng et al.,
    arXiv:1910.00177, 2019): the model imitates the clicks after which sessions went on paying,
    not every click alike.

    ``weighting="rating"`` (or ``conversion``, ``watch``) weighs each click the same way by the
    standardised outcome logged *after that click* instead: the model imitates the clicks that
    satisfied, as production recommenders train on likes or watch time rather than raw clicks
    (Covington et al., RecSys 2016). Where clicks and satisfaction part ways (clickbait), this
    target is the one that keeps users.

    Attributes:
        epochs: passes over the clicked rows (batches drawn with replacement).
        steps: Adam steps, in place of ``epochs`` when set.
        batch_size, lr: clicked rows per step, Adam's step size.
        seed: weight initialisation and batch order.
        weighting: ``none`` (every click alike), ``return``, or a logged outcome: ``rating``,
            ``conversion``, ``watch``.
        temperature: the weighting's temperature (lower: imitate only the best-scored clicks).
        gamma: the ``return`` weighting's discount.
    """

    epochs: float = 20.0
    steps: int | None = None
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    weighting: str = "none"
    temperature: float = 1.0
    gamma: float = 0.95

    def __post_init__(self) -> None:
        bad_steps = self.steps is not None and self.steps < 1
        if self.epochs <= 0 or bad_steps or self.batch_size < 1 or self.lr <= 0:
            raise RecrlError("algo.pretrain: epochs must be > 0, steps null or >= 1, batch_size >= 1, lr > 0")
        if self.weighting not in WEIGHTINGS or self.temperature <= 0 or not 0 <= self.gamma <= 1:
            raise RecrlError(f"algo.pretrain.weighting={self.weighting!r}: use one of "
                             f"{', '.join(WEIGHTINGS)}, with temperature > 0 and gamma in [0, 1]")

    def n_steps(self, rows: int) -> int:
        """Adam steps for ``rows`` clicked rows: ``steps``, or ``epochs`` passes of batches."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * rows / self.batch_size))


def pretrain_key(ctx: AlgoContext, backbone: Backbone, settings: PretrainSettings) -> str:
    """The cache key of a pretrained scorer: data, environment shape, backbone and settings."""
    blob = json.dumps({"data": ctx.data_key, "n_items": ctx.n_items, "history_len": ctx.history_len,
                       "slate_size": ctx.slate_size, "horizon": ctx.horizon,
                       "backbone": dataclasses.asdict(backbone), "pretrain": dataclasses.asdict(settings)},
                      sort_keys=True)
    return hashlib.sha256(f"{recrl.__version__}|{blob}".encode()).hexdigest()[:16]


def pretrained_state(ctx: AlgoContext, backbone: Backbone,
                     settings: PretrainSettings) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, report)`` of the pretrained next-item :class:`ItemScorer` (see
    :class:`PretrainSettings`), loaded from ``<ctx.cache_dir>/pretrain/<key>.pt`` or fitted and
    written there atomically (one process fits, parallel ones wait and load it)."""
    if ctx.cache_dir is None:
        return fit_next_item(ctx, backbone, settings)
    path = Path(ctx.cache_dir) / "pretrain" / f"{pretrain_key(ctx, backbone, settings)}.pt"

    def load() -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        if not path.is_file():
            return None
        try:
            payload = load_checkpoint(path, map_location=ctx.device)
        except RecrlError as err:
            logger.warning("pretrained policy cache %s unusable (%s); refitting", path, err)
            return None
        logger.info("pretrained policy: cache hit %s", path)
        return payload["state_dict"], {**payload["report"], "cached": True}

    def fit() -> tuple[dict[str, Tensor], dict[str, Any]]:
        state, report = fit_next_item(ctx, backbone, settings)
        save_checkpoint(path, {"state_dict": state, "report": report})
        return state, report

    return build_once(path, "pretrained policy", load, fit)[0]


def clicked_rows(ctx: AlgoContext, backbone: Backbone,
                 settings: PretrainSettings) -> tuple[LoggedSteps, Tensor | None]:
    """The training log's clicked rows as logged steps of single items (each row's own click
    is the last slot of its next observation) and, with ``settings.weighting="return"``, each
    row's sampling weight (mean 1). A transformer or GRU scorer fitted on them reads slates of
    any size afterwards; the MLP's input width depends on the slate size."""
    if ctx.interactions is None:
        raise RecrlError("algo.init_from=pretrain fits the training log, but this run has none (env=gym)")
    if ctx.slate_size != 1 and backbone.encoder == "mlp":
        raise RecrlError(f"pretraining on logs of single items cannot fit an mlp encoder for "
                         f"env.slate_size={ctx.slate_size}: use algo.encoder=transformer (or gru)")
    steps = logged_steps(ctx.interactions.train, ctx.n_items, ctx.history_len, ctx.reward, ctx.device)
    rows = (steps.transitions.next_obs.clicks[:, -1, 0] > 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        raise RecrlError("algo.init_from=pretrain fits the clicked items of the training log, "
                         "but it has no clicks")
    if settings.weighting == "none":
        return steps.index(rows), None
    if settings.weighting == "return":
        score = steps.returns(settings.gamma)[rows]
    else:
        score = logged_outcome(ctx.interactions.train, settings.weighting, rows)
    z = (score - score.mean()) / score.std().clamp(min=1e-6)
    weights = torch.exp((z / settings.temperature).clamp(max=20.0))  # clamped: no row takes over
    return steps.index(rows), weights / weights.mean()


def logged_outcome(log: pd.DataFrame, column: str, rows: Tensor) -> Tensor:
    """``log[column]`` at the clicked ``rows`` for the outcome weightings; a row without the
    outcome (NaN) counts as the rows' mean, drawn neither more nor less than average."""
    values = (log[column].to_numpy(dtype=np.float32) if column in log
              else np.full(len(log), np.nan, np.float32))
    picked = torch.tensor(values, device=rows.device)[rows]  # a copy: pandas may hand out a read-only view
    known = picked[~picked.isnan()]
    if known.numel() == 0 or known.min() == known.max():
        what = ("none" if known.numel() == 0
                else f"the same {column} ({float(known[0]):g}) on every clicked row")
        raise RecrlError(f"algo.pretrain.weighting={column} weighs clicks by the {column} logged after "
                         f"them, but this dataset logs {what}; use weighting=none or return")
    return picked.nan_to_num(nan=float(known.mean()))


def fit_next_item(ctx: AlgoContext, backbone: Backbone,
                  settings: PretrainSettings) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Fit a fresh scorer of ``backbone`` to the training log's clicked items by cross-entropy
    (see :class:`PretrainSettings`); returns its weights and a small report."""
    started = time.perf_counter()
    data, weights = clicked_rows(ctx, backbone, settings)
    with own_random_stream(settings.seed, ctx.device):
        scorer = backbone.scorer(ctx)
    params = [p for p in scorer.parameters() if p.requires_grad]
    optimizer = adam(params, settings.lr)
    generator = torch.Generator(ctx.device).manual_seed(settings.seed)
    steps = settings.n_steps(len(data))
    logger.info("pretraining the policy (%s encoder) on %d clicked rows, %d steps", backbone.encoder,
                len(data), steps)
    tail_start = steps - max(1, steps // 10)  # the final loss: the mean of the last tenth of the steps
    tail_sum = torch.zeros((), device=ctx.device)
    for step in range(steps):
        if weights is None:
            batch = data.sample(settings.batch_size, generator).transitions
        else:
            picked = torch.multinomial(weights, settings.batch_size, replacement=True, generator=generator)
            batch = data.index(picked).transitions
        loss = F.cross_entropy(scorer(batch.obs), batch.action[:, 0])
        gradient_step(optimizer, loss, params, 10.0)
        if step >= tail_start:
            # a running sum, not a list of every step's loss: on a CPU each kept ``loss.detach()``
            # held on to about one ``[batch, n_items]`` buffer (24 MB a step on Amazon Beauty's
            # 12,101 items, 14 GB before the first epoch ended)
            tail_sum = tail_sum + loss.detach()
    tail = tail_sum / (steps - tail_start)
    report = {"rows": len(data), "steps": steps, "final_loss": float(tail),
              "fit_s": round(time.perf_counter() - started, 2), "cached": False}
    return {k: v.detach().clone() for k, v in scorer.state_dict().items()}, report


def initialise(scorer: nn.Module, ctx: AlgoContext, init_from: str | None, backbone: Backbone,
               settings: PretrainSettings | None) -> dict[str, Any] | None:
    """Load ``algo.init_from``'s weights into ``scorer`` (its ``encoder`` and item tower; the
    heads a pretrained next-item model lacks, such as a dueling value, stay as built). Returns
    what was loaded (``None`` when ``init_from`` is unset)."""
    if init_from in (None, "", "none"):
        return None
    if init_from == "pretrain":
        state, report = pretrained_state(ctx, backbone, settings or PretrainSettings())
        load_backbone(scorer, state, "the pretrained next-item model")
        return {"source": "pretrain", **report}
    if init_from == "behavior":
        load_backbone(scorer, behavior_backbone_state(ctx.behavior, backbone), "the behavior model")
        return {"source": "behavior"}
    state = saved_policy_state(init_from)
    load_backbone(scorer, state, f"the policy saved in {init_from}")
    return {"source": str(init_from)}


def load_backbone(scorer: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Copy the encoder, the item tower and the item biases of ``state`` into ``scorer``: every
    ``encoder.*`` entry must be there with the same shape (else one line saying how the backbones
    differ); item entries are copied where names and shapes agree."""
    own = scorer.state_dict()
    needed = [k for k in own if k.startswith("encoder.")]
    missing = [k for k in needed if k not in state]
    wrong = [k for k in needed if k in state and state[k].shape != own[k].shape]
    if missing or wrong or not needed:
        if missing:
            detail = f"{len(missing)} of its entries missing (e.g. {missing[0]})"
        elif wrong:
            key = wrong[0]
            detail = f"{key} is {tuple(state[key].shape)}, the policy's {tuple(own[key].shape)}"
        else:
            detail = "no encoder"
        raise RecrlError(f"algo.init_from: {what} does not fit this policy's backbone ({detail}); "
                         "use the same algo.encoder, dim, hidden, layers, heads and item_init")
    extra = [k for k in ("bias", "item_out.weight", "prior.prior", "prior.proj.weight")
             if k in own and k in state and state[k].shape == own[k].shape]
    with torch.no_grad():
        for key in needed + extra:
            own[key].copy_(state[key].to(own[key].device))


def behavior_backbone_state(behavior: Any, backbone: Backbone) -> dict[str, Tensor]:
    """A ``transformer`` scorer's weights taken from a fitted SASRec behavior model of the same
    size: its item table, feedback vectors, start token, blocks and final norm become the
    encoder, its click head's projection the query projection and its click biases the item
    biases, so the policy's logits start as the model's click logits."""
    from recrl.behavior.sasrec import SASRecBehavior

    if backbone.encoder != "transformer":
        raise RecrlError("algo.init_from=behavior needs algo.encoder=transformer")
    if not isinstance(behavior, SASRecBehavior):
        raise RecrlError("algo.init_from=behavior copies a SASRec behavior model, but this run's is "
                         f"{type(behavior).__name__}: set behavior=sasrec (ensemble 1) or use "
                         "algo.init_from=pretrain")
    if behavior.content is not None or backbone.item_init != "random":
        raise RecrlError("algo.init_from=behavior copies item-id embeddings only: set behavior.features=[] "
                         "and algo.item_init=random, or use algo.init_from=pretrain")
    if (behavior.dim, behavior.layers, behavior.heads) != (backbone.dim, backbone.layers, backbone.heads):
        raise RecrlError(f"algo.init_from=behavior: the behavior model is dim={behavior.dim} "
                         f"layers={behavior.layers} heads={behavior.heads}; set algo.dim, algo.layers "
                         "and algo.heads to the same")
    source = behavior.state_dict()
    state = {f"encoder.{k}": v for k, v in source.items()
             if k.split(".")[0] in ("item_emb", "feedback", "start", "blocks", "norm")}
    state["encoder.proj.weight"] = source["click_head.proj.weight"]
    state["encoder.proj.bias"] = source["click_head.proj.bias"]
    dim = backbone.dim
    state["encoder.progress.weight"] = torch.zeros(dim, 1)
    state["encoder.progress.bias"] = torch.zeros(dim)
    state["bias"] = source["click_head.bias"]
    return state


def saved_policy_state(where: str) -> dict[str, Tensor]:
    """The policy network's weights in a saved run (folder or ``.pt``): the ``policy`` (policy
    gradient, supervised, behaviour cloning) or ``q`` (DQN family) entry of its algorithm."""
    payload = load_checkpoint(where)
    algo = payload.get("algo") or {}
    for key in ("policy", "q", "net"):
        if isinstance(algo.get(key), dict):
            return algo[key]
    raise RecrlError(f"algo.init_from={where}: its checkpoint holds no policy network "
                     "(baselines and bandits save none); pass a run of ppo, reinforce, a2c, dqn, "
                     "supervised or bc")


class KLPenalty:
    """The KL leash of RL fine-tuning: ``coef * KL(pi || pi_ref)`` added to the loss, ``pi_ref``
    a frozen copy of the policy as it started (``algo.init_from``'s weights).

    With ``target`` set, ``coef`` adapts after every update by Ziegler et al.'s proportional
    controller: ``coef <- coef * (1 + rate * clip(KL / target - 1, -0.2, 0.2))``, so the KL
    settles near ``target`` (starting from ``coef``, or 0.1 when it is 0). ``coef = 0`` and no
    ``target``: off.

    Example::

        leash = KLPenalty(copy_frozen(policy), coef=0.1, target=0.05)
        kl = kl_divergence(log_pi, torch.log_softmax(leash.reference(obs), 1)).mean()
        loss = loss + leash.coef * kl
        leash.adapt(float(kl))
    """

    def __init__(self, reference: nn.Module | None, coef: float = 0.0, target: float | None = None,
                 rate: float = 0.1) -> None:
        if coef < 0 or (target is not None and target <= 0):
            raise RecrlError("algo.kl_coef must be >= 0 and algo.kl_target > 0 (or null)")
        if target is not None and coef == 0:
            coef = 0.1  # the proportional controller scales the coefficient: it cannot start at 0
        self.coef, self.target, self.rate = float(coef), target, rate
        self.reference = reference if self.coef > 0 else None

    @property
    def active(self) -> bool:
        """Whether the penalty is on."""
        return self.reference is not None

    def adapt(self, kl: float) -> None:
        """After an update whose mean KL was ``kl``: move ``coef`` toward ``target`` (if set)."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + self.rate * error


def copy_frozen(net: nn.Module) -> nn.Module:
    """A copy of ``net`` without gradients, in evaluation mode."""
    return copy.deepcopy(net).requires_grad_(False).eval()
