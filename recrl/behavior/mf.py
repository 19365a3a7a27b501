"""Matrix factorisation user model (``behavior=mf``): static preferences, one vector per user.

The click logit of user ``u`` for item ``i`` is ``p_u . q_i + b_i + g`` (Koren, Bell & Volinsky,
*Matrix Factorization Techniques for Recommender Systems*, 2009), fitted with BCE on clicks
(sampled negatives on positive-only logs) or with BPR (``training.loss=bpr``, Rendle et al. 2009).
With item features, ``q_i`` is an id factor plus a content vector, so an item never seen in
training still scores by its content. Conversion and rating heads are bilinear in the same
user vector with their own item tables; a leave head reads it too.

Preferences are static: a simulated user is a training user drawn at random, and the state,
the user vector, never changes during a session (the environment adds the dynamics). A user
known only by a history (a policy's observation) is folded in by ridge regression.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recrl.behavior.base import BilinearScorer, SequenceUserModel
from recrl.behavior.features import ItemContentEncoder, ItemFeatures
from recrl.behavior.fit import FitReport, SessionTensors, TrainingSettings
from recrl.types import Interactions, Obs, RecrlError


class StaticUserModel(SequenceUserModel):
    """Base of the static-preference models (MF, DeepFM), not used on its own.

    A state is a user's row of a table (:meth:`user_rows`). Fresh simulated users are drawn
    uniformly from the users with training rows (the ``trained`` mask, set by :meth:`fit`, all
    users before it); :meth:`next_state` keeps the state; :meth:`encode` reads trained users by id
    and folds any other history in (:meth:`fold_in`).

    Example::

        class MyStatic(StaticUserModel):       # plus heads and sequence_logits, as MFBehavior
            def user_rows(self, users): return self.user_emb(users)
            def fold_in(self, obs): return self.user_emb.weight.mean(0).expand(obs.batch_size, -1)

        model.fit(interactions)                # marks the users with training rows
        state = model.initial_state(8, generator)
    """

    trained: Tensor

    def _setup_users(self) -> None:
        """Register the ``[n_users]`` mask of users that had training rows (call after ``_setup``)."""
        # a persistent buffer of fixed shape: cached and checkpointed weights carry the population
        self.register_buffer("trained", torch.ones(self.n_users, dtype=torch.bool))

    @abstractmethod
    def user_rows(self, users: Tensor) -> Tensor:
        """States ``[..., S]`` of the users with dense ids ``users`` (their table rows)."""

    @abstractmethod
    def fold_in(self, obs: Obs) -> Tensor:
        """States ``[B, S]`` of users known only by their observed history."""

    @torch.no_grad()
    def initial_state(self, n_users: int, generator: torch.Generator | None = None) -> Tensor:
        """States of ``n_users`` training users drawn uniformly (with replacement) with ``generator``."""
        if self.n_users == 0:
            raise RecrlError(f"{type(self).__name__} was built with n_users=0: it simulates logged users")
        users = torch.multinomial(self.trained.float(), n_users, replacement=True, generator=generator)
        return self.user_rows(users)

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """The same state: preferences are static (the environment adds any dynamics)."""
        return state

    @torch.no_grad()
    def encode(self, obs: Obs, users: Tensor | None = None) -> Tensor:
        """States of the users in ``obs``: trained users by id (``users``), the others by fold-in."""
        folded = self.fold_in(obs)
        if users is None:
            return folded
        return torch.where(self.trained[users].unsqueeze(-1), self.user_rows(users), folded)

    def fit(self, interactions: Interactions) -> FitReport:
        """Mark the users with training rows, then fit as every behavior model does."""
        if interactions.n_users > self.n_users:
            raise RecrlError(f"{type(self).__name__} was built for n_users={self.n_users}, but the logs "
                             f"have {interactions.n_users} users")
        users = torch.as_tensor(interactions.train["user"].unique(), device=self.trained.device)
        self.trained.zero_()
        self.trained[users] = True
        return super().fit(interactions)


class DotScorer(BilinearScorer):
    """The MF click head: ``h . e_i + b_i + g`` (a :class:`BilinearScorer` without the projection,
    plus a global bias ``g``, which is what an item never seen in training starts from).

    Example::

        head = DotScorer(nn.Embedding(100, 32), n_items=100)
        logits = head(torch.randn(4, 32))      # [4, 100]
    """

    def __init__(self, item_emb: nn.Embedding, n_items: int,
                 content: ItemContentEncoder | None = None) -> None:
        super().__init__(item_emb.embedding_dim, item_emb, n_items, content)
        self.proj = nn.Identity()
        self.global_bias = nn.Parameter(torch.zeros(()))

    def forward(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        """Logits ``[..., K]`` for ``items`` ``[..., K]``, or ``[..., n_items]``."""
        return super().forward(h, items) + self.global_bias

    def score_shared(self, h: Tensor, items: Tensor) -> Tensor:
        """Logits ``[..., N]`` of the same ``items`` ``[N]`` for every row of ``h``."""
        return super().score_shared(h, items) + self.global_bias


class MFBehavior(StaticUserModel):
    """Matrix factorisation with click, conversion, rating and leave heads on one user vector.

    ``fold_in_l2`` is the ridge penalty pulling a folded-in user towards the mean training user.

    Example::

        model = MFBehavior(n_items=100, dim=32, n_users=500, training=TrainingSettings(lr=0.005))
        report = model.fit(interactions)               # supervised, early stopping
        state = model.initial_state(8, generator)      # 8 training users' vectors
        response, state = model.respond(state, slates, generator)
        folded = model.encode(obs)                     # users known by history only
    """

    def __init__(self, n_items: int, dim: int = 64, fold_in_l2: float = 1.0, features: Sequence[str] = (),
                 training: TrainingSettings | None = None, n_users: int = 0,
                 item_features: ItemFeatures | None = None, device: str = "cpu") -> None:
        super().__init__()
        if fold_in_l2 <= 0:
            raise RecrlError(f"behavior.fold_in_l2={fold_in_l2} must be > 0")
        self._setup(n_items, n_users, training, features, item_features, dim)
        self._setup_users()
        self.dim, self.fold_in_l2 = dim, fold_in_l2
        self.user_emb = nn.Embedding(n_users, dim)
        nn.init.normal_(self.user_emb.weight, 0.0, 0.1)
        self.click_head = DotScorer(self.id_table(n_items, dim, std=0.1), n_items, self.content)
        self.conversion_head = BilinearScorer(dim, nn.Embedding(n_items, dim), n_items)
        self.rating_head = BilinearScorer(dim, nn.Embedding(n_items, dim), n_items)
        self.leave_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.register_buffer("leave_known", torch.tensor(True))
        self._add_signal_heads(dim, dim)
        self.to(device)

    # ------------------------------------------------------------------ users
    def user_rows(self, users: Tensor) -> Tensor:
        """User vectors ``[..., dim]`` of dense ids ``users``."""
        return self.user_emb(users)

    def mean_user(self) -> Tensor:
        """The mean vector ``[dim]`` of the users with training rows (a constant: no gradient)."""
        with torch.no_grad():
            weight = self.trained.to(self.user_emb.weight.dtype)[:, None]
            return (self.user_emb.weight * weight).sum(0) / weight.sum().clamp(min=1.0)

    def session_users(self, users: Tensor) -> Tensor:
        """Vectors of ``users``; a user without training rows (a validation-only one) gets the mean."""
        return torch.where(self.trained[users].unsqueeze(-1), self.user_emb(users), self.mean_user())

    def fold_in(self, obs: Obs) -> Tensor:
        """Ridge regression of a user vector on the history's click-item factors ``q_j``.

        Solves ``min_p sum_j (p . q_j + b_j + g - y_j)^2 + fold_in_l2 * |p - mean_user|^2`` per user,
        one batched ``[B, dim, dim]`` solve, with ``y = +1`` for clicked shown items and ``-1`` for
        shown ones not clicked (padding ignored); an empty history gives the mean user. This is an
        approximation of the training objective: squared error of the click logit to +-1 instead
        of BCE, cheap enough to run for every observation.
        """
        items = obs.items.flatten(1)
        real = (items < self.n_items).to(self.user_emb.weight.dtype)
        safe = items.clamp(max=self.n_items - 1)
        head = self.click_head
        residual = 2.0 * obs.clicks.flatten(1) - 1.0 - head.bias[safe] - head.global_bias
        q = head.vectors(safe) * real[..., None]  # [B, N, dim]
        eye = torch.eye(self.dim, device=q.device, dtype=q.dtype)
        gram = q.transpose(1, 2) @ q + self.fold_in_l2 * eye
        rhs = (q * (residual * real)[..., None]).sum(1) + self.fold_in_l2 * self.mean_user()
        return torch.linalg.solve(gram, rhs)

    # ------------------------------------------------------------------ training
    def sequence_logits(self, batch: SessionTensors) -> dict[str, Tensor]:
        """Per-step logits of every head over padded sessions ``[S, T]``: every step reads the
        session's user vector (static, no dependence on earlier steps)."""
        p = self.session_users(batch.user)
        h = p[:, None].expand(-1, batch.item.shape[1], -1)
        items = batch.item.clamp(max=self.n_items - 1)[..., None]
        logits = {"click": self.click_head(h, items)[..., 0],
                  "conversion": self.conversion_head(h, items)[..., 0],
                  "rating": self.rating_head(h, items)[..., 0],
                  **{k: v[..., 0] for k, v in self.signal_logits(h, items).items()},
                  "leave": self.leave_head(p).expand(-1, batch.item.shape[1]),
                  "click_state": h}
        if batch.negative is not None:
            sampled = batch.negative.clamp(max=self.n_items - 1)[..., None]
            logits["click_negative"] = self.click_head(h, sampled)[..., 0]
        return logits
