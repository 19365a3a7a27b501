"""Linear Thompson sampling (``algo=thompson``): act greedily on a parameter drawn from the posterior.

Same features ``z(s, i) = [1, x_i, x_i * u(s)]`` and ridge statistics as LinUCB
(:class:`recrl.algos.linucb.LinearFeatures`, :class:`recrl.algos.linucb.RidgePosterior`)::

    A = lam * I + sum z z^T,      b = sum r z,      theta_hat = A^-1 b

Each step every user ``s`` draws its own parameter and takes the top-``K`` items under it::

    theta_s ~ N(theta_hat, v^2 A^-1),      score(s, i) = theta_s . z(s, i)

All ``B`` draws come from the one Cholesky factor ``A = L L^T`` of the last update:
``theta_s = theta_hat + v L^-T eps_s`` with ``eps_s ~ N(0, I)`` (so ``Cov = v^2 L^-T L^-1 =
v^2 A^-1``), one triangular solve for the batch. Evaluation (``explore=False``) acts on the
posterior mean ``theta_hat``. ``v`` scales exploration: the paper's ``v = R sqrt(24 d ln(1/delta)
/ epsilon)`` is far too cautious in practice; values around 0.1-1 are usual for rewards in
``[0, 1]``.

Reference: Agrawal, Goyal. Thompson Sampling for Contextual Bandits with Linear Payoffs.
ICML 2013.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from recrl.algos.linucb import LinearBandit
from recrl.types import AlgoContext, Obs


class LinearThompson(LinearBandit):
    """Linear Thompson sampling with one posterior draw per user and step.

    Takes :class:`~recrl.algos.linucb.LinearBandit`'s arguments (``lam``, ``feature_dim``,
    ``item_features``, ...) besides ``v``.

    Example::

        algo = LinearThompson(ctx, v=0.5)               # item features from ctx.behavior
        slates = algo.act(obs, explore=True)            # [B, K], one theta draw per user
        stats = algo.update(transition)
    """

    name = "thompson"

    def __init__(self, ctx: AlgoContext, v: float = 0.5, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self.v = v

    def scores(self, obs: Obs, explore: bool = False) -> Tensor:
        """``theta_s . z(s, i)`` with a fresh posterior draw per user (``explore``) or the mean."""
        lifted = self.features.lift(self.features.user(obs))
        if not explore:
            return self.features.mean(self.posterior.theta, lifted)
        return self.features.mean(self.posterior.sample(obs.batch_size, self.v, self.generator), lifted)
