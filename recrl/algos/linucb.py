"""LinUCB (``algo=linucb``): a shared linear model of the reward with an upper-confidence bonus.

Features. Item ``i`` has a feature vector ``x_i`` (``D`` numbers); user ``s`` has the context
``u(s)``, the mean ``x`` of the items clicked in the observed history (zeros if none). The model
reads ``z(s, i) = [1, x_i, x_i * u(s)]`` (``*`` element-wise: how much the user's taste, along each
feature, agrees with the item; the leading 1 is an intercept, so the base rate of the reward is not
forced onto the item features), ``d = 1 + 2 D``, reward ``r ~ theta . z`` (one ``theta`` shared by
all users and items, no per-item "hybrid" part). By default ``x_i`` is the fitted behavior model's
click-head item vector (``ctx.behavior.click_head.vectors()``, or ``item_vectors()`` for DeepFM),
with the head's per-item bias appended where it has one, so the behavior model's click logit
``(W h) . e_i + b_i`` is linear in ``x_i``. The raw vectors are centered, projected on their top
``feature_dim`` principal components when wider, and scaled to a mean norm of 1
(``standardize``), which keeps ``lam`` and ``alpha`` meaningful across behavior models. An
explicit ``item_features`` tensor ``[n_items, D]`` (e.g. in tests) replaces the behavior's.

Ridge regression on every shown ``(s, i)`` with its per-slot reward ``r`` (see
:func:`recrl.algos.epsilon_greedy.slot_rewards`), updated after each environment step with that
step's whole batch::

    A = lam * I + sum z z^T,      b = sum r z,      theta = A^-1 b

(``A`` is factorised ``A = L L^T`` once per update, ``A^-1`` follows from the factor).
Acting, for all users and items at once::

    score(s, i) = theta . z(s, i) + alpha * sqrt(z(s, i)^T A^-1 z(s, i))

and the slate is the top-``K``. Evaluation (``explore=False``) drops the bonus. Because
``z(s, i) = P(s) [1, x_i]`` with a small ``d x (D + 1)`` matrix ``P(s)``, both terms over the whole
catalogue are one matrix product each: ``(theta^T P(s)) [1, x_i]`` and, with
``Q(s) = P(s)^T A^-1 P(s)``, ``vec(Q(s)) . vec([1, x_i] [1, x_i]^T)`` against a precomputed
``[n_items, (D + 1)(D + 2) / 2]`` table (no Python loop over users or items, no ``[B, n_items, d]``
tensor).

Reference: Li, Chu, Langford, Schapire. A Contextual-Bandit Approach to Personalized News Article
Recommendation. WWW 2010 (Algorithm 1, disjoint LinUCB; here one shared ``theta``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.algos.epsilon_greedy import check_attribution, slot_rewards
from recrl.algos.nets import mask_shown
from recrl.algos.probs import ActsGreedily
from recrl.types import AlgoContext, Obs, RecrlError, Transition


def behavior_item_features(ctx: AlgoContext, algo: str) -> Tensor:
    """Item vectors ``[n_items, D]`` of the behavior model's click head (plus its item bias)."""
    head = getattr(ctx.behavior, "click_head", None)
    if hasattr(head, "vectors"):
        vectors = head.vectors()
    elif hasattr(head, "item_vectors"):
        vectors = head.item_vectors()
    else:
        raise RecrlError(f"algo={algo} needs item features: a behavior model whose click head has item "
                         "vectors (gru, sasrec, mf, deepfm); this run has none")
    bias = getattr(head, "bias", None)
    if isinstance(bias, Tensor) and bias.shape == (ctx.n_items,):
        vectors = torch.cat([vectors, bias[:, None]], 1)
    return vectors.detach()


class LinearFeatures:
    """The features ``z(s, i) = [1, x_i, x_i * u(s)]`` of the linear bandits, scored in bulk.

    ``intercept`` / ``user_context`` drop the leading 1 / the ``x_i * u(s)`` block. See the module
    docstring for how the item features are prepared (``standardize``, ``dim``).

    Example::

        feats = LinearFeatures(torch.randn(100, 8), dim=4)
        P = feats.lift(feats.user(obs))              # [B, d, 5]
        means = feats.mean(theta, P)                 # [B, 100]
        widths = feats.quad(A_inv, P).sqrt()         # [B, 100]
    """

    def __init__(self, item_features: Tensor, dim: int = 16, intercept: bool = True,
                 user_context: bool = True, standardize: bool = True,
                 device: torch.device | str = "cpu") -> None:
        x = item_features.detach().to(device=device, dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] < 1:
            raise RecrlError(f"linear bandit: item features must be [n_items, D >= 1], got {tuple(x.shape)}")
        if standardize:
            x = x - x.mean(0)
        if x.shape[1] > dim:  # principal components (of the centered features when standardizing)
            x = x @ torch.linalg.svd(x, full_matrices=False).Vh[:dim].T
        if standardize:
            x = x / x.norm(dim=1).mean().clamp(min=1e-12)
        self.intercept, self.user_context = intercept, user_context
        self.set_items(x)

    def set_items(self, x: Tensor) -> None:
        """Use the prepared item features ``x`` ``[n_items, D]`` (and rebuild the lookup tables)."""
        self.x = x
        self.n_items, dim = x.shape
        self.d = int(self.intercept) + dim + dim * int(self.user_context)
        self.x1 = F.pad(x, (1, 0), value=1.0)  # [n_items, D + 1]: [1, x_i]
        rows, cols = torch.triu_indices(dim + 1, dim + 1, device=x.device)
        self.tri = (rows, cols)
        # vec([1, x][1, x]^T) on the upper triangle, off-diagonal terms counted twice
        self.outer = self.x1[:, rows] * self.x1[:, cols] * (2.0 - (rows == cols).float())

    def user(self, obs: Obs) -> Tensor:
        """User contexts ``u(s)`` ``[B, D]``: mean features of the clicked history items."""
        items = obs.items.flatten(1)
        clicked = obs.clicks.flatten(1).to(self.x.dtype) * (items < self.n_items)
        vectors = self.x[items.clamp(max=self.n_items - 1)]
        return (vectors * clicked[..., None]).sum(1) / clicked.sum(1, keepdim=True).clamp(min=1.0)

    def lift(self, u: Tensor) -> Tensor:
        """``P(s)`` ``[B, d, D + 1]`` with ``z(s, i) = P(s) [1, x_i]``."""
        b, dim = u.shape
        eye = torch.eye(dim + 1, device=u.device, dtype=u.dtype)
        blocks = [eye[1:].expand(b, dim, dim + 1)]
        if self.intercept:
            blocks.insert(0, eye[:1].expand(b, 1, dim + 1))
        if self.user_context:
            blocks.append(F.pad(torch.diag_embed(u), (1, 0)))
        return torch.cat(blocks, 1)

    def z(self, u: Tensor, items: Tensor) -> Tensor:
        """Features ``[B, K, d]`` of the users' ``items`` ``[B, K]``."""
        return torch.einsum("bde,bke->bkd", self.lift(u), self.x1[items])

    def mean(self, theta: Tensor, lifted: Tensor) -> Tensor:
        """``theta . z(s, i)`` ``[B, n_items]`` for one ``theta`` ``[d]`` or one per user ``[B, d]``."""
        theta = theta.to(lifted.dtype).expand(lifted.shape[0], -1)
        return torch.einsum("bd,bde->be", theta, lifted) @ self.x1.T

    def quad(self, matrix: Tensor, lifted: Tensor) -> Tensor:
        """``z(s, i)^T M z(s, i)`` ``[B, n_items]`` for a symmetric ``M`` ``[d, d]``."""
        q = lifted.transpose(1, 2) @ matrix.to(lifted.dtype) @ lifted  # [B, D + 1, D + 1]
        return q[:, self.tri[0], self.tri[1]] @ self.outer.T


class RidgePosterior:
    """``A = lam I + sum z z^T``, ``b = sum r z`` and what follows: ``L`` (``A = L L^T``), ``A^-1``,
    ``theta = A^-1 b``. Kept in float64 (float32 on MPS, which has no float64).

    Example::

        post = RidgePosterior(d=3, lam=1.0, device="cpu")
        post.add(z, reward, weight)          # z [M, d], reward [M], weight [M]
        theta, A_inv = post.theta, post.A_inv
    """

    def __init__(self, d: int, lam: float, device: torch.device | str) -> None:
        if lam <= 0:
            raise RecrlError(f"linear bandit: lam={lam} must be > 0")
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.A = lam * torch.eye(d, device=device, dtype=dtype)
        self.b = torch.zeros(d, device=device, dtype=dtype)
        self.refresh()

    def add(self, z: Tensor, reward: Tensor, weight: Tensor) -> None:
        """Add rows ``z`` ``[M, d]`` with rewards ``[M]`` and weights ``[M]`` (0 drops a row)."""
        z, reward, weight = (t.to(self.A.dtype) for t in (z, reward, weight))
        zw = z * weight[:, None]
        self.A += zw.T @ z
        self.b += zw.T @ reward
        self.refresh()

    def refresh(self) -> None:
        """Recompute the Cholesky factor, ``A^-1`` and ``theta`` from ``A`` and ``b``."""
        self.L = torch.linalg.cholesky_ex(self.A).L  # A >= lam I is positive definite; _ex: no sync
        self.A_inv = torch.cholesky_inverse(self.L)
        self.theta = torch.cholesky_solve(self.b[:, None], self.L)[:, 0]

    def sample(self, n: int, scale: float, generator: torch.Generator) -> Tensor:
        """``n`` draws ``[n, d]`` of ``N(theta, scale^2 A^-1)``: ``theta + scale L^-T eps``."""
        eps = torch.randn(self.A.shape[0], n, device=self.A.device, dtype=self.A.dtype, generator=generator)
        return self.theta + scale * torch.linalg.solve_triangular(self.L.T, eps, upper=True).T

    def state_dict(self) -> dict[str, Tensor]:
        """``A`` and ``b`` (the rest follows from them)."""
        return {"A": self.A.clone(), "b": self.b.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict`."""
        self.A.copy_(state["A"])
        self.b.copy_(state["b"])
        self.refresh()


class LinearBandit(ActsGreedily, ABC):
    """What LinUCB and linear Thompson sampling share: features, the ridge posterior, the online
    update and checkpointing. Subclasses define :meth:`scores`.

    Args:
        lam: ridge penalty (``A`` starts at ``lam * I``).
        feature_dim: item features wider than this are projected on their top principal components.
        intercept, user_context: keep the leading 1 / the ``x_i * u(s)`` block of ``z``.
        standardize: center the item features and scale them to a mean norm of 1.
        attribute: how a slate reward is shared among its slots (``clicks`` or ``equal``).
        skip_shown: never recommend items already in the observed history.
        item_features: ``[n_items, D]`` features to use instead of the behavior model's.

    Example::

        algo = LinUCB(ctx, lam=1.0, feature_dim=8)   # a subclass; this one is abstract
    """

    mode = "online"
    name = "linear"

    def __init__(self, ctx: AlgoContext, lam: float = 1.0, feature_dim: int = 16, intercept: bool = True,
                 user_context: bool = True, standardize: bool = True, attribute: str = "clicks",
                 skip_shown: bool = False, item_features: Tensor | None = None) -> None:
        check_attribution(attribute, self.name)
        self.ctx, self.attribute, self.skip_shown = ctx, attribute, skip_shown
        raw = item_features if item_features is not None else behavior_item_features(ctx, self.name)
        if raw.shape[0] != ctx.n_items:
            raise RecrlError(f"algo={self.name}: item features have {raw.shape[0]} rows for "
                             f"{ctx.n_items} items")
        self.features = LinearFeatures(raw, feature_dim, intercept, user_context, standardize, ctx.device)
        self.posterior = RidgePosterior(self.features.d, lam, ctx.device)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0

    @abstractmethod
    def scores(self, obs: Obs, explore: bool = False) -> Tensor:
        """Item scores ``[B, n_items]`` the slate is the top-``K`` of (LinUCB and LinearThompson
        define it); ``explore=False``: the greedy ranking."""

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Top-``K`` items by :meth:`scores` ``[B, K]``."""
        scores = self.scores(obs, explore)
        if self.skip_shown:
            scores = mask_shown(scores, obs)
        return scores.topk(self.ctx.slate_size, dim=1).indices

    @torch.no_grad()
    def update(self, batch: Transition) -> dict[str, Any]:
        """Add the step's shown items (features from the history before the step) to ``A``, ``b``."""
        z = self.features.z(self.features.user(batch.obs), batch.action)  # [B, K, d]
        reward = slot_rewards(batch, self.attribute)
        valid = batch.valid[:, None].expand_as(reward)
        width = torch.einsum("bkd,de,bke->bk", z, self.posterior.A_inv.to(z.dtype), z).clamp(min=0).sqrt()
        self.posterior.add(z.flatten(0, 1), reward.flatten(), valid.flatten())
        self.updates += 1
        n = valid.sum().clamp(min=1.0)
        return {"train/reward": (batch.reward * batch.valid).sum() / batch.valid.sum().clamp(min=1.0),
                "train/width": (width * valid).sum() / n}

    def state_dict(self) -> dict[str, Any]:
        """``A``, ``b``, the prepared item features, the update counter and the generator state."""
        return {**self.posterior.state_dict(), "item_features": self.features.x.clone(),
                "updates": self.updates, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.features.set_items(state["item_features"].to(self.features.x.device))
        self.posterior.load_state_dict(state)
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])


class LinUCB(LinearBandit):
    """LinUCB with a shared linear model over ``[1, x_i, x_i * u(s)]`` (see the module docstring).

    Example::

        algo = LinUCB(ctx, alpha=1.0, lam=1.0)           # item features from ctx.behavior
        algo = LinUCB(ctx, item_features=torch.randn(ctx.n_items, 4))
        slates = algo.act(obs, explore=True)             # [B, K]
        stats = algo.update(transition)
    """

    name = "linucb"

    def __init__(self, ctx: AlgoContext, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self.alpha = alpha

    def scores(self, obs: Obs, explore: bool = False) -> Tensor:
        """``theta . z`` plus, with ``explore``, ``alpha * sqrt(z^T A^-1 z)``, ``[B, n_items]``."""
        lifted = self.features.lift(self.features.user(obs))
        mean = self.features.mean(self.posterior.theta, lifted)
        if not explore:
            return mean
        return mean + self.alpha * self.features.quad(self.posterior.A_inv, lifted).clamp(min=0).sqrt()
