"""GRU user model (``behavior=gru``): a recurrent state over the session, with response heads.

At each step the user, in hidden state ``h``, is shown a slate. Item utilities for the
multinomial-logit click choice are ``(W_click h) . e_item + b_item`` (one matrix product scores
the whole catalogue). Conversion and rating heads have the same bilinear form. The shown slate
and the response then update ``h`` through a GRU cell, and a leave head reads the new ``h``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.behavior.base import BilinearScorer, SequenceUserModel
from recrl.behavior.features import ItemFeatures
from recrl.behavior.fit import SessionTensors, TrainingSettings


def gru_cell(cell: nn.GRUCell, x: Tensor, h: Tensor) -> Tensor:
    """One step of ``cell`` (``nn.GRUCell``'s equations and weights), written out so that
    ``torch.func.vmap`` batches it over ensemble members (the fused kernel has no batching rule)."""
    r_x, z_x, n_x = F.linear(x, cell.weight_ih, cell.bias_ih).chunk(3, -1)
    r_h, z_h, n_h = F.linear(h, cell.weight_hh, cell.bias_hh).chunk(3, -1)
    reset, update = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    candidate = torch.tanh(n_x + reset * n_h)
    return candidate + update * (h - candidate)


class GRUBehavior(SequenceUserModel):
    """GRU4Rec-style user model with click, conversion, rating and leave heads.

    Example::

        model = GRUBehavior(n_items=100, dim=16, hidden=32, training=TrainingSettings(epochs=10))
        report = model.fit(interactions)               # supervised, early stopping
        h = model.initial_state(8, generator)
        response, h = model.respond(h, slates, generator)
    """

    def __init__(self, n_items: int, dim: int = 32, hidden: int = 64,
                 features: Sequence[str] = (), training: TrainingSettings | None = None,
                 n_users: int = 0, item_features: ItemFeatures | None = None, item_ids: bool = True,
                 device: str = "cpu") -> None:
        super().__init__()
        self._setup(n_items, n_users, training, features, item_features, dim, item_ids=item_ids)
        self.hidden = hidden
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
        self._add_watch_head(hidden, dim)
        if not item_ids:
            self.freeze_item_ids()
        self.to(device)

    # ------------------------------------------------------------------ recurrent core
    def _event(self, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Input vector ``[B, hidden]`` summarising one shown slate and its response."""
        emb = self.content_input(self.item_in, slates)
        shown = emb.mean(-2)
        clicked = (click.unsqueeze(-1) * emb).sum(-2)
        flags = torch.stack([click.sum(-1), conversion.sum(-1)], -1)
        return torch.relu(self.event(torch.cat([shown, clicked, flags], -1)))

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Hidden state after the user saw ``slates`` and responded."""
        return gru_cell(self.cell, self._event(slates, click, conversion), state)

    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """The learned start-of-session state, repeated ``n_users`` times."""
        return self.h0.detach().expand(n_users, -1).clone()

    # ------------------------------------------------------------------ training
    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits of every head over padded sessions ``[S, T]`` (slate size 1)."""
        h = self.initial_state(batch.item.shape[0]).to(batch.item.device)
        click, conv, rating, watch, leave, negative, states = [], [], [], [], [], [], []
        for t in range(batch.item.shape[1]):
            states.append(h)
            items = batch.item[:, t:t + 1].clamp(max=self.n_items - 1)
            click.append(self.click_head(h, items)[:, 0])
            if batch.negative is not None:
                sampled = batch.negative[:, t:t + 1].clamp(max=self.n_items - 1)
                negative.append(self.click_head(h, sampled)[:, 0])
            conv.append(self.conversion_head(h, items)[:, 0])
            rating.append(self.rating_head(h, items)[:, 0])
            watch.append(self.watch_head(h, items)[:, 0])
            h = self.next_state(h, batch.item[:, t:t + 1], batch.click[:, t:t + 1],
                                batch.conversion[:, t:t + 1])
            leave.append(self.leave_logit(h))
        return {k: torch.stack(v, 1) for k, v in
                (("click", click), ("conversion", conv), ("rating", rating), ("watch", watch),
                 ("leave", leave), ("click_negative", negative), ("click_state", states)) if v}
