"""What a policy's evaluation slates are, as probabilities: ``action_probs(obs)``.

Off-policy evaluation (:mod:`recrl.ope`) weighs each logged item by the probability that the
target policy, acting as it is evaluated (``act(obs, explore=False)``), would have served it.
Every algorithm has ``action_probs(obs) -> [B, K, n_items]``: the probability that slot ``k`` of
its slate holds each item. A deterministic policy's rows are one-hot (:class:`ActsGreedily`);
a sampling policy gives its distribution (:func:`sampled_slate_probs`, :func:`uniform_slate_probs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.types import Obs, RecrlError


def one_hot_slates(slates: Tensor, n_items: int) -> Tensor:
    """Per-slot probabilities ``[B, K, n_items]`` of deterministic slates ``[B, K]``."""
    return F.one_hot(slates, n_items).to(torch.float32)


def uniform_slate_probs(batch: int, slate_size: int, n_items: int, device: torch.device) -> Tensor:
    """Per-slot probabilities of uniformly random slates of distinct items: ``1 / n_items`` for
    every item in every slot (by symmetry, also without replacement)."""
    return torch.full((batch, slate_size, n_items), 1.0 / n_items, device=device)


def sampled_slate_probs(logits: Tensor, slate_size: int) -> Tensor:
    """Per-slot probabilities of slates sampled from ``softmax(logits)`` ``[B, N]`` without
    replacement (Gumbel top-``K``, :func:`recrl.algos.nets.sample_top_k`).

    Only the first slot has a closed form (the softmax itself); later slots' marginals sum over
    every earlier draw, so slates of more than one sampled item are refused.
    """
    if slate_size != 1:
        raise RecrlError("off-policy evaluation of a policy that samples slates of more than one item "
                         "is not supported (its per-slot probabilities have no closed form); evaluate "
                         "its mode (sample_in_eval=false) or use env.slate_size=1")
    return torch.softmax(logits, dim=1)[:, None, :]


def evaluation_slate_probs(logits: Tensor, slate_size: int, sample: bool) -> Tensor:
    """Per-slot probabilities of a softmax policy's evaluation slates: sampled from
    ``softmax(logits)`` when ``sample``, else its top-``K`` (one-hot)."""
    if sample:
        return sampled_slate_probs(logits, slate_size)
    return one_hot_slates(logits.topk(slate_size, dim=1).indices, logits.shape[1])


class ActsGreedily:
    """Mixin of policies whose evaluation slate is deterministic (a top-``K`` of scores, a
    planner): ``action_probs`` is the one-hot of ``act(obs, explore=False)``.

    The class using it has ``ctx`` (:class:`~recrl.types.AlgoContext`) and ``act``.
    """

    @torch.no_grad()
    def action_probs(self, obs: Obs) -> Tensor:
        """Per-slot probabilities ``[B, K, n_items]`` of the evaluation slate: one-hot."""
        return one_hot_slates(self.act(obs, explore=False), self.ctx.n_items)  # type: ignore[attr-defined]
