"""The shared core of the on-policy algorithms (REINFORCE, A2C, PPO): a softmax policy over the
catalogue on a :class:`~recrl.algos.backbone.Backbone`, a value head, optional initialisation
from a pretrained model (``algo.init_from``) and the KL leash to it (``algo.kl_coef``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recrl.algos.backbone import Backbone, KLPenalty, PretrainSettings, copy_frozen, initialise
from recrl.algos.demonstrations import PlannerDemonstrations, demonstrations_taken
from recrl.algos.learner_state import LearnerState
from recrl.algos.nets import (
    ScoreBlock,
    adam,
    choose_slates,
    kl_divergence,
    mask_shown,
    sample_top_k,
    skips_shown,
    softmax_stats,
    top_k,
)
from recrl.algos.probs import evaluation_slate_probs
from recrl.algos.seeding import own_random_stream
from recrl.algos.supervised import Supervised
from recrl.buffer import Rollout
from recrl.types import AlgoContext, Obs, RecrlError


def standardised(advantage: Tensor, valid: Tensor) -> Tensor:
    """``advantage`` ``[N]`` minus its mean over the ``valid`` rows (0/1 ``[N]``), over their
    standard deviation: the step size then no longer depends on the reward scale."""
    n = valid.sum().clamp(min=1.0)
    mean = (advantage * valid).sum() / n
    std = (((advantage - mean) ** 2 * valid).sum() / n).sqrt()
    return (advantage - mean) / (std + 1e-8)


def check_candidates(candidates: int, init_from: str | None, demonstrations: int | str) -> int:
    """``algo.candidates``, refused in one line without a starting model to take them from or with
    a number of the planner's demonstrations (whose items may lie outside them)."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
        raise RecrlError(f"algo.candidates={candidates!r}: use 0 (off) or a number of items")
    if candidates and init_from is None:
        raise RecrlError("algo.candidates restricts the policy to the starting model's top items: set "
                         "algo.init_from=pretrain (or behavior, or a run)")
    if candidates and demonstrations not in (0, "auto"):
        raise RecrlError("algo.candidates restricts the policy to the starting model's top items, where the "
                         "planner's demonstrations may not lie: set algo.demonstrations=0")
    return candidates


def candidates_first(logits: Tensor, reference: Tensor, keep: Tensor) -> Tensor:
    """Scores ``[B, N]`` that rank the ``keep`` items by ``logits`` above every other item, and
    those by ``reference`` (items at ``-inf`` in either stay there): the other items' reference
    scores are shifted to end just below each row's lowest finite candidate."""
    candidate = logits.masked_fill(~keep, float("-inf"))
    finite = keep & candidate.isfinite()
    floor = candidate.masked_fill(~finite, float("inf")).amin(1, keepdim=True)
    rest = reference.masked_fill(keep, float("-inf"))
    top_rest = rest.amax(1, keepdim=True)
    shift = torch.where(floor.isfinite() & top_rest.isfinite(), floor - 1.0 - top_rest, 0.0)
    return torch.where(keep, candidate, rest + shift)


class SoftmaxActorCritic(LearnerState):
    """A softmax policy over the catalogue (``policy``, an :class:`~recrl.algos.nets.ItemScorer`
    on ``backbone``), a state-value head on the same encoded state (``value``), Adam over both,
    the algorithm's own generator, acting and saving.

    ``init_from`` starts the policy from pretrained weights (:func:`~recrl.algos.backbone.initialise`);
    ``kl_coef``/``kl_target`` then add ``coef * KL(pi || pi_init)`` to the loss
    (:class:`~recrl.algos.backbone.KLPenalty`). ``demonstrations`` (DAPG, Rajeswaran et al.
    2018): the model-based planner's sessions recorded before training
    (:class:`~recrl.algos.demonstrations.PlannerDemonstrations`), and every gradient step adds
    ``demo_weight`` times minus the mean log-probability of the planner's slates on a batch of
    them (:meth:`plus_demo_term`). Subclasses call :meth:`build` in their ``__init__``, write
    ``update``, add :meth:`kl_term` to their loss and pass it through :meth:`plus_demo_term`
    (REINFORCE and A2C build theirs with :meth:`valid_rows_loss`, which does both).

    Example::

        class MyPG(SoftmaxActorCritic):
            def __init__(self, ctx, lr=1e-3):
                self.build(ctx, lr=lr, sample_in_eval=True, backbone=Backbone(dim=32))
    """

    networks = ("policy", "value")

    mode = "on_policy"

    candidates = 0  # algo.candidates (set by build)

    def build(self, ctx: AlgoContext, lr: float, sample_in_eval: bool, backbone: Backbone,
              skip_shown: bool = False, init_from: str | None = None,
              pretrain: PretrainSettings | None = None, kl_coef: float = 0.0,
              kl_target: float | None = None, demonstrations: int | str = 0, demo_weight: float = 1.0,
              demo_batch: int = 128, demo_decay_steps: int = 0, demo_caution: float = 2.0,
              candidates: int = 0) -> None:
        """Build the policy, the value head, the optimizer and the generator, the weights drawn
        from a stream seeded with ``ctx.seed`` (:func:`own_random_stream`), then load
        ``init_from``'s weights and keep the KL reference.

        ``skip_shown``: the policy gives no probability to items in the observed history;
        ``demonstrations`` (users, ``auto`` or 0: off) and the ``demo_*`` settings: the planner's
        demonstrations (:class:`~recrl.algos.demonstrations.PlannerDemonstrations`);
        ``candidates`` > 0: the policy serves only the starting model's top ``candidates`` items
        at each state and learns to rank them (:meth:`candidate_mask`; needs ``init_from``; the
        ``auto`` demonstrations are then off, whose planner's items may lie outside them).
        """
        self.ctx, self.sample_in_eval = ctx, sample_in_eval
        self.skip_shown = skips_shown(ctx, skip_shown)
        with own_random_stream(ctx.seed, ctx.device):
            self.policy = backbone.scorer(ctx)
            self.value = nn.Sequential(nn.Linear(backbone.dim, backbone.hidden), nn.ReLU(),
                                       nn.Linear(backbone.hidden, 1)).to(ctx.device)
        self.init_from = initialise(self.policy, ctx, init_from, backbone, pretrain)
        if self.init_from is None and (kl_coef or kl_target):
            raise RecrlError("algo.kl_coef / kl_target keep the policy near its starting weights, which "
                             "are random without algo.init_from: set algo.init_from=pretrain (or behavior)")
        self.candidates = check_candidates(candidates, self.init_from, demonstrations)
        demonstrations = demonstrations_taken(demonstrations, self.candidates)
        # the starting policy, frozen: the KL reference and the report's supervised row
        self.initial = copy_frozen(self.policy) if self.init_from is not None else None
        self.leash = KLPenalty(self.initial, kl_coef, kl_target)
        self.params = [p for p in self.policy.parameters() if p.requires_grad] + list(self.value.parameters())
        self.optimizer = adam(self.params, lr)
        self.generator = torch.Generator(ctx.device).manual_seed(ctx.seed)
        self.updates = 0
        self.score_block = ScoreBlock()  # scratch memory for acting's catalogue scores
        self.demos = PlannerDemonstrations(ctx, demonstrations, demo_weight, demo_batch, demo_decay_steps,
                                           demo_caution, self.skip_shown)

    def prepare(self, env: Any, seed: int) -> None:
        """Before training (called by the training loop with its environment): record the
        planner's demonstrations in ``env`` when the algorithm takes them."""
        self.demos.record(env, seed)

    def logits(self, obs: Obs, state: Tensor | None = None, net: nn.Module | None = None) -> Tensor:
        """Policy logits ``[B, n_items]`` (``state``: the already-encoded ``obs``; ``net``: another
        scorer, e.g. the KL reference); with ``skip_shown`` the items in the observed history get
        ``-inf``, and with ``candidates`` every item outside :meth:`candidate_mask`."""
        net = self.policy if net is None else net
        logits = self.unrestricted_logits(obs, net, state)
        if not self.candidates:
            return logits
        own = logits.detach() if net is self.initial else None
        return logits.masked_fill(~self.candidate_mask(obs, own), float("-inf"))

    def unrestricted_logits(self, obs: Obs, net: nn.Module, state: Tensor | None = None) -> Tensor:
        """``net``'s logits ``[B, n_items]`` with only ``skip_shown``'s mask (no candidates)."""
        logits = net.score(net.encoder(obs) if state is None else state)
        return mask_shown(logits, obs) if self.skip_shown else logits

    @torch.no_grad()
    def candidate_mask(self, obs: Obs, reference_logits: Tensor | None = None) -> Tensor:
        """``True`` ``[B, n_items]`` on the items the policy may serve at ``obs`` with
        ``candidates``: the frozen starting model's top ``candidates`` by its logits
        (``reference_logits`` when already computed), as a two-stage recommender's ranking stage
        re-ranks what its retrieval stage proposes."""
        ref = self.unrestricted_logits(obs, self.initial) if reference_logits is None else reference_logits
        top = ref.topk(min(self.candidates, ref.shape[1]), dim=1).indices
        return torch.zeros_like(ref, dtype=torch.bool).scatter_(1, top, True)

    def plus_demo_term(self, loss: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(loss + DAPG's term, the term)`` for one gradient step, ``(loss, None)`` when off. The
        term: the demonstrations' weight now times minus the mean log-probability of the planner's
        slates (the sum over a slate's items, as the policy's own slates) on
        :attr:`PlannerDemonstrations.batch` recorded steps."""
        weight = self.demos.weight(self.updates)
        if weight == 0.0:
            return loss, None
        obs, slates = self.demos.sample(self.generator)
        term = -weight * self.slate_stats(obs, self.policy.encoder(obs), slates)[0].mean()
        return loss + term, term

    @staticmethod
    def demo_stats(term: Tensor | None) -> dict[str, Tensor]:
        """What an update logs of :meth:`plus_demo_term`'s term: ``train/demo_loss`` (nothing when off)."""
        return {} if term is None else {"train/demo_loss": term.detach()}

    def policy_terms(self, obs: Obs, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log-probability of each row's slate, policy entropy, KL to the starting policy)``,
        each ``[N]``, at the encoded ``state`` of ``obs`` for the slates ``actions`` ``[N, K]``
        (the KL zeros without the leash): :meth:`slate_stats` with the reference's
        log-probabilities."""
        log_ref = None if self.leash.reference is None else self.reference_log_probs(obs)
        return self.slate_stats(obs, state, actions, log_ref)

    def slate_stats(self, obs: Obs, state: Tensor, actions: Tensor,
                    log_ref: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`~recrl.algos.nets.softmax_stats` of the policy at the encoded ``state`` of
        ``obs`` (fused from 512 items, the history masked inside it; with ``candidates`` over
        :meth:`logits`, which masks the rest)."""
        if self.candidates:
            return softmax_stats(self.logits(obs, state), actions, log_ref=log_ref)
        return softmax_stats(self.policy.score(state), actions, obs if self.skip_shown else None, log_ref)

    @torch.no_grad()
    def reference_log_probs(self, obs: Obs) -> Tensor:
        """The frozen starting policy's log-probabilities ``[N, n_items]`` at ``obs`` (the KL
        leash's reference; masked as the policy is)."""
        return torch.log_softmax(self.logits(obs, net=self.leash.reference), 1)

    def valid_rows_loss(self, logp: Tensor, entropy: Tensor, kl: Tensor, value: Tensor, advantage: Tensor,
                        target: Tensor, valid: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The actor-critic loss of REINFORCE and A2C over the ``valid`` rows of a batch of whole
        episodes (every argument flat ``[N]``: :meth:`policy_terms`' three, the values, advantages
        and targets; ``advantage`` and ``target`` not differentiated)::

            L = -mean[A log pi(a|s)] + value_coef mean[(V - target)^2] - entropy_coef mean[H]
                + kl_coef mean[KL(pi || pi_0)]  (+ the demonstrations' term)

        Returns ``(loss, what the update logs of it, the mean KL)``. The subclass holds
        ``value_coef`` and ``entropy_coef``."""
        n = valid.sum().clamp(min=1.0)
        policy_loss = -(advantage * logp * valid).sum() / n
        value_loss = (((value - target) ** 2) * valid).sum() / n
        entropy_mean = (entropy * valid).sum() / n
        kl = (kl * valid).sum() / n
        loss, demo = self.plus_demo_term(policy_loss + self.value_coef * value_loss
                                         - self.entropy_coef * entropy_mean + self.leash.coef * kl)
        stats = {"train/loss": loss.detach(), "train/policy_loss": policy_loss.detach(),
                 "train/value_loss": value_loss.detach(), "train/entropy": entropy_mean.detach(),
                 **self.demo_stats(demo)}
        return loss, stats, kl

    def kl_term(self, obs: Obs, log_pi: Tensor) -> Tensor:
        """``KL(pi || pi_ref)`` ``[B]`` of the current log-probabilities ``log_pi`` at ``obs``
        against the frozen starting policy (zeros when the leash is off)."""
        if self.leash.reference is None:
            return log_pi.new_zeros(log_pi.shape[0])
        return kl_divergence(log_pi, self.reference_log_probs(obs))

    def leash_stats(self, kl: Tensor, batch: Rollout) -> dict[str, Any]:
        """After an update: adapt the KL coefficient to the update's mean ``kl`` and return what
        the run logs of it, ``train/kl``, ``train/kl_coef`` and ``train/reward`` (mean reward per
        user-step of the rollout), apart from the loss."""
        valid = batch.valid
        stats: dict[str, Any] = {"train/reward": (batch.reward * valid).sum() / valid.sum().clamp(min=1.0)}
        if self.leash.active:
            stats["train/kl"], stats["train/kl_coef"] = kl.detach(), self.leash.coef
            self.leash.adapt(float(kl))
        return stats

    def pretrained_policy(self) -> tuple[str, Any] | None:
        """``(row name, policy)`` of the frozen starting policy, for the report (``supervised``
        for ``init_from=pretrain``); ``None`` without ``init_from`` or a kept reference."""
        if self.initial is None:
            return None
        return Supervised.starting_row(self.ctx, self.init_from, self.initial, self.skip_shown)

    @torch.no_grad()
    def scores(self, obs: Obs) -> Tensor:
        """The policy's greedy ranking ``[B, n_items]`` (what a top-k list serves): its logits;
        with ``candidates``, the candidates in the policy's order, then every other item in the
        starting model's order (:func:`candidates_first`)."""
        if not self.candidates:
            return self.logits(obs)
        ref = self.unrestricted_logits(obs, self.initial)
        keep = self.candidate_mask(obs, ref)
        return candidates_first(self.unrestricted_logits(obs, self.policy), ref, keep)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool) -> Tensor:
        """Sample a slate from the policy, or take its top-``K`` items when neither ``explore``
        nor ``sample_in_eval`` is set (the learned policy is stochastic; its mode can differ).
        The users' logits are made, masked and drawn from a chunk of users at a time
        (:func:`~recrl.algos.nets.choose_slates`: in cache, item-major on a CPU from 512 items
        on; greedy slates inside the product); with ``candidates`` from the whole batch's logits
        at once."""
        k, sample = self.ctx.slate_size, explore or self.sample_in_eval
        if self.candidates:
            logits = self.logits(obs)
            return sample_top_k(logits, k, self.generator) if sample else top_k(logits, k)
        pick = (lambda scores: sample_top_k(scores, k, self.generator, in_place=True)) if sample else None
        return choose_slates(self.policy, self.policy.encoder(obs), obs, k, self.skip_shown,
                             self.score_block, pick)

    @torch.no_grad()
    def action_probs(self, obs: Obs) -> Tensor:
        """Per-slot probabilities ``[B, K, n_items]`` of the slates :meth:`act` serves in
        evaluation: the softmax (``sample_in_eval``) or the one-hot of the top-``K``."""
        return evaluation_slate_probs(self.logits(obs), self.ctx.slate_size, self.sample_in_eval)

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer, counters, generator and the KL reference."""
        initial = None if self.initial is None else self.initial.state_dict()
        return {**super().state_dict(), "initial": initial, "kl_coef": self.leash.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        super().load_state_dict(state)
        if self.initial is not None and state.get("initial") is not None:
            self.initial.load_state_dict(state["initial"])
        self.leash.coef = float(state.get("kl_coef", self.leash.coef))
