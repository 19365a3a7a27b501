"""Behavior-model ensembles (``behavior.ensemble``) and the simulator's pessimism (``env.pessimism``:
MOPO, MOReL and DORL's logged-entropy term)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny import refused_in_process, run_recrl

from recrl.behavior.ensemble import BehaviorEnsemble, OwnMemberSimulator, bootstrap_users
from recrl.behavior.features import side_features
from recrl.behavior.fit import TrainingSettings
from recrl.behavior.gru import GRUBehavior
from recrl.behavior.mf import MFBehavior
from recrl.behavior.sasrec import SASRecBehavior
from recrl.config import CONF_DIR, validate
from recrl.data.synthetic import SyntheticWorld
from recrl.env.choice import MNL
from recrl.env.pessimism import LoggedPolicyEntropy, Pessimism
from recrl.env.simulator import RecEnv
from recrl.loop import Trainer
from recrl.rewards import ClickReward
from recrl.stages import build_stages, yardstick_model
from recrl.types import Obs, RecrlError, Response

N_ITEMS, HIDDEN = 30, 16


@pytest.fixture(scope="module")
def logs():
    return SyntheticWorld(n_items=N_ITEMS, n_users=200, n_topics=3, seed=0).load().interactions


def members(k: int = 3) -> list[GRUBehavior]:
    return [GRUBehavior(N_ITEMS, dim=8, hidden=HIDDEN, training=TrainingSettings(epochs=1, seed=s))
            for s in range(k)]


def member_state(ensemble: BehaviorEnsemble, state: torch.Tensor, k: int) -> torch.Tensor:
    """Member ``k``'s own state columns of an ensemble state row."""
    start = ensemble.size + k * ensemble.width
    return state[:, start:start + ensemble.width]


# ---------------------------------------------------------------------- bootstrap
def test_bootstrap_draws_users_with_replacement_and_keeps_their_rows(logs) -> None:
    sample = bootstrap_users(logs, seed=3)
    train = logs.train
    assert sample.train["user"].nunique() == train["user"].nunique()  # as many users as there are
    assert sample.n_users == logs.n_users + train["user"].nunique()
    copies = sample.train[sample.train["user"] >= logs.n_users]
    assert len(copies) > 0  # with replacement: some users were drawn twice
    # every resampled session is one original session, row for row
    originals = {u: g[["time", "item", "click"]].to_numpy() for u, g in train.groupby("user")}
    sessions = [g[["time", "item", "click"]].to_numpy() for _, g in sample.train.groupby("user")]
    keys = {tuple(map(tuple, s)) for s in originals.values()}
    assert all(tuple(map(tuple, s)) in keys for s in sessions)
    # the synthetic world splits by user: validation users have no training rows and all stay
    assert len(sample.valid) == len(logs.valid)
    assert bootstrap_users(logs, seed=3).train.equals(sample.train)  # fixed by the seed
    assert not bootstrap_users(logs, seed=4).train.equals(sample.train)


def test_bootstrap_drops_validation_rows_of_users_it_did_not_draw(logs) -> None:
    # a leave-last-out split: validation users are training users
    shared = copy.copy(logs)
    valid = logs.train.groupby("user").tail(1).copy()
    shared = type(logs)(train=logs.train, valid=valid, items=logs.items, n_users=logs.n_users,
                        n_items=logs.n_items)
    sample = bootstrap_users(shared, seed=0)
    drawn = set(sample.train.loc[sample.train["user"] < logs.n_users, "user"])
    assert set(sample.valid["user"]) == drawn
    assert 0.5 < len(drawn) / logs.train["user"].nunique() < 0.75  # about 1 - 1/e of the users


# ---------------------------------------------------------------------- batched members
def test_batched_members_match_each_member_alone() -> None:
    ms = members(3)
    ensemble = BehaviorEnsemble(ms)
    g = torch.Generator().manual_seed(0)
    state = ensemble.initial_state(12, g)
    slates = torch.randint(0, N_ITEMS, (12, 2), generator=g)
    click = torch.zeros(12, 2)
    click[::3, 0] = 1.0
    nxt = ensemble.next_state(state, slates, click, torch.zeros(12, 2))
    with torch.no_grad():
        for k, m in enumerate(ms):
            own = member_state(ensemble, state, k)
            assert torch.allclose(member_state(ensemble, nxt, k), m.next_state(own, slates, click, click * 0),
                                  atol=1e-6)
        # each user is served by their own member; the weights are one-hot
        weights = state[:, :3]
        assert torch.equal(weights.sum(1), torch.ones(12)) and set(weights.flatten().tolist()) == {0.0, 1.0}
        predicted = ensemble.predict(state, slates)
        for b in range(12):
            k = int(weights[b].argmax())
            alone = ms[k].predict(member_state(ensemble, state[b:b + 1], k), slates[b:b + 1])
            assert torch.allclose(predicted.click_logit[b], alone.click_logit[0], atol=1e-6)
            assert torch.allclose(predicted.rating[b], alone.rating[0], atol=1e-6)


def content_members(k: int = 3) -> list[GRUBehavior]:
    """GRU members that read an item table (topic tokens, a numeric column), with the recency
    term, perturbed so that every weight differs between members; one without watch values,
    one without leave labels."""
    table = pd.DataFrame({"topic": np.arange(N_ITEMS) % 4, "quality": np.linspace(0.0, 1.0, N_ITEMS)})
    features = side_features(table, N_ITEMS)
    ms = [GRUBehavior(N_ITEMS, dim=8, hidden=HIDDEN, features=["side"], item_features=features,
                      recency=True, training=TrainingSettings(seed=s)) for s in range(k)]
    with torch.no_grad():
        for m in ms:
            for p in m.parameters():
                p.add_(0.3 * torch.randn_like(p))
    ms[1].watch_known.fill_(False)
    ms[2].leave_known.fill_(False)
    return ms


def test_stacked_gru_step_is_the_batched_call_of_each_member() -> None:
    """GRU members step through GRUStack (stacked weights, no vmap): the same numbers as the
    generic batched call, for slates, the whole catalogue, the next state and leaving."""
    ensemble = BehaviorEnsemble(content_members()).eval()
    g = torch.Generator().manual_seed(1)
    state = ensemble.initial_state(9, g)
    slates = torch.randint(0, N_ITEMS, (9, 2), generator=g)
    click = (torch.rand(9, 2, generator=g) < 0.4).float()
    calls = [("predict", (slates,)), ("predict", (None,)), ("next_state", (slates, click, click)),
             ("advance", (slates, click, click))]
    _, members_now = ensemble._split(ensemble.next_state(state, slates, click, click))  # exposure > 0
    assert ensemble._fast is not None
    fast = [ensemble._each(m, (members_now,), shared) for m, shared in calls]
    fast.append(ensemble._each("leave_prob", (members_now,)))
    ensemble._fast = None  # the generic vmap path, same stacked weights
    slow = [ensemble._each(m, (members_now,), shared) for m, shared in calls]
    slow.append(ensemble._each("leave_prob", (members_now,)))
    def parts(out: object) -> tuple:
        return out if isinstance(out, tuple) else (out,)

    for a, b in zip(fast, slow, strict=True):
        for x, y in zip(parts(a), parts(b), strict=True):
            assert x.shape == y.shape
            assert torch.allclose(x, y, atol=1e-5, equal_nan=True)
    watch = fast[0][3]
    assert torch.isnan(watch[1]).all() and not torch.isnan(watch[0]).any()  # member 1 has no watch values
    assert torch.all(fast[-1][2] == 0)  # member 2 had no leave labels


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("n_users", [7, 2])
def test_own_member_simulator_steps_each_row_with_its_member_alone(stacked: bool, n_users: int) -> None:
    """Row r of a batch of B simulates member r K // B and nothing else: its start state, the
    click probabilities it samples from, its next state and leave probability are that member's
    own, through the stacked GRU step and the generic batched call alike (B < K leaves a member
    without rows)."""
    ms = content_members()
    ensemble = BehaviorEnsemble(ms).eval()
    ensemble._stack()
    if not stacked:
        ensemble._fast = None
    sim = OwnMemberSimulator(ensemble)
    g = torch.Generator().manual_seed(3)
    state = sim.initial_state(n_users, g)
    owner = [r * 3 // n_users for r in range(n_users)]
    for r, k in enumerate(owner):
        assert torch.allclose(state[r], ms[k].initial_state(1)[0])
    for _ in range(3):  # a few steps, so the recency exposure is not zero
        slates = torch.randint(0, N_ITEMS, (n_users, 2), generator=g)
        response, nxt = sim.respond(state, slates, g)
        assert response.uncertainty is None and nxt.shape == state.shape
        with torch.no_grad():
            for r, k in enumerate(owner):
                row = slice(r, r + 1)
                alone = ms[k].predict(state[row], slates[row])
                expected_next = ms[k].next_state(state[row], slates[row], response.click[row],
                                                 response.conversion[row])
                assert torch.allclose(response.click_prob[r], MNL.probs(alone.click_logit)[0], atol=1e-5)
                assert torch.allclose(response.rating[r], alone.rating[0], atol=1e-5)
                assert torch.allclose(nxt[r], expected_next[0], atol=1e-5)
                assert torch.allclose(response.leave_prob[r], ms[k].leave_prob(expected_next)[0], atol=1e-5)
        state = nxt


def test_own_member_simulator_steps_sasrec_members_through_vmap() -> None:
    """Members without a stacked step (SASRec: a key/value cache as state) go through the
    batched functional call with each member's own rows and slates: the same numbers as the
    member alone."""
    ms = [SASRecBehavior(n_items=N_ITEMS, dim=8, layers=1, heads=2, window=6, dropout=0.0,
                         training=TrainingSettings(seed=s)) for s in range(2)]
    ensemble = BehaviorEnsemble(ms).eval()
    sim = OwnMemberSimulator(ensemble)
    g = torch.Generator().manual_seed(4)
    state = sim.initial_state(5, g)
    for _ in range(2):
        slates = torch.randint(0, N_ITEMS, (5, 1), generator=g)
        response, nxt = sim.respond(state, slates, g)
        with torch.no_grad():
            for r in range(5):
                k, row = r * 2 // 5, slice(r, r + 1)
                alone = ms[k].predict(state[row], slates[row])
                expected = ms[k].next_state(state[row], slates[row], response.click[row],
                                            response.conversion[row])
                assert torch.allclose(response.click_prob[r], MNL.probs(alone.click_logit)[0], atol=1e-5)
                assert torch.allclose(nxt[r], expected[0], atol=1e-5)
        state = nxt


def test_own_member_rows_are_dealt_to_members_in_equal_blocks() -> None:
    sim = OwnMemberSimulator(BehaviorEnsemble(members(5)))
    member, blocks, position = sim.route(256, torch.device("cpu"))
    counts = torch.bincount(member, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 256
    assert blocks.shape == (5, 52)
    assert torch.equal(blocks.flatten()[position], torch.arange(256))  # every row finds itself
    assert torch.equal(member[blocks], torch.arange(5)[:, None].expand(5, 52))  # padding stays in its block


def test_without_a_generator_the_ensemble_is_the_members_mean() -> None:
    ms = members(2)
    ensemble = BehaviorEnsemble(ms)
    state = ensemble.initial_state(4)
    assert torch.allclose(state[:, :2], torch.full((4, 2), 0.5))
    with torch.no_grad():
        scores = ensemble.predict(state)  # every item [4, N]
        mean = sum(m.predict(member_state(ensemble, state, k)).click_logit for k, m in enumerate(ms)) / 2
    assert scores.click_logit.shape == (4, N_ITEMS)
    assert torch.allclose(scores.click_logit, mean, atol=1e-6)
    obs = Obs(items=torch.tensor([[[N_ITEMS], [3]]]), clicks=torch.tensor([[[0.0], [1.0]]]),
              step=torch.tensor([1]))
    assert ensemble.encode(obs).shape == (1, 2 + 2 * HIDDEN)


def test_members_are_drawn_uniformly_per_user() -> None:
    ensemble = BehaviorEnsemble(members(4))
    weights = ensemble.initial_state(4000, torch.Generator().manual_seed(1))[:, :4]
    shares = weights.mean(0)
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.03)


def test_uncertainty_is_the_members_std_of_the_click_probability() -> None:
    ms = members(3)
    same = BehaviorEnsemble([ms[0], copy.deepcopy(ms[0]), copy.deepcopy(ms[0])])
    g = torch.Generator().manual_seed(0)
    slates = torch.randint(0, N_ITEMS, (5, 1), generator=g)
    response, _ = same.respond(same.initial_state(5, g), slates, g)
    assert torch.allclose(response.uncertainty, torch.zeros(5, 1), atol=1e-7)  # identical members agree
    different = BehaviorEnsemble(ms)
    state = different.initial_state(5, g)
    response, _ = different.respond(state, slates, g)
    with torch.no_grad():
        probs = torch.stack([torch.sigmoid(m.predict(member_state(different, state, k), slates).click_logit)
                             for k, m in enumerate(ms)])  # slates of one: MNL = sigmoid
    expected = probs.std(0, correction=0)
    assert torch.allclose(response.uncertainty, expected, atol=1e-6) and bool((expected > 0).all())


def test_fit_caches_and_reloads_every_member(logs, tmp_path: Path) -> None:
    ensemble = BehaviorEnsemble(members(2))
    report = ensemble.fit(logs).to_dict()
    assert len(report["members"]) == 2
    assert not ensemble.training and not ensemble._template[0].training  # fitted: evaluation mode
    assert report["valid_click_logloss"] == pytest.approx(np.mean([m["valid_click_logloss"]
                                                                   for m in report["members"]]))
    w0, w1 = (m.item_out.weight for m in ensemble.members)
    assert not torch.allclose(w0, w1)  # different seeds and resamples
    torch.save(ensemble.state_dict(), tmp_path / "ens.pt")
    fresh = BehaviorEnsemble(members(2))
    state = fresh.initial_state(3)
    before = fresh.score_all(state).click_prob
    fresh.load_state_dict(torch.load(tmp_path / "ens.pt"))
    after = fresh.score_all(fresh.initial_state(3)).click_prob  # the stacked weights were refreshed
    assert torch.allclose(after, ensemble.score_all(ensemble.initial_state(3)).click_prob, atol=1e-6)
    assert not torch.allclose(before, after)


def test_models_with_user_tables_are_refused() -> None:
    with pytest.raises(RecrlError, match="needs a sequence model"):
        BehaviorEnsemble([MFBehavior(N_ITEMS, n_users=5), MFBehavior(N_ITEMS, n_users=5)])
    with pytest.raises(RecrlError, match="at least 2"):
        BehaviorEnsemble(members(1))


# ---------------------------------------------------------------------- pessimism
def response_with(uncertainty: torch.Tensor | None) -> Response:
    zeros = torch.zeros(2, 2)
    return Response(click_prob=zeros, click=zeros, conversion_prob=zeros, conversion=zeros, rating=zeros,
                    leave_prob=torch.zeros(2), uncertainty=uncertainty)


def test_mopo_penalty_and_morel_halt_by_hand() -> None:
    reward = torch.tensor([1.0, 1.0])
    unc = torch.tensor([[0.1, 0.2], [0.05, 0.4]])
    penalised, halted = Pessimism(penalty=2.0).apply(reward, response_with(unc))
    assert torch.allclose(penalised, torch.tensor([1.0 - 2 * 0.3, 1.0 - 2 * 0.45])) and halted is None
    penalised, halted = Pessimism(halt_threshold=0.3, halt_penalty=5.0).apply(reward, response_with(unc))
    assert halted.tolist() == [False, True] and penalised.tolist() == [1.0, -5.0]
    # no uncertainty (a single model, the ground truth): nothing changes
    assert Pessimism(penalty=2.0).apply(reward, response_with(None)) == (reward, None)
    for bad in ({"penalty": -1.0}, {"halt_threshold": 0.0}, {"halt_penalty": -0.5}):
        with pytest.raises(RecrlError, match=r"env\.pessimism"):
            Pessimism(**bad)


def test_a_halted_user_leaves_the_simulator(logs) -> None:
    ensemble = BehaviorEnsemble(members(3))
    env = RecEnv(ensemble, ClickReward(), horizon=5, history_len=2,
                 pessimism=Pessimism(halt_threshold=1e-6, halt_penalty=3.0))
    env.reset(8, seed=0)
    _, reward, done, info = env.step(torch.zeros(8, 1, dtype=torch.long))
    assert bool(info.terminated.all()) and bool(done.all())
    assert torch.equal(reward, torch.full((8,), -3.0))
    plain = RecEnv(ensemble, ClickReward(), horizon=5, history_len=2, pessimism=Pessimism())
    assert plain.pessimism is None  # off: the step is the plain one


def test_logged_policy_entropy_by_hand() -> None:
    # items 0, 1: category 0; items 2, 3: category 1; item 4: unknown
    categories = torch.tensor([0, 0, 1, 1, -1])
    log = pd.DataFrame({"user": [0, 0, 0, 0, 1, 1, 1], "item": [0, 2, 0, 3, 2, 2, 2]})
    entropy = LoggedPolicyEntropy.fit(log, categories, window=1, min_count=1)
    # after category 0 the logs always showed category 1; after category 1: {0, 1, 1};
    # at a session start: {0, 1}
    h = float(-(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)) / np.log(2))
    assert torch.allclose(entropy.table, torch.tensor([0.0, h, 1.0]))
    n_items = 5  # id 5: "no item yet"; the unknown item 4 counts as no item
    recent = torch.tensor([[5, 0], [3, 2], [1, 5], [0, 4]])
    assert torch.allclose(entropy(recent), torch.tensor([0.0, h, 1.0, 1.0]))
    # contexts seen fewer than min_count times take the order-0 entropy of all logged categories
    sparse = LoggedPolicyEntropy.fit(log, categories, window=1, min_count=3)
    marginal = float(-(2 / 7 * np.log(2 / 7) + 5 / 7 * np.log(5 / 7)) / np.log(2))
    assert torch.allclose(sparse.table, torch.tensor([marginal, h, marginal]))
    # window 2: the context is the last two categories; (start, start) -> {0, 1}
    second = LoggedPolicyEntropy.fit(log, categories, window=2, min_count=1)
    assert second(torch.tensor([[n_items, n_items]])).item() == pytest.approx(1.0)
    assert second(torch.tensor([[0, 2]])).item() == pytest.approx(0.0)  # (0, 1) -> {0}
    with pytest.raises(RecrlError, match="entropy_window"):
        LoggedPolicyEntropy.fit(log, categories, window=0)


def test_dorl_entropy_bonus_needs_no_ensemble(logs) -> None:
    categories = torch.tensor(logs.items["topic"].to_numpy())
    entropy = LoggedPolicyEntropy.fit(logs.train, categories, window=1)
    model = members(1)[0]
    plain = RecEnv(model, ClickReward(), horizon=5, history_len=2)
    dorl = RecEnv(model, ClickReward(), horizon=5, history_len=2, pessimism=Pessimism(entropy_bonus=0.5))
    dorl.pessimism.bind(entropy)
    slates = torch.randint(0, N_ITEMS, (16, 1), generator=torch.Generator().manual_seed(0))
    plain.reset(16, seed=3)
    dorl.reset(16, seed=3)
    _, reward, _, _ = plain.step(slates)
    _, bonus_reward, _, _ = dorl.step(slates)
    start = torch.full((16, 1), N_ITEMS)
    assert torch.allclose(bonus_reward - reward, 0.5 * entropy(torch.cat([start, slates], 1)))
    with pytest.raises(RecrlError, match="no logged entropy bound"):
        Pessimism(entropy_bonus=0.5).apply(reward, response_with(None), slates)
    with pytest.raises(RecrlError, match="entropy_window"):
        RecEnv(model, ClickReward(), history_len=2, pessimism=Pessimism(entropy_bonus=0.5, entropy_window=4))


def test_a_fitted_ground_truth_ignores_the_simulator_options() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["behavior.ensemble=5", "behavior.item_ids=false",
                                          "behavior.recency=true", "behavior.click_profile=true"])
    yardstick = yardstick_model(cfg)
    assert yardstick.behavior.ensemble == 1 and yardstick.behavior.item_ids is True
    assert yardstick.behavior.recency is False and yardstick.behavior.click_profile is False
    assert cfg.behavior.ensemble == 5 and cfg.behavior.item_ids is False  # the run's own config untouched
    assert cfg.behavior.recency is True
    assert yardstick.behavior.features == cfg.behavior.features


# ---------------------------------------------------------------------- CLI
def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_recrl("train", "experiment=smoke", *args, cwd=tmp_path, cache=tmp_path / "cache")


def test_cli_trains_in_a_pessimistic_ensemble_simulator(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli("behavior.ensemble=2", "env.pessimism.penalty=1.0", "env.pessimism.halt_threshold=0.5",
                   "env.pessimism.entropy_bonus=0.3", "dataset.n_users=300", f"hydra.run.dir={run}",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert len(report["behavior"]["members"]) == 2
    assert report["evaluation"]["ground_truth"]["dqn"]["return"]["mean"] >= 0  # never penalised
    cached = list((tmp_path / "cache" / "behavior").glob("simulator-*.pt"))
    assert len(cached) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["behavior.ensemble=0"], "behavior.ensemble=0 must be a whole number >= 1"),
    (["behavior=mf", "behavior.ensemble=2"], "needs a sequence model"),
    (["env.pessimism.penalty=1.0"], "env.pessimism penalises the disagreement of a behavior ensemble"),
])
def test_bad_ensemble_settings_give_one_line(tmp_path: Path, args: list[str], message: str,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    lines = refused_in_process("train", "experiment=smoke", *args, cwd=tmp_path, monkeypatch=monkeypatch,
                               capsys=capsys)
    assert message in lines[-1], lines
    assert not (tmp_path / "cache").exists()  # refused before any data was read or model fitted


@pytest.mark.parametrize(("args", "message"), [
    (["env.pessimism.penalty=0.5"], "penalises the disagreement"),
    (["env.pessimism.halt_threshold=0.2", "behavior.ensemble=1"], "penalises the disagreement"),
    (["trainer.select_by=held_out_member", "behavior.ensemble=2"], "needs behavior.ensemble >= 3"),
    (["env.pessimism.penalty=0.5", "behavior.ensemble=2"], None),
    (["env.pessimism.entropy_bonus=0.3"], None),  # DORL's term reads no ensemble
    (["trainer.select_by=held_out_member", "behavior.ensemble=3"], None),
])
def test_the_config_check_knows_what_needs_an_ensemble(args: list[str], message: str | None) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", *args])
    if message is None:
        validate(cfg)
    else:
        with pytest.raises(RecrlError, match=message):
            validate(cfg)


def test_response_leave_probability_is_the_next_states() -> None:
    ensemble = BehaviorEnsemble(members(3))
    g = torch.Generator().manual_seed(2)
    state = ensemble.initial_state(7, g)
    response, nxt = ensemble.respond(state, torch.randint(0, N_ITEMS, (7, 1), generator=g), g)
    with torch.no_grad():
        assert torch.allclose(response.leave_prob, ensemble.leave_prob(nxt), atol=1e-7)
    # every fresh user starts from each member's own start state, whatever member serves them
    start = torch.stack([m.initial_state(1)[0] for m in ensemble.members])
    for k in range(3):
        assert torch.allclose(member_state(ensemble, state, k), start[k].expand(7, -1))


def test_a_fitted_ground_truth_stays_one_model(tmp_path: Path) -> None:
    """Coat's ground truth is a model fitted on its randomized exposures: with
    ``behavior.ensemble=2`` the simulator is an ensemble, the yardstick is still one model."""
    shutil.copytree(Path(__file__).parent / "fixtures" / "coat" / "good", tmp_path / "coat")
    overrides = ["experiment=smoke", "dataset=coat", f"data_dir='{tmp_path}'",
                 f"cache_dir='{tmp_path / 'cache'}'", "behavior.ensemble=2", "trainer.device=cpu",
                 "dataset.preprocess.valid_share=0.5"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    stages = build_stages(cfg, torch.device("cpu"))
    assert isinstance(stages.behavior, BehaviorEnsemble)
    assert isinstance(stages.ground_truth, GRUBehavior)


def test_selection_runs_in_a_held_out_member(tmp_path: Path) -> None:
    """trainer.select_by=held_out_member: the policy trains in the first K-1 members and best.pt is
    picked in the last one, which it never trains in."""
    overrides = ["experiment=smoke", f"cache_dir='{tmp_path / 'cache'}'", "behavior.ensemble=3",
                 "trainer.device=cpu", "dataset.n_users=300"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    stages = build_stages(cfg, torch.device("cpu"))
    members = list(stages.behavior.members)
    train = stages.training_env("held_out_member").model
    assert isinstance(train, OwnMemberSimulator) and list(train.ensemble.members) == members[:2]
    assert stages.selection_env("held_out_member").model is members[2]
    assert stages.training_env().model.ensemble is stages.behavior  # the default: every member
    stages.__dict__["pessimism"] = Pessimism(penalty=1.0)  # MOPO reads the disagreement: every member steps
    assert stages.training_env().model is stages.behavior
    assert isinstance(stages.eval_envs()["simulator"].model, OwnMemberSimulator)  # no pessimism there
    with pytest.raises(RecrlError, match="one of simulator, held_out_member, ope"):
        Trainer(select_by="ground_truth")


def test_cli_picks_best_in_the_held_out_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    proc = run_cli("behavior.ensemble=3", "trainer.select_by=held_out_member", "dataset.n_users=300",
                   f"hydra.run.dir={run}", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "best.pt").is_file()
    lines = refused_in_process("train", "experiment=smoke", "trainer.select_by=held_out_member", cwd=tmp_path,
                               monkeypatch=monkeypatch, capsys=capsys)
    assert "needs behavior.ensemble >= 3" in lines[-1]


def test_eval_mode_reaches_the_batched_template() -> None:
    """Dropout (SASRec) must be off in the simulator's batched calls once the ensemble is in
    evaluation mode, as in each member."""
    ensemble = BehaviorEnsemble(members(2))
    ensemble.train()
    assert ensemble._template[0].training
    ensemble.eval()
    assert not ensemble._template[0].training and not any(m.training for m in ensemble.members)
