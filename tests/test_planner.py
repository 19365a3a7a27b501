"""The survival-aware planner (``algo=planner``) against hand-computed scores."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import Tensor

from recrl.algos.a2c import A2C
from recrl.algos.demonstrations import AUTO_DEMO_ROWS, PlannerDemonstrations, demonstration_users
from recrl.algos.dqn import DQN
from recrl.algos.greedy import GreedyPolicy
from recrl.algos.nets import gradient_step
from recrl.algos.planner import MixedModel, SurvivalPlanner, leave_after_click
from recrl.algos.ppo import PPO
from recrl.algos.reinforce import Reinforce
from recrl.algos.slateq import SlateQ
from recrl.behavior.features import side_features
from recrl.behavior.gru import GRUBehavior
from recrl.buffer import Rollout
from recrl.data.synthetic import HistoryBelief, SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.train import truth_planning_model
from recrl.types import AlgoContext, Obs, RecrlError, Response, Transition

HORIZON = 5
# item 0: clickbait (clicked most, a click on it makes half the users leave); 1: good; 2: fair
CLICK = torch.tensor([0.9, 0.5, 0.3])
LEAVE_AFTER_CLICK = torch.tensor([0.5, 0.0, 0.1])


class StubModel:
    """A user model with fixed per-item click probabilities whose state is the leave probability
    that the last clicked item left behind."""

    def encode(self, obs: Obs) -> Tensor:
        return torch.zeros(obs.batch_size, 1)

    def score_all(self, state: Tensor) -> Response:
        click = CLICK.expand(state.shape[0], -1)
        zeros = torch.zeros_like(click)
        return Response(click_prob=click, click=click, conversion_prob=zeros, conversion=zeros,
                        rating=zeros, leave_prob=state[:, 0])

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        return (click * LEAVE_AFTER_CLICK[slates]).sum(1, keepdim=True)

    def leave_prob(self, state: Tensor) -> Tensor:
        return state[:, 0]


def make_ctx(behavior: object, slate_size: int = 1) -> AlgoContext:
    return AlgoContext(n_items=3, slate_size=slate_size, history_len=2, horizon=HORIZON,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(3),
                       behavior=behavior, reward=ClickReward())


def obs_at(steps: list[int], history: list[list[int]] | None = None) -> Obs:
    b = len(steps)
    items = torch.full((b, 2, 1), 3) if history is None else torch.tensor(history)[:, :, None]
    return Obs(items=items, clicks=torch.zeros(b, 2, 1), step=torch.tensor(steps))


def test_scores_are_reward_times_survival_to_the_end() -> None:
    # chunk_rows=3: one user (3 items) per chunk
    planner = SurvivalPlanner(make_ctx(StubModel()), caution=1.0, chunk_rows=3)
    scores = planner.scores(obs_at([0, 4]))
    stay = 1.0 - LEAVE_AFTER_CLICK
    assert torch.allclose(scores[0], CLICK * stay**4)  # 4 steps left after the first
    assert torch.allclose(scores[1], CLICK)  # the last step: nothing left to lose
    # early it serves the good item, at the end the clickbait; greedy serves clickbait throughout
    assert planner.act(obs_at([0, 4]), explore=False)[:, 0].tolist() == [1, 0]
    assert GreedyPolicy(make_ctx(StubModel())).act(obs_at([0, 4]), explore=False)[:, 0].tolist() == [0, 0]


class OtherRates(StubModel):
    """:class:`StubModel` with other clicks and leave rates: the second part of a mixed model."""

    click = torch.tensor([0.2, 0.6, 0.4])
    leave = torch.tensor([0.3, 0.2, 0.0])

    def score_all(self, state: Tensor) -> Response:
        response = super().score_all(state)
        click = self.click.expand(state.shape[0], -1)
        return replace(response, click_prob=click, click=click)

    def next_state(self, state: Tensor, slates: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        return (click * self.leave[slates]).sum(1, keepdim=True)


def test_a_mixed_model_plans_with_one_models_responses_and_the_others_leaving() -> None:
    """Scores by hand: the responses part's clicks times the leaving part's survival; each part
    alone, or mixed with itself, plans as it does alone."""
    obs = obs_at([0, 3])
    mixed = SurvivalPlanner(make_ctx(StubModel()), caution=1.0, model=MixedModel(StubModel(), OtherRates()))
    scores = mixed.scores(obs)
    assert torch.allclose(scores[0], CLICK * (1.0 - OtherRates.leave) ** 4)
    assert torch.allclose(scores[1], CLICK * (1.0 - OtherRates.leave) ** 1)
    swapped = SurvivalPlanner(make_ctx(StubModel()), caution=1.0, model=MixedModel(OtherRates(), StubModel()))
    assert torch.allclose(swapped.scores(obs)[0], OtherRates.click * (1.0 - LEAVE_AFTER_CLICK) ** 4)
    alone = SurvivalPlanner(make_ctx(StubModel()), caution=1.0).scores(obs)
    itself = SurvivalPlanner(make_ctx(StubModel()), caution=1.0, model=MixedModel(StubModel(), StubModel()))
    assert torch.equal(itself.scores(obs), alone)


def test_a_mixed_models_state_is_both_parts_and_steps_each_with_its_own_model() -> None:
    world = SyntheticWorld(n_items=12, n_users=10, n_topics=3, horizon=HORIZON, seed=0)
    truth, rates = HistoryBelief(world), OtherRates()
    model = MixedModel(truth, rates)
    with pytest.raises(RecrlError, match="encode must run"):
        model.leave_prob(torch.zeros(2, 8))
    obs = Obs(items=torch.tensor([[[12], [1]], [[4], [5]]]),  # 12: padding
              clicks=torch.tensor([[[0.0], [1.0]], [[0.0], [1.0]]]), step=torch.tensor([1, 2]))
    state = model.encode(obs)
    own = truth.encode(obs)
    assert torch.equal(state, torch.cat([own, rates.encode(obs)], 1))
    slates, click = torch.tensor([[2], [0]]), torch.tensor([[1.0], [1.0]])
    after = model.next_state(state, slates, click, torch.zeros(2, 1))
    assert torch.allclose(after[:, :-1], truth.next_state(own, slates, click, torch.zeros(2, 1)))
    assert torch.equal(after[:, -1], OtherRates.leave[slates[:, 0]])
    assert torch.equal(model.leave_prob(after), after[:, -1])
    assert torch.equal(model.score_all(state).click_prob, truth.score_all(own).click_prob)
    with pytest.raises(RecrlError, match="lacks encode"):
        MixedModel(object(), rates)


def test_the_leave_after_each_click_step_by_step_is_the_models_batched_one() -> None:
    """A model without a batched ``leave_prob_after_click`` gets it from one ``next_state`` per
    (user, item) pair, in chunks: the synthetic world's own batched form, by another road."""
    world = SyntheticWorld(n_items=12, n_users=10, n_topics=3, horizon=HORIZON, seed=0)
    truth = HistoryBelief(world)

    class StepByStep:  # the belief's methods, its batched leave form left out
        encode, score_all = truth.encode, truth.score_all
        next_state, leave_prob = truth.next_state, truth.leave_prob

    g = torch.Generator().manual_seed(0)
    obs = Obs(items=torch.randint(0, 12, (5, 3, 1), generator=g),
              clicks=(torch.rand(5, 3, 1, generator=g) < 0.5).float(), step=torch.tensor([2] * 5))
    state = truth.encode(obs)
    conversion = truth.score_all(state).conversion_prob
    fast = leave_after_click(truth, state, conversion, chunk_rows=24)
    slow = leave_after_click(StepByStep(), state, conversion, chunk_rows=24)  # two users a chunk
    assert fast.shape == (5, 12)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_caution_scales_the_remaining_steps() -> None:
    stay = 1.0 - LEAVE_AFTER_CLICK
    cautious = SurvivalPlanner(make_ctx(StubModel()), caution=2.5).scores(obs_at([2]))
    assert torch.allclose(cautious[0], CLICK * stay ** (2.5 * 2))
    myopic = SurvivalPlanner(make_ctx(StubModel()), caution=0.0).scores(obs_at([0]))
    assert torch.allclose(myopic[0], CLICK)


def test_skip_shown_masks_the_history() -> None:
    planner = SurvivalPlanner(make_ctx(StubModel()), caution=1.0)
    assert planner.act(obs_at([0], [[1, 3]]), explore=False)[0, 0] == 2  # item 1 was just shown
    keep = SurvivalPlanner(make_ctx(StubModel()), caution=1.0, skip_shown=False)
    assert keep.act(obs_at([0], [[1, 3]]), explore=False)[0, 0] == 1


def test_chunking_does_not_change_the_scores() -> None:
    model = GRUBehavior(n_items=20, dim=4, hidden=8)
    ctx = AlgoContext(n_items=20, slate_size=2, history_len=3, horizon=HORIZON, device=torch.device("cpu"),
                      seed=0, item_popularity=torch.zeros(20), behavior=model, reward=ClickReward())
    g = torch.Generator().manual_seed(0)
    obs = Obs(items=torch.randint(0, 21, (7, 3, 2), generator=g),
              clicks=(torch.rand(7, 3, 2, generator=g) < 0.3).float(),
              step=torch.randint(0, HORIZON, (7,), generator=g))
    whole = SurvivalPlanner(ctx).scores(obs)
    chunked = SurvivalPlanner(ctx, chunk_rows=30).scores(obs)  # one user (20 items) per chunk
    assert whole.shape == (7, 20)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert SurvivalPlanner(ctx).act(obs, explore=False).shape == (7, 2)


@pytest.mark.parametrize(("kwargs", "message"), [({"behavior": None}, "sequential behavior model"),
                                                 ({"caution": -1.0}, "caution")])
def test_bad_settings_say_what_is_wrong(kwargs: dict, message: str) -> None:
    behavior = kwargs.pop("behavior", StubModel())
    with pytest.raises(RecrlError, match=message):
        SurvivalPlanner(make_ctx(behavior), **kwargs)


# ----------------------------------------------------------------------------- DQfD demonstrations
def tiny_world_env() -> tuple[SyntheticWorld, RecEnv]:
    world = SyntheticWorld(n_items=20, n_users=10, n_topics=2, horizon=HORIZON, seed=0)
    return world, RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=3)


def gru_ctx(n_items: int = 20, slate_size: int = 1) -> AlgoContext:
    return AlgoContext(n_items=n_items, slate_size=slate_size, history_len=3, horizon=HORIZON,
                       device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(n_items),
                       behavior=GRUBehavior(n_items=n_items, dim=4, hidden=8), reward=ClickReward())


def test_demonstrations_are_the_planners_steps_of_users_still_there() -> None:
    _, env = tiny_world_env()
    planner = SurvivalPlanner(gru_ctx())
    env.autoreset = True  # as the training loop leaves it
    obs, slates = planner.demonstrations(env, n_users=5, seed=3, batch=4)  # 2 batches of 4 users
    assert env.autoreset is True  # restored
    lengths = []
    for chunk in range(2):  # replay the same sessions: one row per step a user was there
        env.autoreset = False
        o = env.reset(4, seed=3 + chunk)
        for _ in range(HORIZON):
            served = planner.act(o, explore=False)
            lengths.append(int(env.alive.sum()))
            o, _, _, _ = env.step(served)
        env.autoreset = True
    assert slates.shape == (sum(lengths), 1) and obs.items.shape == (sum(lengths), 3, 1)
    assert torch.equal(planner.act(obs, explore=False), slates)  # each row is the planner's choice
    assert int(obs.step.max()) < HORIZON


def record_by_hand(algo: object, fresh: bool = False) -> tuple[Obs, Tensor, Tensor]:
    """Four hand-made demonstration steps (histories of 3 slates of 2 among 6 items, padding 6)
    set as ``algo``'s recorded ones: ``(observations, the planner's slates, the rows the next
    draw of 3 takes)``; ``fresh``: no history holds a demonstrated item."""
    g = torch.Generator().manual_seed(0)
    obs = Obs(items=torch.randint(0, 7, (4, 3, 2), generator=g), clicks=torch.zeros(4, 3, 2),
              step=torch.zeros(4, dtype=torch.long))
    slates = torch.tensor([[0, 1], [2, 3], [4, 5], [1, 2]])
    if fresh:
        obs.items[:, :, :] = torch.where(torch.isin(obs.items, slates), 6, obs.items)
    algo.demos.data = (obs, slates)
    rows = torch.randint(0, 4, (3,), generator=torch.Generator().set_state(algo.generator.get_state()))
    return obs, slates, rows


def margin_loss_by_hand(values: Tensor, obs: Obs, slates: Tensor, rows: Tensor, margin: float) -> float:
    """DQfD's margin loss for the drawn ``rows`` (``values`` ``[len(rows), 6]``: each item's value
    there), item by item: the rivals are the items not in the history and the demonstrated ones."""
    expected = 0.0
    for r, row in enumerate(rows.tolist()):
        shown = set(obs.items[row].flatten().tolist())
        demo = slates[row].tolist()
        candidates = [float(values[r, a]) + (0.0 if a in demo else margin) for a in range(6)
                      if a not in shown or a in demo]
        rival = sum(sorted(candidates, reverse=True)[:2]) / 2
        expected += (rival - sum(float(values[r, a]) for a in demo) / 2) / len(rows)
    return expected


def test_demo_margin_loss_by_hand() -> None:
    ctx = gru_ctx(n_items=6, slate_size=2)
    algo = DQN(ctx, dim=4, hidden=8, demo_margin=0.5, demo_batch=3, skip_shown=True)
    obs, slates, rows = record_by_hand(algo)
    with torch.no_grad():
        q = algo.q(obs.index(rows))
    expected = margin_loss_by_hand(q, obs, slates, rows, 0.5)
    demo_obs, shown = algo.demos.sample(algo.generator)
    assert torch.equal(demo_obs.items, obs.index(rows).items)
    loss = algo._demo_loss(demo_obs, shown, algo.q(demo_obs))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_slateq_margin_is_on_the_value_of_serving_each_item_alone() -> None:
    """SlateQ's margin loss acts on ``P(i | s, {i}) * (Qbar(s, i) - Qbar(s, null))``, the click
    probability from its choice model held fixed (no gradient reaches the choice tower)."""
    ctx = gru_ctx(n_items=6, slate_size=2)
    algo = SlateQ(ctx, dim=4, hidden=8, demo_margin=0.5, demo_batch=3, skip_shown=True)
    for p in algo.q.parameters():  # values far enough from 0 that the margin's ranking matters
        p.data.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
    obs, slates, rows = record_by_hand(algo)
    with torch.no_grad():
        q = algo.q(obs.index(rows))
        value = torch.sigmoid(algo.choice(obs.index(rows))) * (q[:, :6] - q[:, 6:])
    expected = margin_loss_by_hand(value, obs, slates, rows, 0.5)
    demo_obs, shown = algo.demos.sample(algo.generator)
    loss = algo.demo_loss(demo_obs, shown, algo.q(demo_obs))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    loss.backward()
    assert all(p.grad is None for p in algo.choice.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.q.parameters())


def margin_only_training(algo: object, env: RecEnv) -> tuple[float, float, dict]:
    """Record ``algo``'s demonstrations in ``env``, then 150 updates on a batch without a valid
    row (only the margin loss trains): the share of demonstrated steps where its greedy slate is
    the planner's, before and after, and the last update's stats."""
    algo.prepare(env, seed=0)
    obs, slates = algo.demos.data
    empty = Transition(obs=obs.index(torch.arange(4)), action=slates[:4], reward=torch.zeros(4),
                       next_obs=obs.index(torch.arange(4)), done=torch.ones(4), valid=torch.zeros(4))
    before = float((algo.act(obs, explore=False) == slates).float().mean())
    for _ in range(150):
        stats = algo.update(empty)
    after = float((algo.act(obs, explore=False) == slates).float().mean())
    return before, after, stats


def test_dqn_with_demonstrations_learns_the_planners_choices() -> None:
    """Margin loss alone (no reward in the batches): the greedy policy comes to agree with the
    planner on the demonstrated steps, for scalar DQN and C51."""
    _, env = tiny_world_env()
    for atoms in (0, 11):
        ctx = gru_ctx()
        algo = DQN(ctx, dim=8, hidden=16, demonstrations=16, demo_batch=64, average=0.0, atoms=atoms)
        before, after, stats = margin_only_training(algo, env)
        assert "train/demo_loss" in stats
        assert after >= 0.9 and after > before, (atoms, before, after)


def test_slateq_with_demonstrations_learns_the_planners_choices() -> None:
    """The margin loss alone (batches without a valid row) makes SlateQ's slates the planner's on
    the demonstrated steps; the choice model, which only the clicks train, stays as it was."""
    _, env = tiny_world_env()
    algo = SlateQ(gru_ctx(), dim=8, hidden=16, demonstrations=16, demo_batch=64, average=0.0)
    choice = [p.detach().clone() for p in algo.choice.parameters()]
    before, after, stats = margin_only_training(algo, env)
    assert "train/demo_loss" in stats
    assert after >= 0.9 and after > before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(choice, algo.choice.parameters(), strict=True))


def test_demonstrations_are_off_unless_asked_and_checked() -> None:
    _, env = tiny_world_env()
    algo = DQN(gru_ctx())
    algo.prepare(env, seed=0)
    assert algo.demos.data is None and algo.demos.weight(0) == 0.0
    with pytest.raises(RecrlError, match="demonstrations"):
        DQN(gru_ctx(), demonstrations=-1)
    with pytest.raises(RecrlError, match=r"algo\.demonstrations='some'"):
        DQN(gru_ctx(), demonstrations="some")


def test_auto_demonstrations_where_the_planner_can_run_and_a_clear_error_where_asked_for_in_vain() -> None:
    assert demonstration_users(gru_ctx(), "auto") == 512  # 2 batches of the default 256 training users
    assert demonstration_users(make_ctx(StubModel()), "auto") == 512
    assert demonstration_users(replace(make_ctx(StubModel()), train_users=16), "auto") == 32
    no_model = make_ctx(None)  # no behavior model that steps a user's state
    moves = replace(make_ctx(StubModel()), item_actions=False)  # a wrapped gymnasium environment
    for ctx in (no_model, moves):
        assert demonstration_users(ctx, "auto") == 0
        assert demonstration_users(ctx, 0) == 0
        with pytest.raises(RecrlError, match=r"set algo\.demonstrations=0"):
            demonstration_users(ctx, 16)
    assert DQN(no_model, demonstrations="auto").demos.users == 0
    # a large catalogue gets fewer users: the planner steps every user after every item
    big = replace(make_ctx(StubModel()), n_items=AUTO_DEMO_ROWS // 8, train_users=256)
    assert demonstration_users(big, "auto") == 8
    assert demonstration_users(replace(big, n_items=10 * AUTO_DEMO_ROWS), "auto") == 1
    assert DQN(gru_ctx(), demonstrations="auto").demos.users == 512


def test_the_softmax_policies_demonstration_term_by_hand() -> None:
    """DAPG's term: weight times minus the mean over the drawn steps of the summed log-probability
    of the planner's slate under the (history-masked) softmax policy."""
    ctx = gru_ctx(n_items=6, slate_size=2)
    algo = PPO(ctx, dim=4, hidden=8, skip_shown=True, demo_weight=0.5, demo_batch=3)
    assert algo.plus_demo_term(torch.tensor(1.0)) == (torch.tensor(1.0), None)  # nothing recorded: off
    obs, slates, rows = record_by_hand(algo, fresh=True)
    with torch.no_grad():
        logits = algo.policy(obs.index(rows))
    expected = 0.0
    for r, row in enumerate(rows.tolist()):
        shown = set(obs.items[row].flatten().tolist())
        allowed = [a for a in range(6) if a not in shown]
        norm = torch.logsumexp(logits[r, allowed], 0)
        expected -= 0.5 * sum(float(logits[r, a] - norm) for a in slates[row].tolist()) / 3
    loss, term = algo.plus_demo_term(torch.tensor(1.0))
    assert float(term.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(1.0 + expected, rel=1e-5)


@pytest.mark.parametrize("kind", [PPO, A2C, Reinforce])
def test_softmax_policies_learn_the_planners_choices_from_demonstrations(kind: type) -> None:
    """The term's gradient alone makes each softmax policy's mode the planner's choice on the
    demonstrated steps, and every update trains it (``train/demo_loss``)."""
    _, env = tiny_world_env()
    algo = kind(gru_ctx(), dim=8, hidden=16, demonstrations=16, demo_batch=64, sample_in_eval=False)
    algo.prepare(env, seed=0)
    obs, slates = algo.demos.data
    before = float((algo.act(obs, explore=False) == slates).float().mean())
    for _ in range(150):
        _, term = algo.plus_demo_term(torch.zeros(()))
        gradient_step(algo.optimizer, term, algo.params, 10.0)
    after = float((algo.act(obs, explore=False) == slates).float().mean())
    assert after >= 0.9 and after > before, (before, after)
    steps = [Transition(obs=obs.index(rows), action=slates[rows], reward=torch.ones(4),
                        next_obs=obs.index(rows), done=torch.full((4,), float(t)), valid=torch.ones(4))
             for t, rows in enumerate((torch.arange(4), torch.arange(4, 8)))]
    assert "train/demo_loss" in algo.update(Rollout.stack(steps))


def test_demo_weight_decays_linearly_when_asked() -> None:
    demos = PlannerDemonstrations(gru_ctx(), 0, weight=2.0, batch=4, decay_steps=10, caution=2.0,
                                  skip_shown=True)
    assert demos.weight(0) == 0.0  # nothing recorded: no pull
    demos.data = (Obs(items=torch.zeros(1, 3, 1, dtype=torch.long), clicks=torch.zeros(1, 3, 1),
                      step=torch.zeros(1, dtype=torch.long)), torch.zeros(1, 1, dtype=torch.long))
    assert [demos.weight(u) for u in (0, 5, 10, 20)] == pytest.approx([2.0, 1.0, 0.0, 0.0])
    demos.decay_steps = 0
    assert demos.weight(20) == 2.0  # 0: constant


@pytest.mark.parametrize("content", [False, True])
def test_the_grus_batched_leave_after_each_click_is_the_pairwise_one(content: bool) -> None:
    """``GRUBehavior.leave_prob_after_click`` (the planner's fast path) gives what stepping every
    (user, item) pair with ``next_state`` and reading ``leave_prob`` gives, in chunks of any size,
    with item content and the recency term too."""
    n = 12
    kwargs = {}
    if content:
        items = pd.DataFrame({"topic": [str(i % 3) for i in range(n)], "quality": torch.rand(n).tolist()})
        kwargs = {"features": ["side"], "item_features": side_features(items, n), "recency": True}
    torch.manual_seed(0)
    model = GRUBehavior(n_items=n, dim=4, hidden=8, **kwargs)
    for p in model.parameters():  # not only the initial (content: zero) id tables
        p.data.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(1)
    state = model.initial_state(5)
    for _ in range(3):
        state = model.next_state(state, torch.randint(0, n, (5, 1), generator=g),
                                 (torch.rand(5, 1, generator=g) < 0.5).float(), torch.zeros(5, 1))
    conversion = torch.rand(5, n, generator=g)
    pairs = model.next_state(state.repeat_interleave(n, 0), torch.arange(n).repeat(5)[:, None],
                             torch.ones(5 * n, 1), conversion.reshape(-1, 1))
    expected = model.leave_prob(pairs).view(5, n)
    assert expected.std() > 0.01  # the pairs differ: the check below is not trivially met
    for chunk_rows in (n, 2 * n + 1, 10_000):
        fast = model.leave_prob_after_click(state, conversion, chunk_rows)
        assert torch.allclose(fast, expected, atol=1e-6)
    planner = SurvivalPlanner(replace(gru_ctx(n_items=n), behavior=model))
    assert torch.allclose(planner.stay_after_click(state, conversion), 1.0 - expected, atol=1e-6)


def test_a_learner_in_the_ground_truth_plans_its_demonstrations_on_the_truth() -> None:
    """``eval.train_in_ground_truth``'s demonstrator: the synthetic world seen from the history,
    a ground truth that is itself a sequential model as it is, and none for one it cannot step."""
    world = SyntheticWorld(n_items=12, n_users=10, n_topics=3, horizon=HORIZON, seed=0)
    env = RecEnv(world, ClickReward(), horizon=HORIZON, slate_size=1, history_len=2)
    belief = truth_planning_model(world, env)
    assert isinstance(belief, HistoryBelief) and belief.world is world
    sequential = StubModel()  # a model with every method a planner steps
    assert truth_planning_model(sequential, env) is sequential
    assert truth_planning_model(object(), env) is None
    ctx = replace(make_ctx(StubModel()), n_items=12, item_popularity=torch.zeros(12))
    demos = PlannerDemonstrations(ctx, 8, weight=1.0, batch=4, decay_steps=0, caution=1.0, skip_shown=True)
    demos.plan_on(belief)
    demos.record(env, seed=0)
    observations, slates = demos.data
    planner = SurvivalPlanner(ctx, caution=1.0, model=belief)
    # the truth planner's choices, not those of the context's behavior model
    assert torch.equal(slates, planner.act(observations, explore=False))
