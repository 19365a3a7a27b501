"""Tests for the DQN family: vanilla/double targets, dueling heads, n-step windows, prioritized
replay and C51, each checked by hand on tiny inputs, plus learning tests on the known-answer world
of tests/clickbait.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from clickbait import assert_learned, median_over_seeds
from tiny import N_ITEMS, K, L, make_ctx, random_obs

from recrl.algos.dqn import DQN, categorical_projection
from recrl.algos.nets import WeightAverage
from recrl.buffer import NStepWindow, PrioritizedReplayBuffer, Replay, ReplayBuffer, ReplaySample
from recrl.data.synthetic import SyntheticWorld
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.rewards import ClickReward
from recrl.types import Obs, RecrlError, Transition


def random_batch(b: int = 6, seed: int = 1, reward_scale: float = 1.0) -> Transition:
    gen = torch.Generator().manual_seed(seed)
    action = torch.stack([torch.randperm(N_ITEMS, generator=gen)[:K] for _ in range(b)])
    done = (torch.arange(b) % 3 == 1).float()
    valid = torch.ones(b)
    valid[-1] = 0.0
    return Transition(obs=random_obs(b, gen), action=action,
                      reward=reward_scale * torch.rand(b, generator=gen), next_obs=random_obs(b, gen),
                      done=done, valid=valid)


def perturb_target(algo: DQN, seed: int = 5) -> None:
    """Make the target network differ from the online one, as after some training."""
    gen = torch.Generator().manual_seed(seed)
    for p in algo.q_target.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=gen))


def huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5


def top(values: list[float], k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda j: -values[j])[:k]


# ----------------------------------------------------------------------------- scalar targets
@pytest.mark.parametrize("double", [True, False])
def test_td_loss_hand_computed_double_vanilla_n_step_and_weights(double: bool) -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16, gamma=0.8, n_step=3, double=double)
    perturb_target(algo)
    batch = random_batch(reward_scale=4.0)
    weights = torch.tensor([1.0, 0.5, 0.25, 0.8, 0.1, 1.0])
    with torch.no_grad():
        q_now, q_next, q_tnext = (algo.q(batch.obs).tolist(), algo.q(batch.next_obs).tolist(),
                                  algo.q_target(batch.next_obs).tolist())
    losses, errors = [], []
    for i in range(6):
        q_sa = sum(q_now[i][a] for a in batch.action[i].tolist()) / K
        best = top(q_next[i] if double else q_tnext[i], K)  # online picks (double) or target's own max
        q_next_slate = sum(q_tnext[i][j] for j in best) / K
        y = float(batch.reward[i]) + 0.8**3 * (1 - float(batch.done[i])) * q_next_slate
        errors.append(abs(q_sa - y) * float(batch.valid[i]))
        losses.append(float(weights[i]) * huber(q_sa - y) * float(batch.valid[i]))
    stats = algo.update(batch, weights=weights)
    assert float(stats["train/loss"]) == pytest.approx(sum(losses) / 5, rel=1e-5)
    torch.testing.assert_close(algo.td_error, torch.tensor(errors), rtol=1e-5, atol=1e-6)


def test_vanilla_and_double_targets_differ() -> None:
    batch = random_batch()
    losses = []
    for double in (True, False):
        algo = DQN(make_ctx(), dim=8, hidden=16, double=double)
        perturb_target(algo)
        losses.append(float(algo.update(batch)["train/loss"]))
    assert losses[0] != losses[1]


# ----------------------------------------------------------------------------- dueling
def test_dueling_q_by_hand() -> None:
    algo = DQN(make_ctx(), dim=4, hidden=8, dueling=True)
    net = algo.q
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.item_out.weight.copy_(torch.randn(N_ITEMS, 4, generator=gen))
        net.bias.copy_(torch.randn(N_ITEMS, generator=gen))
        net.value.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
        net.value.bias.fill_(0.7)
        obs = random_obs(3, gen)
        state = net.encoder(obs).tolist()
        q = net(obs)
    emb, bias = net.item_out.weight.tolist(), net.bias.tolist()
    for b in range(3):
        adv = [sum(s * e for s, e in zip(state[b], emb[i], strict=True)) + bias[i] for i in range(N_ITEMS)]
        value = 1.0 * state[b][0] - 2.0 * state[b][1] + 0.5 * state[b][2] + 3.0 * state[b][3] + 0.7
        expected = [value + a - sum(adv) / N_ITEMS for a in adv]
        assert q[b].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert torch.equal(algo.act(obs, explore=False), q.topk(K, dim=1).indices)
    # the advantages are centred: the mean Q over items is V(s)
    assert q.mean(1).tolist() == pytest.approx(net.value(net.encoder(obs)).squeeze(1).tolist(), abs=1e-5)


# ----------------------------------------------------------------------------- n-step window
def stream_step(t: int, reward: list[float], done: list[float], valid: list[float]) -> Transition:
    """Step ``t`` of two users; ``obs.step`` = 10 * user + t marks each row, ``next_obs`` + 1."""
    mark = torch.tensor([t, 10 + t])
    obs = Obs(items=mark[:, None, None].expand(2, L, 1).clone(), clicks=torch.zeros(2, L, 1), step=mark)
    nxt = Obs(items=(mark + 1)[:, None, None].expand(2, L, 1).clone(), clicks=torch.ones(2, L, 1),
              step=mark + 1)
    return Transition(obs=obs, action=mark[:, None], reward=torch.tensor(reward), next_obs=nxt,
                      done=torch.tensor(done), valid=torch.tensor(valid))


# user 0: rewards 1, 2, 4, 8, its episode ends at step 1 and a new user fills the row from step 2;
# user 1: not alive at step 0 (the row is invalid), alive from step 1 on
STREAM = [stream_step(0, [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]),
          stream_step(1, [2.0, 1.0], [1.0, 0.0], [1.0, 1.0]),
          stream_step(2, [4.0, 1.0], [0.0, 0.0], [1.0, 1.0]),
          stream_step(3, [8.0, 1.0], [0.0, 0.0], [1.0, 1.0])]


def run_window(n: int) -> list[Transition | None]:
    window = NStepWindow(n, gamma=0.5)
    return [window.push(tr) for tr in STREAM]


def check_out(out: Transition, start: int, reward: list[float], next_mark: list[int], done: list[float],
              valid: list[float]) -> None:
    assert out.obs.step.tolist() == [start, 10 + start] and out.action[:, 0].tolist() == [start, 10 + start]
    assert out.obs.items[:, 0, 0].tolist() == [start, 10 + start]
    assert out.reward.tolist() == pytest.approx(reward)
    assert out.next_obs.step.tolist() == next_mark
    assert out.next_obs.items[:, -1, 0].tolist() == next_mark
    assert out.done.tolist() == done and out.valid.tolist() == valid


def test_n_step_window_three_steps_by_hand() -> None:
    outs = run_window(3)
    assert outs[0] is None and outs[1] is None
    # start 0: user 0 gets 1 + 0.5 * 2 and stops at its done (step 2's reward is the next user's);
    # next_obs is the one after the done step. User 1 was not alive at step 0: invalid.
    check_out(outs[2], 0, [1 + 0.5 * 2, 0 + 0.5 * 1 + 0.25 * 1], [2, 13], [1.0, 0.0], [1.0, 0.0])
    # start 1: user 0's transition is its last step (2, done); user 1: 1 + 0.5 + 0.25, bootstraps
    # from the observation three steps later
    check_out(outs[3], 1, [2.0, 1.75], [2, 14], [1.0, 0.0], [1.0, 1.0])


def test_n_step_window_two_steps_and_one_step() -> None:
    outs = run_window(2)
    assert outs[0] is None
    check_out(outs[1], 0, [2.0, 0.5], [2, 12], [1.0, 0.0], [1.0, 0.0])
    check_out(outs[2], 1, [2.0, 1.5], [2, 13], [1.0, 0.0], [1.0, 1.0])
    check_out(outs[3], 2, [4 + 0.5 * 8, 1.5], [4, 14], [0.0, 0.0], [1.0, 1.0])  # the new user of row 0
    assert run_window(1) == STREAM  # n = 1: the stream itself
    with pytest.raises(ValueError, match="n >= 1"):
        NStepWindow(0, 0.9)


def test_recorded_clicks_travel_through_the_window_and_the_buffer() -> None:
    """An n-step transition keeps the clicks on its *first* slate (what SlateQ's choice model and
    item values are fitted to), and the buffer stores and returns them row by row."""
    clicked = [torch.tensor([[float(t % 2)], [float(t > 1)]]) for t in range(len(STREAM))]
    stream = [dataclasses.replace(tr, click=c) for tr, c in zip(STREAM, clicked, strict=True)]
    window = NStepWindow(3, gamma=0.5)
    outs = [window.push(tr) for tr in stream]
    assert torch.equal(outs[2].click, clicked[0]) and torch.equal(outs[3].click, clicked[1])
    buffer = ReplayBuffer(capacity=4, history_len=L, slate_size=1, n_items=N_ITEMS)
    assert buffer.rows(torch.tensor([0])).click is None  # nothing recorded yet
    for out in outs[2:]:
        buffer.add(out)
    rows = buffer.rows(torch.tensor([3, 0]))  # slot 3: the second transition's user 1
    assert rows.click[:, 0].tolist() == [float(clicked[1][1]), float(clicked[0][0])]
    assert torch.equal(rows.index(torch.tensor([1])).click, rows.click[1:])


def test_the_trainer_feeds_dqns_own_n_step_prioritized_replay() -> None:
    seen: list[tuple[Transition, torch.Tensor]] = []

    class Recording(DQN):
        def update(self, batch: Transition | ReplaySample, weights: torch.Tensor | None = None) -> dict:
            assert isinstance(batch, ReplaySample) and weights is None  # DQN's own replay samples
            seen.append((batch.transitions, batch.weights))
            return super().update(batch)

    world = SyntheticWorld(n_items=8, n_users=10, n_topics=1, horizon=6, seed=0)
    env = RecEnv(world, ClickReward(), horizon=6, slate_size=1, history_len=2)
    ctx = make_ctx(slate_size=1, n_items=8, history_len=2, horizon=6)
    algo = Recording(ctx, dim=4, hidden=8, gamma=0.5, n_step=3, prioritized=True)
    never = 10**9
    trainer = Trainer(steps=30, n_users=8, batch_size=32, learning_starts=40, eval_every=never,
                      log_every=never, checkpoint_every=never, progress=False, device="cpu")
    trainer.fit(algo, env, evaluate=lambda: {"eval/return": 0.0}, log=lambda s, m: None,
                save=lambda tag, step: None)
    # 2 steps to fill the window, then 8 rows per step: updates start at step 7 (5 * 8 = 40 rows)
    assert len(seen) == 30 - 6
    rewards = torch.cat([b.reward for b, _ in seen])
    # clicks are 0/1; three-step sums with gamma 0.5 take the values 0.25, 0.5, 0.75, 1.25, ...
    assert bool(((rewards * 4) % 1 == 0).all()) and bool((rewards % 1 != 0).any())
    assert float(rewards.max()) <= 1.75
    weights = torch.cat([w for _, w in seen])
    assert bool((weights > 0).all()) and bool((weights <= 1).all())
    assert float(weights.min()) < 1.0  # priorities were updated from TD errors, so they differ


# ----------------------------------------------------------------------------- prioritized replay
def tagged(ids: list[int]) -> Transition:
    idx = torch.tensor(ids)
    n = len(ids)
    obs = Obs(items=torch.full((n, L, 1), N_ITEMS), clicks=torch.zeros(n, L, 1), step=idx)
    return Transition(obs=obs, action=idx[:, None] % N_ITEMS, reward=idx.float(), next_obs=obs,
                      done=torch.zeros(n), valid=torch.ones(n))


def test_per_sampling_follows_priorities_and_weights_by_hand() -> None:
    buf = PrioritizedReplayBuffer(capacity=8, history_len=L, slate_size=1, n_items=N_ITEMS, alpha=0.6,
                                  eps=0.01)
    buf.add(tagged([0, 1, 2, 3]))
    assert buf.priorities.tolist() == [1.0] * 4 + [0.0] * 4  # new rows: the max priority (1 at first)
    buf.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([0.49, -0.99, 1.99, 3.99]))
    p = [0.5, 1.0, 2.0, 4.0]  # |delta| + eps
    scaled = [x**0.6 for x in p]
    probs = [s / sum(scaled) for s in scaled]
    n = 200_000
    batch, idx, weights = buf.sample_weighted(n, torch.Generator().manual_seed(0), beta=0.4)
    assert torch.equal(batch.obs.step, idx)  # the batch is the rows at idx
    freq = torch.bincount(idx, minlength=8).float() / n
    assert freq[:4].tolist() == pytest.approx(probs, abs=0.005)
    assert freq[4:].sum() == 0  # empty slots are never drawn
    # w_i = (N P_i)^-beta / max_j (N P_j)^-beta, the max being that of the least likely row
    w_hand = [(4 * probs[i]) ** -0.4 / (4 * min(probs)) ** -0.4 for i in range(4)]
    for i in range(4):
        assert float(weights[idx == i][0]) == pytest.approx(w_hand[i], rel=1e-5)
    assert float(weights.max()) == pytest.approx(1.0)
    # rows added later get the largest priority seen (4.0) and the plain sample is prioritized too
    buf.add(tagged([4, 5]))
    assert buf.priorities[4:6].tolist() == pytest.approx([4.0**0.6] * 2)
    assert isinstance(buf.sample(3, torch.Generator().manual_seed(1)), Transition)
    assert isinstance(buf, ReplayBuffer)
    with pytest.raises(ValueError, match="empty"):
        PrioritizedReplayBuffer(4, L, 1, N_ITEMS).sample_weighted(2, torch.Generator())


def test_per_wraparound_keeps_priorities_aligned() -> None:
    buf = PrioritizedReplayBuffer(capacity=4, history_len=L, slate_size=1, n_items=N_ITEMS, alpha=1.0,
                                  eps=0.0)
    buf.add(tagged([0, 1, 2]))
    buf.update_priorities(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    buf.add(tagged([3, 4]))  # slot 3, then slot 0 overwrites row 0
    assert buf.priorities.tolist() == [3.0, 2.0, 3.0, 3.0]
    assert buf.step.tolist() == [4, 1, 2, 3]


# ----------------------------------------------------------------------------- C51
def test_categorical_projection_by_hand() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0],
                          [0.1, 0.2, 0.3, 0.4, 0.0],
                          [0.1, 0.2, 0.3, 0.4, 0.0]])
    support = torch.arange(5.0)  # v_min 0, v_max 4, spacing 1
    values = torch.stack([0.5 + 0.5 * support,      # 0.5, 1, 1.5, 2, 2.5: splits between neighbours
                          3.0 + support,            # 3, 4, 5, 6, 7: all but the first clip to 4
                          torch.full((5,), 1.25)])  # done: every atom at r = 1.25
    m = categorical_projection(probs, values, 0.0, 4.0)
    expected = [[0.05, 0.05 + 0.2 + 0.15, 0.15 + 0.4, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.1, 0.9],
                [0.0, 0.75, 0.25, 0.0, 0.0]]
    torch.testing.assert_close(m, torch.tensor(expected))
    # two atoms at -2 and 2: -3 clips to -2; -1 lies a quarter of the way to 2
    two = categorical_projection(torch.tensor([[0.5, 0.5]]), torch.tensor([[-3.0, -1.0]]), -2.0, 2.0)
    torch.testing.assert_close(two, torch.tensor([[0.5 + 0.5 * 0.75, 0.5 * 0.25]]))


def project_by_hand(probs: list[float], values: list[float], support: list[float]) -> list[float]:
    """The C51 projection as written in Bellemare et al. 2017, Algorithm 1."""
    dz, out = support[1] - support[0], [0.0] * len(support)
    for p, v in zip(probs, values, strict=True):
        b = (min(max(v, support[0]), support[-1]) - support[0]) / dz
        lo, hi = math.floor(b), math.ceil(b)
        if lo == hi:
            out[lo] += p
        else:
            out[lo] += p * (hi - b)
            out[hi] += p * (b - lo)
    return out


@pytest.mark.parametrize("dueling", [False, True])
def test_c51_loss_hand_computed(dueling: bool) -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16, gamma=0.8, n_step=2, atoms=7, v_min=-1.0, v_max=2.0,
               dueling=dueling)
    perturb_target(algo)
    batch = random_batch()
    support = [-1.0 + 0.5 * j for j in range(7)]
    with torch.no_grad():
        logits_now = algo.q(batch.obs)  # [B, n_items, Z]
        q_next = (algo.q(batch.next_obs).softmax(-1) @ torch.tensor(support)).tolist()
        p_tnext = algo.q_target(batch.next_obs).softmax(-1).tolist()
    assert logits_now.shape == (6, N_ITEMS, 7)
    losses, kls = [], []
    for i in range(6):
        best = top(q_next[i], K)  # double: the online net's expected values pick a*
        mixture = [sum(p_tnext[i][j][z] for j in best) / K for z in range(7)]
        r, cont = float(batch.reward[i]), 1 - float(batch.done[i])
        m = project_by_hand(mixture, [r + 0.8**2 * cont * z for z in support], support)
        ce = kl = 0.0
        for a in batch.action[i].tolist():
            log_p = torch.log_softmax(logits_now[i, a], -1).tolist()
            ce -= sum(m[z] * log_p[z] for z in range(7)) / K
            kl += sum(m[z] * (math.log(m[z]) - log_p[z]) for z in range(7) if m[z] > 0) / K
        losses.append(ce * float(batch.valid[i]))
        kls.append(kl * float(batch.valid[i]))
    stats = algo.update(batch)
    assert float(stats["train/loss"]) == pytest.approx(sum(losses) / 5, rel=1e-5)
    torch.testing.assert_close(algo.td_error, torch.tensor(kls), rtol=1e-4, atol=1e-6)


def test_c51_acts_on_expected_values() -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16, atoms=11, v_min=0.0, v_max=5.0, dueling=True)
    obs = random_obs(5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        probs = algo.q(obs).softmax(-1)
        taken = algo.q.logits(algo.q.encoder(obs), torch.tensor([[0, 3, 7]] * 5))
        torch.testing.assert_close(taken, algo.q(obs)[:, [0, 3, 7]])  # scoring a few items = all, sliced
    q = (probs * torch.linspace(0, 5, 11)).sum(-1)
    torch.testing.assert_close(algo.q_values(obs), q)
    assert torch.equal(algo.act(obs, explore=False), q.topk(K, dim=1).indices)
    # the cache-friendly expectation, a few users at a time (5 rows in chunks of 2), with and
    # without the dueling shift
    for dueling in (True, False):
        net = DQN(make_ctx(), dim=8, hidden=16, atoms=11, v_min=0.0, v_max=5.0, dueling=dueling).q
        state = net.encoder(obs)
        support = torch.linspace(0, 5, 11)
        torch.testing.assert_close(net.expected(state, support, rows=2),
                                   net.logits(state).softmax(-1) @ support)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(RecrlError, match="n_step"):
        DQN(make_ctx(), n_step=0)
    with pytest.raises(RecrlError, match="atoms"):
        DQN(make_ctx(), atoms=1)
    with pytest.raises(RecrlError, match="v_max"):
        DQN(make_ctx(), atoms=5, v_min=1.0, v_max=1.0)


# ----------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("options", [dict(dueling=True), dict(double=False, n_step=3, prioritized=True),
                                     dict(atoms=11, v_max=5.0), dict(atoms=11, v_max=5.0, dueling=True),
                                     dict(dueling=True, average=0.9), dict(atoms=11, v_max=5.0, average=0.9)],
                         ids=["dueling", "vanilla-nstep-per", "c51", "c51-dueling", "averaged",
                              "c51-averaged"])
def test_state_dict_round_trip(options: dict) -> None:
    a = DQN(make_ctx(seed=0), dim=8, hidden=16, **options)
    a.update(random_batch(seed=3))
    obs = random_obs(10, torch.Generator().manual_seed(3))
    a.act(obs, explore=True)
    b = DQN(make_ctx(seed=1), dim=8, hidden=16, **options)
    with torch.no_grad():
        assert not torch.equal(a.q_values(obs), b.q_values(obs))
    b.load_state_dict(a.state_dict())
    assert (b.acted_steps, b.updates) == (a.acted_steps, a.updates)
    assert torch.equal(a.act(obs, explore=False), b.act(obs, explore=False))
    for _ in range(3):
        assert torch.equal(a.act(obs, explore=True), b.act(obs, explore=True))
    weights = torch.linspace(0.5, 1.0, 6)
    sa, sb = a.update(random_batch(seed=4), weights), b.update(random_batch(seed=4), weights)
    assert float(sa["train/loss"]) == pytest.approx(float(sb["train/loss"]), rel=1e-6)
    torch.testing.assert_close(a.td_error, b.td_error)


# ----------------------------------------------------------------------------- weight averaging
def test_weight_average_by_hand() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    average = WeightAverage(net, decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0], start=1):
        net.weight.data.fill_(value)
        average.update()
        d = min(0.9, (1 + n) / (10 + n))  # warm-up: 2/11, 3/12, ...; 0.9 from update 80 on
        expected = d * expected + (1 - d) * value
        assert float(average.acting().weight) == pytest.approx(expected, rel=1e-6)
    assert average.acting() is not net and not average.acting().weight.requires_grad
    off = WeightAverage(net, decay=0.0)
    off.update()
    assert off.acting() is net and off.state_dict() is None
    with pytest.raises(RecrlError, match="average"):
        WeightAverage(net, decay=1.0)


def test_dqn_acts_with_the_averaged_network_and_explores_with_the_online_one() -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16, average=0.99, epsilon_start=0.0, epsilon_end=0.0)
    obs = random_obs(32, torch.Generator().manual_seed(2))
    for seed in range(5):
        algo.update(random_batch(seed=seed, reward_scale=4.0))
    with torch.no_grad():
        online, averaged = algo.q_values(obs), algo.q_values(obs, averaged=True)
        assert not torch.allclose(online, averaged)
        torch.testing.assert_close(averaged, algo.average.acting()(obs))
    assert torch.equal(algo.act(obs, explore=False), averaged.topk(K, dim=1).indices)
    assert torch.equal(algo.act(obs, explore=True), online.topk(K, dim=1).indices)  # epsilon 0


def test_checkpoint_without_an_average_restarts_it_from_the_online_weights() -> None:
    a = DQN(make_ctx(seed=0), dim=8, hidden=16, average=0.99)
    a.update(random_batch(seed=3))
    old = {k: v for k, v in a.state_dict().items() if k != "q_average"}  # saved before averaging existed
    b = DQN(make_ctx(seed=1), dim=8, hidden=16, average=0.99)
    b.load_state_dict(old)
    obs = random_obs(10, torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(b.q_values(obs, averaged=True), a.q_values(obs))


# ----------------------------------------------------------------------------- learning
# The known-answer world of tests/clickbait.py, with the DQN trainer settings of tests/test_learning.py.
def train_dqn(make_algo, world: SyntheticWorld, steps: int) -> float:
    """Median over three seeds of the return of ``make_algo(ctx)`` trained for ``steps``."""
    return median_over_seeds(make_algo, world, steps=steps, n_users=16, batch_size=64, learning_starts=200)


@pytest.mark.slow
def test_dueling_n_step_dqn_beats_greedy_and_random(clickbait_world: SyntheticWorld,
                                                    clickbait_references: dict[str, float]) -> None:
    def make(ctx):
        return DQN(ctx, epsilon_decay_steps=300, target_update=50, gamma=0.9, lr=3e-4, dueling=True, n_step=3)
    assert_learned(train_dqn(make, clickbait_world, steps=2000), clickbait_references)


@pytest.mark.slow
def test_c51_beats_greedy_and_random(clickbait_world: SyntheticWorld,
                                     clickbait_references: dict[str, float]) -> None:
    def make(ctx):
        return DQN(ctx, epsilon_decay_steps=300, target_update=50, gamma=0.9, lr=3e-4, atoms=51,
                   v_min=0.0, v_max=10.0)
    assert_learned(train_dqn(make, clickbait_world, steps=800), clickbait_references)


def test_a_replay_sample_hands_the_learners_errors_back_as_priorities() -> None:
    replay = Replay(capacity=8, history_len=L, slate_size=1, n_items=N_ITEMS, prioritized=True, alpha=0.5,
                    beta=0.4, eps=0.01)
    replay.add(tagged([0, 1, 2, 3]))
    sample = replay.sample(16, torch.Generator().manual_seed(0), progress=0.5)
    assert sample.weights is not None and sample.index is not None
    assert torch.allclose(sample.weights, torch.ones(16))  # equal priorities: weights all 1
    errors = sample.transitions.reward  # row i's error is i (the tagged reward)
    sample.reprioritize(errors)
    priorities = replay.buffer.priorities[:4]
    for row in sample.index.unique().tolist():
        assert float(priorities[row]) == pytest.approx((row + 0.01) ** 0.5)
    uniform = Replay(capacity=8, history_len=L, slate_size=1, n_items=N_ITEMS)
    uniform.add(tagged([0, 1]))
    plain = uniform.sample(4, torch.Generator().manual_seed(0))
    assert plain.weights is None
    plain.reprioritize(torch.ones(4))  # nothing to reprioritize: a no-op


def test_dqn_builds_its_replay_from_its_own_settings() -> None:
    world = SyntheticWorld(n_items=8, n_users=10, n_topics=1, horizon=6, seed=0)
    env = RecEnv(world, ClickReward(), horizon=6, slate_size=1, history_len=2)
    ctx = make_ctx(slate_size=1, n_items=8, history_len=2, horizon=6)
    replay = DQN(ctx, dim=4, hidden=8, gamma=0.5, n_step=3, prioritized=True, priority_alpha=0.7).make_replay(
        100, env)
    assert replay.window is not None and replay.window.n == 3 and replay.window.gamma == 0.5
    assert isinstance(replay.buffer, PrioritizedReplayBuffer) and replay.buffer.alpha == 0.7
    plain = DQN(ctx, dim=4, hidden=8, n_step=1).make_replay(100, env)
    assert plain.window is None and type(plain.buffer) is ReplayBuffer
