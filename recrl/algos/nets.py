"""Building blocks shared by the learning algorithms: a history encoder and item scoring."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recrl.types import Obs, RecrlError


class HistoryEncoder(nn.Module):
    """Encodes an observation (last ``L`` slates and their clicks) into a state ``[B, dim]``.

    Each history slot becomes ``[item embedding, clicked flag]``; the flattened slots (position
    matters: recent slates weigh differently) and the session progress go through an MLP. With
    ``features=F > 0`` the observation's real-valued :attr:`~recrl.types.Obs.features` ``[B, F]``
    are appended to the MLP input (its first layer is their linear projection); with 0 they are
    ignored and the encoder is exactly the history-only one.

    Example::

        enc = HistoryEncoder(n_items=100, history_len=10, slate_size=1, horizon=20, dim=32)
        state = enc(obs)                     # [B, 32]
        enc = HistoryEncoder(n_items=2, history_len=4, slate_size=1, horizon=500, features=4)
        state = enc(obs_with_features)       # [B, 32]
    """

    def __init__(self, n_items: int, history_len: int, slate_size: int, horizon: int,
                 dim: int = 32, hidden: int = 128, features: int = 0) -> None:
        super().__init__()
        self.n_items, self.horizon, self.features = n_items, horizon, features
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        slots = history_len * slate_size
        self.mlp = nn.Sequential(nn.Linear(slots * (dim + 1) + 1 + features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, obs: Obs) -> Tensor:
        """State vectors ``[B, dim]``."""
        b = obs.batch_size
        slots = torch.cat([self.item_emb(obs.items), obs.clicks.unsqueeze(-1)], -1)
        progress = (obs.step.float() / self.horizon).unsqueeze(-1)
        parts = [slots.reshape(b, -1), progress]
        if self.features:
            if obs.features is None:
                raise RecrlError(f"the encoder expects {self.features} observation features but the "
                                 "observation has none (Obs.features is None)")
            parts.append(obs.features.reshape(b, -1).to(progress.dtype))
        return self.mlp(torch.cat(parts, -1))


class ItemScorer(nn.Module):
    """Scores every item for every state in one matrix product: ``state @ E.T + b``.

    Example::

        scorer = ItemScorer(HistoryEncoder(...), n_items=100, dim=32)
        scores = scorer(obs)                 # [B, 100]
    """

    def __init__(self, encoder: HistoryEncoder, n_items: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.item_out = nn.Embedding(n_items, dim)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, obs: Obs) -> Tensor:
        """Scores ``[B, n_items]``."""
        return self.score(self.encoder(obs))

    def score(self, state: Tensor) -> Tensor:
        """Scores ``[B, n_items]`` for already-encoded states."""
        return state @ self.item_out.weight.T + self.bias


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices ``[B, k]`` of the highest scores, best first."""
    return scores.topk(k, dim=1).indices


def random_slates(batch: int, n_items: int, k: int, device: torch.device,
                  generator: torch.Generator) -> Tensor:
    """Uniformly random slates ``[batch, k]`` of distinct items."""
    if k == 1:
        return torch.randint(0, n_items, (batch, 1), device=device, generator=generator)
    noise = torch.rand(batch, n_items, device=device, generator=generator)
    return noise.topk(k, dim=1).indices


def mask_shown(scores: Tensor, obs: Obs) -> Tensor:
    """``scores`` with the items already shown in the observed history set to ``-inf``."""
    n = scores.shape[1]
    shown = obs.items.reshape(obs.batch_size, -1)
    masked = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], 1)
    masked.scatter_(1, shown, float("-inf"))
    return masked[:, :n]
