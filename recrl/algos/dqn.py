"""The DQN family over a catalogue (``algo=dqn``, ``algo=c51``).

Q-values of all items are one product of the encoded history ``s`` with an item-embedding table,
``Q(s, i) = s . E_i + b_i``, so acting scales to large catalogues. For slates of size ``K`` the
slate is the top-``K`` items and ``Q(s, slate)`` is the mean of its items' Q-values (a simple
decomposition; SlateQ refines it). Each option below is independent and off by default except
``double``; with every option at its default the algorithm is plain double DQN.

Loss (Huber), with ``a*`` the top-``K`` items at ``s'`` (``n = n_step``, ``w`` the importance
weight of the row under prioritized replay, 1 otherwise)::

    a* = top_K Q(s', .)                          double=True  (online net picks, target evaluates)
    a* = top_K Q_target(s', .)                   double=False (vanilla: max of the target net)
    y  = R + gamma^n * (1 - done) * mean_k Q_target(s', a*_k)
    L  = mean_rows w * huber(mean_k Q(s, a_k), y)

``dueling``: the Q-head splits into a state value and per-item advantages, the advantage still
a state x item-embedding product::

    A(s, i) = s . E_i + b_i,   V(s) = v . s + c,   Q(s, i) = V(s) + A(s, i) - mean_i A(s, i)

``n_step > 1``: transitions are ``n``-step (built by :class:`recrl.buffer.NStepWindow` in
DQN's own replay, :meth:`DQN.make_replay`): ``R = sum_{k<m} gamma^k r_{t+k}``, ``s'`` the
observation ``m`` steps later, where ``m = n`` or the step at which the episode ended (then
``done = 1`` and nothing is bootstrapped).

``prioritized``: DQN's replay samples row ``i`` with probability ``P(i) = p_i^alpha / sum_j p_j^alpha``,
``p_i = |delta_i| + eps`` (new rows get the largest ``p`` seen), weighs its loss by
``w_i = (N P(i))^-beta / max_j (N P(j))^-beta`` (``beta`` annealed linearly from
``priority_beta`` to 1 over the run) and each update hands back ``p_i`` from the rows' TD
errors (:attr:`DQN.td_error`; see :class:`recrl.buffer.Replay`).

``atoms > 0`` (C51): each item has a categorical return distribution on the fixed support
``z_j = v_min + j * (v_max - v_min) / (atoms - 1)``, with logits built like the Q-values: a linear
layer maps ``s`` to ``atoms x dim`` and ``logits(s, i)[j] = (W s)_j . E_i + b_{i,j}`` (with
``dueling``, ``V(s)[j] + A(s, i)[j] - mean_i A(s, i)[j]``). ``Q(s, i) = sum_j z_j p_j(s, i)`` is
used for acting and for picking ``a*`` (:meth:`CategoricalScorer.expected`: ``atoms`` times the
arithmetic of scalar Q-values, done a few users at a time so the ``[users, atoms, items]``
logits stay in cache). The slate's next-state distribution is the mixture of
its items' distributions (its mean is the slate value ``mean_k Q(s', a*_k)`` of the
decomposition above), projected onto the support::

    p'_j = mean_k p_target,j(s', a*_k)
    m    = Phi(R + gamma^n (1 - done) z, p')     Phi: split each atom's mass between the two
                                                 nearest support points (clipped to [v_min, v_max])
    L    = mean_rows w * mean_k [ -sum_j m_j log p_j(s, a_k) ]

so every item of the shown slate is trained towards the same target distribution; the
prioritized-replay error of a row is its KL divergence ``mean_k KL(m || p(s, a_k))``.

``average > 0``: acting without exploration uses an exponential moving average of the online
network's weights (:class:`recrl.algos.nets.WeightAverage`, updated after every gradient step);
the greedy policy of the latest weights flips between near-tied items from update to update.

``demonstrations > 0`` (DQfD): before training, that many users' sessions of the model-based
planner (:class:`recrl.algos.planner.SurvivalPlanner`, the oracle's survival-aware rule on the
fitted behavior model) are recorded in the training environment, and every update adds
``demo_weight`` times the large-margin loss on ``demo_batch`` of their steps (``a_E`` the
planner's slate, ``l = demo_margin`` on every other item, 0 on ``a_E``)::

    J_E = mean_k top_K [Q(s, a) + l(a_E, a)] - mean_k Q(s, a_E,k)

so the greedy policy starts from, and is held near, the planner's choices while the TD loss
learns their values; with C51 ``Q`` is the expected return of the distribution.

References:
    Hester et al. Deep Q-learning from Demonstrations. AAAI 2018 (the large-margin loss).
    van Hasselt, Guez, Silver. Deep Reinforcement Learning with Double Q-learning. AAAI 2016.
    Wang, Schaul, Hessel, van Hasselt, Lanctot, de Freitas. Dueling Network Architectures for
    Deep Reinforcement Learning. ICML 2016.
    Sutton. Learning to predict by the methods of temporal differences. Machine Learning 3, 1988;
    Hessel et al. Rainbow: Combining Improvements in Deep Reinforcement Learning. AAAI 2018
    (n-step returns).
    Schaul, Quan, Antonoglou, Silver. Prioritized Experience Replay. ICLR 2016.
    Bellemare, Dabney, Munos. A Distributional Perspective on Reinforcement Learning. ICML 2017.
    Polyak, Juditsky. Acceleration of Stochastic Approximation by Averaging. SIAM J. Control
    Optim. 30(4), 1992; Anschel, Baram, Shimkin. Averaged-DQN. ICML 2017.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.algos.backbone import Backbone, PretrainSettings, copy_frozen, initialise
from recrl.algos.demonstrations import PlannerDemonstrations, check_margin, margin_loss
from recrl.algos.learner_state import LearnerState
from recrl.algos.nets import (
    ItemScorer,
    ScoreBlock,
    TransformerHistoryEncoder,
    WeightAverage,
    adam,
    attach_prior,
    choose_slates,
    epsilon_explore,
    fused_greedy,
    gradient_step,
    id_plus_prior,
    linear_decay,
    mask_shown,
    skips_shown,
    top_k,
    top_k_by_chunks,
    update_target,
)
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.algos.supervised import Supervised
from recrl.buffer import Replay, ReplaySample
from recrl.types import AlgoContext, Env, Obs, RecrlError, Transition, cat_obs


class DuelingScorer(ItemScorer):
    """Dueling Q-values ``V(s) + A(s, i) - mean_i A(s, i)`` with ``A`` the item-product scores.

    Example::

        q = DuelingScorer(HistoryEncoder(...), n_items=100, dim=32)
        values = q(obs)                      # [B, 100]
    """

    def __init__(self, encoder: nn.Module, n_items: int, dim: int,
                 item_prior: Tensor | None = None) -> None:
        super().__init__(encoder, n_items, dim, item_prior)
        self.value = nn.Linear(dim, 1)

    def factors(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """``(users, items)`` whose product is the Q-values: ``[s | 1 | shift] . [E_i | b_i | 1]``.
        ``mean_i A(s, i) = s . mean_i E_i + mean_i b_i`` is linear in the item vectors, so the
        centring ``shift = V(s) - mean_i A(s, i)`` is one more column of the product."""
        users, items = super().factors(state)  # [s | 1], [E_i | b_i]
        shift = self.value(state) - users @ items.mean(0, keepdim=True).T
        return torch.cat([users, shift], 1), torch.cat([items, items.new_ones(items.shape[0], 1)], 1)


class CategoricalScorer(nn.Module):
    """Logits ``[B, n_items, atoms]`` of every item's return distribution (C51).

    ``logits(s, i)[j] = (W s)_j . E_i + b_{i,j}``: one linear layer maps the state to ``atoms``
    vectors of size ``dim``, each multiplied with the item table. With ``dueling`` a value head
    adds ``V(s)[j]`` and the mean advantage over items is subtracted (computed from the mean item
    embedding, so scoring only a few items stays cheap).

    Example::

        net = CategoricalScorer(HistoryEncoder(...), n_items=100, dim=32, atoms=51)
        logits = net(obs)                    # [B, 100, 51]
        taken = net.logits(net.encoder(obs), slates)  # [B, K, 51]
    """

    def __init__(self, encoder: nn.Module, n_items: int, dim: int, atoms: int,
                 dueling: bool = False, item_prior: Tensor | None = None) -> None:
        super().__init__()
        self.encoder, self.atoms, self.dim = encoder, atoms, dim
        self.proj = nn.Linear(dim, atoms * dim)
        self.tied = isinstance(encoder, TransformerHistoryEncoder)
        if self.tied:  # the encoder's item table scores too
            self.item_out, self.prior = None, None
        else:
            self.item_out = nn.Embedding(n_items, dim)
            self.prior = attach_prior(self.item_out, item_prior)
        self.bias = nn.Parameter(torch.zeros(n_items, atoms))
        self.value = nn.Linear(dim, atoms) if dueling else None

    def forward(self, obs: Obs) -> Tensor:
        """Logits ``[B, n_items, atoms]``."""
        return self.logits(self.encoder(obs))

    def item_table(self) -> Tensor:
        """Item vectors ``[n_items, dim]`` (id embeddings plus the mapped prior; a transformer
        encoder's own item table)."""
        return self.encoder.item_table() if self.tied else id_plus_prior(self.item_out, self.prior)

    def logits(self, state: Tensor, items: Tensor | None = None) -> Tensor:
        """Logits of all items ``[B, n_items, atoms]``, or of ``items`` ``[B, K]``: ``[B, K, atoms]``."""
        proj, table, shift = self._parts(state)
        if items is None:
            out = torch.einsum("bjd,nd->bnj", proj, table) + self.bias
        else:
            out = torch.einsum("bjd,bkd->bkj", proj, table[items]) + self.bias[items]
        return out if shift is None else shift[:, None, :] + out

    @torch.no_grad()
    def expected(self, state: Tensor, support: Tensor, rows: int = 32) -> Tensor:
        """Expected returns ``sum_j z_j p_j(s, i)`` of every item ``[B, n_items]`` (no gradient).

        Computed ``rows`` users at a time in an ``[users, atoms, items]`` layout, so that the
        logits, their exponentials and the sums stay in cache: the same numbers as
        ``logits(state).softmax(-1) @ support``, about twice as fast on a CPU (on a GPU, all
        users at once)."""
        proj, table, shift = self._parts(state)
        if state.is_cuda:
            rows = state.shape[0]
        if shift is not None:  # fold the per-atom shift into the product: [W s | shift] . [E_i | 1]
            proj = torch.cat([proj, shift[:, :, None]], 2)
            table = torch.cat([table, table.new_ones(table.shape[0], 1)], 1)
        table_t, bias_t = table.T, self.bias.T
        out = []
        for start in range(0, state.shape[0], rows):
            chunk = proj[start:start + rows]
            n = chunk.shape[0]
            logits = torch.baddbmm(bias_t.expand(n, -1, -1), chunk, table_t.expand(n, -1, -1))  # [r, Z, N]
            weights = logits.sub_(logits.amax(1, keepdim=True)).exp_()
            out.append((support @ weights).div_(weights.sum(1)))
        return torch.cat(out)

    def _parts(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``W s`` as ``[B, atoms, dim]``, the item table and the dueling shift ``[B, atoms]``
        (``V(s) - mean_i A(s, i)``; ``None`` without ``dueling``)."""
        proj = self.proj(state).view(state.shape[0], self.atoms, self.dim)
        table = self.item_table()
        if self.value is None:
            return proj, table, None
        # mean_i A(s, i) = (W s) . mean_i E_i + mean_i b_i: linear in the item embedding
        mean_adv = proj @ table.mean(0) + self.bias.mean(0)
        return proj, table, self.value(state) - mean_adv


def categorical_projection(probs: Tensor, values: Tensor, v_min: float, v_max: float) -> Tensor:
    """Project masses ``probs`` ``[B, Z]`` at ``values`` ``[B, Z]`` onto the C51 support.

    Each value is clipped to ``[v_min, v_max]`` and its mass split between the two nearest of the
    ``Z`` evenly spaced support points, in proportion to closeness (all of it when it falls on one).

    Example::

        # support 0, 1, 2: mass 1 at 0.25 -> 0.75 on 0 and 0.25 on 1
        categorical_projection(torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.25, 5, 5]]), 0.0, 2.0)
        # -> [[0.75, 0.25, 0.0]]
    """
    atoms = probs.shape[-1]
    pos = (values.clamp(v_min, v_max) - v_min) / ((v_max - v_min) / (atoms - 1))  # [B, Z] in 0..Z-1
    grid = torch.arange(atoms, device=probs.device, dtype=probs.dtype)
    share = (1.0 - (pos[:, None, :] - grid[None, :, None]).abs()).clamp(min=0.0)  # [B, Z_out, Z_in]
    return (share * probs[:, None, :]).sum(-1)


class DQN(LearnerState, ActsGreedily):
    """DQN with a target network, replay on device and a linear epsilon schedule.

    Double DQN by default; options add dueling heads, n-step returns, prioritized replay
    (both in the replay it builds, :meth:`make_replay`) and C51 return distributions. See the
    module docstring for the losses.

    Example::

        algo = DQN(ctx, lr=1e-3, gamma=0.9, n_step=3, prioritized=True)
        replay = algo.make_replay(100_000, env)
        slates = algo.act(obs, explore=True)
        replay.add(transition)
        stats = algo.update(replay.sample(256, generator, progress=0.5))  # reprioritizes the rows
        c51 = DQN(ctx, atoms=51, v_min=0.0, v_max=20.0, dueling=True, n_step=3)
        stats = c51.update(batch, weights=importance_weights)   # a hand-made batch
    """

    networks = ("q", "q_target")
    counters = ("acted_steps", "updates")

    mode = "off_policy"

    @staticmethod
    def check_keys(keys: Mapping[str, Any]) -> None:
        """Refuse, in one line, a C51 support that cannot be built: ``atoms`` 0 (off) or at
        least 2 and, with atoms, ``v_max`` above ``v_min``. The constructor applies it, and the
        config pre-check (:func:`recrl.config.check_node`) before any data is read."""
        atoms, v_min, v_max = keys["atoms"], keys["v_min"], keys["v_max"]
        if atoms == 1 or atoms < 0:
            raise RecrlError(f"algo.atoms={atoms} must be 0 (off) or >= 2")
        if atoms and not v_max > v_min:
            raise RecrlError(f"algo.v_max={v_max} must exceed algo.v_min={v_min}")

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.9, epsilon_start: float = 1.0, epsilon_end: float = 0.05,
                 epsilon_decay_steps: int = 2000, target_update: int = 200, tau: float = 1.0,
                 grad_clip: float = 10.0, double: bool = True, dueling: bool = False, n_step: int = 1,
                 prioritized: bool = False, priority_alpha: float = 0.6, priority_beta: float = 0.4,
                 priority_eps: float = 1e-3, atoms: int = 0, v_min: float = 0.0,
                 v_max: float = 10.0, item_init: str = "random", summary: bool = False,
                 skip_shown: bool = False, average: float = 0.0, demonstrations: int | str = 0,
                 demo_weight: float = 1.0, demo_margin: float = 0.8, demo_batch: int = 128,
                 demo_decay_steps: int = 0, demo_caution: float = 2.0, encoder: str = "mlp",
                 layers: int = 2, heads: int = 2, item_ids: bool = True, init_from: str | None = None,
                 pretrain: PretrainSettings | None = None) -> None:
        if n_step < 1:
            raise RecrlError(f"algo.n_step={n_step} must be >= 1")
        self.check_keys({"atoms": atoms, "v_min": v_min, "v_max": v_max})
        self.ctx, self.gamma = ctx, gamma
        self.epsilon_start, self.epsilon_end = epsilon_start, epsilon_end
        self.epsilon_decay_steps, self.target_update, self.tau = epsilon_decay_steps, target_update, tau
        self.grad_clip = grad_clip
        self.double, self.dueling, self.n_step = double, dueling, n_step
        self.prioritized, self.priority_alpha = prioritized, priority_alpha
        self.priority_beta, self.priority_eps = priority_beta, priority_eps
        self.atoms, self.v_min, self.v_max = atoms, v_min, v_max
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.demos = PlannerDemonstrations(ctx, demonstrations, demo_weight, demo_batch, demo_decay_steps,
                                           demo_caution, self.skip_shown)
        self.demo_margin = check_margin(demo_margin)
        backbone = Backbone(encoder, dim, hidden, layers, heads, item_init, item_ids, summary)
        prior = backbone.prior(ctx)
        history = backbone.encoder_for(ctx, prior)
        if atoms:
            self.q: nn.Module = CategoricalScorer(history, ctx.n_items, dim, atoms, dueling, prior)
        elif dueling:
            self.q = DuelingScorer(history, ctx.n_items, dim, prior)
        else:
            self.q = ItemScorer(history, ctx.n_items, dim, prior)
        self.q = self.q.to(ctx.device)
        self.init_from = initialise(self.q, ctx, init_from, backbone, pretrain)
        # the starting network, frozen, for the report's supervised row (C51's has no single score)
        self.initial = copy_frozen(self.q) if self.init_from is not None and not atoms else None
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.average = WeightAverage(self.q, average)
        self.support = torch.linspace(v_min, v_max, atoms, device=ctx.device) if atoms else None
        self.optimizer = adam([p for p in self.q.parameters() if p.requires_grad], lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.acted_steps, self.updates = 0, 0
        self.td_error: Tensor | None = None  # [B] |TD error| of the last update (C51: KL), per row
        self.score_block = ScoreBlock()  # scratch memory for acting's catalogue scores

    def prepare(self, env: Any, seed: int) -> None:
        """Before training (called by the training loop with its environment): with
        ``demonstrations > 0``, record that many users' sessions of :class:`SurvivalPlanner`
        in ``env`` as demonstrations for the margin loss (see the module docstring)."""
        self.demos.record(env, seed)

    def pretrained_policy(self) -> tuple[str, Any] | None:
        """``(row name, policy)`` of the frozen starting network (``algo.init_from``; its greedy
        ranking is the pretrained model's: a dueling value shifts every item alike)."""
        if self.initial is None:
            return None
        return Supervised.starting_row(self.ctx, self.init_from, self.initial, self.skip_shown)

    def epsilon(self) -> float:
        """Exploration rate now: linear from ``epsilon_start`` to ``epsilon_end``."""
        return linear_decay(self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps, self.acted_steps)

    def q_values(self, obs: Obs, target: bool = False, averaged: bool = False) -> Tensor:
        """Q-values ``[B, n_items]`` of the online, target (``target``) or averaged (``averaged``,
        see ``average``) network; C51: expected returns."""
        net = self.q
        if target:
            net = self.q_target
        elif averaged:
            net = self.average.acting()
        if not self.atoms:
            return net(obs)
        return net.expected(net.encoder(obs), self.support)

    def allowed(self, q: Tensor, obs: Obs, in_place: bool = False) -> Tensor:
        """``q`` with the items the policy may not pick set to ``-inf`` (with ``skip_shown``: those
        in the observed history), for acting and for the target's choice of next items alike;
        ``in_place``: ``q`` itself is masked where no gradient flows through it."""
        return mask_shown(q, obs, in_place) if self.skip_shown else q

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """What the greedy policy ranks by: the averaged network's Q-values ``[B, n_items]``
        (C51: expected returns), items it may not pick at ``-inf``."""
        return self.allowed(self.q_values(obs, averaged=True), obs, in_place=True)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        """Top-``K`` items by Q; with ``explore``, a random slate with probability epsilon.
        Without ``explore`` (evaluation, deployment) the Q-values are the averaged network's."""
        slates = self.greedy(obs, self.q if explore else self.average.acting())
        if not explore:
            return slates
        eps = self.epsilon()
        self.acted_steps += 1
        return epsilon_explore(slates, self.ctx.n_items, eps, self.generator)

    def greedy(self, obs: Obs, net: nn.Module) -> Tensor:
        """Top-``K`` allowed items ``[B, K]`` by ``net``'s Q-values (C51: expected returns): the
        users are encoded together, then scored, masked and searched a block at a time
        (:func:`choose_slates`, C51 :func:`top_k_by_chunks`; from a large catalogue on a CPU
        inside the product)."""
        state = net.encoder(obs)
        if not self.atoms:
            return choose_slates(net, state, obs, self.ctx.slate_size, self.skip_shown, self.score_block)
        def scores_of(rows: slice, out: Tensor | None) -> Tensor:
            return self.allowed(net.expected(state[rows], self.support), obs.index(rows), in_place=True)

        return top_k_by_chunks(scores_of, obs.batch_size, self.ctx.slate_size, self.ctx.n_items, state.device)

    def make_replay(self, capacity: int, env: Env) -> Replay:
        """DQN's replay for ``env``: ``n_step`` transitions discounted by ``gamma``, prioritized
        with ``priority_alpha``/``priority_beta``/``priority_eps`` when ``prioritized``."""
        return Replay.for_env(capacity, env, n_step=self.n_step, gamma=self.gamma,
                              prioritized=self.prioritized, alpha=self.priority_alpha,
                              beta=self.priority_beta, eps=self.priority_eps)

    def update(self, batch: Transition | ReplaySample, weights: Tensor | None = None) -> dict[str, float]:
        """One gradient step on a replay batch; ``weights`` ``[B]``: importance weights (PER; a
        :class:`~recrl.buffer.ReplaySample` brings its own). The rows' errors go back to the
        sample's replay as their new priorities, and stay in :attr:`td_error` (0 on invalid rows).
        """
        sample = batch if isinstance(batch, ReplaySample) else ReplaySample(batch, weights)
        batch, weights = sample.transitions, sample.weights
        weight = self.demos.weight(self.updates)
        demo = self.demos.sample(self.generator) if weight > 0 else None
        # one encoder pass for the batch and the demonstrations together
        obs = batch.obs if demo is None else cat_obs([batch.obs, demo[0]])
        state = self.q.encoder(obs)
        rows = batch.reward.shape[0]
        rivals = None
        if self.atoms:
            per_row, q_taken = self._categorical_loss(batch, state[:rows])
            demo_q = None if demo is None else self.q.logits(state[rows:]).softmax(-1) @ self.support
        else:
            # the TD loss needs only the taken items' Q; the margin loss every item's, or where
            # the native search applies only the best rivals'
            per_row, q_taken = self._td_loss(batch, self.q.score_items(state[:rows], batch.action))
            rivals = None if demo is None else self._margin_rivals(demo[0], demo[1], state[rows:])
            demo_q = None if demo is None or rivals is not None else self.q.score(state[rows:])
        if weights is not None:
            per_row = per_row * weights
        loss = (per_row * batch.valid).sum()
        loss = loss / batch.valid.sum().clamp(min=1.0)
        stats = {}
        if demo is not None:
            demo_loss = self._demo_loss(demo[0], demo[1], demo_q) if rivals is None \
                else self._fused_margin_loss(demo[1], state[rows:], rivals)
            loss = loss + weight * demo_loss
            stats["train/demo_loss"] = demo_loss.detach()
        gradient_step(self.optimizer, loss, self.q.parameters(), self.grad_clip)
        self.updates += 1
        update_target(self.q_target, self.q, self.updates, self.target_update, self.tau)
        self.average.update()
        if self.td_error is not None:
            sample.reprioritize(self.td_error)
        return {"train/loss": loss.detach(), "train/q": q_taken.detach().mean(),
                "train/epsilon": self.epsilon(), **stats}

    def _demo_loss(self, obs: Obs, shown: Tensor, q: Tensor) -> Tensor:
        """DQfD's large-margin loss (:func:`~recrl.algos.demonstrations.margin_loss`) on
        demonstrations ``obs`` with Q-values ``q`` ``[B, n_items]`` (C51: the expected returns,
        differentiable) toward the planner's slates ``shown``; the rivals are the items the policy
        may pick."""
        return margin_loss(q, self.allowed(q, obs), shown, self.demo_margin)

    def _margin_rivals(self, obs: Obs, shown: Tensor, state: Tensor) -> Tensor | None:
        """The demonstrations' best ``K`` rivals ``[B, K]`` for :meth:`_fused_margin_loss`: the
        top ``K`` by ``Q`` of the items the policy may pick that were not demonstrated (all of
        them have the margin, so they lead ``Q + margin`` among the non-demonstrated), searched
        inside the product (:func:`fused_greedy`); ``None`` where the search does not apply."""
        with torch.no_grad():
            return fused_greedy(self.q, state, obs, shown.shape[1], self.skip_shown, also_excluded=shown)

    def _fused_margin_loss(self, shown: Tensor, state: Tensor, rivals: Tensor) -> Tensor:
        """:func:`~recrl.algos.demonstrations.margin_loss` from the ``2K`` items it reads: the
        best ``K`` rivals (:meth:`_margin_rivals`) and the ``K`` demonstrated items hold the top
        ``K`` of ``Q + margin * [not demonstrated]``, so only they are valued, with their gradient
        (:meth:`~recrl.algos.nets.ItemScorer.score_items`), in place of every item's. The same
        loss up to float32 rounding."""
        k = shown.shape[1]
        values = self.q.score_items(state, torch.cat([rivals, shown], 1))  # [B, 2K]
        bonus = torch.zeros_like(values)
        bonus[:, :k] = self.demo_margin  # the rivals have the margin, the demonstrated items not
        rival = (values + bonus).topk(k, dim=1).values.mean(1)
        return (rival - values[:, k:].mean(1)).mean()

    def _td_loss(self, batch: Transition, q_slate: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row Huber loss ``[B]`` and ``Q(s, slate)`` ``[B]`` of scalar (double) DQN;
        ``q_slate``: the online network's Q-values of the taken slates ``batch.action`` ``[B, K]``."""
        q_taken = q_slate.mean(1)
        with torch.no_grad():
            q_next = self._next_value(batch.next_obs)
            target = batch.reward + self.gamma**self.n_step * (1.0 - batch.done) * q_next
            self.td_error = (q_taken - target).abs() * batch.valid
        return F.smooth_l1_loss(q_taken, target, reduction="none"), q_taken

    def _next_value(self, next_obs: Obs) -> Tensor:
        """``Q_target(s', a*)`` ``[B]`` (the mean over the slate ``a*``): ``a*`` the online net's
        top-K (double DQN) or the target net's own (vanilla max). Where the native search
        applies (:func:`fused_greedy`), ``a*`` is searched inside the product and only its items
        are valued, instead of two catalogue-wide products."""
        target_state = self.q_target.encoder(next_obs)
        picker = self.q if self.double else self.q_target
        pick_state = picker.encoder(next_obs) if self.double else target_state
        best_next = fused_greedy(picker, pick_state, next_obs, self.ctx.slate_size, self.skip_shown)
        if best_next is not None:
            return self.q_target.score_items(target_state, best_next).mean(1)
        q_target_next = self.q_target.score(target_state)
        q_pick = picker.score(pick_state) if self.double else q_target_next
        best_next = top_k(self.allowed(q_pick, next_obs, in_place=q_pick is not q_target_next),
                          self.ctx.slate_size)
        return q_target_next.gather(1, best_next).mean(1)

    def _categorical_loss(self, batch: Transition, state: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row C51 cross-entropy ``[B]`` (mean over the slate) and ``Q(s, slate)`` ``[B]``;
        ``state``: the online encoder's ``batch.obs``."""
        log_p = self.q.logits(state, batch.action).log_softmax(-1)  # [B, K, Z]
        with torch.no_grad():
            target_state = self.q_target.encoder(batch.next_obs)
            if self.double:
                q_pick = self.q_values(batch.next_obs)
            else:
                q_pick = self.q_target.expected(target_state, self.support)
            best_next = top_k(self.allowed(q_pick, batch.next_obs), self.ctx.slate_size)
            next_p = self.q_target.logits(target_state, best_next).softmax(-1).mean(1)  # [B, Z] mixture
            discount = self.gamma**self.n_step * (1.0 - batch.done)
            values = batch.reward[:, None] + discount[:, None] * self.support
            m = categorical_projection(next_p, values, self.v_min, self.v_max)[:, None, :]  # [B, 1, Z]
        cross_entropy = -(m * log_p).sum(-1)  # [B, K]
        with torch.no_grad():
            kl = cross_entropy + torch.xlogy(m, m).sum(-1)
            self.td_error = kl.mean(1) * batch.valid
            q_taken = (log_p.exp() @ self.support).mean(1)
        return cross_entropy.mean(1), q_taken

    def state_dict(self) -> dict[str, Any]:
        """Weights, target weights, optimizer, counters, generator and the acting average."""
        return {**super().state_dict(), "q_average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        super().load_state_dict(state)
        self.average.load_state_dict(state.get("q_average"))
