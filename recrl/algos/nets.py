"""Building blocks shared by the learning algorithms: history encoders, item scoring, slate
selection, the double-Q target of value-based learners and the actor-critic core of the
on-policy ones."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl import kernels
from recrl.behavior.features import side_features
from recrl.behavior.sasrec import TransformerBlock, rope_tables
from recrl.types import AlgoContext, Obs, RecrlError


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
                 dim: int = 32, hidden: int = 128, features: int = 0,
                 item_prior: Tensor | None = None, summary: bool = False) -> None:
        super().__init__()
        self.n_items, self.horizon, self.features, self.summary = n_items, horizon, features, summary
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.prior = attach_prior(self.item_emb, item_prior, padding=True)
        slots = history_len * slate_size
        width = slots * (dim + 1) + 1 + features + (2 * dim + 1 if summary else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.slots = slots
        self.slot_tables = SlotTables()

    def embed(self, items: Tensor) -> Tensor:
        """Vectors ``[..., dim]`` of history items (the padding id embeds to zero)."""
        if self.prior is None:
            return self.item_emb(items)
        # the whole table (ids plus mapped prior) once, then one lookup: fewer rows to map than
        # a batch of histories has slots
        table = self.item_emb.weight + self.prior.table(padding=True)
        return F.embedding(items, table, padding_idx=self.n_items)

    def forward(self, obs: Obs) -> Tensor:
        """State vectors ``[B, dim]``."""
        b = obs.batch_size
        progress = (obs.step.float() / self.horizon).unsqueeze(-1)
        tables = None if self.summary else self.slot_tables.lookup(self)
        if tables is not None:
            hidden = first_layer(tables, obs.items.reshape(b, -1), self._dense_inputs(obs, progress))
            for layer in list(self.mlp)[1:]:
                hidden = layer(hidden)
            return hidden
        emb = self.embed(obs.items)
        slots = torch.cat([emb, obs.clicks.unsqueeze(-1)], -1)
        parts = [slots.reshape(b, -1), progress]
        if self.summary:
            parts.append(history_summary(emb.reshape(b, -1, emb.shape[-1]), obs.clicks.reshape(b, -1),
                                         (obs.items != self.n_items).reshape(b, -1)))
        parts.extend(self._features(obs, progress.dtype))
        return self.mlp(torch.cat(parts, -1))

    def _features(self, obs: Obs, dtype: torch.dtype) -> list[Tensor]:
        """The observation features as an input part (none when the encoder reads none)."""
        if not self.features:
            return []
        if obs.features is None:
            raise RecrlError(f"the encoder expects {self.features} observation features but the "
                             "observation has none (Obs.features is None)")
        return [obs.features.reshape(obs.batch_size, -1).to(dtype)]

    def _dense_inputs(self, obs: Obs, progress: Tensor) -> Tensor:
        """The first layer's inputs other than the item vectors ``[B, slots + 1 + features]``:
        click flags, session progress, observation features (:class:`SlotTables`' order)."""
        clicks = obs.clicks.reshape(obs.batch_size, -1).to(progress.dtype)
        return torch.cat([clicks, progress, *self._features(obs, progress.dtype)], 1)

    def frozen_weights(self) -> list[Tensor]:
        """The weights :class:`SlotTables` are computed from (the item table, its prior and
        the prior's map, the first layer)."""
        prior = [] if self.prior is None else [self.prior.prior, self.prior.proj.weight]
        first = self.mlp[0]
        return [self.item_emb.weight, *prior, first.weight, first.bias]

    def build_slot_tables(self) -> FirstLayerTables:
        """The first layer's product with every item per history slot (:class:`SlotTables`)."""
        with torch.no_grad():
            items = self.embed(torch.arange(self.n_items + 1, device=self.item_emb.weight.device))
            first = self.mlp[0]
            d = items.shape[1]
            per_slot = first.weight[:, :self.slots * (d + 1)].reshape(-1, self.slots, d + 1)
            tables = torch.einsum("nd,hsd->snh", items, per_slot[:, :, :d])  # [slots, N + 1, hidden]
            tables[0] += first.bias  # every history has one slot 0: the bias rides on its rows
            dense = torch.cat([per_slot[:, :, d], first.weight[:, self.slots * (d + 1):]], 1)
            offsets = torch.arange(self.slots, device=items.device) * (self.n_items + 1)
            slot_items = tables.reshape(-1, tables.shape[-1]).contiguous()
            return FirstLayerTables(slot_items, dense.T.contiguous(), offsets)


class FirstLayerTables(NamedTuple):
    """A :class:`HistoryEncoder`'s first layer as per-slot item tables (:class:`SlotTables`)."""

    slot_items: Tensor  #: [slots · (N + 1), hidden]: slot j's rows from j (N + 1); slot 0's carry the bias
    dense: Tensor       #: [slots + 1 + features, hidden]: for the click flags, progress and features
    offsets: Tensor     #: [slots]: j (N + 1), slot j's first row


def first_layer(tables: FirstLayerTables, items: Tensor, dense_inputs: Tensor) -> Tensor:
    """The first layer's pre-activations ``[B, hidden]`` for history items ``[B, slots]`` and the
    dense inputs ``[B, slots + 1 + features]``: one table row per slot summed, plus one small
    product."""
    rows = F.embedding_bag(items + tables.offsets, tables.slot_items, mode="sum")
    return torch.addmm(rows, dense_inputs, tables.dense)


class SlotTables:
    """The per-slot item tables of a :class:`HistoryEncoder` in eval mode, kept while its weights
    stay the same.

    The encoder's first layer is linear in each history slot's item vector, so its product with
    every item can be computed once per slot (``slots · (N + 1) · hidden`` numbers); a forward
    pass then adds one table row per slot (one ``embedding_bag``) in place of multiplying the
    flattened history (``slots · (dim + 1) · hidden`` multiply-adds per user), the trick of the
    frozen GRU step (README "The frozen GRU step"). That pays where the same weights serve many
    users, which is what eval mode (``module.eval()``) declares: the weights a DQN acts with
    without exploring (:class:`WeightAverage`'s copy), a pretrained reference, a deployed
    policy. A learner's online and target networks stay in train mode and never use tables, so
    what it learns does not depend on them. An encoder in eval mode always uses them (where no
    gradient flows, on a CPU, outside ``torch.compile`` graphs, up to
    :data:`MAX_TABLE_NUMBERS`), so its outputs depend only on its weights and inputs; the
    tables are rebuilt when the weights differ from the copy they were built from, byte by byte
    (:func:`recrl.kernels.same_bytes`; version counters would miss the fused Adam step, which
    does not bump them). The sums run
    in another order than the direct pass's: values agree with it to about 1e-6. Not on a GPU,
    where per-operation overhead matters less and comparing weights would wait for the device.
    """

    def __init__(self) -> None:
        self.weights: list[Tensor] | None = None  # copies of the weights the tables were built from
        self.tables: FirstLayerTables | None = None

    def __getstate__(self) -> dict:
        # what copy.deepcopy and pickle take: a copy's weights are other tensors, it builds its own
        return {"weights": None, "tables": None}

    def lookup(self, encoder: HistoryEncoder) -> FirstLayerTables | None:
        """The tables for ``encoder``'s current weights, or ``None``: use the direct pass."""
        first = encoder.mlp[0].weight
        if (encoder.training or (torch.is_grad_enabled() and first.requires_grad)
                or torch.compiler.is_compiling() or first.device.type != "cpu"
                or encoder.slots * (encoder.n_items + 1) * first.shape[0] > MAX_TABLE_NUMBERS):
            return None
        weights = encoder.frozen_weights()
        if self.tables is None or not all(map(kernels.same_bytes, self.weights, weights)):
            self.weights = [w.detach().clone() for w in weights]
            self.tables = encoder.build_slot_tables()
        return self.tables


MAX_TABLE_NUMBERS = 1 << 24  # 64 MB of float32 tables at most per encoder


def history_summary(emb: Tensor, clicks: Tensor, real: Tensor) -> Tensor:
    """Order-free summary ``[B, 2 D + 1]`` of a history: the mean vector of the items shown, the
    mean vector of the items clicked (zero when none) and the click rate of the shown slots.

    ``emb`` ``[B, S, D]`` slot vectors, ``clicks`` ``[B, S]``, ``real`` ``[B, S]`` (not padding).
    """
    real = real.to(emb.dtype)
    shown = real.sum(1, keepdim=True).clamp(min=1.0)
    clicked = (clicks * real).sum(1, keepdim=True)
    mean_shown = (emb * real.unsqueeze(-1)).sum(1) / shown
    mean_clicked = (emb * (clicks * real).unsqueeze(-1)).sum(1) / clicked.clamp(min=1.0)
    return torch.cat([mean_shown, mean_clicked, clicked / shown], -1)


#: priors this wide whose entries are mostly their column's commonest value (multi-hot tokens,
#: standardised) are multiplied as a constant row plus a sparse rest (:class:`ItemPrior`); narrower
#: ones (the synthetic world's 13 columns) keep the dense product and its exact sums
SPARSE_PRIOR_FROM = 64
#: ... and where at most this share of the entries differs from that value
SPARSE_PRIOR_DENSITY = 0.25


class ItemPrior(nn.Module):
    """A learned linear map of fixed pretrained item vectors into the policy's item space.

    ``prior`` ``[n_items, P]`` (e.g. the behavior model's item vectors, see
    :func:`behavior_item_prior`) is standardised per column and kept as a buffer (saved with the
    policy); ``padding=True`` adds a zero row for the history padding id ``n_items``.

    A wide prior of category tokens is mostly one value per column after the standardisation
    (Amazon Beauty: 637 columns, 0.6% of the entries differ from their column's commonest value),
    so from :data:`SPARSE_PRIOR_FROM` columns on, where at most :data:`SPARSE_PRIOR_DENSITY` of
    the entries differ, :meth:`table` multiplies it as ``1 · base`` plus the sparse rest:
    ``base @ W.T`` once and the rest as a compressed-row matrix (its transpose's for the weight's
    gradient), the same values up to float rounding at a fraction of the dense product's cost
    (eager only: compiled graphs take the dense product). The rest is rebuilt from the buffer
    whenever one is loaded, so checkpoints hold the prior alone, as before.

    Example::

        prior = ItemPrior(torch.randn(100, 33), dim=32)
        prior(torch.tensor([[3, 7]]))        # [1, 2, 32]
        prior.table()                        # [100, 32]
    """

    def __init__(self, prior: Tensor, dim: int, padding: bool = False) -> None:
        super().__init__()
        prior = prior.detach().float()
        prior = (prior - prior.mean(0)) / prior.std(0).clamp(min=1e-6)
        self.n_items = prior.shape[0]
        if padding:
            prior = torch.cat([prior, prior.new_zeros(1, prior.shape[1])])
        self.register_buffer("prior", prior)
        self.proj = nn.Linear(prior.shape[1], dim, bias=False)
        self._split_prior()

    def _split_prior(self) -> None:
        """Where it pays (see the class docstring), ``prior`` as its columns' commonest values
        (``base``) plus the entries that differ (``rest_*``: compressed rows of the rest and of its
        transpose); else ``base`` is ``None``. Not saved: derived from ``prior``."""
        prior = self.prior
        base = prior.mode(0).values if prior.shape[1] >= SPARSE_PRIOR_FROM else None
        if base is not None and (prior != base).sum() > SPARSE_PRIOR_DENSITY * prior.numel():
            base = None
        self.register_buffer("base", base, persistent=False)
        self.items_rest = 0
        parts: dict[str, Tensor | None] = dict.fromkeys(
            f"{name}_{part}" for name in ("rest", "rest_t") for part in ("crow", "columns", "values"))
        if base is not None:
            with quiet_sparse():
                rest = (prior - base).to_sparse_csr()
                rest_t = rest.to_sparse_coo().t().to_sparse_csr()
            self.items_rest = int(rest.crow_indices()[self.n_items])  # the items' entries, not padding's
            for name, matrix in (("rest", rest), ("rest_t", rest_t)):
                parts.update({f"{name}_crow": matrix.crow_indices(), f"{name}_columns": matrix.col_indices(),
                              f"{name}_values": matrix.values()})
        for name, part in parts.items():
            self.register_buffer(name, part, persistent=False)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._split_prior()  # the loaded prior's own split

    def forward(self, items: Tensor) -> Tensor:
        """Vectors ``[..., dim]`` of ``items``."""
        return self.proj(self.prior[items])

    def table(self, padding: bool = False) -> Tensor:
        """Vectors ``[n_items, dim]`` of the whole catalogue; with ``padding`` (a prior built with
        one) ``[n_items + 1, dim]``, the padding id's zero row last."""
        rows = self.prior.shape[0] if padding else self.n_items
        if self.base is None or torch.compiler.is_compiling():  # compiled graphs: the dense product
            return self.proj(self.prior[:rows])
        entries = self.rest_columns.shape[0] if padding else self.items_rest
        # PyTorch's beta warning is issued once per process, by the split's first sparse tensor
        rest = torch.sparse_csr_tensor(self.rest_crow[:rows + 1], self.rest_columns[:entries],
                                       self.rest_values[:entries], (rows, self.prior.shape[1]),
                                       check_invariants=False)
        rest_t = torch.sparse_csr_tensor(self.rest_t_crow, self.rest_t_columns, self.rest_t_values,
                                         (self.prior.shape[1], self.prior.shape[0]), check_invariants=False)
        weight_rows = self.proj.weight.T  # [P, dim]: column j of the prior adds row j
        return _SparseProduct.apply(weight_rows, rest, rest_t) + self.base @ weight_rows


@contextlib.contextmanager
def quiet_sparse() -> Iterator[None]:
    """A context without PyTorch's warning that sparse CSR tensors are a beta feature (recrl uses
    them only for :class:`ItemPrior`'s products, checked against the dense ones in its tests)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


class _SparseProduct(torch.autograd.Function):
    """``rest @ weight`` for a fixed sparse ``rest`` ``[R, P]`` (compressed rows), its gradient
    ``rest.T @ grad`` by ``rest_t``, the compressed rows of the whole prior's rest transposed
    ``[P, R']`` (``R' >= R``: rows past ``R``, the padding's, get no gradient)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, rest: Tensor, rest_t: Tensor) -> Tensor:
        ctx.save_for_backward(rest_t)
        return rest @ weight.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (rest_t,) = ctx.saved_tensors
        missing = rest_t.shape[1] - grad.shape[0]
        if missing:
            grad = torch.cat([grad, grad.new_zeros(missing, grad.shape[1])])
        return rest_t @ grad.contiguous(), None, None


def attach_prior(ids: nn.Embedding, item_prior: Tensor | None, padding: bool = False) -> ItemPrior | None:
    """The :class:`ItemPrior` of ``item_prior`` for the id table ``ids`` (``None`` without one).
    With a prior the ids start at zero: items start as their prior and the ids learn what it
    misses."""
    if item_prior is None:
        return None
    nn.init.zeros_(ids.weight)
    return ItemPrior(item_prior, ids.embedding_dim, padding=padding)


def id_plus_prior(ids: nn.Embedding, prior: ItemPrior | None) -> Tensor:
    """The item vectors ``[n_items, dim]`` of an id table and its prior (ids alone without one)."""
    return ids.weight if prior is None else ids.weight + prior.table()


ITEM_INITS = ("auto", "random", "behavior", "side", "behavior+side")


def behavior_item_prior(ctx: AlgoContext, source: str) -> Tensor | None:
    """Pretrained item vectors ``[n_items, P]`` for a policy's item tower (``algo.item_init``).

    ``random``: none (ids only). ``behavior``: what the fitted behavior model learned about each
    item (its ``item_vectors``: click-head item embeddings and biases). ``side``: the item table's
    content (:func:`recrl.behavior.features.side_features`: category tokens multi-hot, numeric
    columns standardised), known for every item, logged or not. ``behavior+side``: both.
    ``auto``: ``side`` when the dataset's item table has usable columns, else ``random``.
    """
    if source not in ITEM_INITS:
        raise RecrlError(f"algo.item_init={source!r}: use one of {', '.join(ITEM_INITS)}")
    if source == "auto":
        try:
            return side_item_matrix(ctx).to(ctx.device)
        except RecrlError:
            return None
    parts: list[Tensor] = []
    if "behavior" in source:
        if ctx.behavior is None or not hasattr(ctx.behavior, "item_vectors"):
            raise RecrlError(f"algo.item_init={source} needs a behavior model with item vectors "
                             "(behavior=gru, sasrec, mf or deepfm); use algo.item_init=random or side")
        with torch.no_grad():
            parts.append(ctx.behavior.item_vectors().detach().float().to(ctx.device))
    if "side" in source:
        parts.append(side_item_matrix(ctx).to(ctx.device))
    return torch.cat(parts, 1) if parts else None


def side_item_matrix(ctx: AlgoContext) -> Tensor:
    """The item table as one matrix ``[n_items, P]`` (tokens multi-hot, then the dense columns)."""
    if ctx.interactions is None or ctx.interactions.items is None or ctx.interactions.items.empty:
        raise RecrlError("algo.item_init=side needs the dataset's item table; this run has none "
                         "(use algo.item_init=random or behavior)")
    features = side_features(ctx.interactions.items, ctx.n_items)
    parts = [t.float() for t in (features.tokens, features.dense) if t is not None]
    if not parts:
        raise RecrlError("algo.item_init=side: the item table has no usable columns; use random or behavior")
    return torch.cat(parts, 1)


class GRUHistoryEncoder(nn.Module):
    """Encodes an observation with a GRU over its history slots into a state ``[B, dim]``.

    A real sequence model (GRU4Rec-style), unlike the position-wise MLP of
    :class:`HistoryEncoder`: the ``L * K`` slots, oldest first, are the GRU's inputs
    ``[item embedding, clicked flag]`` (padding slots, all before the first real one, embed to
    zero); its last hidden state and the session progress go through a small MLP. Observation
    features are not used (logged recommendation data has none).

    Example::

        enc = GRUHistoryEncoder(n_items=100, history_len=10, slate_size=1, horizon=20, dim=32)
        state = enc(obs)                     # [B, 32]
    """

    def __init__(self, n_items: int, history_len: int, slate_size: int, horizon: int,
                 dim: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.n_items, self.horizon = n_items, horizon
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.gru = nn.GRU(dim + 1, hidden, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, obs: Obs) -> Tensor:
        """State vectors ``[B, dim]``."""
        b = obs.batch_size
        slots = torch.cat([self.item_emb(obs.items), obs.clicks.unsqueeze(-1)], -1)
        _, last = self.gru(slots.reshape(b, -1, slots.shape[-1]))  # slots in time order
        progress = (obs.step.float() / self.horizon).unsqueeze(-1)
        return self.mlp(torch.cat([last[0], progress], -1))


class TransformerHistoryEncoder(nn.Module):
    """Encodes an observation with a SASRec-style causal transformer into a state ``[B, dim]``.

    The layout of :class:`~recrl.behavior.sasrec.SASRecBehavior`, so a fitted SASRec user model
    can initialise it (``algo.init_from=behavior``): each history slot is one token (the slate's
    mean item vector, plus the clicked items' vectors, plus a learned click vector per click), a
    learned *start* token opens the session, and pre-LayerNorm blocks of causal self-attention
    with rotary position embeddings read the sequence (left padding masked). The output vector
    after the final LayerNorm of the newest token goes through a linear query projection; the
    session progress adds a learned vector (zero at initialisation).

    The item table is shared with scoring: an :class:`ItemScorer` around this encoder scores
    items with :meth:`item_table` (the input embeddings plus the mapped ``item_prior``), so what
    the encoder learns about an item when it is in the history and when it is a candidate is
    one vector. With ``item_ids=False`` the id embeddings stay at zero and items are known by
    their content (``item_prior``) alone: an item never seen in training is scored like any other.

    Example::

        enc = TransformerHistoryEncoder(n_items=100, horizon=20, dim=64, layers=2, heads=2)
        state = enc(obs)                     # [B, 64]
        table = enc.item_table()             # [100, 64]
    """

    def __init__(self, n_items: int, horizon: int, dim: int = 64, layers: int = 2, heads: int = 2,
                 dropout: float = 0.0, item_prior: Tensor | None = None, item_ids: bool = True) -> None:
        super().__init__()
        if heads < 1 or dim % heads or (dim // heads) % 2:
            raise RecrlError(f"algo.dim={dim} must split into algo.heads={heads} heads of even size")
        if layers < 1:
            raise RecrlError(f"algo.layers={layers} must be >= 1")
        if not item_ids and item_prior is None:
            raise RecrlError("algo.item_ids=false knows items by their content, but this run has none: "
                             "set algo.item_init=side (or behavior) or algo.item_ids=true")
        self.n_items, self.horizon, self.dropout, self.item_ids = n_items, horizon, dropout, item_ids
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        with torch.no_grad():
            self.item_emb.weight.normal_(0.0, dim ** -0.5)
            self.item_emb.weight[n_items].zero_()
        self.prior = attach_prior(self.item_emb, item_prior, padding=True)
        if not item_ids:
            self.item_emb.weight.requires_grad_(False)
        self.feedback = nn.Embedding(2, dim)  # rows: clicked, converted (SASRecBehavior's layout)
        nn.init.normal_(self.feedback.weight, 0.0, dim ** -0.5)
        self.start = nn.Parameter(torch.randn(dim) * dim ** -0.5)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.progress = nn.Linear(1, dim)
        nn.init.zeros_(self.progress.weight)
        nn.init.zeros_(self.progress.bias)
        half = dim // heads
        self.register_buffer("inv_freq", 10000.0 ** -(torch.arange(0, half, 2).float() / half),
                             persistent=False)

    def item_table(self, padding: bool = False) -> Tensor:
        """Item vectors ``[n_items, dim]`` (with ``padding``, the padding id's zero row last)."""
        table = self.item_emb.weight if padding else self.item_emb.weight[:self.n_items]
        return table if self.prior is None else table + self.prior.table(padding=padding)

    def forward(self, obs: Obs) -> Tensor:
        """State vectors ``[B, dim]``."""
        length = obs.items.shape[1]
        emb = F.embedding(obs.items, self.item_table(padding=True))  # [B, L, K, D]
        clicks = obs.clicks.to(emb.dtype)
        tokens = (emb.mean(2) + (clicks.unsqueeze(-1) * emb).sum(2)
                  + clicks.sum(2, keepdim=True) * self.feedback.weight[0])
        first = length - (obs.items[:, :, 0] < self.n_items).sum(1)  # the start token's position
        positions = torch.arange(length + 1, device=tokens.device)
        x = torch.cat([tokens[:, :1], tokens], 1)
        x = torch.where((positions[None] == first[:, None]).unsqueeze(-1), self.start.to(x.dtype), x)
        live = positions[None] >= first[:, None]
        causal = positions[:, None] >= positions[None]
        eye = torch.eye(length + 1, dtype=torch.bool, device=x.device)
        mask = ((causal[None] & live[:, None, :]) | eye)[:, None]  # padding queries see themselves
        x = F.dropout(x, self.dropout, self.training and self.dropout > 0)
        cos, sin = rope_tables(positions, self.inv_freq)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        progress = (obs.step.to(x.dtype) / self.horizon).unsqueeze(-1)
        return self.proj(self.norm(x[:, -1])) + self.progress(progress)


ENCODERS = ("mlp", "gru", "transformer")


def history_encoder(kind: str, ctx: AlgoContext, dim: int, hidden: int, layers: int = 2, heads: int = 2,
                    item_prior: Tensor | None = None, summary: bool = False,
                    item_ids: bool = True) -> nn.Module:
    """The encoder named ``kind`` sized for ``ctx`` (``algo.encoder``): ``mlp``
    (:class:`HistoryEncoder`, with the observation features, ``item_prior`` and ``summary``),
    ``gru`` (:class:`GRUHistoryEncoder`, item histories only) or ``transformer``
    (:class:`TransformerHistoryEncoder`, ``dim`` wide, ``layers`` deep, ``heads`` heads, its
    item table shared with scoring; ``item_ids=False``: items known by ``item_prior`` alone)."""
    if kind not in ENCODERS:
        raise RecrlError(f"algo.encoder={kind!r}: use one of {', '.join(ENCODERS)}")
    if kind != "mlp" and ctx.obs_features:
        raise RecrlError(f"encoder={kind} reads item histories only; this environment's observations "
                         "are features: use encoder=mlp")
    if kind == "mlp":
        return HistoryEncoder(ctx.n_items, ctx.history_len, ctx.slate_size, ctx.horizon, dim, hidden,
                              features=ctx.obs_features, item_prior=item_prior, summary=summary)
    if kind == "gru":
        return GRUHistoryEncoder(ctx.n_items, ctx.history_len, ctx.slate_size, ctx.horizon, dim, hidden)
    return TransformerHistoryEncoder(ctx.n_items, ctx.horizon, dim, layers, heads, item_prior=item_prior,
                                     item_ids=item_ids)


class ItemScorer(nn.Module):
    """Scores every item for every state in one matrix product: ``state @ E.T + b``.

    Around a :class:`TransformerHistoryEncoder` the item vectors are the encoder's own item table
    (one item tower for history and scoring); otherwise the scorer has its own.

    Example::

        scorer = ItemScorer(HistoryEncoder(...), n_items=100, dim=32)
        scores = scorer(obs)                 # [B, 100]
    """

    def __init__(self, encoder: nn.Module, n_items: int, dim: int, item_prior: Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tied = isinstance(encoder, TransformerHistoryEncoder)
        if self.tied:  # the encoder's item table scores too (and carries the prior)
            self.item_out, self.prior = None, None
        else:
            self.item_out = nn.Embedding(n_items, dim)
            self.prior = attach_prior(self.item_out, item_prior)
        self.bias = nn.Parameter(torch.zeros(n_items))
        if self.tied and not encoder.item_ids:
            self.bias.requires_grad_(False)  # no per-item parameters: items known by content alone

    def forward(self, obs: Obs) -> Tensor:
        """Scores ``[B, n_items]``."""
        return self.score(self.encoder(obs))

    def item_table(self) -> Tensor:
        """The scored item vectors ``[n_items, dim]`` (id embeddings plus the mapped prior; a
        transformer encoder's own item table)."""
        return self.encoder.item_table() if self.tied else id_plus_prior(self.item_out, self.prior)

    def score(self, state: Tensor) -> Tensor:
        """Scores ``[B, n_items]`` for already-encoded states."""
        users, items = self.factors(state)
        return users @ items.T

    def score_items(self, state: Tensor, slates: Tensor) -> Tensor:
        """Scores ``[B, K]`` of the items ``slates`` ``[B, K]`` only: the same numbers as
        ``score(state).gather(1, slates)`` without the ``[B, n_items]`` product (a learner that
        needs the scores of the items it took saves the catalogue-wide product and its gradient)."""
        users, items = self.factors(state)
        return (items[slates] @ users[:, :, None])[..., 0]

    def ranking_factors(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(users [B, dim], items [n_items, dim], bias [n_items])``: ``users @ items.T + bias``
        orders every user's items as the scores do (it is the scores less a per-user constant,
        e.g. :class:`~recrl.algos.dqn.DuelingScorer`'s centring), without the copies of the
        item table that :meth:`factors` makes to fold the bias in."""
        return state, self.item_table(), self.bias

    def factors(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """``(users [B, D], items [n_items, D])`` whose product ``users @ items.T`` is the scores:
        ``[s | 1] . [E_i | b_i]`` (the bias folded in as a column, so scoring is one matrix product
        and any block of users can be scored on its own)."""
        return (torch.cat([state, state.new_ones(state.shape[0], 1)], 1),
                torch.cat([self.item_table(), self.bias[:, None]], 1))


def skips_shown(ctx: AlgoContext, skip_shown: bool) -> bool:
    """Whether ``skip_shown`` applies: where the actions are items, yes; a wrapped gymnasium
    environment has moves, not items, and repeating one is normal."""
    return skip_shown and ctx.item_actions


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices ``[B, k]`` of the highest scores, best first."""
    if k == 1:
        return best_item(scores)[:, None]
    return scores.topk(k, dim=1).indices


BLOCK_ARGMAX_ITEMS = 2048  # from this many items, best_item searches blocks (faster on a CPU)


def best_item(scores: Tensor) -> Tensor:
    """The index ``[B]`` of each row's highest score (the first of ties, NaN counting highest, as
    ``max``). On a CPU from :data:`BLOCK_ARGMAX_ITEMS` items on by :func:`best_by_blocks`;
    below that, ``max`` (on a CPU about twice as fast as ``argmax`` and ``topk``). Item-major
    scores (a transposed view, as acting writes them on a CPU: :func:`scores_by_item`) are
    searched by blocks down their columns, at any size."""
    if scores.device.type == "cpu" and is_item_major(scores):
        return best_by_blocks(scores.T, items_dim=0)
    if scores.shape[1] < BLOCK_ARGMAX_ITEMS or scores.device.type != "cpu":
        return scores.max(1).indices
    return best_by_blocks(scores, items_dim=1)


def sqrt_blocks(scores: Tensor, items_dim: int) -> tuple[Tensor, Tensor, int]:
    """``scores`` split along ``items_dim`` (``N`` items) into ``N // size`` whole blocks of
    ``size = isqrt(N)`` items (a view with that dim unflattened to ``[blocks, size]``) and the
    tail of the last ``N mod size`` items; and ``size``."""
    n = scores.shape[items_dim]
    size = math.isqrt(n)
    whole = n // size * size
    return (scores.narrow(items_dim, 0, whole).unflatten(items_dim, (n // size, size)),
            scores.narrow(items_dim, whole, n - whole), size)


def best_by_blocks(scores: Tensor, items_dim: int) -> Tensor:
    """The index ``[U]`` of each user's highest score in ``scores`` (``[U, N]`` with
    ``items_dim=1``, ``[N, U]`` with ``items_dim=0``; the first of ties, NaN counting highest, as
    ``max``), in two passes: the best of each block of about ``sqrt(N)`` items by ``amax``
    (vectorised, where ``max`` with indices is not; down the columns it vectorises across the
    users), then the best item within each user's best block."""
    head, tail, size = sqrt_blocks(scores, items_dim)
    block_best, block = head.amax(items_dim + 1).max(items_dim)
    per_user = head if items_dim == 1 else head.permute(2, 0, 1)  # [U, blocks, size]
    users = torch.arange(per_user.shape[0], device=scores.device)
    best = block * size + per_user[users, block].max(1).indices
    if tail.shape[items_dim] == 0:
        return best
    tail_best, tail_index = tail.max(items_dim)
    return torch.where(tail_best > block_best, tail_index + head.shape[items_dim] * size, best)


def is_item_major(scores: Tensor) -> bool:
    """Whether ``scores`` ``[B, N]`` lie item by item in memory (a transposed view: the users of
    one item next to each other), as :func:`catalogue_scores` writes them on a CPU."""
    return scores.dim() == 2 and scores.shape[0] > 1 and scores.stride(0) == 1 and scores.stride(1) != 1


ITEM_MAJOR_ITEMS = 512  # from this many items a CPU writes acting's scores item-major


def scores_by_item(n_items: int, device: torch.device) -> bool:
    """Whether acting writes a catalogue's scores item-major (``[N, users]`` in memory, used as
    its ``[users, N]`` transpose): on a CPU from :data:`ITEM_MAJOR_ITEMS` items on, where
    Intel MKL's product runs up to twice as fast in that layout for ``[users x D] @ [D x N]``
    with a small ``D`` (and keeps its speed, where the user-major product measured sometimes
    fast, sometimes half as fast within one process); on a GPU and for small catalogues,
    user-major."""
    return device.type == "cpu" and n_items >= ITEM_MAJOR_ITEMS


def catalogue_scores(users: Tensor, items: Tensor, out: Tensor | None = None) -> Tensor:
    """``users @ items.T`` ``[U, N]`` for acting, written into ``out`` when given (any layout);
    without ``out``, item-major where :func:`scores_by_item` says so (a transposed view)."""
    if out is None and scores_by_item(items.shape[0], users.device):
        return torch.mm(items, users.T).T
    return torch.matmul(users, items.T, out=out)


CACHE_SCORES = 1 << 20  # scores per chunk of users on a CPU: 4 MB of float32 stays in cache
MIN_CHUNK_USERS = 32  # item-major chunks: the fewest users (columns) a chunk holds


class ScoreBlock:
    """A reusable block of memory for :func:`top_k_by_chunks` to write each chunk's ``[rows,
    n_items]`` scores into, user-major or item-major. A fresh 4 MB tensor per chunk comes from
    the operating system as new pages (glibc's allocator hands blocks that large back to the
    system when they are freed), so every chunk paid about a thousand page faults before its
    first score was written; a block kept by the policy is written in place. Not used inside
    compiled graphs, which plan their own memory. Scratch memory only: copies and pickles start
    without it.

    Example::

        block = ScoreBlock()
        out = block.take(100, 10_000, like=users)   # [100, 10_000], the same memory next time
        out = block.take(128, 10_000, like=users, item_major=True)  # [128, 10_000], strides (1, 128)
    """

    def __init__(self) -> None:
        self.memory: Tensor | None = None

    def take(self, rows: int, n_items: int, like: Tensor, item_major: bool = False) -> Tensor | None:
        """A ``[rows, n_items]`` view of the block (grown if needed) on ``like``'s device and
        dtype, with ``item_major`` the transpose of an ``[n_items, rows]`` block (its first
        ``r`` rows, ``view[:r]``, are then the first ``r`` columns of every item); ``None``
        inside a compiled graph."""
        if torch.compiler.is_compiling():
            return None
        size = rows * n_items
        memory = self.memory
        fits = memory is not None and memory.numel() >= size and memory.device == like.device \
            and memory.dtype == like.dtype
        if not fits:
            memory = self.memory = like.new_empty(size)
        if item_major:
            return memory[:size].view(n_items, rows).T
        return memory[:size].view(rows, n_items)

    def __getstate__(self) -> dict:
        return {"memory": None}  # what copy.deepcopy and pickle take: a copy starts without memory


def top_k_by_chunks(scores_of: Callable[[slice, Tensor | None], Tensor], batch: int, k: int,
                    n_items: int, device: torch.device, block: ScoreBlock | None = None,
                    like: Tensor | None = None, pick: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The top-``k`` items ``[batch, k]`` of ``scores_of(rows, out)``, the ``[users, n_items]``
    scores of the users in the slice ``rows``, written into ``out`` when it is not ``None``: on
    a CPU a few users at a time (about :data:`CACHE_SCORES` scores per chunk), so that each
    chunk's scores are made, masked and searched while in cache instead of streamed through
    memory several times (several times faster on large catalogues); on a GPU all users at
    once. With ``block`` (and ``like``, a tensor of the scores' device and dtype) every chunk's
    ``out`` is the same reused memory (:class:`ScoreBlock`), item-major where
    :func:`scores_by_item` says so; user-major only where there is more than one chunk (one
    chunk is one allocation per call like any other tensor of the step, and measured faster
    fresh). ``pick``: what is taken of each chunk's scores in place of their top ``k`` (e.g. a
    draw from their softmax, :func:`sample_top_k`), ``[rows, k]``; it may overwrite them."""
    pick = pick or (lambda scores: top_k(scores, k))
    rows = min(chunk_rows(batch, n_items, device), batch)
    item_major = scores_by_item(n_items, device)
    memory = None
    if block is not None and (item_major or rows < batch):
        memory = block.take(rows, n_items, like, item_major=item_major)
    return torch.cat([pick(scores_of(slice(start, start + rows),
                                     None if memory is None else memory[:min(rows, batch - start)]))
                      for start in range(0, batch, rows)])


def choose_by_chunks(users: Tensor, items: Tensor, obs: Obs, k: int, skip_shown: bool,
                     block: ScoreBlock | None = None,
                     pick: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """A factorised policy's slates ``[B, k]``: the catalogue scores ``users @ items.T``
    (:func:`catalogue_scores`; with ``skip_shown`` the observed history at ``-inf``, in place)
    made and searched a chunk of users at a time (:func:`top_k_by_chunks`, into ``block``):
    the top ``k`` of each, or ``pick`` of them (e.g. a draw from their softmax)."""
    def scores_of(rows: slice, out: Tensor | None) -> Tensor:
        scores = catalogue_scores(users[rows], items, out)
        return mask_shown(scores, obs.index(rows), in_place=True) if skip_shown else scores

    return top_k_by_chunks(scores_of, users.shape[0], k, items.shape[0], users.device,
                           block=block, like=users, pick=pick)


FUSED_SEARCH_ITEMS = 512  # from this many items a CPU searches greedy slates inside the product
FUSED_MAX_SLATE = 64  # the most items a slate may have for the fused search (it keeps a list)


def searches_fused(users: Tensor, items: Tensor, k: int) -> bool:
    """Whether greedy slates of ``k`` items come from the native kernel that searches the scores
    inside the product (:func:`recrl.kernels.best_dot`; README "A search fused into the
    product"): float32 on a CPU, no gradient, from :data:`FUSED_SEARCH_ITEMS` items on (below
    that a step's scores stay in cache anyway, and catalogues the size of the default synthetic
    world keep their PyTorch path and so their runs' exact numbers), slates of up to
    :data:`FUSED_MAX_SLATE` items, where the kernel is built here."""
    return (k <= FUSED_MAX_SLATE and users.device.type == "cpu"
            and users.dtype == items.dtype == torch.float32 and items.shape[0] >= FUSED_SEARCH_ITEMS
            and not (torch.is_grad_enabled() and (users.requires_grad or items.requires_grad))
            and kernels.best_dot_ready())


def fused_greedy(scorer: ItemScorer, state: Tensor, obs: Obs, k: int, skip_shown: bool,
                 also_excluded: Tensor | None = None) -> Tensor | None:
    """The greedy slates ``[B, k]`` of ``scorer`` at the encoded ``state``: each user's top
    ``k`` items, best first (with ``skip_shown``, none of the observed history's; none of
    ``also_excluded`` ``[B, S]``), searched inside the product by :func:`recrl.kernels.best_dot`
    on :meth:`ItemScorer.ranking_factors`; ``None`` where :func:`searches_fused` says no."""
    users, items, bias = scorer.ranking_factors(state)
    if not searches_fused(users, items, k):
        return None
    excluded = [obs.items.reshape(obs.batch_size, -1)] if skip_shown else []
    if also_excluded is not None:
        excluded.append(also_excluded)
    excluded = torch.cat(excluded, 1) if excluded else users.new_empty(users.shape[0], 0, dtype=torch.int64)
    return kernels.best_dot(users, items, bias, excluded, k)


def choose_slates(scorer: ItemScorer, state: Tensor, obs: Obs, k: int, skip_shown: bool,
                  block: ScoreBlock | None = None,
                  pick: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """A factorised policy's slates ``[B, k]`` at the encoded ``state``: its greedy top ``k``
    searched inside the product where :func:`fused_greedy` applies, else
    :func:`choose_by_chunks` on the scorer's factors (the top ``k`` of each chunk of users, or
    ``pick`` of them, e.g. a draw from their softmax)."""
    if pick is None:
        fused = fused_greedy(scorer, state, obs, k, skip_shown)
        if fused is not None:
            return fused
    users, items = scorer.factors(state)
    return choose_by_chunks(users, items, obs, k, skip_shown, block, pick)


def chunk_rows(batch: int, n_items: int, device: torch.device) -> int:
    """Users scored at a time by :func:`top_k_by_chunks`: on a GPU all ``batch``; on a CPU about
    :data:`CACHE_SCORES` scores' worth, for item-major scores (:func:`scores_by_item`) the
    nearest power of two and at least :data:`MIN_CHUNK_USERS` (a width the column search
    vectorises over: ``amax`` down 104 columns of 10,000 scores measured 4x slower than down
    128)."""
    if device.type == "cuda":
        return batch
    users = max(1, CACHE_SCORES // n_items)
    if scores_by_item(n_items, device):
        users = max(MIN_CHUNK_USERS, 1 << round(math.log2(CACHE_SCORES / n_items)))
    return users


def random_slates(batch: int, n_items: int, k: int, device: torch.device,
                  generator: torch.Generator) -> Tensor:
    """Uniformly random slates ``[batch, k]`` of distinct items."""
    if k == 1:
        return torch.randint(0, n_items, (batch, 1), device=device, generator=generator)
    noise = torch.rand(batch, n_items, device=device, generator=generator)
    return noise.topk(k, dim=1).indices


def mask_shown(scores: Tensor, obs: Obs, in_place: bool = False) -> Tensor:
    """``scores`` with the items already shown in the observed history set to ``-inf`` (a new
    tensor; with ``in_place``, ``scores`` itself when no gradient flows through it)."""
    if in_place and not (torch.is_grad_enabled() and scores.requires_grad):
        return mask_items_(scores, obs.items.reshape(obs.batch_size, -1))
    return scores.masked_fill(obs.shown_mask(scores.shape[1]), float("-inf"))


def mask_items_(scores: Tensor, items: Tensor) -> Tensor:
    """``scores`` ``[B, N]`` with each row's ``items`` ``[B, S]`` set to ``-inf``, in place (ids of
    ``N`` or more, history padding, are skipped: sent to item ``N - 1`` with ``+inf``, which the
    minimum ignores)."""
    n = scores.shape[1]
    src = torch.where(items < n, float("-inf"), float("inf")).to(scores.dtype)
    return scores.scatter_reduce_(1, items.clamp(max=n - 1), src, reduce="amin")


def skip_history(scores: Tensor, obs: Obs, skip_shown: bool) -> Tensor:
    """Freshly made scores ``[B, n_items]`` of a policy that acts by them, with ``skip_shown`` the
    items in the observed history at ``-inf`` (in place where no gradient flows through them)."""
    return mask_shown(scores, obs, in_place=True) if skip_shown else scores


def masked_scores(net: nn.Module, obs: Obs, skip_shown: bool) -> Tensor:
    """``net(obs)`` scores ``[B, n_items]`` through :func:`skip_history`."""
    return skip_history(net(obs), obs, skip_shown)


SAMPLE_BY_BLOCKS_ITEMS = 512  # from this many items a CPU draws single items by block masses
LOG2E = 1.0 / math.log(2.0)


def exp_by_exp2(x: Tensor, in_place: bool = False) -> Tensor:
    """``exp(x)`` as ``exp2(x * log2(e))`` (``in_place``: in ``x``'s memory): within 4e-6 of
    ``exp``'s result relative to itself (the rounding of the product), where ``torch.exp`` on a
    CPU is 2-3 times slower, and some 30 times slower still where its results are denormal
    (``x`` below -87, as the shifted logits of a trained policy often are)."""
    return (x.mul_(LOG2E) if in_place else x.mul(LOG2E)).exp2_()


def sample_top_k(logits: Tensor, k: int, generator: torch.Generator, in_place: bool = False) -> Tensor:
    """``k`` distinct items ``[B, k]`` drawn without replacement from ``softmax(logits)``
    (Gumbel top-``k``). One item on a CPU from :data:`SAMPLE_BY_BLOCKS_ITEMS` items on: the same
    distribution by :func:`sample_by_blocks`, which draws two uniform numbers per user where
    Gumbel draws one per item (at 10,000 items and 1,024 users 20 ms against 129 ms here);
    ``in_place``: ``logits`` are scratch scores it may overwrite (the two-stage draw then turns
    them into masses where they lie)."""
    if k == 1 and logits.device.type == "cpu" and logits.shape[1] >= SAMPLE_BY_BLOCKS_ITEMS:
        return sample_by_blocks(logits, generator, in_place)[:, None]
    u = torch.rand(logits.shape, device=logits.device, generator=generator)
    return top_k(logits - torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-7))), k)


def sample_by_blocks(logits: Tensor, generator: torch.Generator, in_place: bool = False) -> Tensor:
    """One item ``[B]`` per row drawn from ``softmax(logits)`` in two stages: a block of about
    ``sqrt(N)`` items by the blocks' masses, then an item of that block by the items' masses
    (``P(i) = M_b / M * p_i / M_b``). One pass of ``exp`` and one of block sums over the scores,
    cumulative sums only over ``sqrt(N)`` numbers, two uniform numbers per row. Items at
    ``-inf`` have no mass and are never drawn (a row needs one finite logit). The masses and
    uniform numbers are at least float32 (half-precision uniforms would bias the draw).
    Item-major ``logits`` (:func:`is_item_major`, as chunked acting writes them) are summed down
    their columns, vectorised across the users; with ``in_place`` (float32 scratch scores) the
    masses are computed where the logits lie instead of in a fresh ``[B, N]`` tensor. The masses
    are :func:`exp_by_exp2` of the logits less the row's best."""
    items_dim = 0 if is_item_major(logits) else 1
    scores = logits.T if items_dim == 0 else logits  # items along items_dim, contiguous
    dtype = torch.promote_types(logits.dtype, torch.float32)
    peak = scores.amax(items_dim, keepdim=True)
    shifted = scores.sub_(peak) if in_place and dtype == logits.dtype else (scores - peak).to(dtype)
    mass = exp_by_exp2(shifted, in_place=True)
    whole, tail, size = sqrt_blocks(mass, items_dim)
    per_user = whole if items_dim == 1 else whole.permute(2, 0, 1)  # [B, blocks, size]
    tail = tail if items_dim == 1 else tail.T  # [B, N mod size]
    rows, blocks = per_user.shape[:2]
    block_mass = whole.sum(items_dim + 1)
    block_mass = block_mass if items_dim == 1 else block_mass.T  # [B, blocks]
    if tail.shape[1]:
        block_mass = torch.cat([block_mass, tail.sum(1, keepdim=True)], 1)
    u = torch.rand(rows, 2, device=logits.device, generator=generator, dtype=mass.dtype)
    block = draw_by_mass(block_mass, u[:, 0])
    inner = per_user[torch.arange(rows, device=logits.device), block.clamp(max=blocks - 1)]
    if tail.shape[1]:
        inner = torch.where((block == blocks)[:, None], F.pad(tail, (0, size - tail.shape[1])), inner)
    return block * size + draw_by_mass(inner, u[:, 1])


def draw_by_mass(mass: Tensor, u: Tensor) -> Tensor:
    """The index ``[B]`` where ``u`` ``[B]`` (uniform in [0, 1)) falls in each row's cumulative
    ``mass`` ``[B, M]`` (non-negative, a positive total), i.e. ``i`` with probability
    ``mass_i / total``; never an index without mass (rounding that puts ``u * total`` past the
    last cumulative sum takes the last index with mass)."""
    cumulative = mass.cumsum(1)
    total = cumulative[:, -1:]
    # a point strictly below the total falls where the cumulative sum rises: at an index with
    # mass (rounding could take u * total up to the total itself, past every index)
    point = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, point, right=True)[:, 0]


def kl_divergence(log_pi: Tensor, log_ref: Tensor) -> Tensor:
    """``KL(pi || ref)`` ``[B]`` per row of log-probabilities ``[B, N]``, exactly over the
    catalogue; items ``pi`` gives no probability (``-inf``) add 0.

    Example::

        kl_divergence(torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log())
        # 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1) = 0.5108
    """
    allowed = torch.isfinite(log_pi)
    diff = torch.where(allowed, log_pi, 0.0) - torch.where(allowed, log_ref, 0.0)
    return (log_pi.exp() * diff).sum(1)


class _SoftmaxStats(torch.autograd.Function):
    """Forward and backward of :func:`softmax_stats` in a few passes over the logits."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, actions: Tensor, masked: Tensor | None,
                log_ref: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        shifted = logits.clone()
        if masked is not None:
            mask_items_(shifted, masked)
        shifted.sub_(shifted.amax(1, keepdim=True))
        p = exp_by_exp2(shifted)
        total = p.sum(1, keepdim=True)
        p.div_(total)
        # -inf (masked items) becomes a large finite number: with p = 0 there, p * log_p stays 0
        log_p = shifted.sub_(total.log_()).clamp_(min=-MASKED_LOG_P)
        entropy = -torch.linalg.vecdot(p, log_p)
        logp = log_p.gather(1, actions).sum(1)
        gap = None if log_ref is None else log_p - log_ref.clamp(min=-MASKED_LOG_P)
        kl = logp.new_zeros(logp.shape) if gap is None else torch.linalg.vecdot(p, gap)
        ctx.save_for_backward(p, log_p, entropy, actions, gap, kl)
        return logp, entropy, kl

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, grad_entropy: Tensor,
                 grad_kl: Tensor) -> tuple[Tensor, None, None, None]:
        p, log_p, entropy, actions, gap, kl = ctx.saved_tensors
        # d logp / d l_j = count_j - K p_j;  d H / d l_j = -p_j (log p_j + H);
        # d KL / d l_j = p_j (log p_j - log q_j - KL)
        slope = -grad_entropy[:, None]
        offset = slope * entropy[:, None] - actions.shape[1] * grad_logp[:, None]
        grad = torch.addcmul(offset, log_p, slope)
        if gap is not None:
            grad.sub_(grad_kl[:, None] * kl[:, None]).addcmul_(gap, grad_kl[:, None])
        grad.mul_(p)
        grad.scatter_add_(1, actions, grad_logp[:, None].expand_as(actions).contiguous())
        return grad, None, None, None  # masked items: p = 0 there, so no gradient


# the floor of :func:`softmax_stats`' log-probabilities, where items at -inf land: finite (so
# p * log p is 0, not NaN, there) even in float16, and below any log-probability whose
# probability a float64 can hold (exp(-10^4) is 0)
MASKED_LOG_P = 1e4


def softmax_stats(logits: Tensor, actions: Tensor, obs: Obs | None = None,
                  log_ref: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(log-probability of each row's slate, entropy, KL to a reference)``, each ``[B]``, of
    ``softmax(logits)`` (``logits`` ``[B, N]``, items at ``-inf`` masked; ``actions`` ``[B, K]``,
    the slate's log-probability is the sum over its items, as a policy-gradient learner scores
    its slates); with ``obs``, the items of its observed history masked as well (as
    :func:`mask_shown`, inside the fused form's own copy of the logits, where no ``[B, N]`` mask
    is built); with ``log_ref`` (a reference policy's log-probabilities ``[B, N]``, not
    differentiated, masked where the policy is) ``KL(pi || ref)`` as :func:`kl_divergence`,
    zeros without. The same numbers and gradients as ``log_softmax`` + ``gather`` +
    :func:`policy_entropy` + :func:`kl_divergence` up to rounding (the probabilities by
    :func:`exp_by_exp2`),
    in fewer passes over the ``[B, N]`` logits: the forward keeps the probabilities and
    log-probabilities, and the backward is one fused expression, ``g_l = p * (a log p + c (log p
    - log q) + b)`` plus the slate's items, where autograd would walk through the softmax, the
    gather, the ``nan_to_num``, the ``where`` and the products one operation at a time. Below
    :data:`FUSED_STATS_ITEMS` items, where the fused form measured no faster, exactly that
    composition (so runs on small catalogues, the default synthetic world's 500 items among
    them, are unchanged to the last bit)."""
    if logits.shape[1] >= FUSED_STATS_ITEMS:
        shown = None if obs is None else obs.items.reshape(obs.batch_size, -1)
        return _SoftmaxStats.apply(logits, actions, shown, log_ref)
    log_pi = torch.log_softmax(logits if obs is None else mask_shown(logits, obs), 1)
    # in this order: autograd sums the three gradients into log_pi in the order they were made
    logp, entropy = log_pi.gather(1, actions).sum(1), policy_entropy(log_pi)
    kl = log_pi.new_zeros(log_pi.shape[0]) if log_ref is None else kl_divergence(log_pi, log_ref)
    return logp, entropy, kl


FUSED_STATS_ITEMS = 512  # from this many items softmax_stats runs fused (2,000 items: 2x faster)


def policy_entropy(log_pi: Tensor) -> Tensor:
    """Entropy ``[B]`` of each row of log-probabilities ``[B, N]``; masked items (``-inf``) add 0."""
    return -(log_pi.exp() * log_pi.nan_to_num(neginf=0.0)).sum(1)


def double_q_target(q_next: Tensor, q_next_target: Tensor, reward: Tensor, done: Tensor, gamma: float,
                    allowed: Tensor | None = None) -> Tensor:
    """One-step double-Q targets ``[B]`` for single-item actions.

    The online network picks the next item, the target network values it::

        a' = argmax_{a allowed} Q(s', a)
        y  = r + gamma * (1 - done) * Q_target(s', a')

    ``q_next``/``q_next_target`` are ``[B, n_items]`` Q-values at ``s'``; ``allowed`` (``[B,
    n_items]`` bool, ``None``: every item) restricts the argmax (BCQ). Compute the inputs
    under ``torch.no_grad()``: the target is a constant of the loss.

    Example::

        with torch.no_grad():
            y = double_q_target(q(next_obs), q_target(next_obs), batch.reward, batch.done, 0.9)
    """
    if allowed is not None:
        q_next = q_next.masked_fill(~allowed, float("-inf"))
    best = q_next.argmax(1, keepdim=True)
    return reward + gamma * (1.0 - done) * q_next_target.gather(1, best).squeeze(1)


def linear_decay(start: float, end: float, steps: int, t: int) -> float:
    """A value moving linearly from ``start`` to ``end`` over ``steps`` steps, then ``end``."""
    return start + min(1.0, t / max(1, steps)) * (end - start)


def epsilon_explore(slates: Tensor, n_items: int, epsilon: float, generator: torch.Generator) -> Tensor:
    """``slates`` ``[B, K]`` with each user's replaced by a uniformly random slate with
    probability ``epsilon`` (epsilon-greedy exploration)."""
    b, k = slates.shape
    rand = random_slates(b, n_items, k, slates.device, generator)
    coin = torch.rand(b, 1, device=slates.device, generator=generator) < epsilon
    return torch.where(coin, rand, slates)


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam for a policy's parameters, the fused kernel (one kernel for all parameters instead
    of a few operations each: the same update, several times faster on small networks)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def gradient_step(optimizer: torch.optim.Optimizer, loss: Tensor, params, grad_clip: float) -> Tensor:
    """One optimizer step on ``loss``: clear the gradients, backpropagate, clip the gradient norm of
    ``params`` to ``grad_clip`` and step. Returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    optimizer.step()
    return norm


@torch.no_grad()
def lerp_weights(target: nn.Module, online: nn.Module, step: float) -> None:
    """Move every parameter of ``target`` a fraction ``step`` of the way towards ``online``'s."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), step)


def update_target(target: nn.Module, online: nn.Module, updates: int, every: int, tau: float = 1.0) -> None:
    """After update number ``updates``: with ``tau < 1`` move ``target`` a step ``tau`` towards
    ``online`` (Polyak averaging), else copy ``online`` into it every ``every`` updates."""
    if tau < 1.0:
        lerp_weights(target, online, tau)
    elif updates % every == 0:
        target.load_state_dict(online.state_dict())


class WeightAverage:
    """An exponential moving average of a network's weights (Polyak averaging), to act with.

    The greedy policy of a value network can flip between near-tied items from one update to
    the next, so the policy at the last step is a lottery over the recent ones; the average of
    recent weights is a stable policy (Polyak and Juditsky 1992; for DQN, Anschel et al.,
    Averaged-DQN, ICML 2017, who average the Q-values of recent snapshots). After update ``n``
    (counting from 1) the average moves a step ``1 - d`` towards the network, with
    ``d = min(decay, (1 + n) / (10 + n))`` so it follows the network closely while the run is
    young. ``decay=0``: no copy is kept and :meth:`acting` is the network itself.

    Example::

        average = WeightAverage(q_net, decay=0.999)
        ...                              # an optimizer step on q_net
        average.update()
        scores = average.acting()(obs)   # act with the averaged weights
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise RecrlError(f"algo.average={decay} must be in [0, 1) (0: act with the latest weights)")
        self.source, self.decay, self.updates = net, decay, 0
        # eval mode: it only acts (a history encoder then reuses per-item tables, SlotTables)
        self.net = copy.deepcopy(net).requires_grad_(False).eval() if decay > 0 else None

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the network's current weights (buffers are copied)."""
        if self.net is None:
            return
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        lerp_weights(self.net, self.source, 1.0 - decay)
        for avg, b in zip(self.net.buffers(), self.source.buffers(), strict=True):
            avg.copy_(b)

    def acting(self) -> nn.Module:
        """The averaged network (the network itself when averaging is off)."""
        return self.source if self.net is None else self.net

    def state_dict(self) -> dict[str, Any] | None:
        """The averaged weights and the update count (``None`` when averaging is off)."""
        return None if self.net is None else {"net": self.net.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore from :meth:`state_dict`; ``None`` (a checkpoint saved without an average)
        restarts the average from the network's current weights."""
        if self.net is None:
            return
        if state is None:
            self.net.load_state_dict(self.source.state_dict())
            self.updates = 0
            return
        self.net.load_state_dict(state["net"])
        self.updates = int(state["updates"])
