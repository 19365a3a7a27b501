"""SlateQ: slate Q-learning through an item-wise decomposition (``algo=slateq``).

The user picks at most one item of the slate ``A`` (multinomial logit with a no-click option),
and the long-term value of the slate decomposes into item-wise values::

    P(i | s, A) = exp(v(s, i)) / (exp(v0) + sum_{j in A} exp(v(s, j)))
    Q(s, A)     = sum_{i in A} P(i | s, A) * Qbar(s, i)

``v(s, i)`` (click utility) and ``Qbar(s, i)`` (long-term value of the user consuming ``i``)
are each ``state @ E.T + b`` over their own history encoder, so scoring scales to large
catalogues. The no-click utility ``v0`` is fixed at 0: MNL utilities are only identified up to
a common shift, which the item biases ``b`` already absorb, so a learned ``v0`` would be redundant.

Choice model: maximum likelihood of the observed choice ``c`` (the clicked slot, or no click)
over the shown slate::

    L_choice = -mean log P(c | s, A),   P(no click | s, A) = exp(v0) / (exp(v0) + sum_{j in A} exp(v(s, j)))

Item values: Q-learning with the decomposed value at ``s'`` of the slate ``A'`` the slate
optimiser picks there (scored with the online ``Qbar`` when ``double``, else the target's),
only for the consumed item ``i`` (no update of ``Qbar`` on steps without a click)::

    y = r + gamma * (1 - done) * sum_{j in A'} P(j | s', A') * Qbar_target(s', j)
    L_Qbar = mean over clicked steps of huber(Qbar(s, i), y)

``n_step > 1``: the target is the ``n``-step return from the step's own click onwards,
``y = sum_{k<m} gamma^k r_{t+k} + gamma^n (1 - done) Q_target(s_{t+n}, A')`` (``m`` < ``n`` where the
episode ended in between; :class:`recrl.buffer.NStepWindow` in SlateQ's own replay,
:meth:`SlateQ.make_replay`), fitted to ``Qbar(s_t, i)`` of the item clicked at ``t`` as above: the
decomposition needs only the first step's click, and the later rewards are those of the slates
actually served (uncorrected, as in DQN's ``n``-step returns).

``average > 0``: acting without exploration (evaluation, deployment) uses exponential moving
averages of both towers' weights (:class:`recrl.algos.nets.WeightAverage`), as DQN does.

``demonstrations > 0`` (DQfD, as DQN's): before training, that many users' sessions of the
model-based planner (``algo=planner``) are recorded in the training environment, and every update
adds ``demo_weight`` times DQfD's large-margin loss on ``demo_batch`` of their steps
(:func:`recrl.algos.demonstrations.margin_loss`) on the value of serving each item alone,
``Q(s, {i}) - Qbar(s, null) = P(i | s, {i}) (Qbar(s, i) - Qbar(s, null))``: the first item the
slate heuristics pick. The click probability there is the choice model's, held fixed (no
gradient): the demonstrations shape the item values, and the choice model stays the maximum
likelihood fit of the clicks.

With ``null_value`` a step without a click has a learned value too, ``Qbar(s, null)``, fitted to
the same target on the steps without a click, and, as ``P(null | s, A) = 1 - sum_{i in A} P(i | s, A)``::

    Q(s, A) = P(null | s, A) Qbar(s, null) + sum_{i in A} P(i | s, A) Qbar(s, i)
            = Qbar(s, null) + sum_{i in A} P(i | s, A) (Qbar(s, i) - Qbar(s, null))

so both heuristics below run unchanged on the values relative to ``Qbar(s, null)``. It is on by
default: with ``null_value=false`` (as in RecSim's reference SlateQ agent) a step without a click
is worth 0, which undervalues the less clickable slates wherever users who do not click stay on
(the synthetic world's users do: there SlateQ needs ``null_value`` to beat myopic greedy).

Slate optimisation (the paper's exact LP is too heavy for large catalogues):
``topk`` ranks the items by ``exp(v(s, i)) * Qbar(s, i)``; ``greedy`` adds, ``K`` times, the item
that maximises the value ``Q(s, A + {i})`` of the slate built so far.

With ``skip_shown`` (on in ``conf/algo/slateq.yaml``, as for the other learners that act while
training) no item in the observed history goes on a slate, in acting and in the target's ``A'``
alike; exploration's random slates may still hold one.

Reading the clicks: the training loop records each step's clicks (``Transition.click``), and
SlateQ's replay keeps them with the step, so they are known on every row (also where autoreset
replaced a finished user, and across an ``n``-step window). Batches built by hand without them
fall back to the observation: the replay buffer stores the slate ``A`` ``[B, K]``; the observation history
shifts left by one slate per step (``RecEnv.step``), so ``next_obs.items[:, -1]`` is ``A`` and
``next_obs.clicks[:, -1]`` its clicks. With the off-policy loop's autoreset, ``next_obs`` of a
finished episode is the next user's first observation, whose history is blank: there the click
is unknown (detected as ``next_obs.items[:, -1] != A``). Such rows are left out of the choice
loss; for ``Qbar`` (target ``r``: the episode ended) a non-zero reward means a click (every recrl
reward is 0 without one) and the loss is spread over the slate by the choice model's posterior
``P(i | s, A) / sum_{j in A} P(j | s, A)``; a zero reward counts as no click.

Reference: Ie, Jain, Wang, Narvekar, Agarwal, Wu, Cheng, Chandra, Boutilier. SlateQ: A Tractable
Decomposition for Reinforcement Learning with Recommendation Sets. IJCAI 2019.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.algos.demonstrations import PlannerDemonstrations, check_margin, margin_loss
from recrl.algos.learner_state import LearnerState
from recrl.algos.nets import (
    HistoryEncoder,
    ItemScorer,
    WeightAverage,
    adam,
    behavior_item_prior,
    epsilon_explore,
    linear_decay,
    mask_shown,
    skips_shown,
    update_target,
)
from recrl.algos.probs import ActsGreedily
from recrl.algos.seeding import seeded_init
from recrl.buffer import Replay, ReplaySample, transitions_of
from recrl.env.choice import mnl_probs
from recrl.types import AlgoContext, Env, Obs, RecrlError, Transition, cat_obs

SLATE_OPTIMIZERS = ("topk", "greedy")
NO_CLICK = 0.0  # utility of not clicking (fixed; see the module docstring)


def slate_value(utility: Tensor, qbar: Tensor, no_click: float = NO_CLICK) -> Tensor:
    """Decomposed slate value ``[B]``: ``sum_i P(i | s, A) * Qbar(s, i)`` for slate items'
    utilities and values ``[B, K]``.

    Example::

        >>> slate_value(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 6.0]]))  # 1/3 each
        tensor([3.])
    """
    return (mnl_probs(utility, no_click) * qbar).sum(1)


def choice_nll(utility: Tensor, click: Tensor, no_click: float = NO_CLICK) -> Tensor:
    """Negative MNL log-likelihood ``[B]`` of the observed choice: the clicked slot of ``click``
    ``[B, K]`` (0/1, at most one per row), or the no-click option when the row has no click.

    Example::

        >>> choice_nll(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))  # -log(1/3)
        tensor([1.0986])
    """
    logits = F.pad(utility, (1, 0), value=no_click)  # slot 0: no click
    label = torch.where(click.sum(1) > 0, click.argmax(1) + 1, 0)
    return F.cross_entropy(logits, label, reduction="none")


def topk_slates(utility: Tensor, qbar: Tensor, k: int, blocked: Tensor | None = None) -> Tensor:
    """SlateQ's top-``k`` heuristic: the ``k`` items ``[B, k]`` of highest
    ``exp(v(s, i)) * Qbar(s, i)`` from all items' ``[B, N]`` utilities and values, best first;
    items where the ``[B, N]`` mask ``blocked`` is true come last."""
    # a per-row shift of v scales each row's scores by a positive constant: the ranking stays
    score = torch.exp(utility - utility.max(1, keepdim=True).values) * qbar
    if blocked is not None:
        score = score.masked_fill(blocked, float("-inf"))
    return score.topk(k, dim=1).indices


def greedy_slates(utility: Tensor, qbar: Tensor, k: int, no_click: float = NO_CLICK,
                  blocked: Tensor | None = None) -> Tensor:
    """SlateQ's greedy heuristic: ``k`` times, add the item ``[B, k]`` that maximises the value
    ``sum_i P(i | s, A) * Qbar(s, i)`` of the slate built so far (in the order added), never an
    item where the ``[B, N]`` mask ``blocked`` is true (unless nothing else is left).

    With ``e_i = exp(v(s, i))`` the value of ``A + {i}`` is ``(num + e_i Qbar_i) / (den + e_i)``,
    ``num = sum_{j in A} e_j Qbar_j``, ``den = exp(v0) + sum_{j in A} e_j``: one ``[B, N]`` op per slot.
    """
    # shift every utility (no-click included) by the row's maximum: the ratios are unchanged
    top = utility.max(1, keepdim=True).values.clamp(min=no_click)
    e = torch.exp(utility - top)
    num = torch.zeros_like(top)
    den = torch.exp(no_click - top)
    chosen = torch.zeros_like(utility, dtype=torch.bool) if blocked is None else blocked.clone()
    picks = []
    for _ in range(k):
        value = ((num + e * qbar) / (den + e)).masked_fill(chosen, float("-inf"))
        pick = value.argmax(1, keepdim=True)
        num = num + (e * qbar).gather(1, pick)
        den = den + e.gather(1, pick)
        chosen = chosen.scatter(1, pick, True)
        picks.append(pick)
    return torch.cat(picks, 1)


def shown_clicks(action: Tensor, next_obs: Obs) -> tuple[Tensor, Tensor]:
    """The clicks ``[B, K]`` on the slates ``action`` just shown, read from the next observation,
    and ``[B]`` whether they could be read.

    The history shifts left by one slate per step (:meth:`recrl.env.simulator.RecEnv.step`), so
    the last slot of ``next_obs`` is ``action`` and its clicks. Where autoreset has replaced a
    finished user by a fresh one the history is blank (padding ids): the click is unknown, and
    the row's clicks are returned as 0 with ``readable`` false.

    Example::

        click, readable = shown_clicks(batch.action, batch.next_obs)
    """
    readable = (next_obs.items[:, -1] == action).all(1)
    return next_obs.clicks[:, -1] * readable[:, None], readable


def slate_clicks(batch: Transition) -> tuple[Tensor, Tensor]:
    """The clicks ``[B, K]`` on the batch's slates and ``[B]`` whether they are known: the
    recorded ones (``batch.click``, all known) where the loop kept them, else
    :func:`shown_clicks` from the next observation (``n``-step batches need the recorded ones)."""
    if batch.click is not None:
        return batch.click, torch.ones_like(batch.valid, dtype=torch.bool)
    return shown_clicks(batch.action, batch.next_obs)


def padded_prior(prior: Tensor | None, rows: int) -> Tensor | None:
    """``prior`` ``[n_items, P]`` with zero rows appended up to ``rows`` (the item-value head's
    no-click column has no content of its own)."""
    if prior is None or rows == prior.shape[0]:
        return prior
    return torch.cat([prior, prior.new_zeros(rows - prior.shape[0], prior.shape[1])])


class SlateQ(LearnerState, ActsGreedily):
    """SlateQ: an MNL choice model and item-wise Q-values combined into slate values, a target
    network, replay on device, slates by the ``topk`` or ``greedy`` heuristic and epsilon-greedy
    exploration.

    Example::

        algo = SlateQ(ctx, gamma=0.9, slate_optimizer="greedy")
        slates = algo.act(obs, explore=True)                 # [B, K]
        stats = algo.update(replay.sample(256, generator))
    """

    networks = ("choice", "q", "q_target")
    counters = ("acted_steps", "updates")

    mode = "off_policy"

    @seeded_init
    def __init__(self, ctx: AlgoContext, dim: int = 32, hidden: int = 128, lr: float = 1e-3,
                 gamma: float = 0.9, slate_optimizer: Literal["topk", "greedy"] = "greedy",
                 double: bool = True, choice_coef: float = 1.0, epsilon_start: float = 1.0,
                 epsilon_end: float = 0.05, epsilon_decay_steps: int = 2000, target_update: int = 200,
                 tau: float = 1.0, grad_clip: float = 10.0, null_value: bool = True,
                 skip_shown: bool = False, item_init: str = "random", n_step: int = 1,
                 average: float = 0.0, demonstrations: int | str = 0, demo_weight: float = 1.0,
                 demo_margin: float = 0.8, demo_batch: int = 128, demo_decay_steps: int = 0,
                 demo_caution: float = 2.0) -> None:
        if slate_optimizer not in SLATE_OPTIMIZERS:
            raise RecrlError(f"algo.slate_optimizer={slate_optimizer!r}: use one of "
                             f"{', '.join(SLATE_OPTIMIZERS)}")
        if n_step < 1:
            raise RecrlError(f"algo.n_step={n_step} must be >= 1")
        self.ctx, self.gamma, self.n_step = ctx, gamma, n_step
        self.slate_optimizer, self.double = slate_optimizer, double
        self.choice_coef, self.grad_clip, self.null_value = choice_coef, grad_clip, null_value
        self.skip_shown = skips_shown(ctx, skip_shown)
        self.epsilon_start, self.epsilon_end = epsilon_start, epsilon_end
        self.epsilon_decay_steps, self.target_update, self.tau = epsilon_decay_steps, target_update, tau
        self.demos = PlannerDemonstrations(ctx, demonstrations, demo_weight, demo_batch, demo_decay_steps,
                                           demo_caution, self.skip_shown)
        self.demo_margin = check_margin(demo_margin)
        prior = behavior_item_prior(ctx, item_init)

        def scorer(outputs: int) -> ItemScorer:
            encoder = HistoryEncoder(ctx.n_items, ctx.history_len, ctx.slate_size, ctx.horizon, dim,
                                     hidden, features=ctx.obs_features, item_prior=prior)
            return ItemScorer(encoder, outputs, dim, padded_prior(prior, outputs)).to(ctx.device)

        self.choice = scorer(ctx.n_items)                  # v(s, i): click utilities
        self.q = scorer(ctx.n_items + int(null_value))     # Qbar(s, i) (last column: Qbar(s, null))
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.average_choice = WeightAverage(self.choice, average)
        self.average_q = WeightAverage(self.q, average)
        self.optimizer = adam([*self.choice.parameters(), *self.q.parameters()], lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.acted_steps, self.updates = 0, 0

    def prepare(self, env: Any, seed: int) -> None:
        """Before training (called by the training loop with its environment): record the
        planner's demonstrations in ``env`` when the algorithm takes them."""
        self.demos.record(env, seed)

    def epsilon(self) -> float:
        """Exploration rate now: linear from ``epsilon_start`` to ``epsilon_end``."""
        return linear_decay(self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps, self.acted_steps)

    def select(self, utility: Tensor, qbar: Tensor, obs: Obs) -> Tensor:
        """The slate ``[B, K]`` the configured heuristic picks at ``obs`` from all items' ``[B, N]``
        utilities and item values (with ``skip_shown``, none of the items in its history)."""
        blocked = obs.shown_mask(self.ctx.n_items) if self.skip_shown else None
        if self.slate_optimizer == "greedy":
            return greedy_slates(utility, qbar, self.ctx.slate_size, blocked=blocked)
        return topk_slates(utility, qbar, self.ctx.slate_size, blocked=blocked)

    def relative(self, q: Tensor) -> Tensor:
        """Item values ``[B, N]`` relative to the no-click value (0 without ``null_value``)."""
        return q[:, :-1] - q[:, -1:] if self.null_value else q

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """The heuristic's best slate; with ``explore``, a random slate with probability epsilon.
        Without ``explore`` (evaluation, deployment) both towers are the averaged ones (``average``)."""
        if explore:
            choice, q = self.choice, self.q
        else:
            choice, q = self.average_choice.acting(), self.average_q.acting()
        slates = self.select(choice(obs), self.relative(q(obs)), obs)
        if not explore:
            return slates
        eps = self.epsilon()
        self.acted_steps += 1
        return epsilon_explore(slates, self.ctx.n_items, eps, self.generator)

    def make_replay(self, capacity: int, env: Env) -> Replay:
        """SlateQ's replay for ``env``: ``n_step`` transitions discounted by ``gamma`` (each keeps
        the clicks on its first slate, which the choice model and the item values are fitted to)."""
        return Replay.for_env(capacity, env, n_step=self.n_step, gamma=self.gamma)

    @torch.no_grad()
    def td_target(self, batch: Transition) -> Tensor:
        """``R + gamma^n * (1 - done) * Q_target(s', A')`` ``[B]``: ``R`` the batch's (``n``-step)
        reward, ``s'`` its next observation, ``A'`` the heuristic's slate there."""
        nxt = batch.next_obs
        utility = self.choice(nxt)
        q_target = self.q_target(nxt)
        q_next = self.relative(q_target)
        best = self.select(utility, self.relative(self.q(nxt)) if self.double else q_next, nxt)
        value = slate_value(utility.gather(1, best), q_next.gather(1, best))
        if self.null_value:
            value = value + q_target[:, -1]
        return batch.reward + self.gamma ** self.n_step * (1.0 - batch.done) * value

    def update(self, batch: Transition | ReplaySample) -> dict[str, Any]:
        """One gradient step on the choice loss plus the item-value TD loss of a replay batch
        (uniform replay: the trainer's default)."""
        batch = transitions_of(batch)
        action, valid = batch.action, batch.valid
        demo_weight = self.demos.weight(self.updates)
        demo = self.demos.sample(self.generator) if demo_weight > 0 else None
        utility = self.choice(batch.obs).gather(1, action)  # [B, K]
        # one item-value pass for the batch and the demonstrations together
        q_every = self.q(batch.obs if demo is None else cat_obs([batch.obs, demo[0]]))
        q_all = q_every[:action.shape[0]]
        qbar = q_all.gather(1, action)
        if self.n_step > 1 and batch.click is None:
            raise RecrlError("SlateQ with algo.n_step > 1 learns from batches with recorded clicks "
                             "(Transition.click; its own replay keeps them): use algo.n_step=1 here")
        click, readable = slate_clicks(batch)
        seen = valid * readable.float()
        choice_loss = (choice_nll(utility, click) * seen).sum() / seen.sum().clamp(min=1.0)

        target = self.td_target(batch)
        with torch.no_grad():
            prob = mnl_probs(utility, NO_CLICK)
            posterior = prob / prob.sum(1, keepdim=True).clamp(min=1e-12)
            lost_click = (~readable & (batch.reward != 0)).float()
            weight = torch.where(readable[:, None], click, posterior * lost_click[:, None]) * valid[:, None]
        td = F.smooth_l1_loss(qbar, target[:, None].expand_as(qbar), reduction="none")
        q_loss = (td * weight).sum() / weight.sum().clamp(min=1.0)
        if self.null_value:
            none = valid * readable.float() * (click.sum(1) == 0).float()
            td_none = F.smooth_l1_loss(q_all[:, -1], target, reduction="none")
            q_loss = q_loss + (td_none * none).sum() / none.sum().clamp(min=1.0)

        loss = q_loss + self.choice_coef * choice_loss
        stats = {}
        if demo is not None:
            demo_loss = self.demo_loss(demo[0], demo[1], q_every[action.shape[0]:])
            loss = loss + demo_weight * demo_loss
            stats["train/demo_loss"] = demo_loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.q.parameters(), self.grad_clip)
        torch.nn.utils.clip_grad_norm_(self.choice.parameters(), self.grad_clip)
        self.optimizer.step()
        self.updates += 1
        update_target(self.q_target, self.q, self.updates, self.target_update, self.tau)
        self.average_choice.update()
        self.average_q.update()
        clicked = weight.sum().clamp(min=1.0)
        return {"train/loss": q_loss.detach(), "train/choice_loss": choice_loss.detach(),
                "train/q": (qbar.detach() * weight).sum() / clicked,
                "train/click_rate": weight.sum() / valid.sum().clamp(min=1.0),
                "train/epsilon": self.epsilon(), **stats}

    def demo_loss(self, obs: Obs, shown: Tensor, q: Tensor) -> Tensor:
        """DQfD's margin loss on demonstrations ``obs`` toward the planner's slates ``shown``, on
        the value of serving each item alone, ``P(i | s, {i}) * relative Qbar(s, i)``, from the
        item values ``q`` (the :attr:`q` tower's output at ``obs``) and the choice model's click
        probabilities, held fixed; the rivals are the items a slate may hold."""
        with torch.no_grad():
            click = torch.sigmoid(self.choice(obs) - NO_CLICK)  # P(i | s, {i}) under the MNL
        values = click * self.relative(q)
        allowed = mask_shown(values, obs) if self.skip_shown else values
        return margin_loss(values, allowed, shown, self.demo_margin)

    def state_dict(self) -> dict[str, Any]:
        """Weights (choice model, item values, target), optimizer, counters, generator and the
        acting averages."""
        return {**super().state_dict(), "choice_average": self.average_choice.state_dict(),
                "q_average": self.average_q.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        super().load_state_dict(state)
        self.average_choice.load_state_dict(state.get("choice_average"))
        self.average_q.load_state_dict(state.get("q_average"))
