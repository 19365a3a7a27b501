"""What every sequential behavior model shares: the simulator-facing methods built on a few hooks.

A subclass defines its recurrent core (``initial_state``, ``next_state``, ``output``), its heads
(``click_head``, ``conversion_head``, ``rating_head`` scoring ``(h, items)`` or, with ``items``
omitted, the whole catalogue; ``leave_head`` on ``h``), calls :meth:`~SequenceUserModel._add_signal_heads`
for one head per registered user signal (:mod:`recrl.env.signals`: ``watch_head``, ...) and
defines ``sequence_logits`` for training.
This class turns them into the :class:`~recrl.types.UserModel` protocol, greedy scoring, history
encoding and fitting, so the models cannot drift apart; :mod:`recrl.env.response` turns their
predictions into responses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from recrl.behavior.features import ItemContentEncoder, ItemFeatures, check_feature_kinds
from recrl.behavior.fit import FitReport, SessionTensors, TrainingSettings, fit_sequence_model
from recrl.env.choice import MNL, ChoiceModel
from recrl.env.response import Predictions, expected_response, sample_response
from recrl.env.signals import SIGNALS, Signal
from recrl.types import Interactions, Obs, RecrlError, Response

__all__ = ["BilinearScorer", "Predictions", "SequenceUserModel", "predicted_response", "replay_history"]


class BilinearScorer(nn.Module):
    """Scores ``(W h) . e_i + b_i`` for given items or, with ``items=None``, the whole catalogue
    (the first ``n_items`` rows of the table: a padding row after them is never scored).
    With a ``content`` encoder the item vector is ``e_i + content_i`` (item features).

    Example::

        head = BilinearScorer(hidden=64, item_emb=nn.Embedding(100, 32), n_items=100)
        logits = head(h)                  # [B, 100]
    """

    def __init__(self, hidden: int, item_emb: nn.Embedding, n_items: int,
                 content: ItemContentEncoder | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, item_emb.embedding_dim, bias=True)
        self.item_emb, self.n_items, self.content = item_emb, n_items, content
        self.bias = nn.Parameter(torch.zeros(n_items))

    def vectors(self, items: Tensor | None = None) -> Tensor:
        """Item vectors ``[..., D]`` of ``items`` (all ``n_items`` when ``None``)."""
        emb = self.item_emb.weight[:self.n_items] if items is None else self.item_emb(items)
        return emb if self.content is None else emb + self.content(items)

    def forward(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        """Logits ``[..., K]`` for ``items`` ``[..., K]``, or ``[..., n_items]``."""
        query = self.proj(h)
        if items is None:
            return query @ self.vectors().T + self.bias
        return torch.einsum("...d,...kd->...k", query, self.vectors(items)) + self.bias[items]

    def score_shared(self, h: Tensor, items: Tensor) -> Tensor:
        """Logits ``[..., N]`` of the same ``items`` ``[N]`` for every row of ``h``."""
        return self.proj(h) @ self.vectors(items).T + self.bias[items]


def predicted_response(predicted: Predictions, leave_prob: Tensor) -> Response:
    """Each item's expected response if shown alone (click probabilities in place of clicks)."""
    return expected_response(torch.sigmoid(predicted.click_logit), predicted, leave_prob)


@torch.no_grad()
def replay_history(model: Any, obs: Obs) -> Tensor:
    """``model``'s state after an observed history, oldest slate first, from its fresh state
    (``initial_state`` without a generator); padding slates leave the state unchanged."""
    state = model.initial_state(obs.batch_size).to(obs.items.device)
    conversion = torch.zeros_like(obs.clicks[:, 0])
    for t in range(obs.items.shape[1]):
        items = obs.items[:, t]
        valid = (items[:, 0] < model.n_items)[:, None]
        safe = items.clamp(max=model.n_items)
        state = torch.where(valid, model.next_state(state, safe, obs.clicks[:, t], conversion), state)
    return state


class SequenceUserModel(nn.Module, ABC):
    """Base class of the behavior models (not used on its own).

    ``training`` holds how the model is fitted (:class:`~recrl.behavior.fit.TrainingSettings`,
    the ``behavior.training`` config node); ``n_users`` is the number of users in the logs.
    """

    n_items: int
    n_users: int
    training_settings: TrainingSettings
    content: ItemContentEncoder | None
    pre_drawable = True  # draws only through sample_response: the env may pre-draw (recrl.env.noise)

    click_head: nn.Module
    conversion_head: nn.Module
    rating_head: nn.Module
    leave_head: nn.Module
    leave_known: Tensor
    signals: tuple[Signal, ...]  # one head ``<name>_head`` and flag ``<name>_known`` each

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """Start-of-session states ``[n_users, S]``."""

    @abstractmethod
    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """State after the user saw ``slates`` and responded."""

    @abstractmethod
    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits of every head over padded sessions (see ``fit.sequence_loss``)."""

    def prepare_fit(self, train: SessionTensors, interactions: Interactions) -> None:
        """Hook called by :meth:`fit` with the training sessions before the first step (nothing
        here; a model with parts fitted in closed form first fits them now)."""

    def output(self, state: Tensor) -> Tensor:
        """The vector the heads read (the state itself unless a model packs more into it)."""
        return state

    def click_logit(self, state: Tensor, h: Tensor, items: Tensor | None = None) -> Tensor:
        """Click utilities ``[B, K]`` (or ``[B, n_items]``) in ``state``, whose head input is
        ``h``: the click head's, unless a model adds terms that read the rest of the state."""
        return self.click_head(h, items)

    # ------------------------------------------------------------------ shared
    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.leave_known.device

    def leave_logit(self, state: Tensor) -> Tensor:
        """Logit ``[B]`` of leaving in ``state``."""
        return self.leave_head(self.output(state)).squeeze(-1)

    def leave_prob(self, state: Tensor) -> Tensor:
        """Probability ``[B]`` of leaving in ``state`` (0 when the logs had no leave labels)."""
        return torch.sigmoid(self.leave_logit(state)) * self.leave_known

    lean_outputs = True  # respond(heads=...) computes only the optional outputs asked for

    def predict(self, state: Tensor, items: Tensor | None = None,
                heads: frozenset[str] | None = None) -> Predictions:
        """What the heads predict in ``state`` for ``items`` ``[B, K]`` (every item when ``None``).
        ``heads``: the optional outputs to compute (``"rating"``, signal names; ``None``: all);
        the others are NaN (click and conversion are always computed: the state needs them)."""
        h = self.output(state)
        click_logit = self.click_logit(state, h, items)

        def wanted(name: str) -> bool:
            return heads is None or name in heads

        def skipped() -> Tensor:
            return torch.full_like(click_logit, float("nan"))

        rating = 1.0 + 4.0 * torch.sigmoid(self.rating_head(h, items)) if wanted("rating") else skipped()
        values = {signal.name: self.signal_value(signal, h, items) if wanted(signal.name) else skipped()
                  for signal in self.signals}
        return Predictions(click_logit=click_logit,
                           conversion_prob=torch.sigmoid(self.conversion_head(h, items)),
                           rating=rating, values=values)

    @torch.no_grad()
    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator,
                choice: ChoiceModel = MNL, available: Tensor | None = None,
                heads: frozenset[str] | None = None) -> tuple[Response, Tensor]:
        """Sample the response to ``slates`` ``[B, K]`` and the next state: the click by
        ``choice`` (MNL with no-click by default) over the click head's utilities, never on
        items that are not ``available``; ``heads``: see :meth:`predict`."""
        def advance(click: Tensor, conversion: Tensor) -> tuple[Tensor, Tensor]:
            nxt = self.next_state(state, slates, click, conversion)
            return nxt, self.leave_prob(nxt)

        return sample_response(self.predict(state, slates, heads), generator, choice, available, advance)

    @torch.no_grad()
    def score_all(self, state: Tensor) -> Response:
        """Each item's predicted response if shown alone, ``[B, n_items]`` (no sampling).

        ``click``/``conversion`` hold probabilities here; ``leave_prob`` is the current one.
        """
        return predicted_response(self.predict(state), self.leave_prob(state))

    @torch.no_grad()
    def item_vectors(self) -> Tensor:
        """What the model learned about each item, ``[n_items, D + 1]``: its click head's item
        vectors and click biases (a pretrained item tower for policies: ``algo.item_init=behavior``)."""
        head = self.click_head
        return torch.cat([head.vectors(), head.bias[:, None]], 1)

    @property
    def signal_names(self) -> tuple[str, ...]:
        """The user signals the model has heads for (those registered when it was built)."""
        return tuple(signal.name for signal in self.signals)

    def signal_logits(self, h: Tensor, items: Tensor | None = None) -> dict[str, Tensor]:
        """Every signal head's logits ``[B, K]`` (or ``[B, n_items]``), by signal name."""
        return {signal.name: getattr(self, signal.head)(h, items) for signal in self.signals}

    def signal_values(self, h: Tensor, items: Tensor | None = None) -> dict[str, Tensor]:
        """Every signal's expected value given a click ``[B, K]`` (or ``[B, n_items]``); NaN for a
        signal the logs had no values of, so a reward can never read an untrained head silently."""
        return {signal.name: self.signal_value(signal, h, items) for signal in self.signals}

    def signal_value(self, signal: Signal, h: Tensor, items: Tensor | None = None) -> Tensor:
        """One signal's expected value given a click (see :meth:`signal_values`)."""
        return signal.predict(getattr(self, signal.head)(h, items), getattr(self, signal.known))

    def _add_signal_heads(self, hidden: int, dim: int) -> None:
        """One head ``<name>_head`` per registered signal (:data:`recrl.env.signals.SIGNALS`, in
        order) and its flag ``<name>_known``. The heads are built from a forked random stream, so
        that adding them left the initialisation of every other weight unchanged (and ``watch``,
        registered first, keeps its own)."""
        self.signals = tuple(SIGNALS.values())
        with torch.random.fork_rng(devices=[]):
            for signal in self.signals:
                setattr(self, signal.head, BilinearScorer(hidden, nn.Embedding(self.n_items, dim),
                                                          self.n_items, self.head_content(dim)))
        for signal in self.signals:
            self.register_buffer(signal.known, torch.tensor(True))

    def _setup(self, n_items: int, n_users: int, training: TrainingSettings | None,
               features: Sequence[str] = (), item_features: ItemFeatures | None = None,
               dim: int = 0, content_encoder: bool = True, item_ids: bool = True) -> None:
        """Store the sizes and training settings, seed the weight initialisation and build the
        item content encoder (``self.content``: ``None`` without ``features``, or when the model
        feeds content its own way, ``content_encoder=False``). ``item_ids=False``: the model will
        know items by content alone (:meth:`head_content`, :meth:`freeze_item_ids`)."""
        self.n_items, self.n_users = n_items, n_users
        self.training_settings = training or TrainingSettings()
        torch.manual_seed(self.training_settings.seed)
        self.features = tuple(features)
        check_feature_kinds(self.features)
        required = [k for k in self.features if k != "auto"]
        if required and item_features is None:
            raise RecrlError(f"behavior.features={list(self.features)} needs item features, but none were "
                             "given (they are built from the dataset's item table at run time)")
        use = item_features is not None and bool(self.features) and content_encoder
        self.content = ItemContentEncoder(item_features, dim) if use else None
        if not item_ids and self.content is None:
            raise RecrlError("behavior.item_ids=false needs item content: set behavior.features=[side] "
                             "(or [auto] with an item table that has usable columns)")
        self._head_features = None if item_ids else item_features

    def head_content(self, dim: int) -> ItemContentEncoder | None:
        """A content encoder of its own for a response head (``item_ids=false`` models, whose
        heads know items by content only); ``None`` when items have ids."""
        return None if self._head_features is None else ItemContentEncoder(self._head_features, dim)

    def freeze_item_ids(self) -> None:
        """Item-id parameters (embedding tables and per-item biases) fixed at zero: items are known
        by their content alone, so a rarely logged item cannot carry a memorised, lucky estimate."""
        for module in self.modules():
            weights = []
            if isinstance(module, nn.Embedding) and module.num_embeddings >= self.n_items:
                weights.append(module.weight)
            if isinstance(module, BilinearScorer):
                weights.append(module.bias)
            for weight in weights:
                with torch.no_grad():
                    weight.zero_()
                weight.requires_grad_(False)

    def content_input(self, table: nn.Embedding, items: Tensor) -> Tensor:
        """Input embeddings of ``items`` (``n_items`` = padding, a zero vector) plus their content."""
        emb = table(items)
        if self.content is None:
            return emb
        real = (items < self.n_items).unsqueeze(-1).to(emb.dtype)
        return emb + self.content(items.clamp(max=self.n_items - 1)) * real

    def id_table(self, rows: int, dim: int, padding_idx: int | None = None,
                 std: float | None = None) -> nn.Embedding:
        """An item-id embedding table: ``N(0, std)`` entries (``nn.Embedding``'s own init when
        ``std`` is ``None``), or zeros when item content is used (an item never seen in training
        is then represented by its content alone)."""
        table = nn.Embedding(rows, dim, padding_idx=padding_idx)
        with torch.no_grad():
            if std is not None:
                table.weight.normal_(0.0, std)
            if self.content is not None:
                table.weight.zero_()
            if padding_idx is not None:
                table.weight[padding_idx].zero_()
        return table

    @property
    def max_len(self) -> int:
        """Each user's last rows used for fitting (and the history offline ranking reads)."""
        return self.training_settings.max_len

    @torch.no_grad()
    def encode(self, obs: Obs, users: Tensor | None = None) -> Tensor:
        """State from an observed history (padding slates leave the state unchanged).

        ``users`` (dense ids) is ignored by sequence models, which know a user by history only.
        """
        return replay_history(self, obs)

    def fit(self, interactions: Interactions) -> FitReport:
        """Fit on the training rows, early-stop on the validation rows' loss.

        Logs without leave labels leave the leave head untrained; the model then never makes
        a user leave (the environment's horizon or leave rule ends episodes). Logs without a
        signal's values (no column, or NaN throughout) leave its head untrained and its
        predictions NaN.
        """
        leave = pd.concat([interactions.train["leave"], interactions.valid["leave"]])
        self.leave_known.fill_(bool(leave.notna().any()))
        train = interactions.train
        for signal in self.signals:
            getattr(self, signal.known).fill_(bool(train[signal.name].notna().any())
                                              if signal.name in train else False)
        return fit_sequence_model(self, interactions, self.training_settings)
