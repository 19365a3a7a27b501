"""Large-model RL: the transformer policy backbone, ``algo.init_from``, the supervised baseline
and the KL leash of fine-tuning (README: "Large-model RL")."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import collect_rollout, make_ctx, random_obs, train_smoke

from recrl.algos.a2c import A2C
from recrl.algos.actor_critic import candidates_first
from recrl.algos.backbone import (
    Backbone,
    KLPenalty,
    PretrainSettings,
    pretrained_state,
)
from recrl.algos.cql import DiscreteCQL
from recrl.algos.dqn import DQN
from recrl.algos.nets import TransformerHistoryEncoder, kl_divergence
from recrl.algos.ppo import PPO
from recrl.algos.reinforce import Reinforce
from recrl.algos.sqn import SQN
from recrl.algos.supervised import Supervised
from recrl.behavior.sasrec import SASRecBehavior
from recrl.buffer import Rollout
from recrl.checkpoint import save_checkpoint
from recrl.data.preprocess import log_frame
from recrl.types import Interactions, Obs, RecrlError, Transition

SMALL = dict(encoder="transformer", dim=8, hidden=16, layers=1, heads=2)


def left_padded(items: list[list[int]], clicks: list[list[float]], n_items: int, length: int) -> Obs:
    """Single-item slates, each history left-padded to ``length``."""
    rows_i = [[n_items] * (length - len(r)) + r for r in items]
    rows_c = [[0.0] * (length - len(r)) + r for r in clicks]
    return Obs(items=torch.tensor(rows_i)[:, :, None], clicks=torch.tensor(rows_c)[:, :, None],
               step=torch.tensor([len(r) for r in items]))


def chain_log(n_users: int = 60, n_items: int = 6) -> pd.DataFrame:
    """Every user clicks items ``s, s+1, s+2, ...`` (mod ``n_items``) from a random start:
    the next click is the item after the last one."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for user in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(4):
            users.append(user)
            items.append((start + t) % n_items)
            times.append(t)
    return log_frame({"user": users, "time": times, "item": items, "click": np.ones(len(users), np.float32)})


def logged_ctx(log: pd.DataFrame, n_items: int, history_len: int = 3, table: pd.DataFrame | None = None,
               **kwargs):
    interactions = Interactions(train=log, valid=log.iloc[:0],
                                items=table if table is not None else pd.DataFrame(index=range(n_items)),
                                n_users=int(log["user"].max()) + 1, n_items=n_items)
    return make_ctx(slate_size=1, n_items=n_items, history_len=history_len, horizon=5,
                    item_popularity=torch.zeros(n_items), interactions=interactions, **kwargs)


def test_kl_divergence_by_hand_on_three_items() -> None:
    pi, ref = torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.2, 0.3, 0.5]])
    expected = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(1.0) + 0.2 * math.log(0.2 / 0.5)
    torch.testing.assert_close(kl_divergence(pi.log(), ref.log()), torch.tensor([expected]))
    # an item the policy masks (-inf, e.g. already shown) adds nothing; equal policies give 0
    masked = torch.tensor([[0.6, 0.4, 0.0]]).log()
    ref2 = torch.tensor([[0.5, 0.25, 0.25]]).log()
    by_hand = 0.6 * math.log(0.6 / 0.5) + 0.4 * math.log(0.4 / 0.25)
    torch.testing.assert_close(kl_divergence(masked, ref2), torch.tensor([by_hand]))
    assert float(kl_divergence(ref.log(), ref.log())) == pytest.approx(0.0, abs=1e-7)


def test_adaptive_coefficient_moves_toward_the_target() -> None:
    leash = KLPenalty(torch.nn.Linear(1, 1), coef=1.0, target=0.1)
    leash.adapt(1.0)  # far above the target: the error is clipped to +0.2
    assert leash.coef == pytest.approx(1.02)
    leash.adapt(0.0)  # far below: -0.2
    assert leash.coef == pytest.approx(1.02 * 0.98)
    leash.adapt(0.1)
    assert leash.coef == pytest.approx(1.02 * 0.98)
    assert KLPenalty(torch.nn.Linear(1, 1), coef=0.0, target=0.05).coef == 0.1  # the controller's start
    assert not KLPenalty(torch.nn.Linear(1, 1)).active
    with pytest.raises(RecrlError, match="kl_coef"):
        KLPenalty(None, coef=-1.0)


def test_transformer_encoder_ignores_left_padding() -> None:
    enc = TransformerHistoryEncoder(n_items=10, horizon=5, dim=8, layers=2, heads=2).eval()
    short = left_padded([[3, 4], []], [[1.0, 0.0], []], 10, 2)
    long = left_padded([[3, 4], []], [[1.0, 0.0], []], 10, 5)
    assert enc(short).shape == (2, 8)
    torch.testing.assert_close(enc(short), enc(long))
    clicked = left_padded([[3, 4]], [[0.0, 0.0]], 10, 2)
    assert not torch.allclose(enc(short)[:1], enc(clicked))  # the click flags are read
    with pytest.raises(RecrlError, match="heads"):
        TransformerHistoryEncoder(n_items=10, horizon=5, dim=6, heads=2)


def test_init_from_behavior_starts_as_the_sasrec_click_model() -> None:
    torch.manual_seed(0)
    behavior = SASRecBehavior(n_items=12, dim=8, layers=2, heads=2, window=10, dropout=0.0).eval()
    with torch.no_grad():
        behavior.click_head.bias.normal_()  # a fitted model's biases are not zero
    ctx = make_ctx(slate_size=1, history_len=4, behavior=behavior)
    algo = PPO(ctx, **{**SMALL, "layers": 2}, item_init="random", init_from="behavior")
    obs = left_padded([[1, 5, 7], [2], []], [[1.0, 0.0, 1.0], [0.0], []], 12, 4)
    with torch.no_grad():
        expected = behavior.click_head(behavior.output(behavior.encode(obs)))
        torch.testing.assert_close(algo.policy(obs), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RecrlError, match=r"algo\.dim"):
        PPO(ctx, **{**SMALL, "dim": 16}, item_init="random", init_from="behavior")
    with pytest.raises(RecrlError, match="behavior=sasrec"):
        PPO(replace(ctx, behavior=object()), **SMALL, item_init="random", init_from="behavior")


def test_init_from_pretrain_loads_exactly_the_pretrained_weights(tmp_path: Path) -> None:
    ctx = logged_ctx(chain_log(), 6)
    settings = PretrainSettings(steps=30, batch_size=32)
    backbone = Backbone(**SMALL)
    state, report = pretrained_state(ctx, backbone, settings)
    assert report["rows"] == 240 and not report["cached"]
    for algo in (PPO(ctx, **SMALL, init_from="pretrain", pretrain=settings),
                 Reinforce(ctx, **SMALL, init_from="pretrain", pretrain=settings),
                 A2C(ctx, **SMALL, init_from="pretrain", pretrain=settings)):
        own = algo.policy.state_dict()
        assert own.keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(own[key], value), key
    dqn = DQN(ctx, **SMALL, dueling=True, init_from="pretrain", pretrain=settings)
    for key, value in state.items():  # the dueling value head is DQN's own
        assert torch.equal(dqn.q.state_dict()[key], value), key
    # cached: the second call loads the file the first wrote
    cached_ctx = replace(ctx, cache_dir=str(tmp_path), data_key="toy")
    first = pretrained_state(cached_ctx, backbone, settings)
    second = pretrained_state(cached_ctx, backbone, settings)
    assert not first[1]["cached"] and second[1]["cached"]
    assert all(torch.equal(first[0][k], second[0][k]) for k in first[0])
    assert len(list((tmp_path / "pretrain").glob("*.pt"))) == 1


def test_init_from_a_saved_run_and_a_clear_error_for_another_backbone(tmp_path: Path) -> None:
    ctx = make_ctx(slate_size=1, history_len=3)
    source = PPO(replace(ctx, seed=7), **SMALL)
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", {"algo": source.state_dict()})
    algo = PPO(ctx, **SMALL, init_from=str(tmp_path))
    for key, value in source.policy.state_dict().items():
        assert torch.equal(algo.policy.state_dict()[key], value), key
    with pytest.raises(RecrlError, match="does not fit this policy's backbone"):
        PPO(ctx, **{**SMALL, "dim": 16}, init_from=str(tmp_path))
    with pytest.raises(RecrlError, match="init_from"):
        PPO(ctx, **SMALL, kl_coef=0.1)  # a leash needs a starting policy


def test_a_huge_kl_coefficient_keeps_the_policy_at_its_start(tmp_path: Path) -> None:
    ctx = make_ctx()
    save_checkpoint(tmp_path / "last.pt", {"algo": PPO(replace(ctx, seed=3), **SMALL).state_dict()})

    def drift(kl_coef: float) -> float:
        algo = PPO(ctx, **SMALL, lr=0.001, init_from=str(tmp_path / "last.pt"), kl_coef=kl_coef,
                   entropy_coef=0.0)
        for _ in range(6):
            stats = algo.update(collect_rollout(algo))
        assert {"train/kl", "train/reward"} <= stats.keys()
        roll = collect_rollout(algo)
        obs = roll.flat_obs()
        with torch.no_grad():
            log_pi = torch.log_softmax(algo.logits(obs), 1)
            return float(algo.kl_term(obs, log_pi).mean())

    # Adam's steps have the size of the step size whatever the loss scale, so a held policy
    # still jitters around its start: KL about 3e-5 here against 0.04 for a free one
    held, free = drift(1e4), drift(1e-8)
    assert held < 1e-3 and free > 100 * held


def test_cold_start_items_are_scored_from_content() -> None:
    n = 8
    table = pd.DataFrame({"topic": [i % 3 for i in range(n)], "quality": [(i % 3) / 3 for i in range(n)]})
    log = chain_log(n_items=6)  # items 6 and 7 are never logged; 7 has item 1's content, 6 item 0's
    ctx = logged_ctx(log, n, table=table)
    algo = Supervised(ctx, **SMALL, item_init="side", item_ids=False, pretrain=PretrainSettings(steps=30))
    obs = left_padded([[2, 3], [5]], [[1.0, 1.0], [1.0]], n, 3)
    scores = algo.scores(obs)
    torch.testing.assert_close(scores[:, 7], scores[:, 1])
    torch.testing.assert_close(scores[:, 6], scores[:, 0])
    assert torch.isfinite(scores[:, 6:]).all()
    with pytest.raises(RecrlError, match="content"):
        PPO(make_ctx(), **SMALL, item_ids=False)


def test_supervised_learns_the_next_item_of_a_chain() -> None:
    ctx = logged_ctx(chain_log(), 6)
    algo = Supervised(ctx, **{**SMALL, "dim": 16}, item_init="random",
                      pretrain=PretrainSettings(steps=300, batch_size=64, lr=0.01))
    obs = left_padded([[0], [3, 4], [5]], [[1.0], [1.0, 1.0], [1.0]], 6, 3)
    assert algo.act(obs, explore=False)[:, 0].tolist() == [1, 5, 0]


@pytest.mark.parametrize("make", [
    lambda ctx: DQN(ctx, **SMALL, atoms=11, dueling=True),
    lambda ctx: SQN(ctx, **SMALL),
    lambda ctx: DiscreteCQL(ctx, **SMALL),
], ids=["c51", "sqn", "cql"])
def test_value_learners_take_a_transformer_backbone(make) -> None:
    ctx = logged_ctx(chain_log(), 6)
    algo = make(ctx)
    obs = left_padded([[0], [3, 4]], [[1.0], [1.0, 0.0]], 6, 3)
    assert algo.act(obs, explore=False).shape == (2, 1)
    if hasattr(algo, "dataset"):
        stats = algo.update(algo.dataset.sample(16, torch.Generator().manual_seed(0)))
        assert math.isfinite(float(stats["train/loss"]))


def test_cli_fine_tunes_from_the_pretrained_model_and_reports_it(tmp_path: Path, shared_cache: Path) -> None:
    report, rows = train_smoke(tmp_path, "algo=ppo", "algo.encoder=transformer", "algo.dim=8",
                               "algo.layers=1", "algo.init_from=pretrain", "algo.pretrain.steps=20",
                               "algo.kl_target=0.05", "eval.offline_users=0", "ope.enabled=false",
                               cache=shared_cache)
    assert {"ppo", "supervised", "oracle"} <= report["evaluation"]["ground_truth"].keys()
    assert report["init_from"]["source"] == "pretrain"
    assert any("train/kl" in r and "train/kl_coef" in r and "train/reward" in r for r in rows)


def staying_log(n_users: int = 80) -> pd.DataFrame:
    """Half the users click item 0 first and go on clicking items 2, 3, 4; the other half click
    item 1 first and leave: both first clicks are equally common, only one leads anywhere."""
    users, items, times = [], [], []
    for user in range(n_users):
        session = [0, 2, 3, 4] if user % 2 == 0 else [1]
        users += [user] * len(session)
        items += session
        times += list(range(len(session)))
    return log_frame({"user": users, "time": times, "item": items, "click": np.ones(len(users), np.float32)})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_return_weighted_pretraining_imitates_the_clicks_that_kept_users(seed: int) -> None:
    ctx = logged_ctx(staying_log(), 6, seed=seed)
    first_step = left_padded([[]], [[]], 6, 3)

    def preference(weighting: str) -> float:
        settings = PretrainSettings(steps=150, batch_size=64, lr=0.01, seed=seed, weighting=weighting)
        algo = Supervised(ctx, **{**SMALL, "encoder": "mlp"}, item_init="random", pretrain=settings)
        scores = algo.scores(first_step)[0]
        return float(scores[0] - scores[1])  # log-odds of item 0 over item 1 after no history

    assert abs(preference("none")) < 0.5       # equally common first clicks
    assert preference("return") > 1.5          # the one after which the session went on
    with pytest.raises(RecrlError, match="weighting"):
        PretrainSettings(weighting="bogus")


def rated_log(n_users: int = 80) -> pd.DataFrame:
    """Every user clicks one item: item 0 (rated 5) or item 1 (rated 1), equally often, so the
    clicks alone cannot tell them apart; one user's rating is missing (NaN)."""
    users = np.arange(n_users)
    rating = np.where(users % 2 == 0, 5.0, 1.0).astype(np.float32)
    rating[1] = np.nan
    return log_frame({"user": users, "time": np.zeros(n_users, np.int64), "item": users % 2,
                      "click": np.ones(n_users, np.float32), "rating": rating})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rating_weighted_pretraining_imitates_the_clicks_that_satisfied(seed: int) -> None:
    ctx = logged_ctx(rated_log(), 6, seed=seed)
    first_step = left_padded([[]], [[]], 6, 3)

    def preference(weighting: str) -> float:
        settings = PretrainSettings(steps=150, batch_size=256, lr=0.01, seed=seed, weighting=weighting,
                                    temperature=0.5)
        algo = Supervised(ctx, **{**SMALL, "encoder": "mlp"}, item_init="random", pretrain=settings)
        scores = algo.scores(first_step)[0]
        return float(scores[0] - scores[1])  # log-odds of item 0 over item 1 after no history

    unweighted, weighted = preference("none"), preference("rating")
    assert abs(unweighted) < 1.0               # equally common clicks (up to the batches' draw)
    assert weighted > 2.5                      # the well-rated one: weights e^{+-2} at z = +-1
    with pytest.raises(RecrlError, match=r"weighting=watch .* logs none"):
        preference("watch")                    # a signal this log does not have: one clear line
    with pytest.raises(RecrlError, match=r"the same conversion \(0\) on every clicked row"):
        preference("conversion")               # logged, but constant: nothing to weigh by


# ----------------------------------------------------------------------------- algo.candidates
def saved_start(tmp_path: Path, ctx) -> str:
    """A saved PPO run (random weights, seed 3) to start from."""
    path = tmp_path / "start.pt"
    save_checkpoint(path, {"algo": PPO(replace(ctx, seed=3), **SMALL).state_dict()})
    return str(path)


def test_candidates_first_by_hand() -> None:
    logits = torch.tensor([[5.0, 0.0, 2.0, float("-inf"), 9.0]])
    reference = torch.tensor([[1.0, 4.0, 3.0, float("-inf"), 0.5]])
    keep = torch.tensor([[True, False, True, False, False]])
    scores = candidates_first(logits, reference, keep)
    # candidates 0 (5) and 2 (2) first in the policy's order; then 1 (ref 4) and 4 (ref 0.5)
    # shifted to end just below the lowest candidate (2 - 1 - 4 = -3); the masked item stays -inf
    torch.testing.assert_close(scores, torch.tensor([[5.0, 1.0, 2.0, float("-inf"), -2.5]]))


def test_candidates_restrict_acting_and_ranking_to_the_starting_models_top_items(tmp_path: Path) -> None:
    ctx = make_ctx(slate_size=1, history_len=2)
    algo = PPO(ctx, **SMALL, init_from=saved_start(tmp_path, ctx), candidates=3, skip_shown=True)
    gen = torch.Generator().manual_seed(0)
    obs = random_obs(64, gen, k=1)
    with torch.no_grad():
        ref = algo.unrestricted_logits(obs, algo.initial)
    top3 = set(map(tuple, ref.topk(3, 1).indices.sort(1).values.tolist()))
    keep = algo.candidate_mask(obs)
    assert keep.sum(1).eq(3).all()
    assert set(map(tuple, keep.nonzero()[:, 1].view(-1, 3).tolist())) <= top3
    logits = algo.logits(obs)
    assert torch.equal(logits.isfinite(), keep & ref.isfinite())
    for _ in range(5):  # sampled and greedy slates alike come from the candidates
        served = algo.act(obs, explore=True)
        assert keep.gather(1, served).all()
    assert keep.gather(1, algo.act(obs, explore=False)).all()
    # the ranking: the candidates first, then the rest in the starting model's order
    scores = algo.scores(obs)
    order = scores.argsort(1, descending=True)
    assert keep.gather(1, order[:, :3]).all()
    rest = order[:, 3:]
    finite = scores.gather(1, rest).isfinite()
    ranked = ref.gather(1, rest)
    assert bool(((ranked[:, :-1] >= ranked[:, 1:]) | ~finite[:, 1:]).all())


def test_candidates_need_a_start_and_refuse_demonstrations(tmp_path: Path) -> None:
    ctx = make_ctx(slate_size=1, history_len=2)
    with pytest.raises(RecrlError, match=re.escape("algo.init_from")):
        PPO(ctx, **SMALL, candidates=3)
    with pytest.raises(RecrlError, match=re.escape("algo.demonstrations=0")):
        Reinforce(ctx, **SMALL, init_from=saved_start(tmp_path, ctx), candidates=3, demonstrations=4)
    with pytest.raises(RecrlError, match=re.escape("algo.candidates=-1")):
        A2C(ctx, **SMALL, init_from=saved_start(tmp_path, ctx), candidates=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_candidates_learn_the_best_candidate_and_never_serve_a_better_outsider(tmp_path: Path,
                                                                               seed: int) -> None:
    """A one-step bandit: the starting model's third-ranked item pays 1, an item outside its top
    three pays 2, the rest 0. With three candidates PPO learns to serve the third-ranked item
    and never serves the outsider; the starting model's own top-three set stays the top three."""
    ctx = make_ctx(slate_size=1, history_len=2, seed=seed)
    algo = PPO(ctx, **SMALL, lr=0.01, entropy_coef=0.0, init_from=saved_start(tmp_path, ctx),
               candidates=3, minibatch_size=64)
    users = 64
    obs = left_padded([[]] * users, [[]] * users, ctx.n_items, 2)  # fresh users: padding only
    one = left_padded([[]], [[]], ctx.n_items, 2)
    with torch.no_grad():
        ranked = algo.unrestricted_logits(one, algo.initial).argsort(1, descending=True)[0]
    reward = torch.zeros(ctx.n_items)
    reward[ranked[2]], reward[ranked[5]] = 1.0, 2.0
    served = []
    for _ in range(30):
        action = algo.act(obs, explore=True)
        served.append(action)
        done = torch.ones(users)
        step = Transition(obs=obs, action=action, reward=reward[action[:, 0]], next_obs=obs, done=done,
                          valid=done)
        algo.update(Rollout.stack([step]))
    assert int(torch.cat(served).eq(ranked[5]).sum()) == 0
    assert int(algo.act(one, explore=False)[0, 0]) == int(ranked[2])
    assert set(algo.scores(one).topk(3).indices[0].tolist()) == set(ranked[:3].tolist())
