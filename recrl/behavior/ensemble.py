"""Behavior-model ensembles (``behavior.ensemble=K``): user models that say where they are unsure.

A single user model fitted on logs is confidently wrong away from the logged distribution, and a
policy trained in it learns to exploit exactly those errors. An ensemble of ``K`` members of the
configured model, each with its own seed (``behavior.training.seed + k``: initialisation, batch
order) and fitted on its own bootstrap resample of the training users, agrees where the logs
pin the answer down and disagrees where they do not (Lakshminarayanan et al., NeurIPS 2017;
for model-based RL: Chua et al., PETS, NeurIPS 2018; Yu et al., MOPO, NeurIPS 2020; Kidambi et
al., MOReL, NeurIPS 2020).

As a simulator the ensemble keeps, for every simulated user, every member's state and the
user's *member weights* ``w`` (one row of the state ``[w (K) | member states (K x S)]``):

- a simulated user gets one member, drawn uniformly per episode (``initial_state`` with a
  generator: ``w`` one-hot), whose predictions drive that user's whole session, so a policy
  meets ``K`` plausible worlds instead of one;
- without a generator (``encode``, greedy scoring, fidelity) ``w`` is uniform and the
  prediction is the members' mean (of click utilities, probabilities and values);
- every response carries :attr:`~recrl.types.Response.uncertainty`: the members' standard
  deviation of each shown item's click probability, what the environment's pessimism
  (``env.pessimism``) reads.

All members are evaluated in one batched call per step, not in a Python loop: GRU members
through :class:`~recrl.behavior.gru.GRUStack` (their weights stacked once, batched matrix
products), other models through ``torch.func.stack_module_state`` and ``vmap``.

Stepping every member for every user costs ``K`` times one model's arithmetic, and only the
pessimism terms that read the disagreement need it. Every other simulator (training without
those terms, the simulator's evaluation) runs the ensemble as :class:`OwnMemberSimulator`: each
user's own member alone, the rows of a batch dealt to the members in equal blocks, about the
cost of one model.
Sequence models only (``behavior=gru``, ``sasrec``): models with
a table of user vectors (``mf``, ``deepfm``) draw fresh users from that table, which a bootstrap
of users does not preserve.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from recrl.behavior.base import SequenceUserModel, predicted_response, replay_history
from recrl.behavior.fit import FitReport, SessionTensors
from recrl.behavior.gru import GRUStack
from recrl.env.choice import MNL, ChoiceModel
from recrl.env.response import Predictions, sample_response
from recrl.types import Interactions, Obs, RecrlError, Response

FAST_METHODS = ("predict", "next_state", "leave_prob", "advance")  # what GRUStack computes itself


class _MemberCall(nn.Module):
    """Calls one method of a member (the template for the batched functional calls)."""

    def __init__(self, member: nn.Module) -> None:
        super().__init__()
        self.m = member

    def forward(self, method: str, *args: Any) -> Any:
        if method == "advance":  # the next state and the leave probability there, in one call
            nxt = self.m.next_state(*args)
            return nxt, self.m.leave_prob(nxt)
        out = getattr(self.m, method)(*args)
        if isinstance(out, Predictions):  # vmap returns tensors and tuples of them
            return out.flat()
        return out


class EnsembleFitReport:
    """The members' fit reports: their mean figures, and each member's under ``members``."""

    def __init__(self, reports: Sequence[FitReport]) -> None:
        self.reports = list(reports)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON reports."""
        rows = [r.to_dict() for r in self.reports]
        mean = {k: (float(np.mean([r[k] for r in rows])) if isinstance(v, (int, float)) else v)
                for k, v in rows[0].items()}
        return {**mean, "members": rows}


class BehaviorEnsemble(nn.Module):
    """``K`` behavior models of one kind as one user model (see the module docstring).

    Example::

        ensemble = BehaviorEnsemble([GRUBehavior(100, training=TrainingSettings(seed=k)) for k in range(5)])
        ensemble.fit(interactions)                     # each member on its own bootstrap of users
        state = ensemble.initial_state(256, generator) # one member per simulated user
        response, state = ensemble.respond(state, slates, generator)
        response.uncertainty                           # [256, K] members' std of click probability
    """

    pre_drawable = True  # draws only through sample_response: the env may pre-draw (recrl.env.noise)

    def __init__(self, members: Sequence[SequenceUserModel]) -> None:
        super().__init__()
        if len(members) < 2:
            raise RecrlError("a behavior ensemble needs at least 2 members (behavior.ensemble >= 2)")
        for member in members:
            if hasattr(member, "user_rows"):
                raise RecrlError(f"behavior.ensemble > 1 needs a sequence model (behavior=gru or sasrec); "
                                 f"{type(member).__name__} simulates users from its table of user vectors")
        self.members = nn.ModuleList(members)
        self.size = len(members)
        first = members[0]
        self.n_items, self.n_users = first.n_items, first.n_users
        self.training_settings = first.training_settings
        self.signals = first.signals
        self._template = [_MemberCall(copy.deepcopy(first))]  # a list: not a submodule, not saved
        self._stacked: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
        self._fast: GRUStack | None = None  # GRU members: the step without vmap (built with _stacked)
        self._start: Tensor | None = None
        with torch.no_grad():
            self.width = int(first.initial_state(1).shape[1])

    # ------------------------------------------------------------------ batched members
    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.members[0].device

    @property
    def max_len(self) -> int:
        """Each user's last rows used for fitting (the members')."""
        return self.members[0].max_len

    def _stack(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every member's parameters and buffers stacked along a leading member dimension
        (rebuilt after the weights change: fitting, loading, moving)."""
        if self._stacked is None:
            params, buffers = stack_module_state(list(self.members))
            self._stacked = ({f"m.{k}": v.detach() for k, v in params.items()},
                             {f"m.{k}": v for k, v in buffers.items()})
            self._start = None
            self._fast = GRUStack(list(self.members)) if GRUStack.supports(list(self.members)) else None
        return self._stacked

    def _each(self, method: str, member_args: Sequence[Tensor] = (), shared: Sequence[Any] = ()) -> Any:
        """``method`` of every member in one batched call: ``member_args`` have a leading member
        dimension ``[K, ...]``, ``shared`` are the same for all; outputs gain ``[K, ...]``."""
        params, buffers = self._stack()
        if self._fast is not None and method in FAST_METHODS:
            return getattr(self._fast, method)(*member_args, *shared)
        template = self._template[0]

        def one(p: dict[str, Tensor], b: dict[str, Tensor], *args: Any) -> Any:
            return functional_call(template, (p, b), (method, *args, *shared))

        dims = (0, 0) + (0,) * len(member_args)
        return vmap(one, in_dims=dims)(params, buffers, *member_args)

    def _apply(self, fn: Any, recurse: bool = True) -> BehaviorEnsemble:
        super()._apply(fn, recurse)
        self._template[0]._apply(fn, recurse)
        self._stacked = None
        return self

    def train(self, mode: bool = True) -> BehaviorEnsemble:
        """Training or evaluation mode for the members and the batched-call template (dropout)."""
        super().train(mode)
        self._template[0].train(mode)
        return self

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load the members' weights (and forget the stacked copy of the old ones)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._stacked = None
        return result

    # ------------------------------------------------------------------ state
    def _split(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """Member weights ``[B, K]`` and member states ``[K, B, S]`` of a state row."""
        b = state.shape[0]
        members = state[:, self.size:].reshape(b, self.size, self.width).transpose(0, 1)
        return state[:, :self.size], members

    def _pack(self, weights: Tensor, members: Tensor) -> Tensor:
        return torch.cat([weights, members.transpose(0, 1).reshape(weights.shape[0], -1)], 1)

    @staticmethod
    def _mix(weights: Tensor, values: Tensor) -> Tensor:
        """The member-weighted value ``[B, ...]`` of per-member values ``[K, B, ...]``."""
        w = weights.transpose(0, 1).reshape(weights.shape[1], weights.shape[0], *[1] * (values.dim() - 2))
        return (w * values).sum(0)

    @torch.no_grad()
    def member_starts(self) -> Tensor:
        """Every member's start-of-session state ``[K, 1, S]`` (a sequence model's is the same for
        every user), computed once per set of weights."""
        self._stack()
        if self._start is None:
            self._start = self._each("initial_state", shared=(1,))
        return self._start

    @torch.no_grad()
    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """Fresh users: each member's start state; with ``generator`` one member per user drawn
        uniformly (weights one-hot), without it the members' mean (weights ``1/K``).

        A sequence model's start state is the same for every user (a learned vector, a start
        token), so it is computed once per set of weights, not at every autoreset."""
        members = self.member_starts().expand(-1, n_users, -1)
        if generator is None:
            weights = torch.full((n_users, self.size), 1.0 / self.size, device=members.device)
        else:
            drawn = torch.randint(0, self.size, (n_users,), device=members.device, generator=generator)
            weights = nn.functional.one_hot(drawn, self.size).to(members.dtype)
        return self._pack(weights, members)

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Every member's state after the user saw ``slates`` and responded."""
        weights, members = self._split(state)
        return self._pack(weights, self._each("next_state", (members,), (slates, click, conversion)))

    def leave_prob(self, state: Tensor) -> Tensor:
        """Probability ``[B]`` of leaving in ``state`` under the user's member(s)."""
        weights, members = self._split(state)
        return self._mix(weights, self._each("leave_prob", (members,)))

    @property
    def signal_names(self) -> tuple[str, ...]:
        """The user signals the members have heads for."""
        return tuple(signal.name for signal in self.signals)

    def _predictions(self, flat: Any) -> Predictions:
        """Predictions from the members' batched ``predict`` output (:meth:`Predictions.flat` order)."""
        return Predictions.unflat(flat, self.signal_names)

    def _member_predictions(self, members: Tensor, items: Tensor | None) -> Predictions:
        """Each member's predictions, every field ``[K, B, ...]``."""
        return self._predictions(self._each("predict", (members,), (items,)))

    def _mixed(self, weights: Tensor, each: Predictions) -> Predictions:
        """The member-weighted predictions of per-member ones (every field)."""
        return self._predictions([self._mix(weights, value) for value in each.flat()])

    def predict(self, state: Tensor, items: Tensor | None = None) -> Predictions:
        """The user's member's predictions (the members' mean under uniform weights)."""
        weights, members = self._split(state)
        return self._mixed(weights, self._member_predictions(members, items))

    # ------------------------------------------------------------------ UserModel
    @torch.no_grad()
    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator,
                choice: ChoiceModel = MNL, available: Tensor | None = None) -> tuple[Response, Tensor]:
        """Sample the response to ``slates`` ``[B, K]`` from each user's member and advance every
        member's state with it; ``uncertainty`` is the members' std of the click probabilities."""
        weights, members = self._split(state)
        each = self._member_predictions(members, slates)
        k, b, width = each.click_logit.shape
        member_probs = choice.probs(each.click_logit.reshape(k * b, width)).reshape(k, b, width)

        def advance(click: Tensor, conversion: Tensor) -> tuple[Tensor, Tensor]:
            advanced, leave = self._each("advance", (members,), (slates, click, conversion))
            return self._pack(weights, advanced), self._mix(weights, leave)

        return sample_response(self._mixed(weights, each), generator, choice, available, advance,
                               uncertainty=member_probs.std(0, correction=0))

    @torch.no_grad()
    def score_all(self, state: Tensor) -> Response:
        """Each item's predicted response if shown alone, ``[B, n_items]`` (no sampling)."""
        return predicted_response(self.predict(state), self.leave_prob(state))

    @torch.no_grad()
    def encode(self, obs: Obs, users: Tensor | None = None) -> Tensor:
        """The members' mean state after replaying an observed history."""
        return replay_history(self, obs)

    @torch.no_grad()
    def item_vectors(self) -> Tensor:
        """Every member's item vectors side by side, ``[n_items, K (D + 1)]``."""
        return torch.cat([m.item_vectors() for m in self.members], 1)

    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """The members' mean per-step logits (validation fidelity; not used in the step)."""
        each = [m.sequence_logits(batch) for m in self.members]
        keys = [k for k in each[0] if k != "click_state"]
        return {k: torch.stack([e[k] for e in each]).mean(0) for k in keys}

    def fit(self, interactions: Interactions) -> EnsembleFitReport:
        """Fit member ``k`` on its own bootstrap resample of the training users (seeded by its
        ``training.seed``); each early-stops on the validation rows of its users."""
        reports = [m.fit(bootstrap_users(interactions, m.training_settings.seed)) for m in self.members]
        self._stacked = None
        self.eval()  # as a fitted single model: evaluation mode, template included
        return EnsembleFitReport(reports)


class OwnMemberSimulator:
    """An ensemble as a simulator that steps only each user's own member: ``1/K`` of the
    ensemble's arithmetic, for environments that do not read the members' disagreement.

    The ``B`` rows of a batch are dealt to the members in ``K`` contiguous blocks of equal size
    (row ``r`` simulates member ``r K // B``; a row keeps its member when a finished user is
    replaced). A sequence model's fresh users are all alike, so this is the ensemble's uniform
    draw of a member per user with the draws stratified: every batch meets every member in
    equal numbers. A row's state is its member's state alone (``[B, S]``). Each step gathers the
    blocks into ``[K, ceil(B / K), ...]`` (a short block repeats one of its rows) and runs every
    member on its own block in one batched call, as :class:`BehaviorEnsemble` runs every member
    on every row. Responses carry no ``uncertainty``: the environment's pessimism terms that
    read it (MOPO, MOReL) step the whole :class:`BehaviorEnsemble` instead
    (:meth:`recrl.stages.Stages.make_env` chooses).

    Example::

        sim = OwnMemberSimulator(ensemble)
        state = sim.initial_state(256, generator)      # [256, S]
        response, state = sim.respond(state, slates, generator)
    """

    pre_drawable = True  # draws only through sample_response: the env may pre-draw (recrl.env.noise)

    def __init__(self, ensemble: BehaviorEnsemble) -> None:
        self.ensemble = ensemble
        self.n_items, self.size = ensemble.n_items, ensemble.size
        self._routes: dict[tuple[int, torch.device], tuple[Tensor, Tensor, Tensor]] = {}

    def route(self, n_users: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """For a batch of ``n_users`` rows: each row's member ``[B]``, the rows of each member's
        block ``[K, C]`` (short blocks padded with their first row) and each row's position in
        the flattened blocks ``[B]``."""
        key = (n_users, device)
        if key not in self._routes:
            k = self.size
            member = torch.arange(n_users) * k // n_users
            width = -(-n_users // k)
            blocks = torch.zeros(k, width, dtype=torch.long)
            position = torch.zeros(n_users, dtype=torch.long)
            for m in range(k):
                rows = (member == m).nonzero().squeeze(1)
                if len(rows):
                    blocks[m] = torch.cat([rows, rows[:1].expand(width - len(rows))])
                    position[rows] = m * width + torch.arange(len(rows))
            self._routes[key] = (member.to(device), blocks.to(device), position.to(device))
        return self._routes[key]

    @torch.no_grad()
    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """Fresh users ``[B, S]``: row ``r`` in the start state of its member (no randomness:
        the deal of rows to members is fixed)."""
        starts = self.ensemble.member_starts()
        member, _, _ = self.route(n_users, starts.device)
        return starts[member, 0]

    @torch.no_grad()
    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator,
                choice: ChoiceModel = MNL, available: Tensor | None = None) -> tuple[Response, Tensor]:
        """Sample the response to ``slates`` ``[B, K]`` from each row's member and advance that
        member's state (``uncertainty`` is ``None``)."""
        _, blocks, position = self.route(state.shape[0], state.device)
        flat_blocks = blocks.flatten()

        def by_member(rows: Tensor) -> Tensor:  # [B, ...] -> [K, C, ...]
            return rows.index_select(0, flat_blocks).view(*blocks.shape, *rows.shape[1:])

        def by_row(grouped: Tensor) -> Tensor:  # [K, C, ...] -> [B, ...]
            return grouped.flatten(0, 1).index_select(0, position)

        own, shown = by_member(state), by_member(slates)
        each = self.ensemble._each("predict", (own, shown))
        predicted = self.ensemble._predictions([by_row(v) for v in each])

        def advance(click: Tensor, conversion: Tensor) -> tuple[Tensor, Tensor]:
            by_members = (own, shown, by_member(click), by_member(conversion))
            advanced, leave = self.ensemble._each("advance", by_members)
            return by_row(advanced), by_row(leave)

        return sample_response(predicted, generator, choice, available, advance)


def bootstrap_users(interactions: Interactions, seed: int) -> Interactions:
    """A bootstrap resample of the training users: as many users as there are, drawn with
    replacement; the first copy of a user keeps its id, further copies get fresh ids after every
    existing one. Validation rows are kept for users drawn and for users with no training rows
    (a validation row is scored after its user's training history, which must be there)."""
    train = interactions.train
    rows_of = train.groupby("user", sort=True).indices
    users = np.fromiter(rows_of.keys(), dtype=np.int64, count=len(rows_of))
    drawn = np.random.default_rng(seed).choice(users, size=len(users), replace=True)
    copy_number = pd.Series(drawn).groupby(drawn).cumcount().to_numpy()
    new_ids = np.where(copy_number == 0, drawn, interactions.n_users + np.arange(len(drawn)))
    index = np.concatenate([rows_of[u] for u in drawn])
    lengths = np.array([len(rows_of[u]) for u in drawn])
    sample = train.iloc[index].copy()
    sample["user"] = np.repeat(new_ids, lengths)
    sample = sample.sort_values(["user", "time"], kind="stable").reset_index(drop=True)
    undrawn = np.setdiff1d(users, drawn)
    valid = interactions.valid[~interactions.valid["user"].isin(undrawn)].reset_index(drop=True)
    return Interactions(train=sample, valid=valid, items=interactions.items,
                        n_users=interactions.n_users + len(drawn), n_items=interactions.n_items,
                        positive_only=interactions.positive_only)
