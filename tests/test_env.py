"""Tests for recrl.env.simulator.RecEnv over the synthetic ground-truth world."""

from __future__ import annotations

import pytest
import torch

from recrl.data.synthetic import SyntheticWorld
from recrl.env.noise import PreDrawn
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import RecrlError

N_ITEMS, K, L, B = 15, 2, 3, 6


def world(leave_bias: float = -3.0) -> SyntheticWorld:
    """``leave_bias`` -30: nobody ever leaves; +30: everybody leaves after one step."""
    return SyntheticWorld(n_items=N_ITEMS, n_users=10, n_topics=3, horizon=5, leave_bias=leave_bias, seed=0)


def make_env(leave_bias: float = -3.0, horizon: int = 4, autoreset: bool = False) -> RecEnv:
    return RecEnv(world(leave_bias), ClickReward(), horizon=horizon, slate_size=K, history_len=L,
                  autoreset=autoreset)


def slates(gen: torch.Generator, b: int = B) -> torch.Tensor:
    return torch.rand(b, N_ITEMS, generator=gen).topk(K, dim=1).indices


def test_reset_and_step_shapes() -> None:
    env = make_env()
    obs = env.reset(B, seed=0)
    assert obs.items.shape == (B, L, K) and obs.items.dtype == torch.long
    assert bool((obs.items == N_ITEMS).all())  # history starts as padding
    assert obs.clicks.shape == (B, L, K) and bool((obs.clicks == 0).all())
    assert obs.step.tolist() == [0] * B
    assert bool(env.alive.all())
    obs, reward, done, info = env.step(slates(torch.Generator().manual_seed(0)))
    assert obs.items.shape == (B, L, K) and obs.step.tolist() == [1] * B
    assert reward.shape == (B,) and done.shape == (B,) and done.dtype == torch.bool
    assert info.response.click.shape == (B, K) and info.response.leave_prob.shape == (B,)
    assert info.terminated.shape == info.truncated.shape == info.was_alive.shape == (B,)
    torch.testing.assert_close(reward, info.response.click.sum(1))  # ClickReward
    assert torch.equal(done, info.terminated | info.truncated)


def test_history_shifts_left_and_keeps_the_last_slate() -> None:
    env = make_env(leave_bias=-30.0)
    env.reset(B, seed=0)
    gen = torch.Generator().manual_seed(0)
    s1, s2 = slates(gen), slates(gen)
    obs1, _, _, info1 = env.step(s1)
    assert torch.equal(obs1.items[:, -1], s1)
    assert bool((obs1.items[:, :-1] == N_ITEMS).all())
    assert torch.equal(obs1.clicks[:, -1], info1.response.click)
    assert bool((obs1.clicks[:, :-1] == 0).all())
    obs2, _, _, info2 = env.step(s2)
    assert torch.equal(obs2.items[:, -2], s1) and torch.equal(obs2.items[:, -1], s2)
    assert torch.equal(obs2.clicks[:, -2], info1.response.click)
    assert torch.equal(obs2.clicks[:, -1], info2.response.click)
    assert bool((obs2.items[:, 0] == N_ITEMS).all())
    obs3, *_ = env.step(slates(gen))
    assert torch.equal(obs3.items[:, 0], s1)  # history_len 3: s1 is now the oldest slot
    # observations are copies: later steps never change an earlier one
    assert torch.equal(obs1.items[:, -1], s1) and bool((obs1.items[:, 0] == N_ITEMS).all())


def test_finished_users_stay_finished_without_autoreset() -> None:
    env = make_env(leave_bias=30.0)
    env.reset(B, seed=0)
    gen = torch.Generator().manual_seed(0)
    s1 = slates(gen)
    obs1, _, done, info = env.step(s1)
    assert bool(done.all()) and bool(info.terminated.all()) and not bool(info.truncated.any())
    assert bool(info.was_alive.all()) and not bool(env.alive.any())
    state = env.state.clone()
    for _ in range(3):
        obs, reward, done, info = env.step(slates(gen))
        assert bool((reward == 0).all())
        assert not bool(done.any()) and not bool(info.terminated.any()) and not bool(info.truncated.any())
        assert not bool(info.was_alive.any()) and not bool(env.alive.any())
        assert obs.step.tolist() == [1] * B  # step counter frozen
        assert torch.equal(obs.items, obs1.items) and torch.equal(obs.clicks, obs1.clicks)
        assert torch.equal(env.state, state)
    obs = env.reset(B)  # a new reset revives everybody
    assert bool(env.alive.all()) and obs.step.tolist() == [0] * B


def test_autoreset_keeps_the_batch_full() -> None:
    env = make_env(leave_bias=30.0, autoreset=True)
    env.reset(B, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        obs, reward, done, info = env.step(slates(gen))
        assert bool(done.all()) and bool(info.was_alive.all())
        assert bool(env.alive.all())
        # the returned observation is the fresh user's first one
        assert bool((obs.items == N_ITEMS).all()) and bool((obs.clicks == 0).all())
        assert obs.step.tolist() == [0] * B
        torch.testing.assert_close(reward, info.response.click.sum(1))


def test_autoreset_restarts_only_finished_rows() -> None:
    env = make_env(leave_bias=0.0, autoreset=True)  # leave probability around one half
    env.reset(64, seed=0)
    s = slates(torch.Generator().manual_seed(0), b=64)
    before = env.state.clone()
    obs, _, done, info = env.step(s)
    assert 0 < int(done.sum()) < 64
    assert bool(env.alive.all())
    assert torch.equal(done, info.terminated)  # horizon 4: nobody is truncated yet
    kept, fresh = ~done, done
    assert torch.equal(obs.items[kept, -1], s[kept]) and obs.step[kept].tolist() == [1] * int(kept.sum())
    assert bool((obs.items[fresh] == N_ITEMS).all()) and bool((obs.clicks[fresh] == 0).all())
    assert obs.step[fresh].tolist() == [0] * int(fresh.sum())
    # fresh users: neutral satisfaction and no boredom again
    assert bool((env.state[fresh, 3:] == 0).all())
    assert not torch.equal(env.state[fresh], before[fresh])


def test_truncation_exactly_at_horizon() -> None:
    env = make_env(leave_bias=-30.0, horizon=3)
    env.reset(B, seed=0)
    gen = torch.Generator().manual_seed(0)
    for t in (1, 2):
        obs, _, done, info = env.step(slates(gen))
        assert not bool(done.any()) and obs.step.tolist() == [t] * B
    obs, _, done, info = env.step(slates(gen))
    assert bool(done.all()) and bool(info.truncated.all()) and not bool(info.terminated.any())
    assert obs.step.tolist() == [3] * B and not bool(env.alive.any())


def test_truncation_with_autoreset_restarts_at_horizon() -> None:
    env = make_env(leave_bias=-30.0, horizon=2, autoreset=True)
    env.reset(B, seed=0)
    gen = torch.Generator().manual_seed(0)
    dones = []
    for _ in range(6):
        _obs, _, done, info = env.step(slates(gen))
        dones.append(bool(done.all()))
        assert bool(info.truncated.all()) == dones[-1]
    assert dones == [False, True] * 3


def rollout(env: RecEnv, seed: int, steps: int = 4) -> list[torch.Tensor]:
    out = [env.reset(B, seed=seed).items]
    gen = torch.Generator().manual_seed(123)  # the same actions every time
    for _ in range(steps):
        obs, reward, done, info = env.step(slates(gen))
        out += [obs.items, obs.clicks, reward, done.float(), info.response.click_prob]
    return out


def test_same_seed_same_trajectory() -> None:
    a, b = rollout(make_env(), seed=3), rollout(make_env(), seed=3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    env = make_env()
    again = rollout(env, seed=3)
    again_after_reuse = rollout(env, seed=3)  # reset(seed) re-seeds the env's generator
    for x, y in zip(again, again_after_reuse, strict=True):
        assert torch.equal(x, y)
    c = rollout(make_env(), seed=4)
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[5], c[5])  # different users: different click probabilities


class DrawsAsItGoes:
    """The world without ``pre_drawable``: the environment hands it the generator itself, and
    the model and the autoreset draw as they go (the order before pre-drawing)."""

    def __init__(self, inner: SyntheticWorld) -> None:
        self.inner, self.n_items = inner, inner.n_items

    def initial_state(self, n_users: int, generator: torch.Generator) -> torch.Tensor:
        return self.inner.initial_state(n_users, generator)

    def respond(self, *args, **kwargs):
        return self.inner.respond(*args, **kwargs)


def test_pre_drawn_random_numbers_give_the_same_trajectory_on_a_cpu() -> None:
    """A step's uniforms drawn at once (one graph when compiled) are the numbers separate draws
    give on a CPU generator: the same clicks, leaves and fresh users, autoreset included."""
    assert world().pre_drawable
    for autoreset in (False, True):
        pre_drawn = rollout(RecEnv(world(-1.0), ClickReward(), horizon=4, slate_size=K, history_len=L,
                                   autoreset=autoreset), seed=5, steps=8)
        as_it_goes = rollout(RecEnv(DrawsAsItGoes(world(-1.0)), ClickReward(), horizon=4, slate_size=K,
                                    history_len=L, autoreset=autoreset), seed=5, steps=8)
        for x, y in zip(pre_drawn, as_it_goes, strict=True):
            assert torch.equal(x, y)


def test_pre_drawn_numbers_are_handed_out_in_order_and_counted() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = PreDrawn(gen, count=7, device="cpu")
    expected = torch.rand(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws.uniform((2, 1)).flatten(), expected[:2])
    assert torch.equal(draws.uniform((2, 2)).flatten(), expected[2:6])
    with pytest.raises(RecrlError, match="7 uniforms drawn, 6 used"):
        draws.check_used()
    with pytest.raises(RecrlError, match="asked for 8 uniforms, 7 were drawn"):
        draws.uniform((2,))


def test_wrong_slate_shape_raises() -> None:
    env = make_env()
    env.reset(B, seed=0)
    with pytest.raises(RecrlError, match="slates of shape"):
        env.step(torch.zeros(B, K + 1, dtype=torch.long))
    with pytest.raises(RecrlError, match="slates of shape"):
        env.step(torch.zeros(B + 1, K, dtype=torch.long))
    with pytest.raises(RecrlError, match="slates of shape"):
        env.step(torch.zeros(B, dtype=torch.long))


def test_invalid_construction_raises() -> None:
    with pytest.raises(RecrlError, match="exceeds the catalogue"):
        RecEnv(world(), ClickReward(), slate_size=N_ITEMS + 1)
    for kwargs in ({"horizon": 0}, {"slate_size": 0}, {"history_len": 0}):
        with pytest.raises(RecrlError, match=">= 1"):
            RecEnv(world(), ClickReward(), **kwargs)


class _UndeclaredReward:
    """A user-written reward that does not say which outputs it reads (no ``outputs``)."""

    name, signals = "undeclared", ()

    def __call__(self, response):
        return response.click.sum(1)


@pytest.mark.parametrize("reward_name", ["ctr", "rating", "undeclared"])
def test_a_lean_environment_steps_exactly_as_the_full_one(reward_name: str) -> None:
    """``RecEnv(lean=True)`` (training) leaves out the outputs the reward does not read (NaN in
    the responses) and changes nothing else: same observations, rewards, flags and states."""
    from recrl.behavior.gru import GRUBehavior
    from recrl.rewards import RatingReward

    torch.manual_seed(0)
    model = GRUBehavior(n_items=20, dim=4, hidden=8)
    for p in model.parameters():
        p.data.normal_(0.0, 0.5)
    reward = {"ctr": ClickReward(), "rating": RatingReward(), "undeclared": _UndeclaredReward()}[reward_name]
    full, lean = (RecEnv(model, reward, horizon=6, history_len=3, autoreset=True, lean=flag)
                  for flag in (False, True))
    full.reset(32, seed=0), lean.reset(32, seed=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        slates = torch.randint(0, 20, (32, 1), generator=g)
        f_obs, f_reward, f_done, f_info = full.step(slates)
        l_obs, l_reward, l_done, l_info = lean.step(slates)
        assert torch.equal(f_obs.items, l_obs.items) and torch.equal(f_obs.clicks, l_obs.clicks)
        assert torch.equal(f_reward, l_reward) and torch.equal(f_done, l_done)
        assert torch.equal(full.state, lean.state)
        assert f_info.response.rating.isfinite().all() and f_info.response.value("watch").isfinite().all()
        rating, watch = l_info.response.rating, l_info.response.value("watch")
        assert rating.isfinite().all() == (reward_name != "ctr")  # computed only where it is read
        assert watch.isfinite().all() == (reward_name == "undeclared")  # everything, undeclared
