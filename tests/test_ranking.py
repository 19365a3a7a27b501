"""Tests for recrl.metrics.ranking: target ranks, HR/NDCG/MRR, multi-target top-k metrics, RMSE,
calibration, and the full / sampled ranking protocols."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from recrl.metrics import negatives as sampling
from recrl.metrics.ranking import (
    RankingResult,
    calibration_curve,
    expected_calibration_error,
    full_ranking,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ndcg_multi_at_k,
    precision_recall_f1_at_k,
    ranks_of_targets,
    rmse,
    sample_negatives,
    sampled_ranking,
    summarize_ranking,
)

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


def inv_log2(x: float) -> float:
    return 1.0 / math.log2(x)


# ----------------------------------------------------------------------------- target ranks
def test_ranks_ties_are_pessimistic() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5]])
    assert ranks_of_targets(scores, torch.tensor([2])).tolist() == [2]
    assert ranks_of_targets(scores, torch.tensor([3])).tolist() == [2]
    assert ranks_of_targets(scores, torch.tensor([1])).tolist() == [0]
    assert ranks_of_targets(scores, torch.tensor([0])).tolist() == [3]
    assert ranks_of_targets(torch.zeros(1, 6), torch.tensor([4])).tolist() == [5]  # all tied: last


def test_ranks_with_exclusions_never_exclude_the_target() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.3, 0.2, 0.1, 0.4]])
    exclude = torch.tensor([[False, True, False, False], [True, True, False, True]])
    ranks = ranks_of_targets(scores, torch.tensor([2, 2]), exclude)
    assert ranks.tolist() == [1, 0]
    assert ranks.dtype == torch.long
    # the target is marked excluded too: it still gets ranked
    exclude[0, 2] = True
    assert ranks_of_targets(scores, torch.tensor([2, 2]), exclude).tolist() == [1, 0]


def test_ranks_nan_scores_count_against_the_target() -> None:
    scores = torch.tensor([[0.2, float("nan"), 0.1], [float("nan"), 0.5, 0.1]])
    assert ranks_of_targets(scores, torch.tensor([0, 0])).tolist() == [1, 2]


def test_ranks_reject_bad_shapes_and_ids() -> None:
    with pytest.raises(ValueError, match="targets"):
        ranks_of_targets(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="exclude"):
        ranks_of_targets(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="item ids"):
        ranks_of_targets(torch.zeros(2, 3), torch.tensor([0, 3]))


# ----------------------------------------------------------------------------- HR / NDCG / MRR
def test_hr_ndcg_mrr_by_hand() -> None:
    ranks = torch.tensor([0, 1, 5])
    assert hit_rate_at_k(ranks, 2) == pytest.approx(2 / 3, abs=1e-15)
    assert ndcg_at_k(ranks, 2) == pytest.approx((1 + inv_log2(3)) / 3, abs=1e-15)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 6) / 3, abs=1e-15)
    assert hit_rate_at_k(ranks, 6) == 1.0
    assert ndcg_at_k(ranks, 6) == pytest.approx((1 + inv_log2(3) + inv_log2(7)) / 3, abs=1e-15)
    assert hit_rate_at_k(ranks, 1) == pytest.approx(1 / 3) and ndcg_at_k(ranks, 1) == pytest.approx(1 / 3)


def test_single_target_metrics_edge_cases() -> None:
    assert math.isnan(mrr(torch.zeros(0, dtype=torch.long)))
    assert math.isnan(hit_rate_at_k(torch.zeros(0, dtype=torch.long), 5))
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(torch.tensor([0]), 0)


# ----------------------------------------------------------------------------- multi-target top-k
TOPK = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
RELEVANT = torch.tensor([[2, 3, 9], [4, -1, -1], [-1, -1, -1]])  # user 2 has none: left out


def test_precision_recall_f1_by_hand() -> None:
    got = precision_recall_f1_at_k(TOPK, RELEVANT, 3)
    # user 0: 2 hits, P = 2/3, R = 2/3, F1 = 2/3; user 1: 1 hit, P = 1/3, R = 1, F1 = 1/2
    assert list(got) == ["precision@3", "recall@3", "f1@3"]
    assert got["precision@3"] == pytest.approx(1 / 2, abs=1e-15)
    assert got["recall@3"] == pytest.approx(5 / 6, abs=1e-15)
    assert got["f1@3"] == pytest.approx(7 / 12, abs=1e-15)
    # k = 1: user 0 misses (P = R = F1 = 0), user 1 hits (P = 1, R = 1, F1 = 1)
    assert precision_recall_f1_at_k(TOPK, RELEVANT, 1) == pytest.approx(
        {"precision@1": 0.5, "recall@1": 0.5, "f1@1": 0.5}
    )


def test_ndcg_multi_by_hand() -> None:
    # user 0: hits at positions 1 and 2, ideal has 3 hits; user 1: hit at position 0, ideal 1 hit
    user0 = (inv_log2(3) + inv_log2(4)) / (1 + inv_log2(3) + inv_log2(4))
    assert ndcg_multi_at_k(TOPK, RELEVANT, 3) == pytest.approx((user0 + 1.0) / 2, abs=1e-15)
    # k = 2: user 0 hit at position 1 of an ideal with 2 hits
    assert ndcg_multi_at_k(TOPK, RELEVANT, 2) == pytest.approx(
        (inv_log2(3) / (1 + inv_log2(3)) + 1.0) / 2, abs=1e-15
    )


def test_multi_target_repeats_count_once_and_no_relevant_is_nan() -> None:
    topk = torch.tensor([[2, 2, 5]])
    relevant = torch.tensor([[2, 2, 7]])  # two distinct relevant items
    got = precision_recall_f1_at_k(topk, relevant, 3)
    assert got["precision@3"] == pytest.approx(1 / 3) and got["recall@3"] == pytest.approx(1 / 2)
    assert ndcg_multi_at_k(topk, relevant, 3) == pytest.approx(1 / (1 + inv_log2(3)))
    assert all(math.isnan(v) for v in precision_recall_f1_at_k(topk, torch.tensor([[-1]]), 2).values())
    with pytest.raises(ValueError, match="fewer than k"):
        ndcg_multi_at_k(topk, relevant, 4)


# ----------------------------------------------------------------------------- RMSE / calibration
def test_rmse() -> None:
    assert rmse(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 6.0])) == 1.0
    assert rmse(torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])) == pytest.approx(math.sqrt(12.5))
    with pytest.raises(ValueError, match="shape"):
        rmse(torch.zeros(2), torch.zeros(3))


def test_ece_and_calibration_curve_by_hand() -> None:
    prob = torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64)
    label = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(prob, label, bins=10) == pytest.approx(0.25, abs=1e-12)
    assert expected_calibration_error(prob.float(), label) == pytest.approx(0.25, abs=1e-6)
    mean_p, freq, count = calibration_curve(prob, label, bins=10)
    assert mean_p.tolist() == pytest.approx([0.1, 0.9])
    assert freq.tolist() == [0.5, 1.0]
    assert count.tolist() == [2, 2]


def test_calibration_bin_edges_and_weights() -> None:
    # 2 bins: [0, 0.5) and [0.5, 1]; 0.5 and 1.0 fall in the upper one
    prob = torch.tensor([0.0, 0.2, 0.5, 1.0, 0.75], dtype=torch.float64)
    label = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    mean_p, freq, count = calibration_curve(prob, label, bins=2)
    assert mean_p.tolist() == pytest.approx([0.1, 0.75])
    assert freq.tolist() == pytest.approx([0.5, 2 / 3])
    assert count.tolist() == [2, 3]
    want = 0.4 * abs(0.1 - 0.5) + 0.6 * abs(0.75 - 2 / 3)
    assert expected_calibration_error(prob, label, bins=2) == pytest.approx(want, abs=1e-12)
    assert expected_calibration_error(torch.full((4,), 0.3), torch.tensor([0, 1, 1, 0])) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_curve(torch.tensor([1.5]), torch.tensor([1]))


# ----------------------------------------------------------------------------- full ranking
# 3 users x 5 items. Targets 4, 0, 1; seen (aligned with users) hides item 2 for user 0 and items 3 and
# 0 for user 1 (0 is the target, which stays). Ranks without seen: [1, 3, 0]; with seen: [0, 2, 0].
SCORES = torch.tensor(
    [
        [0.5, 0.1, 0.9, 0.3, 0.7],
        [0.2, 0.2, 0.2, 0.8, 0.1],
        [0.0, 1.0, 0.5, 0.4, 0.3],
    ],
    dtype=torch.float64,
)
USERS = torch.tensor([0, 1, 2])
TARGETS = torch.tensor([4, 0, 1])
SEEN_LIST = [torch.tensor([2]), torch.tensor([3, 0]), torch.tensor([], dtype=torch.long)]


def seen_mask(seen: list[Tensor], n_items: int) -> Tensor:
    mask = torch.zeros(len(seen), n_items, dtype=torch.bool)
    for row, items in enumerate(seen):
        mask[row, items] = True
    return mask


@pytest.mark.parametrize("chunk", [1, 2, 3, 1024])
@pytest.mark.parametrize("as_mask", [False, True])
def test_full_ranking_hand_values_any_chunk(chunk: int, as_mask: bool) -> None:
    seen = seen_mask(SEEN_LIST, 5) if as_mask else SEEN_LIST
    calls: list[int] = []

    def score_fn(users: Tensor) -> Tensor:
        calls.append(len(users))
        return SCORES[users]

    res = full_ranking(score_fn, USERS, TARGETS, seen, ks=(1, 3), chunk=chunk)
    assert isinstance(res, RankingResult)
    assert res.protocol == "full" and res.n_users == 3
    assert res.ranks is not None and res.ranks.tolist() == [0, 2, 0]
    assert list(res.metrics) == ["hr@1", "ndcg@1", "hr@3", "ndcg@3", "mrr"]
    assert all(isinstance(v, float) for v in res.metrics.values())
    want = {"hr@1": 2 / 3, "ndcg@1": 2 / 3, "hr@3": 1.0, "ndcg@3": (2 + inv_log2(4)) / 3, "mrr": 7 / 9}
    assert res.metrics == pytest.approx(want, abs=1e-15)
    assert sum(calls) == 3 and max(calls) <= chunk


def test_full_ranking_without_seen_and_with_user_subset() -> None:
    res = full_ranking(lambda u: SCORES[u], USERS, TARGETS, None, ks=(1, 3))
    assert res.ranks is not None and res.ranks.tolist() == [1, 3, 0]
    assert res.metrics["hr@1"] == pytest.approx(1 / 3) and res.metrics["hr@3"] == pytest.approx(2 / 3)
    assert res.metrics["mrr"] == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)
    # users in any order, seen aligned with `users`
    sub = full_ranking(lambda u: SCORES[u], torch.tensor([1, 0]), torch.tensor([0, 4]), SEEN_LIST[1::-1])
    assert sub.ranks is not None and sub.ranks.tolist() == [2, 0]
    assert set(sub.metrics) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"}


def test_full_ranking_seen_items_are_excluded() -> None:
    # user 0 has seen the 9 items that outscore its target: the target comes first
    scores = torch.arange(10.0).flip(0).unsqueeze(0)  # item i scores 9 - i
    res = full_ranking(lambda u: scores[u], torch.tensor([0]), torch.tensor([9]), [torch.arange(9)], ks=(1,))
    assert res.metrics["hr@1"] == 1.0 and res.metrics["mrr"] == 1.0
    res = full_ranking(lambda u: scores[u], torch.tensor([0]), torch.tensor([9]), [torch.arange(4)], ks=(1,))
    assert res.ranks is not None and res.ranks.tolist() == [5]


def test_full_ranking_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="score_fn returned"):
        full_ranking(lambda u: SCORES[u, :3].flatten(), USERS, TARGETS, None)
    with pytest.raises(ValueError, match="entries"):
        full_ranking(lambda u: SCORES[u], USERS, TARGETS, SEEN_LIST[:2])
    with pytest.raises(ValueError, match="seen must hold"):
        full_ranking(lambda u: SCORES[u], USERS, TARGETS, [torch.tensor([7]), *SEEN_LIST[1:]])
    with pytest.raises(ValueError, match="no users"):
        full_ranking(lambda u: SCORES[u], USERS[:0], TARGETS[:0], None)


# ----------------------------------------------------------------------------- sampled ranking
N_ITEMS = 60


def sampled_problem(n_users: int = 40, seed: int = 1) -> tuple[Tensor, Tensor, list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    users = torch.arange(n_users)
    targets = torch.randint(0, N_ITEMS, (n_users,), generator=gen)
    sizes = torch.randint(0, 30, (n_users,), generator=gen).tolist()
    seen = [torch.randperm(N_ITEMS, generator=gen)[:n] for n in sizes]
    return users, targets, seen


class Spy:
    """Score function that records the items it is asked to score."""

    def __init__(self, table: Tensor) -> None:
        self.table = table
        self.users: list[Tensor] = []
        self.items: list[Tensor] = []

    def __call__(self, users: Tensor, items: Tensor) -> Tensor:
        self.users.append(users.clone())
        self.items.append(items.clone())
        return self.table[users.unsqueeze(1), items]


def test_sampled_ranking_never_samples_seen_items_or_target() -> None:
    users, targets, seen = sampled_problem()
    spy = Spy(torch.rand(len(users), N_ITEMS, generator=torch.Generator().manual_seed(2)))
    res = sampled_ranking(spy, users, targets, seen, N_ITEMS, n_negatives=20, ks=(1, 5), chunk=16)
    assert res.protocol == "sampled-20" and res.n_users == len(users)
    assert [len(u) for u in spy.users] == [16, 16, 8]
    items = torch.cat(spy.items)
    assert torch.equal(torch.cat(spy.users), users)
    assert items.shape == (len(users), 21)
    assert torch.equal(items[:, 0], targets)
    for row, user_seen in enumerate(seen):
        negatives = items[row, 1:]
        assert negatives.unique().numel() == 20
        assert not torch.isin(negatives, torch.cat([user_seen, targets[row : row + 1]])).any()


def test_sampled_ranking_is_deterministic_for_a_seed_and_independent_of_chunk_and_seen_form() -> None:
    users, targets, seen = sampled_problem()
    table = torch.rand(len(users), N_ITEMS, generator=torch.Generator().manual_seed(3))
    runs = []
    for chunk, seen_form in [(1024, seen), (7, seen), (1024, seen_mask(seen, N_ITEMS))]:
        spy = Spy(table)
        res = sampled_ranking(spy, users, targets, seen_form, N_ITEMS, n_negatives=20, seed=5, chunk=chunk)
        runs.append((torch.cat(spy.items), res.metrics))
    for items, metrics in runs[1:]:
        assert torch.equal(items, runs[0][0]) and metrics == runs[0][1]
    other = sample_negatives(targets, seen, N_ITEMS, 20, seed=6)
    assert not torch.equal(other, runs[0][0][:, 1:])


def test_sampled_ranking_perfect_and_constant_scorers() -> None:
    users, targets, seen = sampled_problem()

    def perfect(u: Tensor, items: Tensor) -> Tensor:
        return (items == targets[u].unsqueeze(1)).double()

    res = sampled_ranking(perfect, users, targets, seen, N_ITEMS, n_negatives=25)
    assert res.protocol == "sampled-25"
    assert res.metrics == dict.fromkeys(["hr@1", "ndcg@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr"], 1.0)
    # a constant scorer ties everything: pessimistically last of 26
    flat = sampled_ranking(lambda u, items: torch.zeros(items.shape), users, targets, seen, N_ITEMS, 25)
    assert flat.ranks is not None and flat.ranks.tolist() == [25] * len(users)
    assert flat.metrics["hr@10"] == 0.0 and flat.metrics["mrr"] == pytest.approx(1 / 26)


@pytest.mark.parametrize("n_items", [12, 3000])  # 3000: rejection mostly fails, the exact fallback finishes
def test_sampled_ranking_with_exactly_enough_unseen_items(n_items: int) -> None:
    # each user has seen all but 10 items (one of them the target): the 9 others are the only negatives
    targets = torch.tensor([0, 5, n_items - 1])
    free = [torch.arange(10), torch.arange(2, 12), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, n_items - 1])]
    seen = [torch.tensor(sorted(set(range(n_items)) - set(f.tolist()))) for f in free]
    negatives = sample_negatives(targets, seen, n_items, n_negatives=9, seed=0)
    for u in range(3):
        want = sorted(set(free[u].tolist()) - {int(targets[u])})
        assert sorted(negatives[u].tolist()) == want


@pytest.mark.parametrize("rounds", [8, 0])  # 0: every user takes the exact fallback
def test_sampled_negatives_are_uniform(rounds: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3,000 users each pick 3 of the 9 allowed items: each item ~1,000 times
    monkeypatch.setattr(sampling, "_SAMPLE_ROUNDS", rounds)
    n_users = 3000
    targets = torch.zeros(n_users, dtype=torch.long)
    seen = torch.zeros(n_users, 12, dtype=torch.bool)
    seen[:, 10:] = True
    negatives = sample_negatives(targets, seen, 12, 3, seed=0)
    assert all(len(set(row)) == 3 for row in negatives.tolist())
    counts = torch.bincount(negatives.flatten(), minlength=12)
    assert counts[0] == 0 and counts[10:].sum() == 0
    assert ((counts[1:10] - 1000).abs() < 120).all(), counts


def test_sampled_ranking_raises_when_too_few_unseen_items() -> None:
    users, targets = torch.tensor([0, 1]), torch.tensor([0, 1])
    seen = [torch.arange(2, 10), torch.tensor([5])]  # user 0: items 0..9, only 1 left besides the target
    with pytest.raises(ValueError, match="fewer than 5 unseen items"):
        sampled_ranking(lambda u, i: torch.zeros(i.shape), users, targets, seen, n_items=11, n_negatives=5)
    # repeated seen ids and a seen target are counted once: 11 - 9 = 2 allowed items
    seen = [torch.cat([torch.arange(0, 10), torch.tensor([3, 3])]), torch.tensor([5])]
    assert sample_negatives(targets, seen, 11, 1).shape == (2, 1)
    with pytest.raises(ValueError, match="has 1 of 11"):
        sample_negatives(targets, seen, 11, 2)


# ----------------------------------------------------------------------------- summary
def test_summarize_ranking_keys_by_protocol_and_pools_shards() -> None:
    full = full_ranking(lambda u: SCORES[u], USERS, TARGETS, SEEN_LIST, ks=(1,))
    shard_a = RankingResult("sampled-100", {"hr@1": 1.0, "mrr": 1.0}, n_users=1)
    shard_b = RankingResult("sampled-100", {"hr@1": 0.0, "mrr": 0.5}, n_users=3)
    summary = summarize_ranking([full, shard_a, shard_b])
    assert list(summary) == ["full", "sampled-100"]
    assert summary["full"] == {**full.metrics, "n_users": 3.0}
    assert summary["sampled-100"] == pytest.approx({"hr@1": 0.25, "mrr": 0.625, "n_users": 4.0})
    with pytest.raises(ValueError, match="different metrics"):
        summarize_ranking([shard_a, RankingResult("sampled-100", {"mrr": 1.0}, 1)])
    assert summarize_ranking([]) == {}


# ----------------------------------------------------------------------------- devices and scale
@pytest.mark.parametrize("device", DEVICES)
def test_metrics_on_device_match_cpu(device: str) -> None:
    scores = SCORES.to(device)
    ranks = ranks_of_targets(scores, TARGETS.to(device), seen_mask(SEEN_LIST, 5).to(device))
    assert ranks.device.type == device and ranks.tolist() == [0, 2, 0]
    seen = [s.to(device) for s in SEEN_LIST]
    res = full_ranking(lambda u: scores[u], USERS.to(device), TARGETS.to(device), seen)
    assert res.metrics == full_ranking(lambda u: SCORES[u], USERS, TARGETS, SEEN_LIST).metrics
    table = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)).to(device)
    cpu = sampled_ranking(lambda u, i: table.cpu()[u[:, None], i], USERS, TARGETS, None, 5, n_negatives=3)
    dev = sampled_ranking(lambda u, i: table[u[:, None], i], USERS.to(device), TARGETS.to(device), None, 5, 3)
    assert dev.metrics == cpu.metrics
    prob = torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64, device=device)
    label = torch.tensor([0, 1, 1, 1], device=device)
    assert expected_calibration_error(prob, label) == pytest.approx(0.25)
    assert ndcg_multi_at_k(TOPK.to(device), RELEVANT.to(device), 3) == pytest.approx(
        ndcg_multi_at_k(TOPK, RELEVANT, 3)
    )


def test_metrics_run_on_a_2000_by_5000_problem() -> None:
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 2000, 5000
    scores = torch.rand(n_users, n_items, generator=gen)
    users = torch.arange(n_users)
    targets = torch.randint(0, n_items, (n_users,), generator=gen)
    seen = [torch.randint(0, n_items, (int(n),), generator=gen) for n in torch.randint(0, 100, (n_users,))]
    full = full_ranking(lambda u: scores[u], users, targets, seen, chunk=512)
    sampled = sampled_ranking(lambda u, i: scores[u[:, None], i], users, targets, seen, n_items, 100)
    # random scores: the target's rank is uniform, so HR@10 is about 10 / #candidates
    assert full.metrics["hr@10"] < 0.02 and 0.05 < sampled.metrics["hr@10"] < 0.15
    topk = scores.topk(20, dim=1).indices
    relevant = torch.randint(-1, n_items, (n_users, 10), generator=gen)
    assert set(precision_recall_f1_at_k(topk, relevant, 20)) == {"precision@20", "recall@20", "f1@20"}
    assert 0.0 <= ndcg_multi_at_k(topk, relevant, 20) <= 1.0
    prob = torch.rand(n_users * 100, generator=gen)
    label = (torch.rand(n_users * 100, generator=gen) < prob).long()
    assert expected_calibration_error(prob, label) < 0.01
    assert calibration_curve(prob, label, bins=20)[2].sum() == n_users * 100
    assert 0.3 < rmse(prob, label.float()) < 0.7
