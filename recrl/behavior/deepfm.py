"""DeepFM user model (``behavior=deepfm``): static preferences, FM + MLP click logits.

Guo et al., *DeepFM: A Factorization-Machine based Neural Network for CTR Prediction*
(IJCAI 2017). The fields of a (user, item) pair are the user id, the item id and, with
``features: [side]`` (or ``[text]``), the item's side tokens (the mean of their embeddings) and
its dense features (a linear map). The click logit is

    global bias + first-order weights of every field
    + sum over field pairs of embedding dot products          (FM part)
    + MLP(concatenated field embeddings)                      (deep part)

with the embeddings shared by both parts. The user field is the state ``[B, dim + 1]`` (the user
embedding and the user's first-order weight). Conversion and rating heads are kept simple:
bilinear in that state with their own item tables, as in the other behavior models.

Preferences are static, as for :class:`~recrl.behavior.mf.MFBehavior`: a simulated user is a
training user drawn at random and keeps their state. A user known only by a history is an
*unknown user*: an extra learned row plus a learned linear map of the mean field embedding of
the items they clicked. That path is trained on real data: each training session drops its user
id with probability ``id_dropout`` and is then read, at every step, from the clicks before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.behavior.base import BilinearScorer
from recrl.behavior.features import ItemContentEncoder, ItemFeatures
from recrl.behavior.fit import SessionTensors, TrainingSettings
from recrl.behavior.mf import StaticUserModel
from recrl.types import Obs, RecrlError

SCORE_CHUNK_BYTES = 256 * 2 ** 20  # largest [users, items, width] float tensor of full-catalogue scoring


def content_fields(item_features: ItemFeatures | None, dim: int) -> list[ItemContentEncoder]:
    """One encoder per item-content field, each giving ``[..., dim + 1]``: the field embedding and
    (last entry) its first-order weight. Tokens: the mean of token embeddings; dense: a linear map.

    Example::

        fields = content_fields(side_features(items, n_items), dim=16)    # 0, 1 or 2 encoders
    """
    if item_features is None:
        return []
    parts = [ItemFeatures(tokens=item_features.tokens, dense=None), ItemFeatures(tokens=None,
                                                                                dense=item_features.dense)]
    return [ItemContentEncoder(part, dim + 1) for part in parts if part.n_tokens or part.n_dense]


class DeepFMClickHead(nn.Module):
    """DeepFM click logits of users ``h`` ``[..., dim + 1]`` (embedding, first-order weight) for
    given items, the whole catalogue, or items shared by all rows.

    Full-catalogue scoring never builds the ``[B, n_items, fields * dim]`` input: the MLP's first
    layer is split into a user part and an item part (exact, it is linear), so the widest tensor is
    ``[B, chunk, hidden[0]]``, with item chunks sized to stay under :data:`SCORE_CHUNK_BYTES`.

    Example::

        head = DeepFMClickHead(n_items=100, dim=16, hidden=[64, 32], dropout=0.1)
        h = torch.randn(4, 17)
        head(h).shape, head(h, torch.randint(0, 100, (4, 5))).shape    # [4, 100], [4, 5]
        head.score_shared(h, torch.arange(10)).shape                    # [4, 10]
    """

    def __init__(self, n_items: int, dim: int, hidden: Sequence[int], dropout: float,
                 item_features: ItemFeatures | None = None) -> None:
        super().__init__()
        self.n_items, self.dim = n_items, dim
        self.fields = nn.ModuleList(content_fields(item_features, dim))
        self.item_emb = nn.Embedding(n_items, dim)
        self.item_weight = nn.Parameter(torch.zeros(n_items))
        with torch.no_grad():
            self.item_emb.weight.normal_(0.0, dim ** -0.5)
            if len(self.fields):
                self.item_emb.weight.zero_()  # an item never seen in training is its content alone
        widths = [*hidden, 1]
        self.first = nn.Linear((2 + len(self.fields)) * dim, widths[0])
        layers: list[nn.Module] = []
        for a, b in pairwise(widths):
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(a, b)]
        self.deep = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(()))

    # ------------------------------------------------------------------ the two sides of a pair
    def _item_fields(self, items: Tensor | None) -> tuple[Tensor, Tensor]:
        """Item-side field embeddings ``[..., F, dim]`` and summed first-order weights ``[...]``."""
        fields = [self.item_emb.weight if items is None else self.item_emb(items)]
        first_order = self.item_weight if items is None else self.item_weight[items]
        for field in self.fields:
            out = field(items)
            fields.append(out[..., :self.dim])
            first_order = first_order + out[..., self.dim]
        return torch.stack(fields, -2), first_order

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """Sum of each item's field embeddings ``[..., dim]`` (all items when ``None``)."""
        return self._item_fields(items)[0].sum(-2)

    def item_terms(self, items: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-item parts of the logit: summed field embeddings ``[..., dim]`` (they meet the user
        embedding in the FM part), the item-only logit (first order + item field pairs) ``[...]``
        and the item part of the MLP's first layer ``[..., hidden[0]]``."""
        stacked, first_order = self._item_fields(items)
        total = stacked.sum(-2)
        pairs = 0.5 * (total.square() - stacked.square().sum(-2)).sum(-1)
        return total, first_order + pairs, F.linear(stacked.flatten(-2), self.first.weight[:, self.dim:])

    def user_terms(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """User embedding ``[..., dim]``, first-order weight ``[...]`` and user part of the MLP's
        first layer (with its bias) ``[..., hidden[0]]``."""
        emb = h[..., :self.dim]
        return emb, h[..., self.dim], F.linear(emb, self.first.weight[:, :self.dim], self.first.bias)

    # ------------------------------------------------------------------ scoring
    def forward(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        """Logits ``[..., K]`` for ``items`` ``[..., K]``, or ``[..., n_items]`` for the catalogue."""
        if items is None:
            return self._score_shared(h, None)
        emb, weight, deep_user = self.user_terms(h)
        total, item_logit, deep_item = self.item_terms(items)
        fm = torch.einsum("...d,...kd->...k", emb, total) + item_logit + weight[..., None]
        return self.bias + fm + self.deep(deep_user[..., None, :] + deep_item)[..., 0]

    def score_shared(self, h: Tensor, items: Tensor) -> Tensor:
        """Logits ``[..., N]`` of the same ``items`` ``[N]`` for every row of ``h``."""
        return self._score_shared(h, items)

    def _score_shared(self, h: Tensor, items: Tensor | None) -> Tensor:
        """Logits ``[..., N]`` of ``items`` (the catalogue when ``None``), in chunks of items."""
        flat = h.reshape(-1, h.shape[-1])
        emb, weight, deep_user = self.user_terms(flat)
        ids = torch.arange(self.n_items, device=h.device) if items is None else items
        width = max(self.first.in_features, self.first.out_features)
        chunk = max(1, SCORE_CHUNK_BYTES // (4 * width * max(1, flat.shape[0])))
        parts = []
        for part in ids.split(chunk):
            total, item_logit, deep_item = self.item_terms(part)
            fm = emb @ total.T + item_logit + weight[:, None]
            parts.append(self.bias + fm + self.deep(deep_user[:, None] + deep_item)[..., 0])
        return torch.cat(parts, -1).reshape(*h.shape[:-1], -1)


class DeepFMBehavior(StaticUserModel):
    """DeepFM click model with conversion, rating and leave heads, static user preferences.

    ``hidden`` are the deep part's layer widths, ``dropout`` its dropout; ``id_dropout`` is the
    share of training sessions read as unknown users (which trains :meth:`fold_in`).

    Example::

        model = DeepFMBehavior(n_items=100, dim=16, hidden=[64, 32], n_users=500)
        report = model.fit(interactions)               # supervised, early stopping
        state = model.initial_state(8, generator)      # 8 training users' fields [8, 17]
        response, state = model.respond(state, slates, generator)
        folded = model.encode(obs)                     # users known by history only
    """

    def __init__(self, n_items: int, dim: int = 32, hidden: Sequence[int] = (128, 64), dropout: float = 0.1,
                 id_dropout: float = 0.1, features: Sequence[str] = (),
                 training: TrainingSettings | None = None, n_users: int = 0,
                 item_features: ItemFeatures | None = None, device: str = "cpu") -> None:
        super().__init__()
        if not (0.0 <= dropout < 1.0 and 0.0 <= id_dropout < 1.0):
            raise RecrlError("behavior.dropout and behavior.id_dropout must be in [0, 1)")
        if any(width < 1 for width in hidden):
            raise RecrlError(f"behavior.hidden={list(hidden)}: layer widths must be >= 1")
        # item content enters as separate fields of the click head, not through self.content
        self._setup(n_items, n_users, training, features, item_features, dim, content_encoder=False)
        self._setup_users()
        self.dim, self.id_dropout, self.state_size = dim, id_dropout, dim + 1
        self.user_emb = nn.Embedding(n_users + 1, dim)  # the last row is the unknown user
        nn.init.normal_(self.user_emb.weight, 0.0, dim ** -0.5)
        self.user_weight = nn.Embedding(n_users + 1, 1)
        nn.init.zeros_(self.user_weight.weight)
        self.history_proj = nn.Linear(dim, dim + 1, bias=False)
        with torch.no_grad():  # starts as "the unknown user plus the mean clicked item"
            self.history_proj.weight.copy_(torch.eye(dim + 1, dim))
        content = item_features if self.features else None  # auto without a usable table: None
        self.click_head = DeepFMClickHead(n_items, dim, hidden, dropout, content)
        self.conversion_head = BilinearScorer(dim + 1, nn.Embedding(n_items, dim), n_items)
        self.rating_head = BilinearScorer(dim + 1, nn.Embedding(n_items, dim), n_items)
        self.leave_head = nn.Sequential(nn.Linear(dim + 1, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.register_buffer("leave_known", torch.tensor(True))
        self._add_signal_heads(dim + 1, dim)
        self.to(device)

    # ------------------------------------------------------------------ users
    @torch.no_grad()
    def item_vectors(self) -> Tensor:
        """Each item's summed field embeddings and item-only click logit ``[n_items, dim + 1]``
        (a pretrained item tower for policies: ``algo.item_init=behavior``)."""
        vectors, item_logit, _ = self.click_head.item_terms()
        return torch.cat([vectors, item_logit[:, None]], 1)

    def user_rows(self, users: Tensor) -> Tensor:
        """User fields ``[..., dim + 1]`` (embedding, first-order weight) of dense ids ``users``."""
        return torch.cat([self.user_emb(users), self.user_weight(users)], -1)

    def _unknown(self, pooled: Tensor) -> Tensor:
        """Unknown-user fields ``[..., dim + 1]`` given the mean clicked item vector ``pooled``."""
        row = self.user_rows(torch.tensor(self.n_users, device=pooled.device))
        return row + self.history_proj(pooled)

    def fold_in(self, obs: Obs) -> Tensor:
        """The unknown user plus a learned map of the mean field embedding of the clicked items
        (shown-but-not-clicked items and padding are ignored; no clicks: the unknown user alone)."""
        items = obs.items.flatten(1)
        clicked = obs.clicks.flatten(1) * (items < self.n_items)
        vectors = self.click_head.item_vectors(items.clamp(max=self.n_items - 1))
        pooled = (vectors * clicked[..., None]).sum(1) / clicked.sum(1, keepdim=True).clamp(min=1.0)
        return self._unknown(pooled)

    def session_states(self, batch: SessionTensors) -> Tensor:
        """The state each step of padded sessions ``[S, T]`` is predicted from, ``[S, T, dim + 1]``.

        Known users read their row at every step. Users without training rows, and in training a
        random ``id_dropout`` share of sessions, are unknown users folded in from the clicks
        before each step (causal, as :meth:`fold_in` sees a history).
        """
        steps = batch.item.shape[1]
        known = self.trained[batch.user]
        if self.training and self.id_dropout > 0:
            known = known & (torch.rand(known.shape, device=known.device) >= self.id_dropout)
        clicked = batch.click * (batch.item < self.n_items)
        vectors = self.click_head.item_vectors(batch.item.clamp(max=self.n_items - 1)) * clicked[..., None]
        before = vectors.cumsum(1) - vectors
        count = (clicked.cumsum(1) - clicked).clamp(min=1.0)
        folded = self._unknown(before / count[..., None])
        rows = self.user_rows(batch.user)[:, None].expand(-1, steps, -1)
        return torch.where(known[:, None, None], rows, folded)

    # ------------------------------------------------------------------ training
    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits of every head over padded sessions ``[S, T]`` (see :meth:`session_states`)."""
        h = self.session_states(batch)
        items = batch.item.clamp(max=self.n_items - 1)[..., None]
        logits = {"click": self.click_head(h, items)[..., 0],
                  "conversion": self.conversion_head(h, items)[..., 0],
                  "rating": self.rating_head(h, items)[..., 0],
                  **{k: v[..., 0] for k, v in self.signal_logits(h, items).items()},
                  "leave": self.leave_head(h)[..., 0],
                  "click_state": h}
        if batch.negative is not None:
            sampled = batch.negative.clamp(max=self.n_items - 1)[..., None]
            logits["click_negative"] = self.click_head(h, sampled)[..., 0]
        return logits
