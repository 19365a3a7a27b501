"""``trainer.compile=true``: the compiled act, env step and update give the eager numbers."""

from __future__ import annotations

import pytest
import torch

from recrl.algos import nets
from recrl.algos.dqn import DQN
from recrl.behavior.gru import GRUBehavior
from recrl.compile import compile_function, compile_hot_paths, compile_mode, owning_outputs
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.rewards import ClickReward
from recrl.types import AlgoContext, Obs, RecrlError, Transition

N_ITEMS, HORIZON, HISTORY, USERS = 12, 6, 3, 16
TOLERANCE = 1e-5  # compiled kernels may sum in another order


def user_model() -> GRUBehavior:
    torch.manual_seed(0)
    model = GRUBehavior(n_items=N_ITEMS, dim=4, hidden=8)
    for p in model.parameters():
        p.data.normal_(0.0, 0.5)
    return model


def make_pair(model: GRUBehavior) -> tuple[DQN, RecEnv]:
    ctx = AlgoContext(n_items=N_ITEMS, slate_size=1, history_len=HISTORY, horizon=HORIZON,
                      device=torch.device("cpu"), seed=0, item_popularity=torch.zeros(N_ITEMS),
                      behavior=model, reward=ClickReward())
    algo = DQN(ctx, dim=8, hidden=16, dueling=True, n_step=1, average=0.9, skip_shown=True)
    env = RecEnv(model, ClickReward(), horizon=HORIZON, slate_size=1, history_len=HISTORY, autoreset=True)
    return algo, env


def test_compiled_act_step_and_update_match_the_eager_ones() -> None:
    model = user_model()
    eager_algo, eager_env = make_pair(model)
    algo, env = make_pair(model)
    assert compile_hot_paths(algo, env) == [
        "algorithm.act", "algorithm.update", "environment.transition"]
    assert compile_hot_paths(algo, env) == []  # never compiled twice
    obs, eager_obs = env.reset(USERS, seed=0), eager_env.reset(USERS, seed=0)
    # the compiled step looks its input gates up (FrozenGRU), the eager one multiplies
    assert env.responder.input_gates is not None and eager_env.responder.input_gates is None
    steps = []
    for _ in range(2 * HORIZON):  # users leave and are replaced on the way
        slates = algo.act(obs, explore=True)
        assert torch.equal(slates, eager_algo.act(eager_obs, explore=True))
        next_obs, reward, done, info = env.step(slates)
        eager_next, eager_reward, eager_done, _ = eager_env.step(slates)
        assert torch.equal(next_obs.items, eager_next.items) and torch.equal(done, eager_done)
        assert torch.allclose(reward, eager_reward)
        assert torch.allclose(env.state, eager_env.state, atol=TOLERANCE)
        steps.append(Transition(obs=obs, action=slates, reward=reward, next_obs=next_obs,
                                done=done.float(), valid=info.was_alive.float()))
        obs, eager_obs = next_obs, eager_next
    assert torch.equal(algo.act(obs, explore=False), eager_algo.act(eager_obs, explore=False))
    for transition in steps:
        stats, eager_stats = algo.update(transition), eager_algo.update(transition)
        assert abs(float(stats["train/loss"]) - float(eager_stats["train/loss"])) < 1e-4
    for p, q in zip(algo.q.parameters(), eager_algo.q.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4)


def test_compiled_greedy_acting_on_item_major_scores_matches_the_eager_one(monkeypatch) -> None:
    """Item-major scores (acting's layout on a CPU from ``ITEM_MAJOR_ITEMS`` items on) inside a
    compiled graph: masked in place through the transposed view, searched down the columns."""
    monkeypatch.setattr(nets, "ITEM_MAJOR_ITEMS", N_ITEMS)
    algo, env = make_pair(user_model())
    act = compile_function(algo.act, compile_mode(), algo)
    gen = torch.Generator().manual_seed(1)
    obs = env.reset(USERS, seed=0)
    for _ in range(HORIZON):
        slates = algo.act(obs, explore=False)
        assert torch.equal(act(obs, explore=False), slates)
        obs = env.step(torch.randint(0, N_ITEMS, (USERS, 1), generator=gen))[0]


def test_the_compiled_environment_step_is_one_graph() -> None:
    """The step's random numbers are drawn before ``transition``, so dynamo traces all of its
    arithmetic (response, leaving, history, autoreset) into one graph without a break."""
    _, env = make_pair(user_model())
    env.reset(USERS, seed=0)
    slates = torch.randint(0, N_ITEMS, (USERS, 1))
    explained = torch._dynamo.explain(env.transition)(slates, *env.draw())
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_trainer_compile_compiles_the_hot_paths_before_training(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr("recrl.loop.compile_hot_paths",
                        lambda algo, env, mode: calls.append((algo, env, mode)))
    algo, env = make_pair(user_model())
    for compile in (False, True):
        trainer = Trainer(steps=4, n_users=USERS, batch_size=8, learning_starts=16, eval_every=10**9,
                          log_every=10**9, checkpoint_every=10**9, device="cpu", progress=False,
                          compile=compile, compile_mode="max-autotune-no-cudagraphs")
        trainer.fit(algo, env, evaluate=lambda: {"eval/return": 0.0}, log=lambda step, m: None,
                    save=lambda tag, step: None)
    assert calls == [(algo, env, "max-autotune-no-cudagraphs")]


def test_compile_mode_auto_is_the_default_mode_and_a_wrong_one_is_refused() -> None:
    assert compile_mode("auto") == "default"
    assert compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(RecrlError, match=r"trainer\.compile_mode='fast'"):
        compile_mode("fast")
    with pytest.raises(RecrlError, match="use one of auto, default"):
        Trainer(compile=True, compile_mode="fast")


def test_owning_outputs_hands_out_copies_of_outputs_and_of_state_the_call_rebinds() -> None:
    class Counter:
        def __init__(self) -> None:
            self.total = torch.zeros(2)
            self.kept = torch.ones(2)

        def step(self, x: torch.Tensor) -> tuple[Obs, torch.Tensor]:
            self.total = self.total + x  # rebound: a CUDA graph would own this memory
            obs = Obs(items=self.total.long()[:, None, None], clicks=x[:, None, None], step=x.long())
            return obs, self.total

    counter = Counter()
    kept = counter.kept
    step = owning_outputs(counter.step, counter)
    x = torch.tensor([1.0, 2.0])
    obs, total = step(x)
    assert torch.equal(total, x) and torch.equal(counter.total, x)
    assert total.data_ptr() != counter.total.data_ptr()  # the caller's copy and the state's differ
    assert obs.clicks.data_ptr() != x.data_ptr() and torch.equal(obs.clicks[:, 0, 0], x)
    assert counter.kept is kept  # what the call did not rebind is left alone
    obs, total = step(x)
    assert torch.equal(counter.total, 2 * x) and torch.equal(total, 2 * x)
