"""The native search fused into the product (``recrl.kernels.best_dot``): each user's top items
of ``users @ items.T + bias`` without writing the scores, against float64 products by hand; its
fallbacks; acting through it (``nets.fused_greedy``) eager and compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import N_ITEMS, make_ctx, random_obs
from torch.utils.flop_counter import FlopCounterMode

from recrl import kernels
from recrl.algos import nets
from recrl.algos.dqn import DQN
from recrl.algos.ppo import PPO
from recrl.compile import compile_function, compile_mode

needs_kernel = pytest.mark.skipif(not kernels.best_dot_ready(),
                                  reason=f"native kernel not built here: {kernels.unavailable_reason()}")
#: the builds this CPU runs (AVX-512 and AVX2 on an AVX-512 CPU): each is checked on its own
RUNNABLE = [name for name in kernels.VARIANTS if kernels.load_variant(name)[0] is not None]
each_build = pytest.mark.parametrize(
    "build", RUNNABLE or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no native build runs here: {kernels.unavailable_reason()}"))])


def search(build: str, users: torch.Tensor, items: torch.Tensor, bias: torch.Tensor | None,
           excluded: torch.Tensor, top: int = 1) -> torch.Tensor:
    """``best_dot`` by the build ``build`` (``avx512``, ``avx2``)."""
    return kernels.search_with(kernels.load_variant(build)[0], users, items, bias, excluded, top)


def reference_best(users: torch.Tensor, items: torch.Tensor, bias: torch.Tensor | None,
                   excluded: torch.Tensor, top: int = 1) -> torch.Tensor:
    """Each row's ``top`` best items ``[B, top]`` by a float64 product, excluded items (ids
    below N) at -inf."""
    scores = users.double() @ items.double().T
    if bias is not None:
        scores += bias.double()
    rows = torch.arange(scores.shape[0])[:, None].expand_as(excluded)
    real = excluded < scores.shape[1]
    scores[rows[real], excluded[real]] = float("-inf")
    return scores.topk(top, dim=1).indices


@each_build
@pytest.mark.parametrize("batch", [1, 5, 6, 7, 13])
@pytest.mark.parametrize("n_items", [1, 23, 24, 25, 63, 64, 65, 481, 512, 513, 1100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_best_dot_finds_each_users_best_item_skipping_excluded_ones(build: str, batch: int,
                                                                    n_items: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(batch * 1000 + n_items)
    users, items = torch.randn(batch, 7, generator=gen), torch.randn(n_items, 7, generator=gen)
    bias = torch.randn(n_items, generator=gen) if with_bias else None
    # ids past the catalogue (history padding) never match; some users exclude their best item
    excluded = torch.randint(0, n_items + 3, (batch, 4), generator=gen)
    excluded[::2, 0] = reference_best(users, items, bias, excluded[:, :0])[::2, 0]
    for excluding in (excluded, excluded[:, :0]):
        assert torch.equal(search(build, users, items, bias, excluding),
                           reference_best(users, items, bias, excluding))


@each_build
@pytest.mark.parametrize("top", [2, 5, 64])
@pytest.mark.parametrize("n_items", [80, 700])
def test_best_dot_finds_each_users_top_items_best_first(build: str, top: int, n_items: int) -> None:
    gen = torch.Generator().manual_seed(top * 10 + n_items)
    users, items = torch.randn(9, 6, generator=gen), torch.randn(n_items, 6, generator=gen)
    bias = torch.randn(n_items, generator=gen)
    excluded = torch.randint(0, n_items + 2, (9, 7), generator=gen)
    best = search(build, users, items, bias, excluded, top)
    assert best.shape == (9, top)
    assert torch.equal(best, reference_best(users, items, bias, excluded, top))


@each_build
def test_ties_keep_the_first_item_and_a_user_with_every_item_excluded_gets_item_0(build: str) -> None:
    items = torch.zeros(200, 2)
    items[[70, 150, 199], 0] = 1.0  # three equal best items, in different tiles
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    excluded = torch.tensor([[300, 300], [70, 300], [300, 300]])  # 300: padding
    assert search(build, users, items, None, excluded).tolist() == [[70], [150], [0]]
    # the equal items in item order, then the zeros in item order
    assert search(build, users, items, None, excluded, 4).tolist()[0] == [70, 150, 199, 0]
    assert search(build, users[:1], items[:2], None, torch.tensor([[0, 1]])).tolist() == [[0]]


@each_build
def test_users_with_fewer_items_left_than_the_slate_take_topk(build: str) -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen)
    excluded = torch.tensor([[0, 1, 2], [9, 9, 9], [9, 9, 9]])  # user 0 has 2 items left
    best = search(build, users, items, None, excluded, 3)
    scores = users @ items.T
    scores[0, :3] = float("-inf")
    assert torch.equal(best, scores.topk(3, dim=1).indices)


@each_build
def test_non_finite_or_overflowing_inputs_take_the_pytorch_path_with_its_nan_rule(build: str) -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(4, 3, generator=gen), torch.randn(100, 3, generator=gen)
    none = torch.zeros(4, 0).long()
    users[1, 0] = float("nan")  # every score of user 1 is NaN: max takes the first, item 0
    items[40] = torch.tensor([1e30, 1e30, 1e30])  # scores of 1e30 * users could overflow float32
    expected = (users @ items.T).max(1).indices[:, None]
    assert torch.equal(search(build, users, items, None, none), expected)
    assert search(build, users, items, None, none)[1, 0] == 0


@needs_kernel
def test_the_flop_counter_counts_the_product_and_the_bias() -> None:
    users, items, none = torch.randn(8, 4), torch.randn(100, 4), torch.zeros(8, 0).long()
    with FlopCounterMode(display=False) as counter:
        kernels.best_dot(users, items, None, none)
    assert counter.get_total_flops() == 2 * 8 * 4 * 100  # as mm counts [8 x 4] @ [4 x 100]
    with FlopCounterMode(display=False) as counter:
        kernels.best_dot(users, items, torch.zeros(100), none)
    assert counter.get_total_flops() == 2 * 8 * 4 * 100 + 8 * 100


@needs_kernel
def test_best_dot_runs_inside_one_compiled_graph() -> None:
    def best(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return kernels.best_dot(users * 2.0, items, None, users.new_zeros(users.shape[0], 0).long())

    users, items = torch.randn(9, 5), torch.randn(700, 5)
    compiled = torch.compile(best, fullgraph=True)  # fullgraph: a graph break would raise
    assert torch.equal(compiled(users, items), best(users, items))


@needs_kernel
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
@pytest.mark.parametrize("slate", [1, 3])
def test_greedy_acting_takes_the_fused_path_from_the_threshold_and_serves_the_best_allowed_items(
        monkeypatch, algo: str, slate: int) -> None:
    """Fused and unfused greedy acting serve the same slates (the default DQN's dueling scores
    and a softmax policy's logits rank as their ranking factors do), none from the history."""
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", N_ITEMS)
    ctx = make_ctx(slate_size=slate)
    policy = DQN(ctx, demonstrations=0, skip_shown=True) if algo == "dqn" \
        else PPO(ctx, demonstrations=0, skip_shown=True, sample_in_eval=False)
    obs = random_obs(40, torch.Generator().manual_seed(2), k=slate)
    calls = []
    real = kernels.best_dot
    monkeypatch.setattr(kernels, "best_dot", lambda *a: calls.append(1) or real(*a))
    fused = policy.act(obs, explore=False)
    assert calls, "greedy acting did not take the fused path"
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", N_ITEMS + 1)  # below the threshold: unfused
    calls.clear()
    assert torch.equal(policy.act(obs, explore=False), fused) and not calls
    history = obs.items.reshape(40, -1)
    assert fused.shape == (40, slate) and not (history[:, :, None] == fused[:, None, :]).any()


@needs_kernel
def test_compiled_greedy_acting_through_the_kernel_matches_the_eager_one(monkeypatch) -> None:
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", N_ITEMS)
    dqn = DQN(make_ctx(slate_size=1), demonstrations=0)
    act = compile_function(dqn.act, compile_mode(), dqn)
    for seed in range(3):
        obs = random_obs(16, torch.Generator().manual_seed(seed), k=1)
        assert torch.equal(act(obs, explore=False), dqn.act(obs, explore=False))


def test_long_slates_and_exploration_keep_the_unfused_path(monkeypatch) -> None:
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", 1)
    monkeypatch.setattr(nets, "FUSED_MAX_SLATE", 2)
    monkeypatch.setattr(kernels, "best_dot", lambda *a: pytest.fail("the fused path was taken"))
    obs = random_obs(8, torch.Generator().manual_seed(0), k=3)
    DQN(make_ctx(slate_size=3), demonstrations=0).act(obs, explore=False)
    ppo = PPO(make_ctx(slate_size=1), demonstrations=0)
    ppo.act(random_obs(8, torch.Generator().manual_seed(0), k=1), explore=True)


def test_best_dot_without_a_built_kernel_answers_by_the_pytorch_path(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_library", lambda: None)
    gen = torch.Generator().manual_seed(1)
    users, items, bias = torch.randn(5, 3, generator=gen), torch.randn(40, 3, generator=gen), torch.randn(40)
    excluded = torch.tensor([[0, 40]] * 5)
    assert torch.equal(kernels.best_dot(users, items, bias, excluded, 4),
                       reference_best(users, items, bias, excluded, 4))


def test_without_the_kernel_acting_takes_the_pytorch_path(monkeypatch) -> None:
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", 1)
    monkeypatch.setattr(kernels, "best_dot_ready", lambda: False)
    monkeypatch.setattr(kernels, "best_dot", lambda *a: pytest.fail("the fused path was taken"))
    obs = random_obs(8, torch.Generator().manual_seed(0), k=1)
    assert DQN(make_ctx(slate_size=1), demonstrations=0).act(obs, explore=False).shape == (8, 1)


def _reason_in_subprocess(tmp_path, shown: str = "kernels.best_dot_ready(), kernels.unavailable_reason()",
                          **environ: str) -> str:
    """What a fresh process building into ``tmp_path`` with the extra environment variables
    ``environ`` prints of ``shown`` (by default ``best_dot_ready()`` and ``unavailable_reason()``)."""
    code = f"from recrl import kernels; print({shown})"
    env = {**os.environ, "RECRL_KERNEL_DIR": str(tmp_path), **environ}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def test_recrl_native_0_turns_the_kernel_off_and_says_so(tmp_path) -> None:
    assert _reason_in_subprocess(tmp_path, RECRL_NATIVE="0") == "False RECRL_NATIVE=0"
    assert _reason_in_subprocess(tmp_path, RECRL_NATIVE="sse") == \
        "False RECRL_NATIVE='sse' (use 0, 1 or one of avx512bf16, avx512, avx2)"


@pytest.mark.parametrize("build", ["avx512", "avx2"])
def test_recrl_native_names_a_narrower_build_to_act_with(tmp_path, build: str) -> None:
    if build not in RUNNABLE:
        pytest.skip(f"this CPU runs no {build} build")
    assert _reason_in_subprocess(tmp_path, "kernels.status()", RECRL_NATIVE=build) == f"built ({build})"
    assert [path.name.startswith(f"best_dot-{build}-") for path in tmp_path.iterdir()] == [True]


@needs_kernel
def test_by_default_acting_takes_the_widest_build_the_cpu_runs(tmp_path) -> None:
    assert _reason_in_subprocess(tmp_path, "kernels.status()") == f"built ({RUNNABLE[0]})"


@pytest.mark.skipif(len(RUNNABLE) < 2, reason="this CPU runs one build")
def test_the_builds_find_the_same_items() -> None:
    """The AVX-512 and AVX2 builds sum every score in the same order: the same answers."""
    gen = torch.Generator().manual_seed(3)
    users, items = torch.randn(40, 33, generator=gen), torch.randn(3000, 33, generator=gen)
    bias, excluded = torch.randn(3000, generator=gen), torch.randint(0, 3010, (40, 9), generator=gen)
    answers = [search(build, users, items, bias, excluded, 5) for build in RUNNABLE]
    assert all(torch.equal(answers[0], other) for other in answers[1:])


needs_bf16 = pytest.mark.skipif("avx512bf16" not in RUNNABLE or "avx512" not in RUNNABLE,
                                reason="this CPU runs no bfloat16 build")


def rechecked_by(build: str, *args, **kwargs) -> tuple[torch.Tensor, int]:
    """``search(build, ...)``'s answer and how many users it searched again in float32."""
    library = kernels.load_variant(build)[0]
    before = library.best_dot_rechecked()
    best = search(build, *args, **kwargs)
    return best, library.best_dot_rechecked() - before


#: catalogues from which the bfloat16 build searches by rounded factors (best_dot.c's
#: BF16_MIN_ITEMS: 4,096 + 512 per slate item; below, it searches in float32)
BF16_ITEMS = {1: 4_700, 2: 5_200, 3: 5_700, 10: 9_300}


@needs_bf16
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top", [1, 10])
def test_the_bfloat16_search_proves_most_users_and_answers_as_float32(seed: int, top: int) -> None:
    """Random factors: the rounded search's short lists prove nearly every user's answer (the
    rest are searched again), and every answer is the float32 build's."""
    gen = torch.Generator().manual_seed(seed)
    n_items = BF16_ITEMS[top]
    users, items = torch.randn(200, 32, generator=gen), torch.randn(n_items, 32, generator=gen)
    bias = torch.randn(n_items, generator=gen)
    excluded = torch.randint(0, n_items + 10, (200, 10), generator=gen)
    best, rechecked = rechecked_by("avx512bf16", users, items, bias, excluded, top)
    assert torch.equal(best, search("avx512", users, items, bias, excluded, top))
    assert torch.equal(best, reference_best(users, items, bias, excluded, top))
    assert rechecked <= 20  # 10% at most; 0 or 1 measured


@needs_bf16
@pytest.mark.parametrize("top", [1, 3])
def test_near_ties_that_bfloat16_cannot_tell_apart_are_searched_again_in_float32(top: int) -> None:
    """Items that differ below bfloat16's precision (8 bits): the rounded scores tie, so no
    answer can be proven from them; float32 tells them apart, and so does the build."""
    gen = torch.Generator().manual_seed(0)
    users, base = torch.randn(20, 16, generator=gen), torch.randn(BF16_ITEMS[3], 16, generator=gen)
    close = base[:1].repeat(12, 1) * (1 + 1e-5 * torch.arange(12.0)[:, None])  # 12 near-copies
    items = torch.cat([base, close[torch.randperm(12, generator=gen)]])
    users[:10] = close[0] * (1 + 0.01 * torch.randn(10, 16, generator=gen))  # near-copies win
    none = torch.zeros(20, 0).long()
    best, rechecked = rechecked_by("avx512bf16", users, items, None, none, top)
    assert rechecked >= 10
    assert torch.equal(best, search("avx512", users, items, None, none, top))
    assert torch.equal(best, reference_best(users, items, None, none, top))


@needs_bf16
@pytest.mark.parametrize("noise", [1e-2, 1e-3, 1e-4])
def test_clustered_catalogues_answer_as_float32_however_many_users_are_searched_again(noise: float) -> None:
    """50 clusters of 100 items each, spread by `noise` (relative): the finer the spread, the
    more near ties the rounding cannot prove; the answers are the float32 build's throughout."""
    gen = torch.Generator().manual_seed(int(1 / noise))
    centres = torch.randn(50, 24, generator=gen)
    items = (centres.repeat_interleave(100, 0) * (1 + noise * torch.randn(5000, 24, generator=gen)))
    items = items[torch.randperm(5000, generator=gen)]
    users = centres[torch.randint(0, 50, (60,), generator=gen)] + 0.1 * torch.randn(60, 24, generator=gen)
    bias, excluded = 0.1 * torch.randn(5000, generator=gen), torch.randint(0, 5010, (60, 5), generator=gen)
    best, rechecked = rechecked_by("avx512bf16", users, items, bias, excluded, 1)
    assert torch.equal(best, search("avx512", users, items, bias, excluded, 1))
    assert rechecked >= 10  # 34-56 of 60 measured: the float32 search again is exercised


@pytest.mark.parametrize("threads", [2, 3])
def test_every_build_answers_alike_on_several_threads(threads: int) -> None:
    """The threads split the users (and share the packing of each panel; the bfloat16 build
    also its rounding of the items and their norms): the same answers as one thread's."""
    if not RUNNABLE:
        pytest.skip(f"no native build runs here: {kernels.unavailable_reason()}")
    gen = torch.Generator().manual_seed(threads)
    users, items = torch.randn(100, 32, generator=gen), torch.randn(BF16_ITEMS[3], 32, generator=gen)
    bias = torch.randn(items.shape[0], generator=gen)
    excluded = torch.randint(0, 6000, (100, 7), generator=gen)
    expected = reference_best(users, items, bias, excluded, 3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        answers = {build: search(build, users, items, bias, excluded, 3) for build in RUNNABLE}
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(best, expected) for best in answers.values())


@pytest.mark.skipif(kernels.variant() != "avx512bf16", reason="acting here does not run the bfloat16 build")
def test_the_search_counts_say_how_many_users_were_rounded_and_searched_again() -> None:
    gen = torch.Generator().manual_seed(0)
    users, base = torch.randn(30, 16, generator=gen), torch.randn(BF16_ITEMS[1], 16, generator=gen)
    users[:5] = base[7] * 10  # five users whose best item has four near-copies: not provable
    items = torch.cat([base, base[7:8].repeat(4, 1) * (1 + 1e-6 * torch.arange(1.0, 5.0)[:, None])])
    before = kernels.search_counts()
    kernels.best_dot(users, items, None, torch.zeros(30, 0).long())
    after = kernels.search_counts()
    assert after["rounded_users"] - before["rounded_users"] == 30
    assert after["searched_again"] - before["searched_again"] >= 5


@pytest.mark.skipif(len(RUNNABLE) < 2, reason="this CPU runs one build")
def test_the_stress_script_compares_the_builds_and_writes_its_table(tmp_path) -> None:
    out = tmp_path / "stress.json"
    script = Path(__file__).parents[1] / "scripts" / "stress_native_search.py"
    done = subprocess.run([sys.executable, str(script), "--seconds", "1", "--items", "5000", "5200",
                           "--out", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["builds"] == RUNNABLE
    assert sum(row["cases"] for row in report["rows"].values()) > 0
    assert all(row["mismatches"] == 0 for row in report["rows"].values())


@needs_bf16
def test_the_bfloat16_build_takes_float32_where_rounding_loses_the_answer() -> None:
    """Factors near float32's largest (bfloat16 would round them to inf) and products below
    float32's smallest normal (the bfloat16 product flushes them to 0), and a catalogue too small
    for the rounded search to pay: the float32 build's answers."""
    gen = torch.Generator().manual_seed(0)
    none = torch.zeros(6, 0).long()
    users, items = torch.randn(6, 8, generator=gen), torch.randn(BF16_ITEMS[2], 8, generator=gen)
    huge, tiny = users * 3e38 / users.abs().max(), items * 1e-35
    for u, v in ((huge, tiny), (users * 1e-5, tiny), (users, items[:900])):
        best, _ = rechecked_by("avx512bf16", u, v, None, none, 2)
        assert torch.equal(best, search("avx512", u, v, None, none, 2))


@needs_kernel
def test_a_failing_compiler_leaves_the_pytorch_path_and_no_partial_file(tmp_path) -> None:
    out = _reason_in_subprocess(tmp_path, CC="false")
    assert out.startswith("False the build failed: ") and "false exited with 1" in out, out
    assert list(tmp_path.iterdir()) == []  # the partial build was removed


@needs_kernel
def test_the_kernel_is_built_once_into_the_kernel_dir(tmp_path) -> None:
    assert _reason_in_subprocess(tmp_path) == "True None"
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    assert _reason_in_subprocess(tmp_path) == "True None"
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp  # reused


def test_same_bytes_tells_a_copy_from_a_changed_tensor() -> None:
    a = torch.randn(300, 7)
    assert kernels.same_bytes(a, a.clone())
    changed = a.clone()
    changed[299, 6] += 1.0
    assert not kernels.same_bytes(a, changed)
    assert not kernels.same_bytes(a, a[:, :6].contiguous()) and not kernels.same_bytes(a, a.double())
    nan = torch.tensor([float("nan"), 0.0])
    assert kernels.same_bytes(nan, nan.clone())  # the same bytes, though NaN != NaN
    assert not kernels.same_bytes(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert kernels.same_bytes(a.T, a.T.clone())  # not contiguous: compared by value


@needs_kernel
@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("slate", [1, 3])
def test_dqn_values_the_next_state_by_the_fused_search_as_by_the_catalogue_scores(
        monkeypatch, double: bool, slate: int) -> None:
    """The TD target's ``Q_target(s', a*)``: ``a*`` from the fused search and only its items
    valued, or both catalogue-wide products; the same numbers up to float32 rounding."""
    dqn = DQN(make_ctx(slate_size=slate), demonstrations=0, skip_shown=True, double=double)
    for p in dqn.q_target.parameters():  # a target that differs from the online net
        p.data.add_(0.1 * torch.randn_like(p))
    obs = random_obs(30, torch.Generator().manual_seed(4), k=slate)
    calls = []
    real = kernels.best_dot
    monkeypatch.setattr(kernels, "best_dot", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", N_ITEMS)
    with torch.no_grad():
        fused = dqn._next_value(obs)
        assert calls
        monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", N_ITEMS + 1)
        calls.clear()
        unfused = dqn._next_value(obs)
        assert not calls
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("slate", [1, 3])
def test_dqfd_margin_loss_from_the_best_rivals_equals_the_catalogue_wide_one(monkeypatch, slate: int) -> None:
    """The margin loss from the fused search's best rivals and the demonstrated items: the same
    value and the same gradient as from every item's Q-value."""
    monkeypatch.setattr(nets, "FUSED_SEARCH_ITEMS", N_ITEMS)
    dqn = DQN(make_ctx(slate_size=slate), demonstrations=0, skip_shown=True, demo_margin=0.3)
    obs = random_obs(25, torch.Generator().manual_seed(5), k=slate)
    shown = torch.stack([torch.randperm(N_ITEMS, generator=torch.Generator().manual_seed(i))[:slate]
                         for i in range(25)])

    def loss_and_grads(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        dqn.q.zero_grad()
        state = dqn.q.encoder(obs)
        rivals = dqn._margin_rivals(obs, shown, state)
        assert rivals is not None and rivals.shape == (25, slate)
        loss = dqn._fused_margin_loss(shown, state, rivals) if fused \
            else dqn._demo_loss(obs, shown, dqn.q.score(state))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in dqn.q.parameters() if p.grad is not None]

    fused_loss, fused_grads = loss_and_grads(True)
    loss, grads = loss_and_grads(False)
    assert float(loss) > 0  # some rival within the margin: the loss is not trivially 0
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-6)
    for g, h in zip(fused_grads, grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
