"""Offline RL from logged data: behaviour cloning, discrete CQL, discrete BCQ and SQN.

Unit tests check each loss against a hand or direct computation on tiny logs. The learning
tests are the known answer: logs of a POOR logging policy in the clickbait world of
``tests/clickbait.py`` (70% the myopic clickbait item, 30% uniform), from which behaviour
cloning learns to serve clickbait while the offline RL learners, never touching the
environment, find policies with a clearly higher ground-truth return.
"""

from __future__ import annotations

import copy
import math

import clickbait
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recrl.algos.bc import BehaviorCloning
from recrl.algos.bcq import DiscreteBCQ, allowed_items
from recrl.algos.cql import DiscreteCQL, cql_regulariser
from recrl.algos.logged import LoggedSteps
from recrl.algos.nets import double_q_target
from recrl.algos.sqn import SQN
from recrl.algos.topk_reinforce import TopKOffPolicyReinforce
from recrl.data.preprocess import log_frame
from recrl.data.synthetic import SyntheticWorld, clicked_only
from recrl.rewards import ClickReward, ConversionReward, MixReward, RatingReward, WatchReward
from recrl.types import AlgoContext, Interactions, Obs, RecrlError

SMALL = dict(dim=8, hidden=16)


def interactions(log: pd.DataFrame, n_items: int) -> Interactions:
    return Interactions(train=log, valid=log.iloc[:0], items=pd.DataFrame(index=range(n_items)),
                        n_users=int(log["user"].max()) + 1, n_items=n_items)


def context(log: pd.DataFrame | None, n_items: int, history_len: int, horizon: int, reward=None,
            seed: int = 0) -> AlgoContext:
    return AlgoContext(n_items=n_items, slate_size=1, history_len=history_len, horizon=horizon,
                       device=torch.device("cpu"), seed=seed, item_popularity=torch.zeros(n_items),
                       behavior=None, reward=reward or ClickReward(),
                       interactions=None if log is None else interactions(log, n_items))


def toy_log(n_users: int = 12, n_items: int = 3, steps: int = 3, seed: int = 0) -> pd.DataFrame:
    """Random sessions of ``steps`` rows per user with random clicks."""
    rng = np.random.default_rng(seed)
    n = n_users * steps
    click = (rng.random(n) < 0.5).astype(np.float32)
    return log_frame({"user": np.repeat(np.arange(n_users), steps),
                      "time": np.tile(np.arange(steps), n_users), "item": rng.integers(0, n_items, n),
                      "click": click})


def huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5


# ----------------------------------------------------------------------------- shared pieces
def test_double_q_target_by_hand() -> None:
    q_next = torch.tensor([[1.0, 3.0, 2.0], [0.0, 5.0, 4.0]])
    q_next_target = torch.tensor([[10.0, 20.0, 30.0], [7.0, 8.0, 9.0]])
    reward, done = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    # the online net picks item 1 in row 0, the target net values it at 20
    y = double_q_target(q_next, q_next_target, reward, done, 0.9)
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 20.0, 0.5])
    # with item 1 not allowed, row 0's argmax is item 2 (30 under the target net)
    allowed = torch.tensor([[True, False, True], [True, True, True]])
    y = double_q_target(q_next, q_next_target, reward, done, 0.9, allowed=allowed)
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 30.0, 0.5])


# ----------------------------------------------------------------------------- BC
def test_bc_is_the_argmax_of_logged_frequencies() -> None:
    # every session: first item 0/1/2 with frequencies 5:3:2, second item 3 after item 0 and
    # item 4 after items 1 and 2
    first = np.array([0] * 5 + [1] * 3 + [2] * 2)
    second = np.where(first == 0, 3, 4)
    n = len(first)
    log = log_frame({"user": np.repeat(np.arange(n), 2), "time": np.tile([0, 1], n),
                     "item": np.stack([first, second], 1).reshape(-1), "click": np.zeros(2 * n)})
    algo = BehaviorCloning(context(log, n_items=5, history_len=2, horizon=2), lr=1e-2, **SMALL)
    for _ in range(300):
        algo.update(algo.dataset)  # full batch: the exact maximum-likelihood gradient
    start = algo.dataset.transitions.obs.index(torch.tensor([0, 2 * 5, 2 * 8]))  # step 0; after 0, 1, 2
    after = Obs(items=torch.tensor([[[5], [0]], [[5], [1]], [[5], [2]]]), clicks=torch.zeros(3, 2, 1),
                step=torch.ones(3, dtype=torch.long))
    with torch.no_grad():
        probs = torch.softmax(algo.policy(start), 1)
    assert probs[0, :3].tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.02)  # maximum likelihood
    assert algo.act(start, explore=False)[:, 0].tolist() == [0, 0, 0]
    assert algo.act(after, explore=False)[:, 0].tolist() == [3, 4, 4]
    sampled = torch.cat([algo.act(start, explore=True) for _ in range(100)])[:, 0]
    assert set(sampled.tolist()) >= {0, 1, 2}  # explore samples from the fitted policy


# ----------------------------------------------------------------------------- CQL
def test_cql_regulariser_by_hand_on_a_toy_q_table() -> None:
    q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, -1.0, 0.0]])
    action = torch.tensor([[0], [2], [0]])
    by_hand = [math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 1.0,  # 2.4076
               math.log(3.0) - 0.0,                                       # 1.0986
               math.log(math.exp(2) + math.exp(-1) + math.exp(0)) - 2.0]  # 0.1698
    assert float(cql_regulariser(q, action)) == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    # zero exactly when Q puts all its (soft) mass on the logged item
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert float(cql_regulariser(peaked, torch.tensor([[0]]))) == pytest.approx(0.0, abs=1e-6)


def test_cql_update_is_td_plus_alpha_times_regulariser() -> None:
    algo = DiscreteCQL(context(toy_log(), n_items=3, history_len=2, horizon=3), alpha=0.7, gamma=0.8,
                       **SMALL)
    for p in algo.q_target.parameters():  # online and target nets differ, as after training
        p.data.add_(0.1)
    batch = algo.dataset.sample(16, torch.Generator().manual_seed(1))
    tr = batch.transitions
    with torch.no_grad():
        q, q_next, q_next_target = algo.q(tr.obs), algo.q(tr.next_obs), algo.q_target(tr.next_obs)
    td, reg = [], []
    for i in range(16):
        a = int(tr.action[i, 0])
        best = int(q_next[i].argmax())
        y = float(tr.reward[i]) + 0.8 * (1 - float(tr.done[i])) * float(q_next_target[i, best])
        td.append(huber(float(q[i, a]) - y))
        reg.append(math.log(sum(math.exp(float(v)) for v in q[i])) - float(q[i, a]))
    stats = algo.update(batch)
    assert float(stats["train/td_loss"]) == pytest.approx(np.mean(td), rel=1e-5, abs=1e-6)
    assert float(stats["train/cql_loss"]) == pytest.approx(np.mean(reg), rel=1e-5)
    assert float(stats["train/loss"]) == pytest.approx(np.mean(td) + 0.7 * np.mean(reg), rel=1e-5)


# ----------------------------------------------------------------------------- BCQ
def test_bcq_allowed_mask_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))
    # ratios to the most likely item: row 0 [1, 0.6, 0.2, 0.2]; row 1 [1/7, 1/7, 1/7, 1]
    assert allowed_items(logits, 0.3).tolist() == [[True, True, False, False], [False, False, False, True]]
    assert allowed_items(logits, 0.1).tolist() == [[True, True, True, True], [True, True, True, True]]
    assert allowed_items(logits, 0.7).tolist() == [[True, False, False, False], [False, False, False, True]]
    assert allowed_items(logits, 0.0).all()
    assert allowed_items(logits + 3.0, 0.3).equal(allowed_items(logits, 0.3))  # logits, not probabilities
    assert allowed_items(logits, 1.0).sum(1).tolist() == [1, 1]  # only the argmax: behaviour cloning


def test_bcq_target_and_actions_use_only_allowed_items() -> None:
    algo = DiscreteBCQ(context(toy_log(), n_items=3, history_len=2, horizon=3), threshold=0.3, gamma=0.8,
                       **SMALL)
    for p in algo.q_target.parameters():
        p.data.add_(0.1)
    batch = algo.dataset.sample(16, torch.Generator().manual_seed(1))
    tr = batch.transitions
    with torch.no_grad():
        q, q_next, q_next_target = algo.q(tr.obs), algo.q(tr.next_obs), algo.q_target(tr.next_obs)
        g_logits, g_next = algo.g(tr.obs), algo.g(tr.next_obs)
    td = []
    for i in range(16):
        g = torch.softmax(g_next[i], 0)
        allowed = [j for j in range(3) if float(g[j] / g.max()) > 0.3]
        best = max(allowed, key=lambda j: float(q_next[i, j]))
        y = float(tr.reward[i]) + 0.8 * (1 - float(tr.done[i])) * float(q_next_target[i, best])
        td.append(huber(float(q[i, int(tr.action[i, 0])]) - y))
    imitation = float(F.cross_entropy(g_logits, tr.action[:, 0]))
    stats = algo.update(batch)
    assert float(stats["train/td_loss"]) == pytest.approx(np.mean(td), rel=1e-5, abs=1e-6)
    assert float(stats["train/imitation_loss"]) == pytest.approx(imitation, rel=1e-5)
    expected = np.mean(td) + imitation + 0.01 * float(g_logits.pow(2).mean())
    assert float(stats["train/loss"]) == pytest.approx(expected, rel=1e-5)
    # acting: with G made certain of item 2, only item 2 is allowed whatever Q says
    with torch.no_grad():
        algo.g.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
        algo.q.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    assert algo.act(tr.obs, explore=False)[:, 0].tolist() == [2] * 16


# ----------------------------------------------------------------------------- SQN
def test_sqn_losses_match_a_direct_computation() -> None:
    algo = SQN(context(toy_log(), n_items=3, history_len=2, horizon=3), gamma=0.8, **SMALL)
    for p in algo.net_target.parameters():
        p.data.add_(0.1)
    batch = algo.dataset.sample(16, torch.Generator().manual_seed(1))
    tr = batch.transitions
    with torch.no_grad():
        logits, q = algo.net(tr.obs)
        q_next, q_next_target = algo.net(tr.next_obs)[1], algo.net_target(tr.next_obs)[1]
    ce, td = [], []
    for i in range(16):
        a = int(tr.action[i, 0])
        ce.append(math.log(sum(math.exp(float(v)) for v in logits[i])) - float(logits[i, a]))
        best = int(q_next[i].argmax())
        y = float(tr.reward[i]) + 0.8 * (1 - float(tr.done[i])) * float(q_next_target[i, best])
        td.append(huber(float(q[i, a]) - y))
    stats = algo.update(batch)
    assert float(stats["train/supervised_loss"]) == pytest.approx(np.mean(ce), rel=1e-5)
    assert float(stats["train/td_loss"]) == pytest.approx(np.mean(td), rel=1e-5, abs=1e-6)
    assert float(stats["train/loss"]) == pytest.approx(np.mean(ce) + np.mean(td), rel=1e-5)


def test_sqn_acts_with_the_chosen_head() -> None:
    ctx = context(toy_log(), n_items=3, history_len=2, horizon=3)
    obs = LoggedSteps.from_context(ctx).transitions.obs
    for head, item in (("supervised", 1), ("q", 2)):
        algo = SQN(ctx, act_with=head, **SMALL)
        with torch.no_grad():
            algo.net.supervised.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
            algo.net.q.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
        assert algo.act(obs, explore=False)[:, 0].unique().tolist() == [item]
    with pytest.raises(RecrlError, match="act_with"):
        SQN(ctx, act_with="both")


# ----------------------------------------------------------------------------- all four
ALGOS = {"bc": BehaviorCloning, "cql": DiscreteCQL, "bcq": DiscreteBCQ, "sqn": SQN}


@pytest.mark.parametrize("name", list(ALGOS))
def test_state_dict_round_trip(name: str) -> None:
    ctx = context(toy_log(), n_items=3, history_len=2, horizon=3)
    algo = ALGOS[name](ctx, **SMALL, **({"target_update": 2} if name != "bc" else {}))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        algo.update(algo.dataset.sample(8, gen))
    algo.act(algo.dataset.transitions.obs, explore=True)
    state = copy.deepcopy(algo.state_dict())
    clone = ALGOS[name](context(toy_log(), n_items=3, history_len=2, horizon=3, seed=7), **SMALL,
                        **({"target_update": 2} if name != "bc" else {}))
    clone.load_state_dict(state)
    obs = algo.dataset.transitions.obs
    assert torch.equal(algo.act(obs, explore=True), clone.act(obs, explore=True))  # generator restored
    batch = algo.dataset.sample(8, gen)
    for _ in range(2):  # optimizer moments, counters and the target sync schedule carried over
        a, b = algo.update(batch), clone.update(batch)
        assert float(a["train/loss"]) == pytest.approx(float(b["train/loss"]), rel=1e-6)
    assert torch.equal(algo.act(obs, explore=False), clone.act(obs, explore=False))
    assert algo.mode == "offline" and isinstance(algo.dataset, LoggedSteps)


@pytest.mark.parametrize("name", [*ALGOS, "topk_reinforce"])
def test_skip_shown_keeps_the_history_off_the_served_slates(name: str) -> None:
    """With ``skip_shown`` the items in a user's history score ``-inf`` and are never served,
    greedily or sampled; without it (the default) they are scored as any other."""
    cls = ALGOS.get(name, TopKOffPolicyReinforce)
    ctx = context(toy_log(n_items=6), n_items=6, history_len=2, horizon=3)
    obs = LoggedSteps.from_context(ctx).transitions.obs
    shown = [set(row.flatten().tolist()) - {6} for row in obs.items]  # 6: padding
    assert any(shown)
    algo = cls(ctx, **SMALL, skip_shown=True)
    scores = algo.scores(obs)
    assert all(bool(torch.isinf(scores[i, sorted(seen)]).all()) for i, seen in enumerate(shown) if seen)
    for explore in (False, True):
        served = algo.act(obs, explore=explore)[:, 0].tolist()
        assert not any(item in seen for item, seen in zip(served, shown, strict=True))
    plain = cls(ctx, **SMALL).scores(obs)
    assert name == "bcq" or bool(torch.isfinite(plain).all())  # BCQ masks unlikely items anyway


@pytest.mark.parametrize("name", list(ALGOS))
def test_offline_algorithms_need_logs_of_single_items(name: str) -> None:
    with pytest.raises(RecrlError, match="logged data"):
        ALGOS[name](context(None, n_items=3, history_len=2, horizon=3), **SMALL)


def test_logged_rewards_other_than_clicks() -> None:
    nan = float("nan")
    log = log_frame({"user": [0, 0, 1, 1], "time": [0, 1, 0, 1], "item": [0, 1, 2, 0],
                     "click": [1.0, 0.0, 1.0, 1.0], "conversion": [1.0, 0.0, 0.0, 1.0],
                     "rating": [4.0, nan, nan, 2.0], "watch": [0.5, nan, 0.2, nan]})
    by_hand = {"ctr": [1, 0, 1, 1], "conversion": [1, 0, 0, 1], "rating": [4, 0, 0, 2],
               "watch": [0.5, 0, 0.2, 0], "mix": [1 + 2 + 2 + 0.5, 0, 1 + 0.2, 1 + 2 + 1]}
    rewards = {"ctr": ClickReward(), "conversion": ConversionReward(), "rating": RatingReward(),
               "watch": WatchReward(), "mix": MixReward(ctr=1.0, conversion=2.0, rating=0.5, watch=1.0)}
    for name, reward in rewards.items():
        ctx = context(log, n_items=3, history_len=2, horizon=2, reward=reward)
        steps = LoggedSteps.from_context(ctx)
        assert steps.transitions.reward.tolist() == pytest.approx(by_hand[name]), name
        algo = DiscreteCQL(ctx, **SMALL)
        stats = algo.update(algo.dataset.sample(8, torch.Generator().manual_seed(0)))
        assert math.isfinite(float(stats["train/loss"])), name


# ----------------------------------------------------------------------------- learning
# The known-answer world of tests/clickbait.py, logged by a poor policy.
LOG_USERS, BAIT_SHARE = 10_000, 0.7


class PoorLogger:
    """The logging policy: the myopic clickbait item with probability 0.7, else uniform."""

    def __init__(self, bait_item: int, seed: int) -> None:
        self.bait_item = bait_item
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, obs: Obs, explore: bool) -> torch.Tensor:
        b = obs.batch_size
        coin = torch.rand(b, generator=self.generator) < BAIT_SHARE
        uniform = torch.randint(0, clickbait.N_ITEMS, (b,), generator=self.generator)
        return torch.where(coin, self.bait_item, uniform)[:, None]

    def propensity(self, items: torch.Tensor) -> torch.Tensor:
        return (1 - BAIT_SHARE) / clickbait.N_ITEMS + BAIT_SHARE * (items == self.bait_item).float()


def logged_sessions(world: SyntheticWorld, n_users: int, seed: int) -> pd.DataFrame:
    """One session per user under :class:`PoorLogger`, one row per step (the log's columns)."""
    env = clickbait.make_env(world)
    obs = env.reset(n_users, seed=seed)
    # the logger's generator must not share the environment's seed: two CPU generators with one
    # seed draw the same stream, which would tie the logged items to the users' latent tastes
    logger = PoorLogger(clickbait.myopic_item(world), seed=seed + 10_000)
    users = torch.arange(n_users)
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("user", "item", "time", "click", "conversion",
                                                              "rating", "watch", "leave", "propensity")}
    for t in range(clickbait.HORIZON):
        alive = env.alive.clone()
        items = logger.act(obs, explore=True)
        obs, _, _, info = env.step(items)
        r, item = info.response, items[:, 0]
        for key, value in (("user", users), ("item", item), ("time", torch.full((n_users,), t)),
                           ("click", r.click[:, 0]), ("conversion", r.conversion[:, 0]),
                           ("rating", clicked_only(r.rating[:, 0], r.click[:, 0])),
                           ("watch", clicked_only(r.watch[:, 0], r.click[:, 0])),
                           ("leave", info.terminated.float()), ("propensity", logger.propensity(item))):
            columns[key].append(value[alive])
    frame = pd.DataFrame({k: torch.cat(v).numpy() for k, v in columns.items()})
    return log_frame(frame.sort_values(["user", "time"], kind="stable").reset_index(drop=True))


@pytest.fixture(scope="module")
def poor_log(clickbait_world: SyntheticWorld) -> pd.DataFrame:
    return logged_sessions(clickbait_world, LOG_USERS, seed=1)


def offline_context(log: pd.DataFrame) -> AlgoContext:
    return context(log, n_items=clickbait.N_ITEMS, history_len=clickbait.HISTORY, horizon=clickbait.HORIZON)


def train_offline(algo, world: SyntheticWorld, steps: int) -> float:
    """Offline training: the environment is never stepped, the policy meets the world only after."""
    return clickbait.train(algo, world, steps=steps, batch_size=256)


@pytest.fixture(scope="module")
def references(clickbait_world: SyntheticWorld, poor_log: pd.DataFrame) -> dict[str, float]:
    """Returns of behaviour cloning and of the logging policy, and the logged share of clickbait."""
    world = clickbait_world
    bc = BehaviorCloning(offline_context(poor_log), encoder="gru", hidden=64)
    return {"bc": train_offline(bc, world, steps=500),
            "logging": clickbait.mean_return(PoorLogger(clickbait.myopic_item(world), seed=0), world),
            "bait_share_logged": float((poor_log["item"] == clickbait.myopic_item(world)).mean())}


def assert_beats_cloning(learned: float, references: dict[str, float]) -> None:
    assert learned > 1.3 * references["bc"], (learned, references)
    assert learned > 1.3 * references["logging"], (learned, references)


@pytest.mark.slow
def test_cloning_imitates_the_poor_logging_policy(references: dict[str, float]) -> None:
    assert references["bait_share_logged"] > 0.7
    # BC serves the clickbait item like the logger (plus its 30% random): no better than it
    assert references["bc"] < 1.05 * references["logging"], references


@pytest.mark.slow
def test_cql_beats_behaviour_cloning(clickbait_world: SyntheticWorld, poor_log: pd.DataFrame,
                                     references: dict[str, float]) -> None:
    algo = DiscreteCQL(offline_context(poor_log), alpha=0.05, gamma=0.99, target_update=25, encoder="gru",
                       hidden=64)
    assert_beats_cloning(train_offline(algo, clickbait_world, steps=1000), references)


@pytest.mark.slow
def test_bcq_beats_behaviour_cloning(clickbait_world: SyntheticWorld, poor_log: pd.DataFrame,
                                     references: dict[str, float]) -> None:
    # the logger's non-bait items have G(a|s) / max G ~ 0.03 / 0.73: the threshold must admit them
    algo = DiscreteBCQ(offline_context(poor_log), threshold=0.01, gamma=0.99, target_update=25, encoder="gru",
                       hidden=64)
    assert_beats_cloning(train_offline(algo, clickbait_world, steps=1000), references)


@pytest.mark.slow
def test_sqn_q_head_beats_behaviour_cloning(clickbait_world: SyntheticWorld, poor_log: pd.DataFrame,
                                            references: dict[str, float]) -> None:
    algo = SQN(offline_context(poor_log), gamma=0.99, target_update=25, hidden=64, act_with="q")
    learned = train_offline(algo, clickbait_world, steps=1000)
    algo.act_with = "supervised"  # the paper's recommending head imitates the log it was trained on
    supervised = clickbait.mean_return(algo, clickbait_world)
    assert_beats_cloning(learned, references)
    assert supervised < 1.05 * references["bc"], (supervised, learned, references)
