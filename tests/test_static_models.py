"""Tests for the static-preference behavior models: MF (recrl.behavior.mf) and DeepFM
(recrl.behavior.deepfm): shapes, learning, BPR, fold-in, the simulated population, the
simulator, cold start through item features, configs and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tiny import run_recrl

from recrl.behavior.base import SequenceUserModel
from recrl.behavior.deepfm import DeepFMBehavior, DeepFMClickHead
from recrl.behavior.features import side_features
from recrl.behavior.fit import NegativeSampler, SessionTensors, TrainingSettings, batch_loss, training_tensors
from recrl.behavior.gru import GRUBehavior
from recrl.behavior.mf import MFBehavior
from recrl.behavior.offline import build_task, rank_task
from recrl.config import CONF_DIR, check_node, without_ensemble
from recrl.data.preprocess import log_frame
from recrl.env.simulator import RecEnv
from recrl.rewards import ClickReward
from recrl.types import Interactions, Obs, RecrlError

N_ITEMS, N_USERS, LENGTH = 30, 24, 12
ROW_COLUMNS = ["user", "item", "time", "click", "conversion", "rating", "leave", "propensity"]
MODELS = {"mf": MFBehavior, "deepfm": DeepFMBehavior}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: on a busy 2-core machine, thread hand-offs cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, **kwargs) -> SequenceUserModel:
    """A small model of either kind; DeepFM without dropout so tiny data is fitted quickly."""
    extra = {"hidden": [32], "dropout": 0.0} if name == "deepfm" else {}
    kwargs.setdefault("n_users", N_USERS)
    return MODELS[name](n_items=N_ITEMS, dim=16, **extra, **kwargs)


def split(log: pd.DataFrame, n_users: int, positive_only: bool, items: pd.DataFrame | None = None,
          valid_from: int = LENGTH - 2) -> Interactions:
    """Rows with ``time >= valid_from`` are validation rows, the others training rows."""
    log = log_frame(pd.DataFrame(log, columns=ROW_COLUMNS))
    is_valid = log["time"] >= valid_from
    return Interactions(train=log[~is_valid].reset_index(drop=True),
                        valid=log[is_valid].reset_index(drop=True),
                        items=pd.DataFrame(index=range(N_ITEMS)) if items is None else items,
                        n_users=n_users, n_items=N_ITEMS, positive_only=positive_only)


def favourite_log(positive_only: bool = False, n_users: int = N_USERS) -> Interactions:
    """User ``u`` clicks their distinct favourite item ``u`` every third step and at the last two;
    other steps show a random other item, ignored (or, on a positive-only log, clicked once)."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(n_users):
        for t in range(LENGTH):
            if t % 3 == 0 or t >= LENGTH - 2:
                rows.append((user, user, t, 1, 0, np.nan, np.nan, np.nan))
            else:
                other = int(rng.choice([i for i in range(N_ITEMS) if i != user]))
                rows.append((user, other, t, int(positive_only), 0, np.nan, np.nan, np.nan))
    return split(rows, n_users, positive_only)


def fitted(name: str, data: Interactions, loss: str = "bce", epochs: int = 80, **kwargs) -> SequenceUserModel:
    settings = TrainingSettings(lr=0.05, epochs=epochs, patience=epochs, max_len=LENGTH, loss=loss)
    model = build(name, training=settings, **kwargs)
    model.fit(data)
    return model


def ndcg10(model: SequenceUserModel, data: Interactions) -> float:
    """Full-ranking NDCG@10 of each user's first clicked validation item given their training rows."""
    task = build_task(data.train, data.valid, N_ITEMS, LENGTH)
    return rank_task(model, task, N_ITEMS, ks=(10,), n_negatives=None)["full"]["ndcg@10"]


def train_loss(model: SequenceUserModel, data: Interactions) -> float:
    train, _ = training_tensors(data, LENGTH, seed=0)
    sampler = NegativeSampler(data, "uniform", torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float(batch_loss(model, sampler(train), model.training_settings, sampler))


@pytest.fixture(scope="module")
def favourites() -> Interactions:
    return favourite_log()


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request: pytest.FixtureRequest, favourites: Interactions) -> tuple[str, SequenceUserModel, float]:
    """Each model fitted on the favourites log, with its training loss before fitting."""
    name = request.param
    before = train_loss(build(name, training=TrainingSettings(max_len=LENGTH)).eval(), favourites)
    return name, fitted(name, favourites), before


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", list(MODELS))
def test_shapes(name: str) -> None:
    model, gen = build(name).eval(), torch.Generator().manual_seed(0)
    s, t, k = 5, 7, 3
    batch = SessionTensors(user=torch.arange(s), item=torch.randint(0, N_ITEMS, (s, t), generator=gen),
                           click=torch.ones(s, t), conversion=torch.zeros(s, t), rating=torch.ones(s, t),
                           leave=torch.zeros(s, t), mask=torch.ones(s, t), leave_mask=torch.ones(s, t),
                           negative=torch.randint(0, N_ITEMS, (s, t), generator=gen))
    logits = model.sequence_logits(batch)
    assert set(logits) == {"click", "conversion", "rating", "watch", "leave", "click_negative", "click_state"}
    state = model.initial_state(s, gen)
    assert logits.pop("click_state").shape == (s, t, state.shape[1])
    assert all(v.shape == (s, t) for v in logits.values())
    # static: every step of a session is predicted from the same user state
    rows = model.user_rows(batch.user)
    torch.testing.assert_close(logits["click"][:, 3], model.click_head(rows, batch.item[:, 3:4])[:, 0])
    slates = torch.randint(0, N_ITEMS, (s, k), generator=gen)
    response, nxt = model.respond(state, slates, gen)
    torch.testing.assert_close(nxt, state)
    assert response.click.shape == (s, k) and response.leave_prob.shape == (s,)
    scores = model.score_all(state)
    assert scores.click_prob.shape == (s, N_ITEMS)
    torch.testing.assert_close(scores.click_prob.gather(1, slates),
                               torch.sigmoid(model.click_head(state, slates)))
    obs = Obs(items=slates[:, None], clicks=torch.zeros(s, 1, k), step=torch.ones(s, dtype=torch.long))
    assert model.encode(obs).shape == state.shape
    torch.testing.assert_close(model.encode(obs, torch.arange(s)), model.user_rows(torch.arange(s)))


def test_deepfm_head_scores_agree_across_paths_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    features = side_features(pd.DataFrame({"topic": np.arange(N_ITEMS) % 5,
                                           "price": np.linspace(0, 1, N_ITEMS)}), N_ITEMS)
    head = DeepFMClickHead(N_ITEMS, dim=8, hidden=[16, 8], dropout=0.0, item_features=features)
    h = torch.randn(4, 9)
    full = head(h)
    items = torch.arange(N_ITEMS).expand(4, -1)
    torch.testing.assert_close(head(h, items), full)
    torch.testing.assert_close(head.score_shared(h, torch.tensor([3, 7])), full[:, [3, 7]])
    monkeypatch.setattr("recrl.behavior.deepfm.SCORE_CHUNK_BYTES", 4 * 16 * 4 * 3)  # 3 items a chunk
    torch.testing.assert_close(head(h), full)
    # the FM part is the sum of pairwise dot products of the four field embeddings
    fields, first_order = head._item_fields(torch.tensor([5]))
    all_fields = torch.cat([h[:1, :8], fields[0]])
    pairs = sum(all_fields[a] @ all_fields[b] for a in range(4) for b in range(a + 1, 4))
    total, item_logit, _ = head.item_terms(torch.tensor([5]))
    torch.testing.assert_close(h[0, :8] @ total[0] + item_logit[0] - first_order[0], pairs)


# ---------------------------------------------------------------------- learning
def test_overfits_favourites(trained: tuple[str, SequenceUserModel, float], favourites: Interactions) -> None:
    _, model, before = trained
    assert not model.training
    assert train_loss(model, favourites) < 0.5 * before
    assert ndcg10(model, favourites) >= 0.95


def test_mf_learns_with_bpr() -> None:
    data = favourite_log(positive_only=True)
    model = fitted("mf", data, loss="bpr")
    assert ndcg10(model, data) >= 0.9


def test_bpr_loss_by_hand_on_a_sequence_model() -> None:
    """loss=bpr swaps the click BCE terms for -log sigmoid(click - negative) on clicked rows, for
    any behavior model (here a GRU); the other heads' terms are unchanged."""
    data = favourite_log(positive_only=True)
    model = GRUBehavior(n_items=N_ITEMS, dim=8, hidden=16).eval()
    train, _ = training_tensors(data, LENGTH, seed=0)
    sampler = NegativeSampler(data, "uniform", torch.Generator().manual_seed(0))
    settings = {loss: TrainingSettings(loss=loss) for loss in ("bce", "bpr")}
    with torch.no_grad():
        bce, bpr = (batch_loss(model, train, settings[k], sampler) for k in ("bce", "bpr"))
        logits = model.sequence_logits(train)
    m, click, neg = train.mask, logits["click"], logits["click_negative"]
    bce_logits = F.binary_cross_entropy_with_logits
    bce_clicks = (bce_logits(click, train.click, reduction="none") * m).sum() / m.sum()
    bce_negatives = (F.softplus(neg) * m).sum() / m.sum()
    pairwise = (-F.logsigmoid(click - neg) * m * train.click).sum() / (m * train.click).sum()
    torch.testing.assert_close(bpr, bce - bce_clicks - bce_negatives + pairwise)


def test_bpr_needs_a_positive_only_log(favourites: Interactions) -> None:
    with pytest.raises(RecrlError, match="positive-only"):
        fitted("mf", favourites, loss="bpr", epochs=1)


def test_fold_in_ranks_the_favourite_high(trained: tuple[str, SequenceUserModel, float]) -> None:
    """A history of clicks on a user's favourite (and ignored other items), read without the
    user id, puts the favourite near the top of the catalogue."""
    _, model, _ = trained
    users = torch.arange(N_USERS)
    items = torch.stack([users, (users + 7) % N_ITEMS, users, (users + 11) % N_ITEMS], 1)[..., None]
    clicks = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(N_USERS, -1)[..., None]
    obs = Obs(items=items, clicks=clicks, step=torch.full((N_USERS,), 4))
    scores = model.score_all(model.encode(obs)).click_prob
    rank = (scores > scores.gather(1, users[:, None])).sum(1).float()
    assert rank.mean() < 3.0  # random placement would average (N_ITEMS - 1) / 2


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_in_of_an_empty_history(name: str) -> None:
    """No clicks to go on: MF gives the mean training user, DeepFM its unknown user."""
    model = build(name).eval()
    obs = Obs(items=torch.full((2, 3, 1), N_ITEMS), clicks=torch.zeros(2, 3, 1), step=torch.zeros(2))
    expected = model.mean_user() if name == "mf" else model.user_rows(torch.tensor(N_USERS))
    torch.testing.assert_close(model.encode(obs), expected.expand(2, -1))


# ---------------------------------------------------------------------- population and simulator
@pytest.mark.parametrize("name", list(MODELS))
def test_initial_state_draws_training_users_reproducibly(name: str) -> None:
    data = favourite_log(n_users=N_USERS - 6)  # users 18..23 have no rows
    data.n_users = N_USERS
    model = fitted(name, data, epochs=1)
    assert model.trained.tolist() == [True] * (N_USERS - 6) + [False] * 6
    states = model.initial_state(400, torch.Generator().manual_seed(3))
    table = model.user_rows(torch.arange(N_USERS))
    drawn = torch.cdist(states, table).argmin(1)
    torch.testing.assert_close(states, table[drawn])
    assert set(drawn.tolist()) == set(range(N_USERS - 6))
    torch.testing.assert_close(model.initial_state(400, torch.Generator().manual_seed(3)), states)
    assert not torch.equal(model.initial_state(400, torch.Generator().manual_seed(4)), states)
    # the population survives a save / load (the fitted-model cache)
    clone = build(name, training=model.training_settings)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.initial_state(400, torch.Generator().manual_seed(3)), states)


@pytest.mark.parametrize("name", list(MODELS))
def test_env_runs_with_autoreset(name: str) -> None:
    model, k, b = build(name).eval(), 3, 6
    env = RecEnv(model, ClickReward(), horizon=2, slate_size=k, history_len=4, autoreset=True)
    obs = env.reset(b, seed=0)
    table = model.user_rows(torch.arange(N_USERS))
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        slates = torch.rand(b, N_ITEMS, generator=gen).topk(k, dim=1).indices
        obs, reward, _, _ = env.step(slates)
        assert reward.shape == (b,) and obs.items.shape == (b, 4, k) and bool(env.alive.all())
        assert bool(torch.isfinite(env.state).all())
        assert bool((torch.cdist(env.state, table).min(1).values < 1e-5).all())  # rows of the table


# ---------------------------------------------------------------------- cold start
def topic_log() -> Interactions:
    """Items have a topic ``i % 5``; user ``u`` is shown the five items of topic ``u % 5`` (of
    items 0..24) and seven others, and clicks their topic only. Items 25..29 (one per topic) are
    never shown."""
    rng = np.random.default_rng(1)
    rows = []
    for user in range(N_USERS):
        others = rng.choice([i for i in range(25) if i % 5 != user % 5], size=LENGTH - 5, replace=False)
        shown = rng.permutation(np.r_[np.arange(user % 5, 25, 5), others])
        for t, item in enumerate(shown):
            rows.append((user, int(item), t, int(item % 5 == user % 5), 0, np.nan, np.nan, np.nan))
    items = pd.DataFrame({"topic": np.arange(N_ITEMS) % 5})
    return split(rows, N_USERS, positive_only=False, items=items)


@pytest.mark.parametrize("name", list(MODELS))
def test_cold_start_through_side_features(name: str) -> None:
    data = topic_log()
    model = fitted(name, data, epochs=60, features=["side"],
                   item_features=side_features(data.items, N_ITEMS))
    users = torch.arange(N_USERS)
    scores = model.score_all(model.encode(Obs(items=torch.zeros(N_USERS, 1, 1, dtype=torch.long),
                                              clicks=torch.zeros(N_USERS, 1, 1), step=users * 0),
                                          users)).click_prob[:, 25:]
    same_topic = scores.gather(1, (users % 5)[:, None])[:, 0]
    unrelated = scores.masked_fill(torch.nn.functional.one_hot(users % 5, 5).bool(), float("-inf"))
    assert bool((same_topic > unrelated.max(1).values).all())


def test_gru_without_item_ids_knows_items_by_content() -> None:
    data = topic_log()
    model = GRUBehavior(N_ITEMS, dim=16, hidden=16, features=["side"], item_ids=False,
                        item_features=side_features(data.items, N_ITEMS),
                        training=TrainingSettings(lr=0.05, epochs=30, patience=30, max_len=LENGTH))
    model.fit(data)
    ids = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    ids += [model.click_head.bias, model.conversion_head.bias, model.rating_head.bias, model.watch_head.bias]
    assert all(not w.requires_grad and not bool(w.any()) for w in ids)  # never trained, all zero
    # every head reads content, each through an encoder of its own
    heads = (model.conversion_head, model.rating_head, model.watch_head)
    encoders = [model.content] + [h.content for h in heads]
    assert all(e is not None for e in encoders) and len({id(e) for e in encoders}) == 4
    # items with the same content (topic i % 5) get the same predictions, whatever their logs
    scores = model.score_all(model.initial_state(3)).click_prob
    torch.testing.assert_close(scores[:, 0], scores[:, 5])
    users = torch.arange(N_USERS)  # and a user's clicked topic still ranks first among unseen items
    history = Obs(items=(users % 5)[:, None, None], clicks=torch.ones(N_USERS, 1, 1), step=users * 0)
    unseen = model.score_all(model.encode(history)).click_prob[:, 25:]
    assert float((unseen.argmax(1) == users % 5).float().mean()) >= 0.8
    with pytest.raises(RecrlError, match="item_ids=false needs item content"):
        GRUBehavior(N_ITEMS, item_ids=False)


@pytest.mark.parametrize("name", list(MODELS))
def test_features_need_item_features(name: str) -> None:
    with pytest.raises(RecrlError, match=r"behavior.features=\['side'\] needs item features"):
        build(name, features=["side"])


# ---------------------------------------------------------------------- config and CLI
@pytest.mark.parametrize("name", list(MODELS))
def test_yaml_instantiates(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        node = without_ensemble(compose("train", overrides=[f"behavior={name}"]).behavior)
    check_node(node, "behavior")
    check_node(node.training, "behavior.training")
    model = instantiate(node)(n_items=N_ITEMS, n_users=N_USERS, device="cpu")
    assert isinstance(model, MODELS[name]) and model.training_settings.loss == "bce"
    assert model.initial_state(2, torch.Generator().manual_seed(0)).shape[0] == 2


SMOKE_SIZE = {"deepfm": ["behavior.hidden=[16]"]}  # its MLP scores every (user, item) pair: keep it narrow


@pytest.mark.parametrize("name", list(MODELS))
def test_cli_train_smoke(name: str, tmp_path: Path) -> None:
    proc = run_recrl("train", f"behavior={name}", "experiment=smoke", *SMOKE_SIZE.get(name, []),
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=tmp_path / "cache",
                     OMP_NUM_THREADS="1")  # see one_thread
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "report.json").exists()
