"""Tests for recrl.algos: DQN's target and schedule, REINFORCE, and the fixed baselines."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import N_ITEMS, K, L, collect_rollout, load_script, make_ctx, random_obs

from recrl.algos.dqn import DQN
from recrl.algos.greedy import GreedyPolicy
from recrl.algos.nets import mask_shown, random_slates, top_k
from recrl.algos.popular import PopularPolicy
from recrl.algos.random import RandomPolicy
from recrl.algos.reinforce import Reinforce
from recrl.behavior.gru import GRUBehavior
from recrl.memory import keep_freed_memory
from recrl.rewards import ConversionReward
from recrl.types import Algorithm, Obs, Policy, RecrlError, Transition


def assert_valid_slates(slates: torch.Tensor, b: int, k: int = K) -> None:
    assert slates.shape == (b, k) and slates.dtype == torch.long
    assert bool(((slates >= 0) & (slates < N_ITEMS)).all())
    for row in slates.tolist():
        assert len(set(row)) == k  # distinct items within a slate


def huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5


# ----------------------------------------------------------------------------- DQN
def test_dqn_loss_matches_hand_computed_double_dqn_target() -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16, gamma=0.8, target_update=200)
    gen = torch.Generator().manual_seed(1)
    b = 6
    obs, next_obs = random_obs(b, gen), random_obs(b, gen)
    action = torch.stack([torch.randperm(N_ITEMS, generator=gen)[:K] for _ in range(b)])
    # large rewards put some rows in the linear part of the Huber loss
    batch = Transition(obs=obs, action=action, reward=torch.tensor([0.0, 1.0, 5.0, -4.0, 0.5, 0.0]),
                       next_obs=next_obs, done=torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
                       valid=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    with torch.no_grad():
        q_now, q_online_next, q_target_next = algo.q(obs), algo.q(next_obs), algo.q_target(next_obs)
    # make the online and target networks differ, as after some training
    for p in algo.q_target.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=gen))
    with torch.no_grad():
        q_target_next = algo.q_target(next_obs)
    target_before = [p.clone() for p in algo.q_target.parameters()]
    losses, qs = [], []
    for i in range(b):
        q_sa = sum(float(q_now[i, a]) for a in action[i].tolist()) / K
        best = sorted(range(N_ITEMS), key=lambda j: -float(q_online_next[i, j]))[:K]  # argmax-top-K online
        q_next = sum(float(q_target_next[i, j]) for j in best) / K  # ... evaluated by the target
        y = float(batch.reward[i]) + 0.8 * (1.0 - float(batch.done[i])) * q_next
        qs.append(q_sa)
        if float(batch.valid[i]) > 0:
            losses.append(huber(q_sa - y))
    assert any(abs(x) > 0.5 for x in losses)  # the linear branch is exercised
    stats = algo.update(batch)
    assert float(stats["train/loss"]) == pytest.approx(sum(losses) / len(losses), rel=1e-5, abs=1e-6)
    assert float(stats["train/q"]) == pytest.approx(sum(qs) / b, rel=1e-5, abs=1e-6)
    assert algo.updates == 1
    # target_update=200: one update leaves the target network alone, but moves the online one
    for p, before in zip(algo.q_target.parameters(), target_before, strict=True):
        assert torch.equal(p, before)
    with torch.no_grad():
        assert not torch.equal(algo.q(obs), q_now)


def tiny_batch(seed: int = 0, b: int = 8) -> Transition:
    gen = torch.Generator().manual_seed(seed)
    action = torch.stack([torch.randperm(N_ITEMS, generator=gen)[:K] for _ in range(b)])
    return Transition(obs=random_obs(b, gen), action=action, reward=torch.rand(b, generator=gen),
                      next_obs=random_obs(b, gen), done=torch.zeros(b), valid=torch.ones(b))


def test_dqn_target_sync_hard_and_soft() -> None:
    hard = DQN(make_ctx(), dim=8, hidden=16, target_update=2, tau=1.0)
    hard.update(tiny_batch())
    assert any(not torch.equal(p, t) for p, t in zip(hard.q.parameters(), hard.q_target.parameters(),
                                                     strict=True))
    hard.update(tiny_batch(1))  # second update: the target copies the online network
    for p, t in zip(hard.q.parameters(), hard.q_target.parameters(), strict=True):
        assert torch.equal(p, t)

    soft = DQN(make_ctx(), dim=8, hidden=16, tau=0.25)
    old_target = [p.clone() for p in soft.q_target.parameters()]
    soft.update(tiny_batch())
    for p, t, old in zip(soft.q.parameters(), soft.q_target.parameters(), old_target, strict=True):
        torch.testing.assert_close(t, old + 0.25 * (p.detach() - old))


def test_dqn_epsilon_schedule() -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16, epsilon_start=1.0, epsilon_end=0.2, epsilon_decay_steps=4)
    obs = random_obs(3, torch.Generator().manual_seed(0))
    seen = [algo.epsilon()]
    for _ in range(6):
        algo.act(obs, explore=True)
        seen.append(algo.epsilon())
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2])
    algo.act(obs, explore=False)  # greedy acting does not advance the schedule
    assert algo.acted_steps == 6


def test_dqn_act_returns_distinct_valid_items() -> None:
    algo = DQN(make_ctx(), dim=8, hidden=16)
    obs = random_obs(16, torch.Generator().manual_seed(0))
    greedy = algo.act(obs, explore=False)
    assert_valid_slates(greedy, 16)
    with torch.no_grad():
        assert torch.equal(greedy, algo.q(obs).topk(K, dim=1).indices)
    assert_valid_slates(algo.act(obs, explore=True), 16)  # epsilon = 1 at the start: random slates
    never = DQN(make_ctx(), dim=8, hidden=16, epsilon_start=0.0, epsilon_end=0.0)
    assert torch.equal(never.act(obs, explore=True), never.act(obs, explore=False))
    always = DQN(make_ctx(), dim=8, hidden=16, epsilon_start=1.0, epsilon_end=1.0)
    explored = torch.stack([always.act(obs, explore=True) for _ in range(5)])
    assert not bool((explored == explored[0]).all())


def test_dqn_state_dict_round_trip() -> None:
    a = DQN(make_ctx(seed=0), dim=8, hidden=16)
    a.update(tiny_batch())
    obs = random_obs(10, torch.Generator().manual_seed(3))
    a.act(obs, explore=True)
    b = DQN(make_ctx(seed=1), dim=8, hidden=16)
    with torch.no_grad():
        assert not torch.equal(a.q(obs), b.q(obs))  # different seeds: different weights
    b.load_state_dict(a.state_dict())
    assert b.acted_steps == a.acted_steps and b.updates == a.updates
    assert b.epsilon() == a.epsilon()
    assert torch.equal(a.act(obs, explore=False), b.act(obs, explore=False))
    for _ in range(3):  # the exploration generator is restored too
        assert torch.equal(a.act(obs, explore=True), b.act(obs, explore=True))
    sa, sb = a.update(tiny_batch(2)), b.update(tiny_batch(2))
    assert float(sa["train/loss"]) == pytest.approx(float(sb["train/loss"]), rel=1e-6)


def test_algorithms_satisfy_protocols() -> None:
    for algo in (DQN(make_ctx(), dim=8, hidden=16), Reinforce(make_ctx(), dim=8, hidden=16),
                 PopularPolicy(make_ctx()), RandomPolicy(make_ctx())):
        assert isinstance(algo, Algorithm) and isinstance(algo, Policy)
    assert DQN.mode == "off_policy" and Reinforce.mode == "on_policy" and PopularPolicy.mode == "none"


# ----------------------------------------------------------------------------- REINFORCE
def test_reinforce_greedy_act_is_top_k_of_logits() -> None:
    algo = Reinforce(make_ctx(), dim=8, hidden=16, sample_in_eval=False)
    obs = random_obs(10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = algo.policy(obs).topk(K, dim=1).indices
    assert torch.equal(algo.act(obs, explore=False), want)
    assert torch.equal(algo.act(obs, explore=False), want)  # deterministic
    sampled = torch.stack([algo.act(obs, explore=True) for _ in range(5)])
    for s in sampled:
        assert_valid_slates(s, 10)
    assert not bool((sampled == want).all())  # sampling explores


def test_reinforce_samples_in_eval_by_default() -> None:
    algo = Reinforce(make_ctx(), dim=8, hidden=16)
    assert algo.sample_in_eval
    obs = random_obs(10, torch.Generator().manual_seed(0))
    evals = torch.stack([algo.act(obs, explore=False) for _ in range(5)])
    for s in evals:
        assert_valid_slates(s, 10)
    assert not bool((evals == evals[0]).all())  # the stochastic policy itself, not its mode
    # a Gumbel-max sample (K = 1) follows the policy's probabilities
    single = Reinforce(make_ctx(slate_size=1), dim=8, hidden=16)
    one = random_obs(1, torch.Generator().manual_seed(1), k=1)
    many = one.index(torch.zeros(4000, dtype=torch.long))
    freq = torch.bincount(single.act(many, explore=True)[:, 0], minlength=N_ITEMS).float() / 4000
    with torch.no_grad():
        probs = torch.softmax(single.policy(one), 1)[0]
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_reinforce_update_loss_hand_computed() -> None:
    algo = Reinforce(make_ctx(), dim=8, hidden=16, gamma=0.9, value_coef=0.5, entropy_coef=0.01)
    roll = collect_rollout(algo)
    assert 0 < float(roll.valid.sum()) < roll.valid.numel()  # some users left early
    t_len, b = roll.reward.shape
    returns = torch.zeros(t_len, b)
    for j in range(b):  # G_t = r_t + gamma * (1 - done_t) * G_{t+1}
        g = 0.0
        for t in reversed(range(t_len)):
            g = float(roll.reward[t, j]) + 0.9 * (1.0 - float(roll.done[t, j])) * g
            returns[t, j] = g
    with torch.no_grad():
        obs = roll.flat_obs()
        state = algo.policy.encoder(obs)
        logits = algo.policy.score(state)
        value = algo.value(state).squeeze(1)
    lse = torch.logsumexp(logits, 1)
    ret, valid = returns.reshape(-1), roll.valid.reshape(-1)
    actions = roll.action.reshape(-1, K)
    logp = torch.stack([logits[i, actions[i]].sum() - K * lse[i] for i in range(len(ret))])
    probs = torch.softmax(logits, 1)
    entropy = lse - (probs * logits).sum(1)
    n = valid.sum()
    adv = ret - value  # normalised with the mean and (population) std over the valid rows
    mean = (adv * valid).sum() / n
    std = (((adv - mean) ** 2 * valid).sum() / n).sqrt()
    adv = (adv - mean) / (std + 1e-8)
    policy_loss = -(adv * logp * valid).sum() / n
    value_loss = (((value - ret) ** 2) * valid).sum() / n
    ent = (entropy * valid).sum() / n
    params_before = [p.clone() for p in list(algo.policy.parameters()) + list(algo.value.parameters())]
    stats = algo.update(roll)
    assert set(stats) == {"train/loss", "train/policy_loss", "train/value_loss", "train/entropy",
                          "train/reward"}  # no train/kl without algo.init_from and a leash
    assert all(torch.isfinite(torch.as_tensor(v)) for v in stats.values())
    mean_reward = float((roll.reward * roll.valid).sum() / roll.valid.sum())
    assert float(stats["train/reward"]) == pytest.approx(mean_reward, rel=1e-6)
    assert float(stats["train/policy_loss"]) == pytest.approx(float(policy_loss), rel=1e-4, abs=1e-5)
    assert float(stats["train/value_loss"]) == pytest.approx(float(value_loss), rel=1e-4, abs=1e-5)
    assert float(stats["train/entropy"]) == pytest.approx(float(ent), rel=1e-4)
    assert float(stats["train/loss"]) == pytest.approx(
        float(policy_loss + 0.5 * value_loss - 0.01 * ent), rel=1e-4, abs=1e-5)
    after = list(algo.policy.parameters()) + list(algo.value.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(after, params_before, strict=True))
    assert algo.updates == 1


def test_reinforce_state_dict_round_trip() -> None:
    a = Reinforce(make_ctx(seed=0), dim=8, hidden=16)
    a.update(collect_rollout(a))
    b = Reinforce(make_ctx(seed=5), dim=8, hidden=16)
    b.load_state_dict(a.state_dict())
    obs = random_obs(7, torch.Generator().manual_seed(2))
    assert b.updates == 1
    assert torch.equal(a.act(obs, explore=False), b.act(obs, explore=False))
    assert torch.equal(a.act(obs, explore=True), b.act(obs, explore=True))


# ----------------------------------------------------------------------------- baselines
def test_popular_policy_skips_shown_items() -> None:
    # popularity = item id: the ranking is 11, 10, 9, ...
    ctx = make_ctx()
    pad = N_ITEMS
    items = torch.tensor([[[11, 9, pad], [pad, pad, pad]],   # 11 and 9 were shown
                          [[pad, pad, pad], [pad, pad, pad]],  # nothing shown yet
                          [[10, 11, 8], [9, 7, 6]]])           # six items shown
    obs = Obs(items=items, clicks=torch.zeros(3, L, K), step=torch.zeros(3, dtype=torch.long))
    got = PopularPolicy(ctx).act(obs, explore=False)
    assert got.tolist() == [[10, 8, 7], [11, 10, 9], [5, 4, 3]]
    plain = PopularPolicy(ctx, skip_shown=False).act(obs, explore=False)
    assert plain.tolist() == [[11, 10, 9]] * 3
    assert PopularPolicy(ctx).update(None) == {} and PopularPolicy(ctx).state_dict() == {}


def test_popular_policy_breaks_zero_popularity_ties_by_id() -> None:
    pop = torch.zeros(N_ITEMS)
    pop[5] = 2.0
    ctx = make_ctx(item_popularity=pop)
    obs = Obs(items=torch.full((1, L, K), N_ITEMS), clicks=torch.zeros(1, L, K),
              step=torch.zeros(1, dtype=torch.long))
    assert PopularPolicy(ctx).act(obs, explore=False).tolist() == [[5, 0, 1]]


def test_popular_policy_breaks_nonzero_popularity_ties_by_id() -> None:
    ctx = make_ctx(item_popularity=torch.full((N_ITEMS,), 3.0))  # every item clicked 3 times
    obs = Obs(items=torch.full((1, L, K), N_ITEMS), clicks=torch.zeros(1, L, K),
              step=torch.zeros(1, dtype=torch.long))
    assert PopularPolicy(ctx).act(obs, explore=False).tolist() == [[0, 1, 2]]


def test_mask_shown_and_helpers() -> None:
    scores = torch.arange(4.0).expand(2, 4)
    obs = Obs(items=torch.tensor([[[1], [4]], [[4], [4]]]), clicks=torch.zeros(2, 2, 1),
              step=torch.zeros(2, dtype=torch.long))
    masked = mask_shown(scores, obs)
    assert masked.tolist() == [[0.0, float("-inf"), 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]
    assert top_k(torch.tensor([[0.1, 0.9, 0.5]]), 2).tolist() == [[1, 2]]
    gen = torch.Generator().manual_seed(0)
    assert_valid_slates(random_slates(20, N_ITEMS, K, torch.device("cpu"), gen), 20)
    single = random_slates(50, N_ITEMS, 1, torch.device("cpu"), gen)
    assert single.shape == (50, 1) and bool(((single >= 0) & (single < N_ITEMS)).all())


def test_random_policy_returns_valid_distinct_items() -> None:
    obs = random_obs(30, torch.Generator().manual_seed(0))
    policy = RandomPolicy(make_ctx())
    first, second = policy.act(obs, explore=False), policy.act(obs, explore=False)
    assert_valid_slates(first, 30)
    assert_valid_slates(second, 30)
    assert not torch.equal(first, second)
    assert torch.equal(RandomPolicy(make_ctx()).act(obs, explore=False), first)  # seeded by ctx.seed
    assert not torch.equal(RandomPolicy(make_ctx(seed=1)).act(obs, explore=False), first)
    # every item gets recommended eventually
    many = torch.cat([policy.act(obs, explore=False).flatten() for _ in range(5)])
    assert set(many.tolist()) == set(range(N_ITEMS))


def test_greedy_policy_uses_the_behavior_model() -> None:
    model = GRUBehavior(n_items=N_ITEMS, dim=4, hidden=8)
    reward = ConversionReward()
    policy = GreedyPolicy(make_ctx(behavior=model, reward=reward))
    obs = random_obs(9, torch.Generator().manual_seed(0))
    expected = reward.expected(model.score_all(model.encode(obs)))
    assert expected.shape == (9, N_ITEMS)
    got = policy.act(obs, explore=False)
    assert_valid_slates(got, 9)
    assert torch.equal(got, expected.topk(K, dim=1).indices)
    # the greedy slate holds the K items of highest expected immediate reward
    for i in range(9):
        chosen = expected[i, got[i]]
        others = expected[i][~torch.isin(torch.arange(N_ITEMS), got[i])]
        assert float(chosen.min()) >= float(others.max())


def test_bench_algos_trains_each_algorithm_at_its_own_budget() -> None:
    """Without ``--steps`` / ``--n-users`` every algorithm gets the trainer settings and budget
    shape of ``recrl train algo=<name>`` (DQN's own, conf/algo_trainer/dqn.yaml), checked a
    twelfth of the way; with them, every algorithm the same."""
    import argparse

    bench = load_script("bench_algos")
    own = argparse.Namespace(steps=None, n_users=None, eval_every=None, device="cpu", overrides=[])
    dqn, ppo = bench.budget_of("dqn", own), bench.budget_of("ppo", own)
    assert (dqn.steps, dqn.n_users, dqn.eval_every) == (1500, 1024, 125)
    assert dqn.algo.epsilon_decay_steps == 750 and dqn.algo._target_ == "recrl.algos.dqn.DQN"
    assert (ppo.steps, ppo.n_users, ppo.eval_every) == (1500, 256, 125)  # conf/algo_trainer/ppo.yaml
    assert ppo.trainer["batch_size"] == 256 and ppo.algo._target_ == "recrl.algos.ppo.PPO"
    assert not bench.learns("planner") and not bench.learns("greedy") and bench.learns("bc")
    fixed = argparse.Namespace(steps=40, n_users=8, eval_every=10, device="cpu", overrides=["algo.lr=0.01"])
    small = bench.budget_of("dqn", fixed)
    assert (small.steps, small.n_users, small.eval_every) == (40, 8, 10)
    assert small.trainer["learning_starts"] == 80 and small.algo.lr == 0.01


def test_greedy_policy_needs_a_scoring_behavior_model() -> None:
    with pytest.raises(RecrlError, match="greedy"):
        GreedyPolicy(make_ctx(behavior=None))


def test_bench_algos_script_writes_json(tmp_path, monkeypatch, shared_cache) -> None:
    """``scripts/bench_algos.py`` trains a few algorithms briefly and writes its JSON (no timing
    is asserted): one per training mode."""
    import json
    import runpy
    import sys
    from pathlib import Path

    out = tmp_path / "bench_algos.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_algos.py"
    monkeypatch.setenv("RECRL_CACHE_DIR", str(shared_cache))
    monkeypatch.setattr(sys, "argv", ["bench_algos.py", "--algos", "dqn", "ppo", "linucb", "bc",
                                      "--steps", "20", "--n-users", "8", "--eval-every", "10",
                                      "--eval-episodes", "8", "--flop-steps", "4", "--out", str(out), "--",
                                      "experiment=smoke"])
    runpy.run_path(str(script), run_name="__main__")
    data = json.loads(out.read_text())
    rows = {r["algo"]: r for r in data["rows"]}
    assert set(rows) == {"dqn", "ppo", "linucb", "bc"}
    assert {r["mode"] for r in rows.values()} == {"off_policy", "on_policy", "online", "offline"}
    assert all(r["updates_per_s"] > 0 and math.isfinite(r["final_return"]) for r in rows.values())
    assert rows["bc"]["user_steps_per_s"] is None and rows["dqn"]["user_steps_per_s"] > 0  # offline: no env
    assert data["facts"]["greedy_return"] > 0 and data["facts"]["steps"] == 20
    assert all(r["trainer_steps"] == 20 and r["n_users"] == 8 for r in rows.values())
    assert data["facts"]["matmul_gflops"] > 0 and data["facts"]["reference_updates_per_s"] > 0
    assert data["facts"]["keep_freed_memory"] is keep_freed_memory()  # trainer.keep_freed_memory=true
    for r in rows.values():  # every ground-truth check of training, in order; the last is the final return
        assert [c["step"] for c in r["curve"]] == [10, 20]
        assert r["curve"][-1]["return"] == r["final_return"]
        assert r["curve"][0]["train_s"] <= r["curve"][1]["train_s"]
    reference = data["facts"]["reference_updates_per_s"]
    for r in rows.values():  # every algorithm's figures divided by the same run's yardsticks
        assert r["ratio_to_reference"] == pytest.approx(r["updates_per_s"] / reference)
        assert r["flops_per_step"] > 0 and 0 < r["share_of_bound"] < 1
    bench = load_script("bench_algos")
    dqn = rows["dqn"]
    old_dqn = {**dqn, "updates_per_s": dqn["updates_per_s"] / 2,
               "ratio_to_reference": dqn["ratio_to_reference"] / 4}
    old = {"facts": {"matmul_gflops": 10.0}, "rows": [old_dqn]}
    change = bench.print_comparison(list(rows.values()), old, out)
    assert [c["algo"] for c in change] == ["dqn"]
    assert change[0]["speed_change"] == pytest.approx(2.0) and change[0]["ratio_change"] == pytest.approx(4.0)
