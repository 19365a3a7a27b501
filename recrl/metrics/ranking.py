"""Offline prediction and ranking metrics, vectorized over all examples."""

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
    positions = torch.arange(1, len(score) + 1, dtype=torch.float64)
    # tied scores share the average of their positions
    uniq, inverse = torch.unique(sorted_scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, positions)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(positions))
    ranks = torch.empty_like(sorted_scores)
    ranks[order] = (sums / counts)[inverse]
    rank_sum = float(ranks[label].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
