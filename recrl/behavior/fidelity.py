"""How faithful is the simulator? Calibration, accuracy on randomized exposures, and agreement
with the true user model where one exists.

Three checks, each only where the data allows it:

- ``validation``: click logloss, AUC and expected calibration error of the behavior model on
  the validation rows (conditioned on each user's training history), with a calibration curve.
- ``randomized``: the same figures on randomized exposures (e.g. Coat's random test ratings),
  for a model fitted on the biased, self-selected log: how well it transfers off-policy.
- ``true_model``: Pearson correlations between the model's click, conversion and leave
  probabilities and the ground truth's, on the items a random policy shows in the ground-truth
  world (synthetic data); ``true_model_policy``: the same on the trained policy's own slates.

An ensemble (``behavior.ensemble``) is checked as a whole (its members' mean) and member by
member (``members``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.behavior.fit import training_tensors
from recrl.env.simulator import RecEnv
from recrl.fileio import write_bytes_atomic
from recrl.metrics.prediction import auc, calibration_curve, expected_calibration_error, logloss
from recrl.types import Interactions, Splits


def click_figures(prob: Tensor, label: Tensor, bins: int = 10) -> dict[str, Any]:
    """Logloss, AUC, ECE and the calibration curve of click probabilities."""
    mean_pred, observed, count = calibration_curve(prob, label, bins)
    return {"click_logloss": logloss(prob, label), "click_auc": auc(prob, label),
            "click_ece": expected_calibration_error(prob, label, bins), "rows": len(label),
            "calibration": {"predicted": mean_pred.tolist(), "observed": observed.tolist(),
                            "count": count.tolist()}}


@torch.no_grad()
def validation_clicks(model: Any, interactions: Interactions, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Predicted click probability and label of every validation row (history-conditioned)."""
    _, valid = training_tensors(interactions, getattr(model, "max_len", None), seed=0)
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for idx in torch.arange(valid.item.shape[0]).split(chunk):
        batch = valid.rows(idx).to(model.device)
        mask = batch.mask.bool()
        probs.append(torch.sigmoid(model.sequence_logits(batch)["click"][mask]).cpu())
        labels.append(batch.click[mask].cpu())
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def randomized_log_view(splits: Splits) -> Interactions | None:
    """The training rows as history and the randomized exposures as validation rows."""
    if splits.ground_truth is None:
        return None
    gt = splits.ground_truth
    exposures = pd.concat([gt.train, gt.valid], ignore_index=True)
    inter = splits.interactions
    # every exposure comes after the user's logged history
    exposures["time"] = inter.train["time"].max() + 1 + exposures.groupby("user").cumcount()
    return Interactions(train=inter.train, valid=exposures, items=inter.items, n_users=inter.n_users,
                        n_items=inter.n_items, positive_only=inter.positive_only)


CHECKED = ("click", "conversion", "leave")


@torch.no_grad()
def true_model_agreement(model: Any, world_env: RecEnv, users: int = 512, steps: int = 10,
                         seed: int = 0, policy: Any = None) -> dict[str, float]:
    """Pearson correlations of the model's and the truth's click, conversion and leave
    probabilities on the slates of a random policy, or of ``policy`` (acting without exploration:
    the states a trained policy leads users to, where a simulator's errors are exploited).

    Click and conversion: the shown items, given the history so far; leave: after the step, given
    the history including it (the model reads the environment's observed history window).
    """
    g = torch.Generator(world_env.device).manual_seed(seed)
    obs = world_env.reset(users, seed=seed)
    state = model.encode(obs)
    pairs: dict[str, tuple[list[Tensor], list[Tensor]]] = {k: ([], []) for k in CHECKED}
    for _ in range(steps):
        if policy is None:
            slates = torch.randint(0, world_env.n_items, (users, world_env.slate_size),
                                   device=world_env.device, generator=g)
        else:
            slates = policy.act(obs, explore=False)
        alive = world_env.alive.clone()
        predicted = model.score_all(state)
        obs, _, _, info = world_env.step(slates)
        state = model.encode(obs)  # after the step: its leave probability, and the next step's state
        truth = info.response
        shown = (predicted.click_prob.gather(1, slates), predicted.conversion_prob.gather(1, slates))
        for key, true, pred in (("click", truth.click_prob, shown[0]),
                                ("conversion", truth.conversion_prob, shown[1]),
                                ("leave", truth.leave_prob, model.leave_prob(state))):
            pairs[key][0].append(true[alive].flatten().cpu())
            pairs[key][1].append(pred[alive].flatten().cpu())
    out: dict[str, float] = {}
    for key, (true, pred) in pairs.items():
        t, p = torch.cat(true).double(), torch.cat(pred).double()
        out[f"{key}_prob_pearson"] = pearson(t, p)
        if key == "click":
            out.update(mean_true=float(t.mean()), mean_model=float(p.mean()), pairs=len(t))
    return out


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two vectors (NaN when undefined: fewer than two pairs or no spread)."""
    if len(a) < 2 or float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return float("nan")
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


def plot_calibration(sections: dict[str, dict[str, Any]], out_png: Path) -> Path | None:
    """Calibration curves (predicted vs observed click rate) of every section that has one."""
    curves = {name: s["calibration"] for name, s in sections.items() if "calibration" in s}
    if not curves:
        return None
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, curve in curves.items():
        ax.plot(curve["predicted"], curve["observed"], marker="o", label=name)
    ax.set_xlabel("predicted click probability")
    ax.set_ylabel("observed click rate")
    ax.set_title("behavior model calibration")
    ax.legend(loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(out_png, buffer.getvalue())
    return out_png


def fidelity_report(model: Any, splits: Splits, ground_truth_env: RecEnv | None,
                    ground_truth_is_true_model: bool, plot: Path | None = None,
                    policy: Any = None) -> dict[str, Any]:
    """Every check the data allows, as a dict for the run report (and a PNG when ``plot``):
    ``true_model`` on random slates and, given the trained ``policy``, ``true_model_policy`` on
    its own; for an ensemble the same checks of every member under ``members``."""
    report: dict[str, Any] = {}
    if not splits.interactions.valid.empty:
        report["validation"] = click_figures(*validation_clicks(model, splits.interactions))
    randomized = randomized_log_view(splits)
    if randomized is not None and not randomized.valid.empty:
        report["randomized"] = click_figures(*validation_clicks(model, randomized))
    if ground_truth_env is not None and ground_truth_is_true_model:
        report["true_model"] = true_model_agreement(model, ground_truth_env)
        if policy is not None:
            report["true_model_policy"] = true_model_agreement(model, ground_truth_env, policy=policy)
    if hasattr(model, "members"):
        report["members"] = [fidelity_report(m, splits, ground_truth_env, ground_truth_is_true_model,
                                             policy=policy) for m in model.members]
    if plot is not None:
        plot_calibration(report, plot)
    return report
