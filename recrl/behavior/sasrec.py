"""SASRec user model (``behavior=sasrec``): a causal transformer over the session, with heads.

Kang & McAuley, *Self-Attentive Sequential Recommendation* (ICDM 2018), adapted to recrl's logs:
each logged step becomes one token (shown slate's mean item embedding + the clicked item's
embedding + learned click/conversion feedback vectors), a learned *start* token opens every
session, and pre-LayerNorm blocks of causal self-attention with rotary position embeddings
(RoPE) read the sequence. RoPE makes attention depend on relative positions only, so the
simulator can keep a sliding key/value cache of the last ``window + 1`` tokens and append one
token per step without re-encoding the history. Training uses the same sliding window as a
banded causal mask, so the fitted model and the simulated one compute the same function.

The heads are those of :class:`~recrl.behavior.gru.GRUBehavior`: item utilities
``(W h) . e_item + b_item`` (the click head shares the input item embedding table), conversion
and rating heads of the same form, and a leave head on the state after the step.

State layout (``[B, S]`` floats, ``W = window + 1``, ``D = dim``, ``S = 2 * layers * W * D + D + 1``)::

    [0, 2*layers*W*D)      key/value cache, reshaped to [B, layers, 2 (key, value), W, D]:
                           per layer the un-rotated keys and the values of the last W tokens,
                           oldest first, the newest in slot W-1 (unused slots hold zeros)
    [2*layers*W*D, +D)     output vector h (after the final LayerNorm) of the newest token
    [S-1]                  step counter: events appended since the start token
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.behavior.base import BilinearScorer, SequenceUserModel
from recrl.behavior.features import ItemFeatures
from recrl.behavior.fit import SessionTensors, TrainingSettings
from recrl.types import Obs, RecrlError


def rope_tables(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables ``[T, head_dim / 2]`` of rotary embeddings at ``positions``.

    Example::

        cos, sin = rope_tables(torch.arange(5.0), 10000.0 ** -(torch.arange(0, 8, 2) / 8))
    """
    angle = positions[:, None].to(inv_freq.dtype) * inv_freq[None]
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[..., T, head_dim]`` pairwise (halves convention) by the angles of ``cos``/``sin``.

    Example::

        inv_freq = 10000.0 ** -(torch.arange(0, 8, 2) / 8)
        q = apply_rope(torch.randn(2, 4, 5, 8), *rope_tables(torch.arange(5.0), inv_freq))
    """
    x1, x2 = x.chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: RoPE causal self-attention, then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def _split(self, x: Tensor) -> Tensor:
        """``[B, T, D]`` -> ``[B, heads, T, D / heads]``."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _finish(self, x: Tensor, attn: Tensor, drop: float) -> Tensor:
        """Residual updates after attention ``[B, heads, T, hd]``; returns ``[B, T, D]``."""
        x = x + F.dropout(self.out(attn.transpose(1, 2).flatten(-2)), drop, self.training and drop > 0)
        return x + F.dropout(self.ffn(self.norm2(x)), drop, self.training and drop > 0)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """Whole sequences ``x`` ``[B, T, D]``; ``mask`` ``None`` means plain causal attention."""
        return self.forward_kv(x, cos, sin, mask)[0]

    def forward_kv(self, x: Tensor, cos: Tensor, sin: Tensor,
                   mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`, also returning the un-rotated keys and the values ``[B, T, D]``."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        drop = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(apply_rope(self._split(q), cos, sin),
                                              apply_rope(self._split(k), cos, sin), self._split(v),
                                              attn_mask=mask, dropout_p=drop, is_causal=mask is None)
        return self._finish(x, attn, drop), k, v

    def step(self, x: Tensor, keys: Tensor, values: Tensor, cos: Tensor, sin: Tensor,
             valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append one token ``x`` ``[B, D]`` to the window caches ``[B, W, D]`` and attend over them.

        Keys are cached un-rotated and rotated by their window slot, the query by the last slot.
        Returns the block output ``[B, D]`` and the shifted caches. No dropout (inference).
        """
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        keys = torch.cat([keys[:, 1:], k[:, None]], 1)
        values = torch.cat([values[:, 1:], v[:, None]], 1)
        query = apply_rope(self._split(q[:, None]), cos[-1:], sin[-1:])
        attn = F.scaled_dot_product_attention(query, apply_rope(self._split(keys), cos, sin),
                                              self._split(values), attn_mask=valid[:, None, None, :])
        return self._finish(x[:, None], attn, 0.0)[:, 0], keys, values


class SASRecBehavior(SequenceUserModel):
    """SASRec-style causal transformer user model with click, conversion, rating and leave heads.

    Same interface as :class:`~recrl.behavior.gru.GRUBehavior`; the state is a sliding
    key/value cache (see the module docstring for its layout).

    Example::

        model = SASRecBehavior(n_items=100, dim=32, layers=2, heads=2, window=20)
        report = model.fit(interactions)               # supervised, early stopping
        state = model.initial_state(8, generator)
        response, state = model.respond(state, slates, generator)
    """

    def __init__(self, n_items: int, dim: int = 64, layers: int = 2, heads: int = 2, window: int = 50,
                 dropout: float = 0.2, features: Sequence[str] = (),
                 training: TrainingSettings | None = None, n_users: int = 0,
                 item_features: ItemFeatures | None = None, item_ids: bool = True,
                 device: str = "cpu") -> None:
        super().__init__()
        if heads < 1 or dim % heads or (dim // heads) % 2:
            raise RecrlError(f"behavior.dim={dim} must split into behavior.heads={heads} heads of even size")
        if layers < 1 or window < 1:
            raise RecrlError("behavior.layers and behavior.window must be >= 1")
        self._setup(n_items, n_users, training, features, item_features, dim, item_ids=item_ids)
        self.dim, self.layers, self.heads = dim, layers, heads
        self.window, self.dropout = window + 1, dropout
        self.item_emb = self.id_table(n_items + 1, dim, padding_idx=n_items, std=dim ** -0.5)
        self.feedback = self._table(2)  # rows: clicked, converted
        self.start = nn.Parameter(torch.randn(dim) * dim ** -0.5)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.click_head = BilinearScorer(dim, self.item_emb, n_items, self.content)
        self.conversion_head = BilinearScorer(dim, self._table(n_items), n_items, self.head_content(dim))
        self.rating_head = BilinearScorer(dim, self._table(n_items), n_items, self.head_content(dim))
        self.leave_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        half = dim // heads
        self.register_buffer("inv_freq", 10000.0 ** -(torch.arange(0, half, 2).float() / half),
                             persistent=False)
        self.register_buffer("leave_known", torch.tensor(True))
        self._add_signal_heads(dim, dim)
        if not item_ids:
            self.freeze_item_ids()
        self.to(device)

    def _table(self, rows: int, padding_idx: int | None = None) -> nn.Embedding:
        """An embedding table with entries of norm about 1."""
        table = nn.Embedding(rows, self.dim, padding_idx=padding_idx)
        with torch.no_grad():
            table.weight.normal_(0.0, self.dim ** -0.5)
            if padding_idx is not None:
                table.weight[padding_idx].zero_()
        return table

    @property
    def state_size(self) -> int:
        """Width ``S`` of the packed state: caches, output vector and step counter."""
        return 2 * self.layers * self.window * self.dim + self.dim + 1

    # ------------------------------------------------------------------ tokens and state packing
    def _token(self, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Event token ``[..., D]`` of shown slates ``[..., K]`` and their response."""
        emb = self.content_input(self.item_emb, slates)
        flags = torch.stack([click.sum(-1), conversion.sum(-1)], -1)
        return emb.mean(-2) + (click.unsqueeze(-1) * emb).sum(-2) + flags @ self.feedback.weight

    def _unpack(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Caches ``[B, layers, 2, W, D]``, output ``[B, D]`` and step counter ``[B]`` of ``state``."""
        n_cache = self.state_size - self.dim - 1
        cache = state[:, :n_cache].reshape(-1, self.layers, 2, self.window, self.dim)
        return cache, state[:, n_cache:-1], state[:, -1]

    def output(self, state: Tensor) -> Tensor:
        """The output vector ``h`` ``[B, D]`` that the heads read from ``state``."""
        return self._unpack(state)[1]

    def _advance(self, cache: Tensor, tokens_before: Tensor, x: Tensor) -> Tensor:
        """Append token ``x`` ``[B, D]`` to the caches; ``tokens_before`` ``[B]`` counts the tokens
        already there. Returns the packed new state."""
        slots = torch.arange(self.window, device=x.device)
        valid = slots[None] >= self.window - 1 - tokens_before[:, None]
        cos, sin = rope_tables(slots, self.inv_freq)
        new_cache = []
        for layer, block in enumerate(self.blocks):
            x, keys, values = block.step(x, cache[:, layer, 0], cache[:, layer, 1], cos, sin, valid)
            new_cache.append(torch.stack([keys, values], 1))
        steps = tokens_before.to(x.dtype)  # events so far: tokens after the append, minus the start
        return torch.cat([torch.stack(new_cache, 1).flatten(1), self.norm(x), steps[:, None]], 1)

    # ------------------------------------------------------------------ incremental core
    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """State after the user saw ``slates`` ``[B, K]`` and responded (one cached step)."""
        cache, _, steps = self._unpack(state)
        return self._advance(cache, steps.long() + 1, self._token(slates, click, conversion))

    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """The start-of-session state (cache holding only the start token), ``n_users`` times."""
        with torch.no_grad():
            cache = torch.zeros(1, self.layers, 2, self.window, self.dim, device=self.device)
            first = self._advance(cache, torch.zeros(1, dtype=torch.long, device=self.device),
                                  self.start[None])
        return first.expand(n_users, -1).clone()

    @torch.no_grad()
    def encode(self, obs: Obs, users: Tensor | None = None) -> Tensor:
        """State from an observed history in one parallel pass over it (equal to feeding the
        events one by one through :meth:`next_state`). Histories must be left-padded, as the
        environment and the offline tasks make them; others take the step-by-step path."""
        valid = obs.items[:, :, 0] < self.n_items
        count = valid.sum(1)
        length = obs.items.shape[1]
        first = length - count  # position of the start token in the sequence below
        positions = torch.arange(length + 1, device=valid.device)
        if not bool((valid == (positions[None, :length] >= first[:, None])).all()):
            return super().encode(obs, users)
        tokens = self._token(obs.items.clamp(max=self.n_items), obs.clicks, torch.zeros_like(obs.clicks))
        x = torch.cat([tokens[:, :1], tokens], 1)
        is_start = (positions[None] == first[:, None]).unsqueeze(-1)
        x = torch.where(is_start, self.start.to(x.dtype), x)
        live = positions[None] >= first[:, None]  # start token and events
        offset = positions[:, None] - positions[None]
        band = (offset >= 0) & (offset < self.window)
        mask = (band[None] & live[:, None, :]) | torch.eye(length + 1, dtype=torch.bool, device=x.device)
        cos, sin = rope_tables(positions, self.inv_freq)
        caches = []
        keep = min(self.window, length + 1)
        slot_live = live[:, -keep:, None].to(x.dtype)
        for block in self.blocks:
            x_in = x
            x, keys, values = block.forward_kv(x_in, cos, sin, mask[:, None])
            kv = torch.stack([keys[:, -keep:], values[:, -keep:]], 1) * slot_live[:, None]
            caches.append(F.pad(kv, (0, 0, self.window - keep, 0)))
        cache = torch.stack(caches, 1).flatten(1)
        return torch.cat([cache, self.norm(x[:, -1]), count.to(x.dtype)[:, None]], 1)

    # ------------------------------------------------------------------ training
    def _attention_mask(self, length: int, device: torch.device) -> Tensor | None:
        """``None`` (plain causal) when the sequence fits the window, else a banded causal mask."""
        if length <= self.window:
            return None
        pos = torch.arange(length, device=device)
        offset = pos[:, None] - pos[None]
        return (offset >= 0) & (offset < self.window)

    def sequence_hidden(self, batch: SessionTensors) -> Tensor:
        """Output vectors ``[S, T + 1, D]``: position ``t`` has seen the start token and steps ``< t``."""
        tokens = self._token(batch.item[..., None], batch.click[..., None], batch.conversion[..., None])
        x = torch.cat([self.start.expand(tokens.shape[0], 1, -1), tokens], 1)
        x = F.dropout(x, self.dropout, self.training and self.dropout > 0)
        cos, sin = rope_tables(torch.arange(x.shape[1], device=x.device), self.inv_freq)
        mask = self._attention_mask(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x)

    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits of every head over padded sessions ``[S, T]`` (slate size 1).

        Step ``t`` is predicted from the state before it; its leave logit reads the state after it.
        """
        h = self.sequence_hidden(batch)
        before, after = h[:, :-1], h[:, 1:]
        items = batch.item.clamp(max=self.n_items - 1)[..., None]
        logits = {"click": self.click_head(before, items)[..., 0],
                  "conversion": self.conversion_head(before, items)[..., 0],
                  "rating": self.rating_head(before, items)[..., 0],
                  **{k: v[..., 0] for k, v in self.signal_logits(before, items).items()},
                  "leave": self.leave_head(after)[..., 0]}
        if batch.negative is not None:
            sampled = batch.negative.clamp(max=self.n_items - 1)[..., None]
            logits["click_negative"] = self.click_head(before, sampled)[..., 0]
        logits["click_state"] = before
        return logits
