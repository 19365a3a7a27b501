"""The built-in synthetic world: a ground-truth user population and the logs it produces.

Users have latent topic interests that drift toward what they click, a satisfaction level and
per-topic boredom. Items have a topic, a quality, a price and may be *clickbait*: very
attractive (high click probability) but of low quality, so clicking them lowers satisfaction and
raises the chance of leaving. A myopic policy that maximises the immediate click probability
therefore serves clickbait and loses users early; serving good, varied items earns more clicks
over a session. The same world generates the logged data (under a popularity-biased logging
policy that records its propensities) and serves as the ground-truth evaluation environment.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.env.choice import MNL, ChoiceModel, alone_probs
from recrl.env.response import Predictions, expected_response, sample_response
from recrl.types import Interactions, Obs, Response, Splits, log_columns


class SyntheticWorld:
    """Ground-truth user model plus logged-data generator (``dataset=synthetic``).

    All knobs are keyword arguments; the world is a pure function of them and ``seed``.

    Example::

        world = SyntheticWorld(n_items=50, n_users=100, seed=0)
        data = world.load()                      # Splits of the logging policy's sessions
        state = world.initial_state(8, torch.Generator().manual_seed(0))
        resp = world.respond(state, torch.zeros(8, 1, dtype=torch.long), generator)
    """

    pre_drawable = True  # draws only through sample_response: the env may pre-draw (recrl.env.noise)

    def __init__(
        self,
        n_items: int = 500,
        n_users: int = 3000,
        n_topics: int = 10,
        horizon: int = 20,
        clickbait_share: float = 0.15,
        click_bias: float = -1.0,
        click_affinity: float = 2.0,
        click_quality: float = 0.5,
        click_bait: float = 2.0,
        click_boredom: float = 0.4,
        boredom_decay: float = 0.7,
        satisfaction_decay: float = 0.9,
        satisfaction_gain: float = 1.0,
        bait_penalty: float = 0.8,
        no_click_penalty: float = 0.1,
        leave_bias: float = -3.0,
        leave_satisfaction: float = 1.5,
        interest_drift: float = 0.1,
        logging_temperature: float = 1.0,
        logging_epsilon: float = 0.1,
        valid_share: float = 0.1,
        test_share: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.n_items, self.n_users, self.n_topics, self.horizon = n_items, n_users, n_topics, horizon
        self.click_bias, self.click_affinity = click_bias, click_affinity
        self.click_quality, self.click_bait, self.click_boredom = click_quality, click_bait, click_boredom
        self.boredom_decay, self.satisfaction_decay = boredom_decay, satisfaction_decay
        self.satisfaction_gain, self.bait_penalty = satisfaction_gain, bait_penalty
        self.no_click_penalty, self.leave_bias = no_click_penalty, leave_bias
        self.leave_satisfaction, self.interest_drift = leave_satisfaction, interest_drift
        self.logging_temperature, self.logging_epsilon = logging_temperature, logging_epsilon
        self.valid_share, self.test_share, self.seed = valid_share, test_share, seed
        self._build_items(clickbait_share)
        self.device = torch.device("cpu")

    # ----------------------------------------------------------------------------- items
    def _build_items(self, clickbait_share: float) -> None:
        g = torch.Generator().manual_seed(self.seed)
        n, t = self.n_items, self.n_topics
        self.topic = torch.randint(0, t, (n,), generator=g)
        emb = F.one_hot(self.topic, t).float() + 0.3 * torch.randn(n, t, generator=g)
        self.item_emb = F.normalize(emb, dim=1)
        self.is_bait = (torch.rand(n, generator=g) < clickbait_share).float()
        quality = _beta(g, n)
        self.quality = torch.where(self.is_bait > 0, 0.3 * quality, quality)
        self.price = torch.rand(n, generator=g)
        # Popularity the logging policy believes in: a Zipf-like prior, partly driven by appeal.
        zipf = 1.0 / torch.arange(1, n + 1).float()
        self.log_popularity = torch.log(zipf[torch.randperm(n, generator=g)]) + self.is_bait

    def to(self, device: torch.device | str) -> SyntheticWorld:
        """Move the item tables to ``device`` (in place) and return ``self``."""
        self.device = torch.device(device)
        for name in ("topic", "item_emb", "is_bait", "quality", "price", "log_popularity"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    # ----------------------------------------------------------------------------- state
    # state = [interest (n_topics) | satisfaction (1) | boredom (n_topics)]
    def _split(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self.n_topics
        return state[:, :t], state[:, t], state[:, t + 1:]

    def initial_state(self, n_users: int, generator: torch.Generator) -> Tensor:
        """Fresh users: random unit interest, neutral satisfaction, no boredom."""
        t = self.n_topics
        interest = F.normalize(torch.randn(n_users, t, device=self.device, generator=generator), dim=1)
        rest = torch.zeros(n_users, 1 + t, device=self.device)
        return torch.cat([interest, rest], 1)

    def _item_terms(self, state: Tensor, slates: Tensor | None) -> tuple[Tensor, ...]:
        """Affinity, quality, price, clickbait flag and topic boredom of ``slates`` ``[B, K]``, or of
        every item (``[B, N]`` or ``[N]``, broadcasting) when ``slates`` is ``None``."""
        interest, _, boredom = self._split(state)
        if slates is None:
            return (interest @ self.item_emb.T, self.quality, self.price, self.is_bait,
                    boredom[:, self.topic])
        affinity = torch.einsum("bt,bkt->bk", interest, self.item_emb[slates])
        return (affinity, self.quality[slates], self.price[slates], self.is_bait[slates],
                boredom.gather(1, self.topic[slates]))

    def click_utility(self, state: Tensor, slates: Tensor | None) -> Tensor:
        """MNL utility ``[B, K]`` of each slate item (no-click has utility 0); ``slates=None``:
        of every item ``[B, N]``."""
        return self._click_utility(self._item_terms(state, slates))

    def conversion_prob(self, state: Tensor, slates: Tensor | None) -> Tensor:
        """Probability ``[B, K]`` of a purchase given a click: quality up, price down."""
        return self._conversion_prob(self._item_terms(state, slates))

    def rating(self, state: Tensor, slates: Tensor | None) -> Tensor:
        """Expected rating ``[B, K]`` in 1..5 given a click."""
        return self._rating(self._item_terms(state, slates))

    def watch(self, state: Tensor, slates: Tensor | None) -> Tensor:
        """Expected share of the item consumed ``[B, K]`` (0..1) given a click: quality and
        interest up, boredom with the topic down (clickbait is clicked but barely watched)."""
        return self._watch(self._item_terms(state, slates))

    def signals(self, state: Tensor, slates: Tensor | None) -> dict[str, Tensor]:
        """The expected value given a click of every user signal the world knows
        (:mod:`recrl.env.signals`), ``[B, K]`` (``[B, N]`` for ``slates=None``): ``watch``."""
        return self._signals(self._item_terms(state, slates))

    def predict(self, state: Tensor, slates: Tensor | None) -> Predictions:
        """The world's click utilities, conversion probabilities, expected ratings and signal
        values for ``slates`` ``[B, K]`` (every item when ``None``), from one look-up of the
        items' terms."""
        terms = self._item_terms(state, slates)
        return Predictions(click_logit=self._click_utility(terms),
                           conversion_prob=self._conversion_prob(terms), rating=self._rating(terms),
                           values=self._signals(terms))

    # the formulas, on the terms of _item_terms
    def _click_utility(self, terms: tuple[Tensor, ...]) -> Tensor:
        affinity, quality, _, bait, boredom = terms
        return (self.click_bias + self.click_affinity * affinity + self.click_quality * quality
                + self.click_bait * bait - self.click_boredom * boredom)

    @staticmethod
    def _conversion_prob(terms: tuple[Tensor, ...]) -> Tensor:
        affinity, quality, price, _, _ = terms
        return torch.sigmoid(-1.0 + 2.0 * quality - 1.5 * price + affinity)

    @staticmethod
    def _rating(terms: tuple[Tensor, ...]) -> Tensor:
        affinity, quality, _, _, _ = terms
        return 1.0 + 4.0 * torch.sigmoid(3.0 * (quality - 0.5) + affinity)

    @staticmethod
    def _watch(terms: tuple[Tensor, ...]) -> Tensor:
        affinity, quality, _, _, boredom = terms
        return torch.sigmoid(4.0 * (quality - 0.5) + 1.5 * affinity - 0.3 * boredom)

    def _signals(self, terms: tuple[Tensor, ...]) -> dict[str, Tensor]:
        return {"watch": self._watch(terms)}

    def leave_prob(self, state: Tensor) -> Tensor:
        """Probability ``[B]`` of leaving now: low satisfaction makes users leave."""
        satisfaction = self._split(state)[1]
        return torch.sigmoid(self.leave_bias - self.leave_satisfaction * satisfaction)

    def leave_prob_after_click(self, state: Tensor) -> Tensor:
        """Probability ``[B, N]`` of leaving after a click on each item shown alone."""
        satisfaction = self._split(state)[1]
        after = self.satisfaction_decay * satisfaction[:, None] + self.click_gain()
        return torch.sigmoid(self.leave_bias - self.leave_satisfaction * after)

    def click_gain(self, items: Tensor | None = None) -> Tensor:
        """Satisfaction gained by clicking ``items`` (every item when ``None``): quality above
        0.5 pleases, clickbait disappoints."""
        quality, bait = (self.quality, self.is_bait) if items is None else (self.quality[items],
                                                                          self.is_bait[items])
        return self.satisfaction_gain * (quality - 0.5) - self.bait_penalty * bait

    # ----------------------------------------------------------------------------- planning
    def expected_response(self, state: Tensor, slates: Tensor | None, choice: ChoiceModel = MNL) -> Response:
        """Expected response to ``slates`` ``[B, K]`` without sampling (``click`` holds the click
        probabilities), or to every item shown alone (``slates=None``, ``[B, N]``).

        ``leave_prob`` is the probability of leaving after the step with the clicks replaced by
        their expectation (the mean-field next state); ``[B]`` for slates, and for single items
        ``[B, N]`` the probability after a click on the item (what :class:`recrl.algos.oracle.Oracle`
        uses to rank candidates).
        """
        predicted = self.predict(state, slates)
        utility = predicted.click_logit
        click_prob = alone_probs(choice, utility) if slates is None else choice.probs(utility)
        if slates is None:
            leave = self.leave_prob_after_click(state)
        else:
            leave = self.leave_prob(self.update(state, slates, click_prob))
        return expected_response(click_prob, predicted, leave)

    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator,
                choice: ChoiceModel = MNL, available: Tensor | None = None) -> tuple[Response, Tensor]:
        """Sample clicks (``choice``: MNL with no-click by default; items not ``available`` are
        never clicked) and conversions; return them and the next state.

        ``leave_prob`` of the response is the probability of leaving after this step.
        """
        def advance(click: Tensor, conversion: Tensor) -> tuple[Tensor, Tensor]:
            next_state = self.update(state, slates, click)
            return next_state, self.leave_prob(next_state)

        return sample_response(self.predict(state, slates), generator, choice, available, advance)

    def update(self, state: Tensor, slates: Tensor, click: Tensor) -> Tensor:
        """Next state: boredom with shown topics, satisfaction from the clicked item, drift."""
        interest, satisfaction, boredom = self._split(state)
        shown = F.one_hot(self.topic[slates], self.n_topics).float().sum(1)
        boredom = self.boredom_decay * boredom + shown
        clicked_any = click.sum(1)
        gain = (click * self.click_gain(slates)).sum(1)
        satisfaction = (self.satisfaction_decay * satisfaction + gain
                        - self.no_click_penalty * (1.0 - clicked_any))
        clicked_emb = torch.einsum("bk,bkt->bt", click, self.item_emb[slates])
        interest = F.normalize(interest + self.interest_drift * clicked_emb, dim=1)
        return torch.cat([interest, satisfaction[:, None], boredom], 1)

    # ----------------------------------------------------------------------------- logs
    def logging_probs(self) -> Tensor:
        """The logging policy over items ``[n_items]``: popularity softmax mixed with uniform."""
        soft = torch.softmax(self.log_popularity / self.logging_temperature, 0)
        return (1 - self.logging_epsilon) * soft + self.logging_epsilon / self.n_items

    def load(self) -> Splits:
        """Simulate one session per user under the logging policy (slate size 1).

        Users are split into train / valid / test; the test users' rows go to
        :attr:`Splits.test` only.
        """
        g = torch.Generator().manual_seed(self.seed + 1)
        world = self if self.device.type == "cpu" else self._cpu_copy()
        n = self.n_users
        state = world.initial_state(n, g)
        probs = world.logging_probs()
        alive = torch.ones(n, dtype=torch.bool)
        columns: dict[str, list[Tensor]] = {}
        users = torch.arange(n)
        for step in range(self.horizon):
            items = torch.multinomial(probs, n, replacement=True, generator=g)[:, None]
            resp, state = world.respond(state, items, g)
            leave = torch.rand(n, generator=g) < resp.leave_prob
            rows = alive
            click = resp.click[:, 0]
            signals = [(name, clicked_only(value[:, 0], click)) for name, value in resp.values.items()]
            for key, value in (("user", users), ("time", torch.full((n,), step)),
                               ("item", items[:, 0]), ("click", click),
                               ("conversion", resp.conversion[:, 0]),
                               ("rating", clicked_only(resp.rating[:, 0], click)), *signals,
                               ("leave", leave.float()), ("propensity", probs[items[:, 0]])):
                columns.setdefault(key, []).append(value[rows])
            alive = alive & ~leave
            if not alive.any():
                break
        log = pd.DataFrame({k: torch.cat(v).numpy() for k, v in columns.items()})
        log = log.sort_values(["user", "time"], kind="stable").reset_index(drop=True)
        for col in ("user", "time", "item"):
            log[col] = log[col].astype(np.int64)
        log = log[[column for column in log_columns() if column in log]]
        items_table = pd.DataFrame({"topic": world.topic.numpy(), "quality": world.quality.numpy(),
                                    "price": world.price.numpy(), "clickbait": world.is_bait.numpy()})
        part = self.user_split(n)[log["user"].to_numpy()]
        train, valid, test = (log[part == p].reset_index(drop=True) for p in ("train", "valid", "test"))
        interactions = Interactions(train=train, valid=valid, items=items_table, n_users=n,
                                    n_items=self.n_items)
        return Splits(interactions=interactions, test=test, user_ids=np.arange(n),
                      item_ids=np.arange(self.n_items), meta={"name": "synthetic", "rows": len(log)})

    def user_split(self, n: int) -> np.ndarray:
        """``train``/``valid``/``test`` for each of ``n`` users (fixed by ``seed``)."""
        rng = np.random.default_rng(self.seed + 2)
        u = rng.random(n)
        split = np.full(n, "train", dtype=object)
        split[u < self.valid_share + self.test_share] = "valid"
        split[u < self.test_share] = "test"
        return split

    def _cpu_copy(self) -> SyntheticWorld:
        clone = object.__new__(SyntheticWorld)
        clone.__dict__.update(self.__dict__)
        return clone.to("cpu")

    def ground_truth(self, device: torch.device | str) -> SyntheticWorld:
        """The true user model on ``device``, for evaluation."""
        clone = object.__new__(SyntheticWorld)
        clone.__dict__.update(self.__dict__)
        return clone.to(device)


def clicked_interest(world: SyntheticWorld, items: Tensor, clicked: Tensor) -> Tensor:
    """The interest estimate ``[B, T]`` from the history's items ``[B, S]`` (padding clamped to a
    real id) and click weights ``[B, S]`` (0 on padding): the normalised sum of the clicked items'
    true vectors (zero before the first click)."""
    return F.normalize((world.item_emb[items] * clicked.unsqueeze(-1)).sum(1), dim=1)


def estimate_state(obs: Obs, world: SyntheticWorld,
                   interest: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """A user state ``[B, 2 T + 1]`` = ``[interest | satisfaction | boredom]`` estimated from the
    observed history: satisfaction and topic boredom replayed through the world's own update over
    the observed slates (oldest first), the interest by ``interest(items, click weights)`` on the
    flattened history ``[B, L * K]`` (default :func:`clicked_interest`)."""
    b, length = obs.items.shape[:2]
    known = obs.items.clamp(max=world.n_items - 1)
    real = obs.items[:, :, 0] < world.n_items  # [B, L]: padding slates are padded whole
    state = torch.zeros(b, 2 * world.n_topics + 1, device=obs.items.device)
    for j in range(length):
        after = world.update(state, known[:, j], obs.clicks[:, j])
        state = torch.where(real[:, j:j + 1], after, state)
    items, weights = known.reshape(b, -1), (obs.clicks * real[:, :, None]).reshape(b, -1)
    estimate = clicked_interest(world, items, weights) if interest is None else interest(items, weights)
    return torch.cat([estimate, state[:, world.n_topics:]], 1)


class HistoryBelief:
    """The synthetic world as a planner's user model that, like a fitted behavior model, knows a
    user only from the observed history: the true dynamics and item tables, with the state
    estimated by :func:`estimate_state` instead of read from the world. What
    :class:`~recrl.algos.planner.SurvivalPlanner` plans with when its environment is the ground
    truth (``eval.train_in_ground_truth``'s demonstrations; ``scripts/reference_policies.py``).

    Example::

        planner = SurvivalPlanner(ctx, caution=2.0, model=HistoryBelief(world, env.choice))
    """

    def __init__(self, world: SyntheticWorld, choice: ChoiceModel = MNL,
                 interest: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.world, self.choice, self.interest = world, choice, interest

    def encode(self, obs: Obs) -> Tensor:
        """The state estimated from ``obs``'s history ``[B, 2 T + 1]`` (the interest by
        ``interest(items, click weights)`` when given, see :func:`estimate_state`)."""
        return estimate_state(obs, self.world, self.interest)

    def score_all(self, state: Tensor) -> Response:
        """Each item's expected response shown alone ``[B, N]`` in ``state``."""
        return self.world.expected_response(state, None, self.choice)

    def leave_prob_after_click(self, state: Tensor, conversion: Tensor, chunk_rows: int = 0) -> Tensor:
        """Probability ``[B, N]`` of leaving after a click on each item shown alone (the world's
        leaving does not depend on conversions; ``chunk_rows`` is not needed)."""
        return self.world.leave_prob_after_click(state)

    def next_state(self, state: Tensor, items: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """The state after ``items`` ``[B, K]`` were shown and ``click`` ``[B, K]`` happened."""
        return self.world.update(state, items, click)

    def leave_prob(self, state: Tensor) -> Tensor:
        """Probability ``[B]`` of leaving now."""
        return self.world.leave_prob(state)


def clicked_only(value: Tensor, click: Tensor) -> Tensor:
    """``value`` where the item was clicked, NaN elsewhere (ratings and signals exist after a click)."""
    return torch.where(click > 0, value, torch.full_like(value, math.nan))


def _beta(g: torch.Generator, n: int) -> Tensor:
    """Beta(2, 2) samples drawn with ``g`` (median of three uniforms has this law)."""
    return torch.rand(n, 3, generator=g).median(1).values
