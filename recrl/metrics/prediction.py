"""Point metrics of predictions, vectorized over all examples: log-loss, AUC, RMSE and calibration
(the reliability curve and the expected calibration error)."""

from __future__ import annotations

import torch
from torch import Tensor


def logloss(prob: Tensor, label: Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``prob`` against 0/1 ``label``.

    Example::

        >>> round(logloss(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])), 4)
        0.6931
    """
    p = prob.clamp(eps, 1 - eps)
    return float(-(label * p.log() + (1 - label) * (1 - p).log()).mean())


def auc(score: Tensor, label: Tensor) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    Ties count one half (average ranks). Returns NaN when a class is missing.

    Example::

        >>> auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    label = label.bool()
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(score.double())
    sorted_scores = score.double()[order]
    positions = torch.arange(1, len(score) + 1, dtype=torch.float64, device=score.device)
    # tied scores share the average of their positions
    uniq, inverse = torch.unique(sorted_scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64, device=score.device).index_add_(0, inverse, positions)
    ones = torch.ones_like(positions)
    counts = torch.zeros(len(uniq), dtype=torch.float64, device=score.device).index_add_(0, inverse, ones)
    ranks = torch.empty_like(sorted_scores)
    ranks[order] = (sums / counts)[inverse]
    rank_sum = float(ranks[label].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error between predictions and targets of the same shape.

    Example::

        >>> rmse(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 6.0]))
        1.0
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    diff = pred.double() - target.to(pred.device).double()
    return float(torch.sqrt((diff * diff).mean()))


def calibration_curve(prob: Tensor, label: Tensor, bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Reliability curve over ``bins`` equal-width bins of ``[0, 1]``.

    Bin ``i`` holds ``i / bins <= prob < (i + 1) / bins`` (the last bin includes 1). Returns, for each
    non-empty bin in order, the mean predicted probability, the observed frequency of ``label == 1``
    and the number of examples (float64, long), on ``prob``'s device.

    Example::

        >>> prob = torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64)
        >>> mean_p, freq, count = calibration_curve(prob, torch.tensor([0, 1, 1, 1]))
        >>> mean_p.tolist(), freq.tolist(), count.tolist()
        ([0.1, 0.9], [0.5, 1.0], [2, 2])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, y = _flat_prob_label(prob, label)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    which = torch.bucketize(p, edges, right=True)
    count = torch.bincount(which, minlength=bins)
    sum_p = torch.zeros(bins, dtype=torch.float64, device=p.device).index_add_(0, which, p)
    sum_y = torch.zeros(bins, dtype=torch.float64, device=p.device).index_add_(0, which, y)
    keep = count > 0
    n = count[keep]
    return sum_p[keep] / n, sum_y[keep] / n, n


def expected_calibration_error(prob: Tensor, label: Tensor, bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted mean of ``|mean predicted - observed frequency|``.

    Uses the equal-width bins of :func:`calibration_curve`; NaN for no examples.

    Example::

        >>> prob = torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64)
        >>> round(expected_calibration_error(prob, torch.tensor([0, 1, 1, 1])), 12)  # 0.4 * 0.5 + 0.1 * 0.5
        0.25
    """
    mean_p, freq, count = calibration_curve(prob, label, bins)
    if count.numel() == 0:
        return float("nan")
    weight = count.double() / count.sum()
    return float((weight * (mean_p - freq).abs()).sum())


def _flat_prob_label(prob: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    if prob.shape != label.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and label {tuple(label.shape)} differ in shape")
    p = prob.reshape(-1).double()
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("probabilities must lie in [0, 1]")
    return p, label.reshape(-1).to(p.device).double()
