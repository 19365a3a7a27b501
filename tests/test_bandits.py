"""Tests for the bandit baselines: epsilon-greedy, LinUCB and linear Thompson sampling.

Bookkeeping and scores are checked by hand on tiny inputs; the known answer is a linear bandit
whose click probabilities are linear in known item features, where each learner must get close to
the best arm's click rate.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from recrl.algos.epsilon_greedy import EpsilonGreedy, slot_rewards
from recrl.algos.linucb import LinearFeatures, LinUCB
from recrl.algos.random import RandomPolicy
from recrl.algos.thompson import LinearThompson
from recrl.behavior.gru import GRUBehavior
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.metrics.online import run_episodes
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs, RecrlError, Response, Transition


def make_ctx(n_items: int, slate_size: int = 1, history_len: int = 2, horizon: int = 5,
             behavior: object = None) -> AlgoContext:
    return AlgoContext(n_items=n_items, slate_size=slate_size, history_len=history_len, horizon=horizon,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(n_items),
                       behavior=behavior, reward=ClickReward())


def obs_of(items: list, clicks: list) -> Obs:
    items_t = torch.tensor(items)
    return Obs(items=items_t, clicks=torch.tensor(clicks, dtype=torch.float32),
               step=torch.zeros(items_t.shape[0], dtype=torch.long))


def transition(obs: Obs, action: list, reward: list, last_clicks: list, valid: list) -> Transition:
    """A step whose next observation has the slate ``action`` and ``last_clicks`` as newest slot."""
    act = torch.tensor(action)
    next_obs = Obs(items=torch.cat([obs.items[:, 1:], act[:, None]], 1),
                   clicks=torch.cat([obs.clicks[:, 1:], torch.tensor(last_clicks)[:, None].float()], 1),
                   step=obs.step + 1)
    return Transition(obs=obs, action=act, reward=torch.tensor(reward), next_obs=next_obs,
                      done=torch.zeros(len(action)), valid=torch.tensor(valid))


def random_obs(b: int, n_items: int, k: int, gen: torch.Generator, history_len: int = 2) -> Obs:
    items = torch.randint(0, n_items + 1, (b, history_len, k), generator=gen)
    clicks = (torch.rand(b, history_len, k, generator=gen) < 0.4).float() * (items < n_items).float()
    return Obs(items=items, clicks=clicks, step=torch.zeros(b, dtype=torch.long))


# ----------------------------------------------------------------------------- per-slot rewards
def test_slot_rewards_go_to_the_clicked_slot_else_are_split_equally() -> None:
    obs = obs_of([[[5, 5, 5]]] * 3, [[[0.0, 0.0, 0.0]]] * 3)
    # row 0: slot 1 clicked; row 1: no click, no reward; row 2: reward but the history was reset
    # (autoreset replaced the user), so no click is visible: split equally
    batch = transition(obs, [[0, 1, 2]] * 3, [1.0, 0.0, 3.0], [[0, 1, 0], [0, 0, 0], [0, 0, 0]], [1.0] * 3)
    torch.testing.assert_close(slot_rewards(batch), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0],
                                                                  [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(slot_rewards(batch, "equal"),
                               torch.tensor([[1 / 3] * 3, [0.0] * 3, [1.0] * 3]))
    with pytest.raises(RecrlError, match="attribute"):
        EpsilonGreedy(make_ctx(6, slate_size=3), attribute="first")


# ----------------------------------------------------------------------------- epsilon-greedy
def test_epsilon_greedy_mean_bookkeeping_by_hand() -> None:
    algo = EpsilonGreedy(make_ctx(5, slate_size=2), epsilon_start=0.0, epsilon_end=0.0,
                         prior_mean=1.0, prior_count=1.0)
    obs = obs_of([[[5, 5], [5, 5]]] * 3, [[[0.0, 0.0], [0.0, 0.0]]] * 3)
    # row 0 clicks item 1; row 1 shows item 1 again, no click; row 2 is not a real transition
    algo.update(transition(obs, [[0, 1], [1, 2], [3, 4]], [1.0, 0.0, 1.0], [[0, 1], [0, 0], [1, 0]],
                           [1.0, 1.0, 0.0]))
    torch.testing.assert_close(algo.counts, torch.tensor([1.0, 2.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(algo.sums, torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    # (s + n0 m0) / (n + n0): untried items keep the optimistic prior
    torch.testing.assert_close(algo.means(), torch.tensor([0.5, 2 / 3, 0.5, 1.0, 1.0]))
    # exploring (epsilon 0) tries the optimistic untried items; evaluation ranks by s / n
    assert sorted(algo.act(obs, explore=True)[0].tolist()) == [3, 4]
    best = algo.act(obs, explore=False)
    assert best[:, 0].tolist() == [1, 1, 1] and set(best[:, 1].tolist()) <= {0, 2}
    # the zero prior with no pseudo-counts: untried items score 0
    zero = EpsilonGreedy(make_ctx(5), prior_mean=0.0, prior_count=0.0)
    torch.testing.assert_close(zero.means(), torch.zeros(5))


def test_epsilon_schedule_and_random_share() -> None:
    algo = EpsilonGreedy(make_ctx(50), epsilon_start=1.0, epsilon_end=0.2, epsilon_decay_steps=4)
    obs = obs_of([[[50], [50]]] * 4000, [[[0.0], [0.0]]] * 4000)
    first = algo.act(obs, explore=True)  # epsilon 1: all random, spread over the catalogue
    assert len(set(first[:, 0].tolist())) == 50
    for _ in range(5):
        algo.act(obs, explore=True)
    assert algo.epsilon() == pytest.approx(0.2)
    algo.counts[7], algo.sums[7] = 1.0, 1.0  # item 7 is the only one seen, with reward 1
    algo.prior_mean, algo.prior_count = 0.0, 0.0
    share = (algo.act(obs, explore=True)[:, 0] == 7).float().mean()
    assert float(share) == pytest.approx(0.8 + 0.2 / 50, abs=0.03)


# ----------------------------------------------------------------------------- LinUCB
def hand_ucb(**kwargs) -> LinUCB:
    """d = 2: one feature per item (1, 2, -1), no intercept, z = [x_i, x_i * u(s)]."""
    return LinUCB(make_ctx(3), lam=1.0, intercept=False, user_context=True, standardize=False,
                  item_features=torch.tensor([[1.0], [2.0], [-1.0]]), **kwargs)


def hand_step(algo: LinUCB) -> Obs:
    """One update: the user has clicked item 1 (u = 2), is shown item 0 (z = [1, 2]) and clicks."""
    obs = obs_of([[[3], [1]], [[3], [3]]], [[[0.0], [1.0]], [[0.0], [0.0]]])
    # row 1 is not a real transition: ignored
    algo.update(transition(obs, [[0], [1]], [1.0, 1.0], [[1], [1]], [1.0, 0.0]))
    return obs


def test_linucb_update_and_scores_by_hand() -> None:
    algo = hand_ucb(alpha=0.5)
    assert algo.features.d == 2
    obs = hand_step(algo)
    # A = I + [1, 2][1, 2]^T, b = 1 * [1, 2]
    torch.testing.assert_close(algo.posterior.A, torch.tensor([[2.0, 2.0], [2.0, 5.0]], dtype=torch.float64))
    torch.testing.assert_close(algo.posterior.b, torch.tensor([1.0, 2.0], dtype=torch.float64))
    # A^-1 = [[5, -2], [-2, 2]] / 6, theta = A^-1 b = [1/6, 1/3]
    torch.testing.assert_close(algo.posterior.theta, torch.tensor([1 / 6, 1 / 3], dtype=torch.float64))
    # user 0 (u = 2): z_i = x_i [1, 2], mean = x_i * 5/6, z^T A^-1 z = x_i^2 * 5/6
    # user 1 (u = 0): z_i = [x_i, 0], mean = x_i / 6, z^T A^-1 z = x_i^2 * 5/6
    x = torch.tensor([1.0, 2.0, -1.0])
    width = (x.square() * 5 / 6).sqrt()
    mean = torch.stack([x * 5 / 6, x / 6])
    torch.testing.assert_close(algo.scores(obs, explore=False), mean)
    torch.testing.assert_close(algo.scores(obs, explore=True), mean + 0.5 * width)
    # evaluation picks the best mean, exploration the best upper bound: user 1 mean 1/3 for item 1
    assert algo.act(obs, explore=False)[:, 0].tolist() == [1, 1]


def test_batched_scores_match_explicit_features() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = LinearFeatures(torch.randn(30, 6, generator=gen), dim=4)
    assert feats.x.shape == (30, 4) and feats.d == 9
    assert float(feats.x.norm(dim=1).mean()) == pytest.approx(1.0, rel=1e-5)
    obs = random_obs(5, 30, 2, gen)
    u = feats.user(obs)
    z = feats.z(u, torch.arange(30).expand(5, -1))  # [5, 30, 9], every item explicitly
    theta = torch.randn(9, generator=gen)
    root = torch.randn(9, 9, generator=gen)
    matrix = root @ root.T
    lifted = feats.lift(u)
    torch.testing.assert_close(feats.mean(theta, lifted), z @ theta, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.quad(matrix, lifted), torch.einsum("bnd,de,bne->bn", z, matrix, z),
                               atol=1e-4, rtol=1e-4)
    # u(s) is the mean feature vector of the clicked history items
    row = 0
    clicked = [int(i) for i, c in zip(obs.items[row].flatten(), obs.clicks[row].flatten(), strict=True)
               if c > 0]
    expected = feats.x[clicked].mean(0) if clicked else torch.zeros(4)
    torch.testing.assert_close(u[row], expected)


# ----------------------------------------------------------------------------- Thompson
def test_thompson_draws_have_the_posterior_covariance() -> None:
    algo = LinearThompson(make_ctx(3), v=0.7, lam=1.0, intercept=False, standardize=False,
                          item_features=torch.tensor([[1.0], [2.0], [-1.0]]))
    obs = hand_step(algo)
    draws = algo.posterior.sample(40000, 0.7, torch.Generator().manual_seed(0))
    a_inv = torch.tensor([[5.0, -2.0], [-2.0, 2.0]], dtype=torch.float64) / 6
    theta = torch.tensor([1 / 6, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(draws.mean(0), theta, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), 0.49 * a_inv, atol=0.01, rtol=0)
    # exploring: a fresh draw per user; evaluating: the posterior mean, as LinUCB without bonus
    # (u = 2 for all: z_0 = [1, 2], so score_0 = theta_s . z_0 has variance 0.49 * 5/6)
    same = obs_of([[[3], [1]]] * 20000, [[[0.0], [1.0]]] * 20000)
    explored = algo.scores(same, explore=True)
    assert not torch.allclose(explored[0], explored[1])
    assert float(explored[:, 0].mean()) == pytest.approx(5 / 6, abs=0.015)
    assert float(explored[:, 0].var()) == pytest.approx(0.49 * 5 / 6, rel=0.05)
    torch.testing.assert_close(algo.scores(obs, explore=False),
                               torch.tensor([[5 / 6, 5 / 3, -5 / 6], [1 / 6, 1 / 3, -1 / 6]]))


# ----------------------------------------------------------------------------- all three
def make_bandits(ctx: AlgoContext, features: Tensor | None) -> list:
    return [EpsilonGreedy(ctx, epsilon_start=0.5), LinUCB(ctx, item_features=features, feature_dim=3),
            LinearThompson(ctx, item_features=features, feature_dim=3)]


def test_slates_are_distinct_and_state_round_trips() -> None:
    gen = torch.Generator().manual_seed(1)
    ctx = make_ctx(12, slate_size=3)
    features = torch.randn(12, 5, generator=gen)
    for algo, fresh in zip(make_bandits(ctx, features), make_bandits(ctx, features), strict=True):
        assert algo.mode == "online"
        for _ in range(3):
            obs = random_obs(8, 12, 3, gen)
            slates = algo.act(obs, explore=True)
            assert slates.shape == (8, 3) and slates.dtype == torch.long
            assert all(len(set(row)) == 3 for row in slates.tolist())
            clicks = (torch.rand(8, 3, generator=gen) < 0.3).float()
            algo.update(transition(obs, slates.tolist(), clicks.sum(1).tolist(), clicks.tolist(), [1.0] * 8))
        fresh.load_state_dict(algo.state_dict())
        obs = random_obs(8, 12, 3, gen)
        assert torch.equal(fresh.act(obs, explore=True), algo.act(obs, explore=True)), type(algo).__name__
        assert torch.equal(fresh.act(obs, explore=False), algo.act(obs, explore=False))


def test_linear_bandits_read_item_features_off_the_behavior_model() -> None:
    model = GRUBehavior(n_items=12, dim=4, hidden=8)
    ctx = make_ctx(12, behavior=model)
    algo = LinUCB(ctx, feature_dim=3)
    assert algo.features.x.shape == (12, 3)  # 4 vector dims + the item bias, projected on 3 components
    assert algo.act(random_obs(4, 12, 1, torch.Generator().manual_seed(0)), explore=True).shape == (4, 1)
    with pytest.raises(RecrlError, match="needs item features"):
        LinearThompson(make_ctx(12))


# ----------------------------------------------------------------------------- known answer
class LinearClickWorld:
    """Every user clicks item ``i`` with probability ``0.5 + 0.4 * x_i . theta`` and never leaves."""

    def __init__(self, features: Tensor, theta: Tensor) -> None:
        self.features, self.n_items = features, features.shape[0]
        self.p = 0.5 + 0.4 * features @ theta

    def initial_state(self, n_users: int, generator: torch.Generator) -> Tensor:
        return torch.zeros(n_users, 1)

    def respond(self, state: Tensor, slates: Tensor, generator: torch.Generator, choice: object = None,
                available: Tensor | None = None) -> tuple[Response, Tensor]:
        p = self.p[slates]
        if available is not None:
            p = p * available
        click = (torch.rand(p.shape, generator=generator) < p).float()
        zeros = torch.zeros_like(p)
        return Response(click_prob=p, click=click, conversion_prob=zeros, conversion=zeros,
                        rating=zeros + 3.0, leave_prob=torch.zeros(len(state))), state


HORIZON = 50


def make_linear_world(n_items: int, seed: int) -> LinearClickWorld:
    """Random item features of norm 0.3..1 in 3 dimensions, ``theta = (0.6, -0.8, 0)``."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_items, 3, generator=gen)
    norm = torch.empty(n_items, 1).uniform_(0.3, 1.0, generator=gen)
    x = direction / direction.norm(dim=1, keepdim=True) * norm
    return LinearClickWorld(x, torch.tensor([0.6, -0.8, 0.0]))


@pytest.fixture(scope="module")
def linear_world() -> LinearClickWorld:
    return make_linear_world(40, seed=0)


def per_step_reward(policy, world: LinearClickWorld) -> float:
    env = RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=4)
    return float(run_episodes(policy, env, 256, seed=1).returns.mean()) / HORIZON


def train_and_score(algo, world: LinearClickWorld, steps: int = 300) -> float:
    never = 10**9
    trainer = Trainer(steps=steps, n_users=32, eval_every=never, log_every=never, checkpoint_every=never,
                      progress=False, device="cpu")
    trainer.fit(algo, RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=4),
                evaluate=lambda: {"eval/return": 0.0}, log=lambda step, metrics: None,
                save=lambda tag, step: None)
    return per_step_reward(algo, world)


@pytest.mark.parametrize("name", ["epsilon_greedy", "linucb", "thompson"])
def test_bandits_reach_the_best_arm(name: str, linear_world: LinearClickWorld) -> None:
    ctx = make_ctx(40, history_len=4, horizon=HORIZON)
    best, average = float(linear_world.p.max()), float(linear_world.p.mean())
    random = per_step_reward(RandomPolicy(ctx), linear_world)
    assert random == pytest.approx(average, abs=0.02) and best > average + 0.25
    algo = {"epsilon_greedy": lambda: EpsilonGreedy(ctx),  # context-free: the features are not used
            "linucb": lambda: LinUCB(ctx, item_features=linear_world.features),
            "thompson": lambda: LinearThompson(ctx, item_features=linear_world.features)}[name]()
    learned = train_and_score(algo, linear_world)
    assert learned >= 0.9 * best, (learned, best, random)
    assert learned > random + 0.2, (learned, best, random)


def test_linear_bandits_generalise_across_a_catalogue_too_large_to_try() -> None:
    # 2000 items, 30 steps of 32 users: fewer interactions than items. The context-free bandit
    # cannot even try every item; the linear ones learn theta from the features and find the best.
    world = make_linear_world(2000, seed=1)
    x = world.features
    ctx = make_ctx(2000, history_len=4, horizon=HORIZON)
    best = float(world.p.max())
    scores = {name: train_and_score(algo, world, steps=30) for name, algo in
              [("epsilon_greedy", EpsilonGreedy(ctx)), ("linucb", LinUCB(ctx, item_features=x)),
               ("thompson", LinearThompson(ctx, item_features=x))]}
    for name in ("linucb", "thompson"):
        assert scores[name] >= 0.95 * best, scores
        assert scores[name] > scores["epsilon_greedy"] + 0.08, scores
