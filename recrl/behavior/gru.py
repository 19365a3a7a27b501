"""GRU user model (``behavior=gru``): a recurrent state over the session, with response heads.

At each step the user, in hidden state ``h``, is shown a slate. Item utilities for the
multinomial-logit click choice are ``(W_click h) . e_item + b_item`` (one matrix product scores
the whole catalogue). Conversion and rating heads have the same bilinear form. The shown slate
and the response then update ``h`` through a GRU cell, and a leave head reads the new ``h``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.behavior.base import BilinearScorer, SequenceUserModel
from recrl.behavior.features import ItemFeatures
from recrl.behavior.fit import SessionTensors, TrainingSettings
from recrl.env.choice import MNL, ChoiceModel
from recrl.env.response import Predictions, sample_response
from recrl.types import Interactions, RecrlError, Response

RecencyFit = Literal["joint", "logs"]  # behavior.recency_fit: trained with the model, or fixed from the logs
RECENCY_FITS = get_args(RecencyFit)
CACHE_ROWS = 8192  # (user, item) pairs per chunk on a CPU: [pairs, 3 x hidden] floats stay in cache
#: a compiled step's table of input gates per (item, outcome) is built up to this size (bytes):
#: 3 outcomes x 3 hidden floats per item, 2.3 KB at hidden 64, so up to about 1,800 items. A
#: core's L2 cache holds it; at 10,000 items (23 MB) the lookups missed and the step ran slower
OUTCOME_TABLE_BYTES = 4 << 20


def gru_cell(cell: nn.GRUCell, x: Tensor, h: Tensor) -> Tensor:
    """One step of ``cell`` (``nn.GRUCell``'s equations and weights), written out so that
    ``torch.func.vmap`` batches it over ensemble members (the fused kernel has no batching rule)."""
    return gru_gates(F.linear(x, cell.weight_ih, cell.bias_ih), F.linear(h, cell.weight_hh, cell.bias_hh), h)


def gru_gates(from_input: Tensor, from_hidden: Tensor, h: Tensor) -> Tensor:
    """The next hidden state of a GRU from its input's and its hidden state's gate
    pre-activations ``[..., 3 H]`` (reset, update, candidate: ``nn.GRUCell``'s order)."""
    r_x, z_x, n_x = from_input.chunk(3, -1)
    r_h, z_h, n_h = from_hidden.chunk(3, -1)
    reset, update = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    candidate = torch.tanh(n_x + reset * n_h)
    return candidate + update * (h - candidate)


class AttributeRecency(nn.Module):
    """A user's decayed exposure to the item attributes shown so far (and, with ``clicks``, to
    those of the items clicked), as click-utility terms.

    ``r_{t+1} = d * r_t + sum over the slate of tokens[item]`` (``tokens``: the item table's
    categorical attributes, multi-hot ``[n_items, C]``) and the term added to item ``i``'s click
    utility is ``w * <tokens[i], r>``. The decay ``d`` (a sigmoid, starting at 0.5) and the weight
    ``w`` (starting at 0) are learned with the rest of the model. A recurrent state can learn
    such an effect on its own, but only where the logs show it; written out, one coefficient
    fitted on the short runs of an attribute the logs do hold carries over to the long runs a
    policy can make, so the simulated users tire of a topic served over and over (boredom,
    satiation), or stay attached to it if the logs say so (``w > 0``). Fitted jointly from zero,
    the recurrent state takes most of the effect and the term keeps little of it, so
    :meth:`warm_start` first fits the term alone in a log-linear click model. In the logs a topic
    a user was shown is also a topic they may have clicked, and clicks make the next ones
    likelier (interest shows in them, and may move toward them), so the exposure alone mixes
    boredom with that pull; ``warm_start(hold_clicks=True)`` fits it beside a click-profile
    channel and keeps only the exposure's weight and decay, and :meth:`fix` keeps them so
    (``behavior.recency_fit=logs``).

    With ``clicks`` a second channel keeps the user's *click profile* the same way,
    ``p_{t+1} = d_c * p_t + sum over the slate of click * tokens[item]``, with its own term
    ``w_c * <tokens[i], p>``: users like again what they clicked (their interest shows in their
    clicks, and may move toward them), which the exposure channel, blind to clicks, cannot say.
    The exposure state is then ``[r | p]``, ``2 C`` columns.

    Example::

        recency = AttributeRecency(torch.eye(3)[torch.tensor([0, 0, 2])])   # 3 items, 3 topics
        r = recency.update(torch.zeros(2, 3), torch.tensor([[0], [2]]))      # [2, 3]
        recency.term(r, torch.tensor([[1], [1]]))                            # [2, 1]
        profile = AttributeRecency(torch.eye(3)[torch.tensor([0, 0, 2])], clicks=True)
        rp = profile.update(torch.zeros(2, 6), torch.tensor([[0], [2]]), click=torch.tensor([[1.0], [0.0]]))
    """

    def __init__(self, tokens: Tensor, clicks: bool = False) -> None:
        super().__init__()
        tokens = tokens.detach().float()
        self.register_buffer("tokens", torch.cat([tokens, tokens.new_zeros(1, tokens.shape[1])]))
        self.decay_logit = nn.Parameter(torch.zeros(()))
        self.weight = nn.Parameter(torch.zeros(()))
        self.clicks = clicks
        if clicks:
            self.click_decay_logit = nn.Parameter(torch.zeros(()))
            self.click_weight = nn.Parameter(torch.zeros(()))

    @property
    def channels(self) -> int:
        """1 (exposure) or 2 (exposure, click profile)."""
        return 2 if self.clicks else 1

    @property
    def width(self) -> int:
        """State columns it keeps: ``C`` attribute tokens per channel."""
        return self.tokens.shape[1] * self.channels

    def decay(self) -> Tensor:
        """The per-step decay ``d`` of the exposure."""
        return torch.sigmoid(self.decay_logit)

    def decays(self) -> Tensor:
        """The decays of every channel ``[channels]`` (exposure, click profile)."""
        logits = [self.decay_logit, self.click_decay_logit] if self.clicks else [self.decay_logit]
        return torch.sigmoid(torch.stack(logits))

    def weights(self) -> Tensor:
        """The term weights of every channel ``[channels]``."""
        return torch.stack([self.weight, self.click_weight] if self.clicks else [self.weight])

    def update(self, exposure: Tensor, slates: Tensor, decays: Tensor | None = None,
               click: Tensor | None = None) -> Tensor:
        """Exposure ``[..., B, width]`` after ``slates`` ``[B, K]`` were shown (the padding id adds
        nothing) and, with ``clicks``, ``click`` ``[..., B, K]`` on them; at the learned decays or
        fixed ``decays`` ``[..., channels]`` (broadcasting over the leading dimensions)."""
        decays = self.decays() if decays is None else decays
        shown = self.tokens[slates]                                             # [B, K, C]
        exposed = decays[..., 0:1] * self.channel(exposure, 0) + shown.sum(-2)
        if not self.clicks:
            return exposed
        if click is None:
            raise RecrlError("the click profile (behavior.click_profile) needs the clicks of every step")
        profile = decays[..., 1:2] * self.channel(exposure, 1) + (click.unsqueeze(-1) * shown).sum(-2)
        return torch.cat([exposed, profile], -1)

    def exposures(self, items: Tensor, decays: Sequence[float], clicks: Tensor | None = None) -> Tensor:
        """Each row's overlap with its own item's attributes before it was shown, per channel,
        ``[S, T, channels]``, over sessions ``items`` ``[S, T]`` (padding id ``n_items``) and their
        ``clicks`` ``[S, T]`` at fixed ``decays`` (one per channel)."""
        fixed = self.tokens.new_tensor(list(decays))
        exposure = self.tokens.new_zeros(items.shape[0], self.width)
        rows = []
        for t in range(items.shape[1]):
            rows.append(self.channel_overlaps(exposure, items[:, t:t + 1])[:, 0])
            click = None if clicks is None else clicks[:, t:t + 1].float()
            exposure = self.update(exposure, items[:, t:t + 1], fixed, click)
        return torch.stack(rows, 1)

    def warm_start(self, sessions: SessionTensors, decays: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                   hold_clicks: bool = False) -> None:
        """Start the weights and decays at the maximum-likelihood fit, over ``decays`` (per
        channel), of the click model ``logit = b_item + sum_c w_c * exposure_c`` (a bias per item)
        on the logged ``sessions``. ``hold_clicks``: fit a term without a click channel beside
        one (the click profile held apart) and keep the exposure's weight and decay."""
        fitted = AttributeRecency(self.tokens[:-1], clicks=True) if hold_clicks and not self.clicks else self
        item, real = sessions.item, sessions.mask.bool()
        n_items = self.tokens.shape[0] - 1
        clicked = sessions.click[real].float()
        logged = item.clamp(max=n_items - 1)[real]
        fits = []
        for pair in itertools.product(decays, repeat=fitted.channels):
            exposure = fitted.exposures(item, pair, sessions.click)[real]
            fits.append((*log_linear_fit(logged, exposure, clicked, n_items), pair))
        _, weights, pair = min(fits)
        with torch.no_grad():
            self.decay_logit.fill_(math.log(pair[0] / (1.0 - pair[0])))
            self.weight.fill_(weights[0])
            if self.clicks:
                self.click_decay_logit.fill_(math.log(pair[1] / (1.0 - pair[1])))
                self.click_weight.fill_(weights[1])

    def fix(self) -> None:
        """Keep the weights and decays as they are: not trained with the model from here on."""
        self.requires_grad_(False)

    def overlap(self, exposure: Tensor, items: Tensor | None = None) -> Tensor:
        """``<tokens[i], r>`` ``[..., B, K]`` of ``items`` ``[B, K]`` or ``[..., B, K]``
        (``[..., B, n_items]`` when ``None``) for one channel's exposures ``[..., B, C]`` (leading
        dimensions: e.g. ensemble members)."""
        if items is None:
            return exposure @ self.tokens[:-1].T
        return (exposure.unsqueeze(-2) * self.tokens[items]).sum(-1)

    def channel(self, exposure: Tensor, j: int) -> Tensor:
        """Channel ``j``'s columns ``[..., C]`` of an exposure state ``[..., width]`` (0: the
        exposure, 1: the click profile)."""
        c = self.tokens.shape[1]
        return exposure[..., j * c:(j + 1) * c]

    def channel_overlaps(self, exposure: Tensor, items: Tensor | None = None) -> Tensor:
        """:meth:`overlap` of every channel, ``[..., B, K, channels]``."""
        return torch.stack([self.overlap(self.channel(exposure, j), items) for j in range(self.channels)], -1)

    def term(self, exposure: Tensor, items: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        """The click-utility term ``sum_c w_c * <tokens[i], r_c>`` ``[..., B, K]`` of ``items``
        (``[..., B, n_items]`` when ``None``), at the learned weights or ``weights``
        ``[..., channels]`` (e.g. one row per ensemble member)."""
        weights = self.weights() if weights is None else weights
        total = weights[..., 0] * self.overlap(self.channel(exposure, 0), items)
        for j in range(1, self.channels):
            total = total + weights[..., j] * self.overlap(self.channel(exposure, j), items)
        return total


def log_linear_fit(items: Tensor, exposure: Tensor, clicked: Tensor,
                   n_items: int) -> tuple[float, list[float]]:
    """Maximum-likelihood fit of ``P(click) = sigmoid(b_item + sum_c w_c * exposure_c)`` over
    logged rows (``items``, ``clicked``: ``[R]``; ``exposure``: ``[R, channels]``): its mean
    log-loss and the ``w_c``."""
    bias = torch.zeros(n_items, device=exposure.device, requires_grad=True)
    weights = [torch.zeros((), device=exposure.device, requires_grad=True) for _ in range(exposure.shape[1])]
    optimizer = torch.optim.LBFGS([bias, *weights], max_iter=500, line_search_fn="strong_wolfe")

    def logit() -> Tensor:
        return bias[items] + sum(w * exposure[:, j] for j, w in enumerate(weights))

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(logit(), clicked)
        (value + 1e-4 * bias.square().mean()).backward()  # a nudge for items never clicked
        return value

    optimizer.step(loss)
    with torch.no_grad():
        fitted = F.binary_cross_entropy_with_logits(logit(), clicked)
    return float(fitted), [float(w.detach()) for w in weights]


class GRUBehavior(SequenceUserModel):
    """GRU4Rec-style user model with click, conversion, rating and leave heads.

    Example::

        model = GRUBehavior(n_items=100, dim=16, hidden=32, training=TrainingSettings(epochs=10))
        report = model.fit(interactions)               # supervised, early stopping
        h = model.initial_state(8, generator)
        response, h = model.respond(h, slates, generator)
    """

    @staticmethod
    def check_keys(keys: Mapping[str, Any]) -> None:
        """Refuse, in one line, a click profile without the recency term it is a channel of. The
        constructor applies it, and the config pre-check (:func:`recrl.config.check_node`)
        before any data is read."""
        if keys["click_profile"] and not keys["recency"]:
            raise RecrlError("behavior.click_profile=true is a channel of the attribute recency term: "
                             "set behavior.recency=true too")
        if keys.get("recency_fit", "joint") not in RECENCY_FITS:
            raise RecrlError(f"behavior.recency_fit={keys['recency_fit']!r}: use one of "
                             f"{', '.join(RECENCY_FITS)}")

    def __init__(self, n_items: int, dim: int = 32, hidden: int = 64,
                 features: Sequence[str] = (), training: TrainingSettings | None = None,
                 n_users: int = 0, item_features: ItemFeatures | None = None, item_ids: bool = True,
                 recency: bool = False, click_profile: bool = False,
                 recency_fit: RecencyFit = "joint", device: str = "cpu") -> None:
        super().__init__()
        self._setup(n_items, n_users, training, features, item_features, dim, item_ids=item_ids)
        self.hidden = hidden
        self.check_keys({"recency": recency, "click_profile": click_profile, "recency_fit": recency_fit})
        self.recency_fit = recency_fit
        self.recency = self._attribute_recency(item_features, click_profile) if recency else None
        self.item_in = self.id_table(n_items + 1, dim, padding_idx=n_items)
        self.event = nn.Linear(2 * dim + 2, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.h0 = nn.Parameter(torch.zeros(hidden))
        self.item_out = self.id_table(n_items, dim)
        self.click_head = BilinearScorer(hidden, self.item_out, n_items, self.content)
        self.conversion_head = BilinearScorer(hidden, nn.Embedding(n_items, dim), n_items,
                                              self.head_content(dim))
        self.rating_head = BilinearScorer(hidden, nn.Embedding(n_items, dim), n_items, self.head_content(dim))
        self.leave_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("leave_known", torch.tensor(True))
        self._add_signal_heads(hidden, dim)
        if not item_ids:
            self.freeze_item_ids()
        self.to(device)

    def _attribute_recency(self, item_features: ItemFeatures | None, clicks: bool) -> AttributeRecency:
        """The :class:`AttributeRecency` term over the item table's categorical attributes (with
        ``clicks``, the click-profile channel too)."""
        if item_features is None or item_features.tokens is None:
            raise RecrlError("behavior.recency=true needs categorical item attributes: use a dataset whose "
                             "item table has categorical columns and behavior.features=[auto] or [side]")
        if self.training_settings.loss == "softmax":
            raise RecrlError("behavior.recency=true scores clicks with a term the softmax loss does not "
                             "see; use behavior.training.loss=bce or bpr")
        return AttributeRecency(item_features.tokens, clicks)

    # ------------------------------------------------------------------ recurrent core
    def _event(self, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Input vector ``[B, hidden]`` summarising one shown slate and its response."""
        emb = self.content_input(self.item_in, slates)
        shown = emb.mean(-2)
        clicked = (click.unsqueeze(-1) * emb).sum(-2)
        flags = torch.stack([click.sum(-1), conversion.sum(-1)], -1)
        return torch.relu(self.event(torch.cat([shown, clicked, flags], -1)))

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """State after the user saw ``slates`` and responded: the GRU's hidden state, followed
        with ``recency`` by the attribute exposure (and the click profile)."""
        h = gru_cell(self.cell, self._event(slates, click, conversion), self.output(state))
        if self.recency is None:
            return h
        return torch.cat([h, self.recency.update(self._exposure(state), slates, click=click)], -1)

    @torch.no_grad()
    def leave_prob_after_click(self, state: Tensor, conversion: Tensor, chunk_rows: int = 262_144) -> Tensor:
        """Probability ``[B, N]`` of leaving after a click on each item shown alone, its
        conversion at ``conversion`` ``[B, N]``: what ``leave_prob(next_state(...))`` gives for
        every (user, item) pair, without repeating the per-item and per-user work per pair.

        Shown and clicked alone, item ``i``'s event input is ``relu(A_i + conversion * w)``
        (``A_i`` from its vector and the click flag, ``w`` the conversion flag's column), the
        hidden state's gate pre-activations are one per user, and the leave head reads only the
        GRU's hidden state, so only the input-gate product and the leave head run per pair, in
        chunks of about ``chunk_rows`` pairs (on a CPU at most :data:`CACHE_ROWS`, so that each
        chunk's intermediate tensors stay in cache: about 4x faster than one large chunk)."""
        b, n = conversion.shape
        d = self.item_in.embedding_dim
        emb = self.content_input(self.item_in, torch.arange(n, device=state.device))  # [N, D]
        weight, bias = self.event.weight, self.event.bias
        per_item = F.linear(emb, weight[:, :d] + weight[:, d:2 * d], bias + weight[:, 2 * d])  # [N, H]
        per_conversion = weight[:, 2 * d + 1]  # [H]
        h = self.output(state)
        from_hidden = F.linear(h, self.cell.weight_hh, self.cell.bias_hh)[:, None, :]  # [B, 1, 3H]
        users = max(1, (chunk_rows if state.is_cuda else min(chunk_rows, CACHE_ROWS)) // n)
        leave = []
        for start in range(0, b, users):
            stop = start + users
            event = torch.relu(per_item + conversion[start:stop, :, None] * per_conversion)  # [b, N, H]
            from_input = F.linear(event, self.cell.weight_ih, self.cell.bias_ih)
            after = gru_gates(from_input, from_hidden[start:stop], h[start:stop, None, :])
            leave.append(torch.sigmoid(self.leave_head(after).squeeze(-1)))
        return torch.cat(leave) * self.leave_known

    def frozen(self, compiled: bool = False) -> FrozenGRU:
        """This model's :meth:`respond` with the weights as they are now and the per-item work
        done once (:class:`FrozenGRU`): what an environment steps (it takes one at reset;
        ``compiled``: its step runs compiled, so the snapshot also keeps what only a compiled
        step reads)."""
        return FrozenGRU(self, compiled)

    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """The learned start-of-session state (no exposure yet), repeated ``n_users`` times."""
        return self.start_state(n_users).detach().clone()

    def start_state(self, n_users: int) -> Tensor:
        """:meth:`initial_state` with the gradient to the learned ``h0`` kept: what fitting starts
        every session from, so that the first step's predictions are learned too."""
        h = self.h0.expand(n_users, -1)
        if self.recency is not None:
            h = torch.cat([h, h.new_zeros(n_users, self.recency.width)], -1)
        return h

    def output(self, state: Tensor) -> Tensor:
        """The GRU's hidden state, what the heads read."""
        return state[..., :self.hidden]

    def _exposure(self, state: Tensor) -> Tensor:
        """The attribute exposure kept after the hidden state (``recency``)."""
        return state[..., self.hidden:]

    def click_logit(self, state: Tensor, h: Tensor, items: Tensor | None = None) -> Tensor:
        """The click head's utilities plus, with ``recency``, the attribute-exposure term."""
        logit = self.click_head(h, items)
        if self.recency is None:
            return logit
        return logit + self.recency.term(self._exposure(state), items)

    # ------------------------------------------------------------------ training
    def prepare_fit(self, train: SessionTensors, interactions: Interactions) -> None:
        """With ``recency`` on a log with recorded non-clicks, the term starts from its own
        log-linear fit on the training sessions (:meth:`AttributeRecency.warm_start`); with
        ``recency_fit="logs"`` that fit holds the click profile apart and the term is then kept
        fixed while the rest of the model is fitted."""
        if self.recency is None:
            return
        if interactions.positive_only:
            if self.recency_fit == "logs":
                raise RecrlError("behavior.recency_fit=logs estimates the term from logged non-clicks, "
                                 "which these logs do not have: use behavior.recency_fit=joint")
            return
        fixed = self.recency_fit == "logs"
        self.recency.warm_start(train, hold_clicks=fixed)
        if fixed:
            self.recency.fix()

    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits of every head over padded sessions ``[S, T]`` (slate size 1)."""
        state = self.start_state(batch.item.shape[0]).to(batch.item.device)
        click, conv, rating, leave, negative, states = [], [], [], [], [], []
        values: dict[str, list[Tensor]] = {name: [] for name in self.signal_names}
        for t in range(batch.item.shape[1]):
            h = self.output(state)
            states.append(h)
            items = batch.item[:, t:t + 1].clamp(max=self.n_items - 1)
            click.append(self.click_logit(state, h, items)[:, 0])
            if batch.negative is not None:
                sampled = batch.negative[:, t:t + 1].clamp(max=self.n_items - 1)
                negative.append(self.click_logit(state, h, sampled)[:, 0])
            conv.append(self.conversion_head(h, items)[:, 0])
            rating.append(self.rating_head(h, items)[:, 0])
            for name, logit in self.signal_logits(h, items).items():
                values[name].append(logit[:, 0])
            state = self.next_state(state, batch.item[:, t:t + 1], batch.click[:, t:t + 1],
                                    batch.conversion[:, t:t + 1])
            leave.append(self.leave_logit(state))
        return {k: torch.stack(v, 1) for k, v in
                (("click", click), ("conversion", conv), ("rating", rating), *values.items(),
                 ("leave", leave), ("click_negative", negative), ("click_state", states)) if v}


#: a one-item slate's drawn outcomes (click, conversion), in the order of
#: :meth:`GRUStack.outcome_input_gates`; a conversion comes only with a click
OUTCOMES = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))


def outcome_index(click: Tensor, conversion: Tensor) -> Tensor:
    """The :data:`OUTCOMES` index of drawn 0/1 ``click`` and ``conversion`` (same shape)."""
    return (click + conversion).long()


def _rows(table: Tensor, items: Tensor) -> Tensor:
    """Rows of a stacked table ``[K, N, ...]`` at ``items``: ``[K, B, S, ...]`` for the same
    ``[B, S]`` in every member or for each member's own ``[K, B, S]``."""
    if items.dim() == 2:
        return table.index_select(1, items.flatten()).view(table.shape[0], *items.shape, *table.shape[2:])
    k, n = table.shape[0], table.shape[1]
    flat = (items + n * torch.arange(k, device=items.device).view(k, 1, 1)).flatten()
    return table.flatten(0, 1).index_select(0, flat).view(*items.shape, *table.shape[2:])


def _affine(stack: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
    """``K`` stacked linear maps (:func:`_linear_stack`) of ``x`` ``[K, B, in]``: ``bias + x @
    weight``. Eagerly one ``baddbmm``; inside a compiled graph the product alone, so that the bias
    is added in the fused kernel that reads it next instead of being copied into the product's
    output first (the GRU step's two copies took 64-250 µs of a compiled step of about 0.8 ms
    for 1,024 users on a 2-core CPU)."""
    weight, bias = stack
    if torch.compiler.is_compiling():
        return torch.bmm(x, weight) + bias
    return torch.baddbmm(bias, x, weight)


def _linear_stack(layers: Sequence[nn.Linear | tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Weights ``[K, in, out]`` (transposed, contiguous) and biases ``[K, 1, out]`` of ``K`` linear
    maps (layers or ``(weight, bias)`` pairs), for :func:`_affine` on inputs ``[K, B, in]``."""
    pairs = [(m.weight, m.bias) if isinstance(m, nn.Linear) else m for m in layers]
    weight = torch.stack([w.detach().T for w, _ in pairs]).contiguous()
    bias = torch.stack([b.detach() for _, b in pairs])[:, None, :].contiguous()
    return weight, bias


class GRUStack:
    """``K`` fitted :class:`GRUBehavior` models as stacked ``[K, ...]`` tensors: an ensemble's
    step for every member at once with batched matrix products and lookups, and (``K = 1``) the
    step of one model in a simulator (:class:`FrozenGRU`).

    The same numbers as calling each member, up to float rounding (``torch.func.vmap`` over the
    members does it too, but its batching rules for embeddings and linear layers copy the
    stacked weights at every call, which made an ensemble of 5 cost 6-9x one model). What is
    constant while simulating is computed once here, per item: every head's score is bilinear,
    ``(W h + b) . v_i + c_i = h . (W^T v_i) + (b . v_i + c_i)``, so each head keeps one
    ``hidden``-wide vector and one bias per item and scoring a slate of ``S`` items costs
    ``S x hidden`` multiply-adds instead of a ``hidden x d`` projection first; and the event
    layer is linear in the shown and clicked item vectors, so its products with every item's
    input vector are tables too, looked up per step. A snapshot: rebuild it after the members'
    weights change. Member states are ``[K, B, S]``; outputs gain a leading ``K``.

    Example::

        stack = GRUStack([GRUBehavior(100, training=TrainingSettings(seed=k)) for k in range(5)])
        state = torch.zeros(5, 8, 64)                      # every member's hidden state, 8 users
        logits, conversion, rating, watch = stack.predict(state, slates)   # each [5, 8, K]
        state, leave = stack.advance(state, slates, click, conversion)
    """

    HEADS = ("click_head", "conversion_head", "rating_head")  # then one head per signal

    @staticmethod
    def supports(members: Sequence[nn.Module]) -> bool:
        """Whether ``members`` are all :class:`GRUBehavior` of one shape (same sizes, recency
        on or off for all)."""
        if not all(type(m) is GRUBehavior for m in members):
            return False
        first = members[0]
        return all(m.hidden == first.hidden and m.n_items == first.n_items
                   and m.signal_names == first.signal_names
                   and (m.recency is None) == (first.recency is None)
                   and (m.recency is None or m.recency.clicks == first.recency.clicks) for m in members)

    @torch.no_grad()
    def __init__(self, members: Sequence[GRUBehavior]) -> None:
        first = members[0]
        self.hidden, self.n_items = first.hidden, first.n_items
        self.signals = first.signals
        self.heads = (*self.HEADS, *(signal.head for signal in self.signals))
        self._event_tables(members)
        self.ih = _linear_stack([(m.cell.weight_ih, m.cell.bias_ih) for m in members])
        self.hh = _linear_stack([(m.cell.weight_hh, m.cell.bias_hh) for m in members])
        self.leave = [_linear_stack([m.leave_head[j] for m in members]) for j in (0, 2)]
        self._head_tables(members)
        self.leave_known = torch.stack([m.leave_known for m in members]).to(self.ih[0].dtype)
        self.known = [torch.stack([getattr(m, signal.known) for m in members])[:, None, None]
                      for signal in self.signals]                                           # S x [K, 1, 1]
        self.recency = None
        if first.recency is not None:
            self.recency = (first.recency,  # its attribute table (the same for every member)
                            torch.stack([m.recency.weights() for m in members])[:, None, None, :],
                            torch.stack([m.recency.decays() for m in members])[:, None, :])

    def _head_tables(self, members: Sequence[GRUBehavior]) -> None:
        """Each head's per-item query vectors ``W^T v_i`` ``[K, N, hidden]`` and biases
        ``b . v_i + c_i`` ``[K, N]`` (:attr:`heads` order), from its item vectors ``v_i`` (id
        embedding plus content), projection ``W h + b`` and item biases ``c_i``."""
        self.head_vectors, self.head_bias = [], []
        for name in self.heads:
            heads = [getattr(m, name) for m in members]
            vectors = torch.stack([head.vectors() for head in heads])                     # [K, N, d]
            weight = torch.stack([head.proj.weight for head in heads])                    # [K, d, hidden]
            bias = torch.stack([head.proj.bias for head in heads])[:, :, None]            # [K, d, 1]
            item_bias = torch.stack([head.bias for head in heads])                        # [K, N]
            self.head_vectors.append(torch.bmm(vectors, weight).contiguous())
            self.head_bias.append((torch.bmm(vectors, bias)[..., 0] + item_bias).contiguous())

    def _event_tables(self, members: Sequence[GRUBehavior]) -> None:
        """The event layer ``relu(W [mean shown, sum clicked, clicks, conversions] + b)`` split
        into per-item tables: ``W_shown e_i + b`` and ``W_clicked e_i`` for every item's input
        vector ``e_i`` (the padding row included: a zero vector), ``[K, N + 1, hidden]``, and the
        two flags' columns ``[K, 2, hidden]``."""
        every = torch.arange(self.n_items + 1, device=members[0].device)
        item_in = torch.stack([m.content_input(m.item_in, every) for m in members])       # [K, N+1, d]
        d = item_in.shape[-1]
        weight = torch.stack([m.event.weight for m in members])                           # [K, hidden, 2d+2]
        bias = torch.stack([m.event.bias for m in members])[:, None, :]
        self.event_shown = torch.baddbmm(bias, item_in, weight[..., :d].transpose(1, 2)).contiguous()
        self.event_clicked = torch.bmm(item_in, weight[..., d:2 * d].transpose(1, 2)).contiguous()
        self.event_flags = weight[..., 2 * d:].transpose(1, 2).contiguous()

    def _heads(self, h: Tensor, items: Tensor | None,
               names: Collection[str] | None = None) -> tuple[Tensor | None, ...]:
        """Logits ``[K, B, S]`` of every head (:attr:`heads` order; ``None`` for a head not in
        ``names`` when given) for ``items``: the same ``[B, S]`` for every member, each
        member's own ``[K, B, S]``, or ``None`` (``[K, B, N]``: the whole catalogue)."""
        logits: list[Tensor | None] = []
        for name, vectors, bias in zip(self.heads, self.head_vectors, self.head_bias, strict=True):
            if names is not None and name not in names:
                logits.append(None)
            elif items is None:
                logits.append(torch.baddbmm(bias[:, None, :], h, vectors.transpose(1, 2)))
            else:
                logits.append(torch.einsum("kbh,kbsh->kbs", h, _rows(vectors, items)) + _rows(bias, items))
        return tuple(logits)

    def predict(self, state: Tensor, items: Tensor | None = None,
                heads: frozenset[str] | None = None) -> tuple[Tensor, ...]:
        """Every member's :class:`~recrl.env.response.Predictions` fields for ``items`` (shared
        ``[B, S]`` or per member ``[K, B, S]``, as in :meth:`next_state`), as
        :meth:`~recrl.env.response.Predictions.flat` orders them. ``heads``: the optional
        outputs to compute (``"rating"``, signal names; ``None``: all), the others NaN, as in
        :meth:`~recrl.behavior.base.SequenceUserModel.predict`."""
        h = state[..., :self.hidden]
        names = None if heads is None else {
            "click_head", "conversion_head", *(["rating_head"] if "rating" in heads else []),
            *(signal.head for signal in self.signals if signal.name in heads)}
        click, conversion, rating, *logits = self._heads(h, items, names)
        if self.recency is not None:
            recency, weights, _ = self.recency
            click = click + recency.term(state[..., self.hidden:], items, weights)

        def skipped() -> Tensor:
            return torch.full_like(click, float("nan"))

        values = (skipped() if logit is None else signal.predict(logit, known)
                  for signal, logit, known in zip(self.signals, logits, self.known, strict=True))
        rating = skipped() if rating is None else 1.0 + 4.0 * torch.sigmoid(rating)
        return click, torch.sigmoid(conversion), rating, *values

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor,
                   input_gates: Tensor | None = None) -> Tensor:
        """Every member's state after ``slates`` and the response: the same for every member
        (``[B, S]``) or each member's own users (``[K, B, S]``, as the ensemble's own-member step).
        ``input_gates`` ``[K, B, 3 hidden]``: the GRU's input-gate pre-activations where the
        caller has them already (:meth:`outcome_input_gates`); else they are computed."""
        h = state[..., :self.hidden]
        if input_gates is None:
            input_gates = _affine(self.ih, self._event_input(slates, click, conversion))
        h = gru_gates(input_gates, _affine(self.hh, h), h)
        if self.recency is None:
            return h
        recency, _, decays = self.recency
        return torch.cat([h, recency.update(state[..., self.hidden:], slates, decays, click)], -1)

    def _event_input(self, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """The GRU's input ``[K, B, hidden]``: the event layer over the shown slates and the response."""
        shown = _rows(self.event_shown, slates).mean(-2)                                    # [K, B, hidden]
        clicked = (click.unsqueeze(-1) * _rows(self.event_clicked, slates)).sum(-2)
        flags = (click.sum(-1).unsqueeze(-1) * self.event_flags[:, None, 0]
                 + conversion.sum(-1).unsqueeze(-1) * self.event_flags[:, None, 1])
        return torch.relu(shown + clicked + flags)

    def outcome_input_gates(self) -> Tensor:
        """The input-gate pre-activations ``[K, (N + 1) x 3, 3 hidden]`` after a slate of one item
        (the padding id included) and each drawn outcome, row ``3 item + outcome``: no click, a
        click, a click and a conversion (:data:`OUTCOMES`, :func:`outcome_index`). With one shown
        item and 0/1 outcomes the event layer's input takes only these values, so the step's
        input-gate product becomes a lookup (what :class:`FrozenGRU` does in compiled steps); the
        table is the step's own arithmetic on every (item, outcome) pair."""
        rows = self.n_items + 1
        items = torch.arange(rows, device=self.event_flags.device).repeat_interleave(len(OUTCOMES))[:, None]
        click, conversion = (self.event_flags.new_tensor(values).repeat(rows)[:, None]  # [(N + 1) x 3, 1]
                             for values in zip(*OUTCOMES, strict=True))
        return _affine(self.ih, self._event_input(items, click, conversion))

    def leave_prob(self, state: Tensor) -> Tensor:
        """Every member's probability ``[K, B]`` of leaving in ``state``."""
        first, second = self.leave
        hidden = torch.relu(_affine(first, state[..., :self.hidden]))
        return torch.sigmoid(_affine(second, hidden))[..., 0] * self.leave_known[:, None]

    def advance(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor,
                input_gates: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The next states and the leave probabilities there, ``([K, B, S], [K, B])``
        (``input_gates``: see :meth:`next_state`)."""
        nxt = self.next_state(state, slates, click, conversion, input_gates)
        return nxt, self.leave_prob(nxt)


class FrozenGRU:
    """A fitted :class:`GRUBehavior`'s :meth:`~GRUBehavior.respond` with its weights frozen: the
    environment's step (:meth:`GRUBehavior.frozen`, taken at every reset). The per-item work is
    done once (:class:`GRUStack` of the one model), so a step costs the GRU cell, the leave
    head and ``hidden`` multiply-adds per head and slate item; the responses are the model's
    up to float rounding. A snapshot: take another after the weights change.

    ``compiled`` (the environment's step runs compiled: ``trainer.compile``): with slates of one
    item the GRU's input-gate product is looked up instead, from a table of every item's gates
    after each drawn outcome (:meth:`GRUStack.outcome_input_gates`; up to
    :data:`OUTCOME_TABLE_BYTES`), which the compiled kernel reads as it goes: one of the step's
    two ``[B, hidden] x [hidden, 3 hidden]`` products, most of a step's arithmetic at 100 items.
    Eager steps keep the product, and with it their bits.

    Example::

        step = model.frozen()
        response, state = step.respond(state, slates, generator)   # as model.respond
    """

    pre_drawable = True  # draws only through sample_response: the env may pre-draw (recrl.env.noise)

    def __init__(self, model: GRUBehavior, compiled: bool = False) -> None:
        self.n_items, self.signal_names = model.n_items, model.signal_names
        self.stack = GRUStack([model])
        self.input_gates = None  # [(N + 1) x 3, 3 hidden]: one-item slates' input gates per outcome
        table_bytes = (self.n_items + 1) * len(OUTCOMES) * 3 * model.hidden * model.h0.element_size()
        if compiled and table_bytes <= OUTCOME_TABLE_BYTES:
            self.input_gates = self.stack.outcome_input_gates()[0]

    @torch.no_grad()
    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator,
                choice: ChoiceModel = MNL, available: Tensor | None = None,
                heads: frozenset[str] | None = None) -> tuple[Response, Tensor]:
        """:meth:`GRUBehavior.respond` from the precomputed tables."""
        member = state.unsqueeze(0)
        parts = [part[0] for part in self.stack.predict(member, slates, heads)]
        predicted = Predictions.unflat(parts, self.signal_names)

        def advance(click: Tensor, conversion: Tensor) -> tuple[Tensor, Tensor]:
            gates = self._looked_up_gates(slates, click, conversion)
            nxt, leave = self.stack.advance(member, slates, click, conversion, gates)
            return nxt[0], leave[0]

        return sample_response(predicted, generator, choice, available, advance)

    def _looked_up_gates(self, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor | None:
        """The input gates ``[1, B, 3 hidden]`` from the outcome table, where there is one and
        the slates hold one item (drawn outcomes are 0/1, :func:`sample_response`); else ``None``."""
        if self.input_gates is None or slates.shape[-1] != 1:
            return None
        row = slates[:, 0] * len(OUTCOMES) + outcome_index(click[:, 0], conversion[:, 0])
        return self.input_gates.index_select(0, row)[None]
