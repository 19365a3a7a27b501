"""``softmax_stats``: a policy-gradient learner's slate log-probabilities, policy entropies and KL,
fused from 512 items on; the same values and gradients as ``log_softmax`` + ``gather`` +
``policy_entropy``, including masked items; and ``keep_freed_memory``."""

from __future__ import annotations

import math
import platform

import pytest
import torch
from tiny import make_ctx, random_obs

from recrl import memory
from recrl.algos import nets
from recrl.algos.nets import policy_entropy, softmax_stats
from recrl.algos.ppo import PPO


def test_log_probability_and_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0), float("-inf")]])  # p = (1/4, 3/4, 0)
    logp, entropy = nets._SoftmaxStats.apply(logits, torch.tensor([[1]]), None, None)[:2]
    assert logp.item() == pytest.approx(math.log(0.75))
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    both = nets._SoftmaxStats.apply(logits, torch.tensor([[0, 1]]), None, None)[0]  # a slate: the sum
    assert both.item() == pytest.approx(math.log(0.25) + math.log(0.75))


def composed(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_pi = torch.log_softmax(logits, 1)
    return log_pi.gather(1, actions).sum(1), policy_entropy(log_pi)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("slate", [1, 3])
def test_fused_values_and_gradients_are_the_composed_ones(seed: int, slate: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(7, 40, generator=gen, dtype=torch.float64) * 3
    logits[torch.rand(7, 40, generator=gen) < 0.2] = float("-inf")  # masked items
    logits[:, :slate] = torch.randn(7, slate, generator=gen, dtype=torch.float64)  # slates stay allowed
    actions = torch.stack([torch.randperm(slate, generator=gen) for _ in range(7)])
    weights = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    fused_in, composed_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fused_out = nets._SoftmaxStats.apply(fused_in, actions, None, None)[:2]
    composed_out = composed(composed_in, actions)
    for got, want in zip(fused_out, composed_out, strict=True):
        torch.testing.assert_close(got, want)
    (weights[0] @ fused_out[0] + weights[1] @ fused_out[1]).backward()
    (weights[0] @ composed_out[0] + weights[1] @ composed_out[1]).backward()
    assert torch.isfinite(fused_in.grad).all()
    assert (fused_in.grad[logits == float("-inf")] == 0).all()  # masked items get no gradient
    torch.testing.assert_close(fused_in.grad, composed_in.grad)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_history_is_masked_inside_the_fused_form_as_mask_shown_does(seed: int) -> None:
    """With ``obs``, the fused form masks the observed history in its own copy of the logits:
    the values and gradients of ``mask_shown`` then the composition (padding ids skipped,
    repeated items once), and the caller's logits untouched."""
    obs = random_obs(16, torch.Generator().manual_seed(seed), k=1)
    gen = torch.Generator().manual_seed(seed)
    n = 600
    logits = torch.randn(16, n, generator=gen, dtype=torch.float64) * 2
    logits[:, :13] += 30.0  # the history's items (ids below 13) would dominate unmasked
    actions = torch.randint(13, n, (16, 2), generator=gen)
    weights = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    fused_in, composed_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fused_out = softmax_stats(fused_in, actions, obs)[:2]
    composed_out = composed(nets.mask_shown(composed_in, obs), actions)
    for got, want in zip(fused_out, composed_out, strict=True):
        torch.testing.assert_close(got, want)
    (weights[0] @ fused_out[0] + weights[1] @ fused_out[1]).backward()
    (weights[0] @ composed_out[0] + weights[1] @ composed_out[1]).backward()
    torch.testing.assert_close(fused_in.grad, composed_in.grad)
    assert torch.equal(fused_in.detach(), logits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_kl_to_a_reference_and_its_gradient_are_the_composed_ones(seed: int) -> None:
    """With a reference policy's log-probabilities (masked where the policy is), the fused KL
    and its gradient are :func:`kl_divergence`'s over the composition."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 700, generator=gen, dtype=torch.float64) * 2
    masked = torch.rand(5, 700, generator=gen) < 0.1
    masked[:, 0] = False
    logits[masked] = float("-inf")
    log_ref = torch.log_softmax((torch.randn(5, 700, generator=gen, dtype=torch.float64) * 2)
                                .masked_fill(masked, float("-inf")), 1)
    actions = torch.zeros(5, 1, dtype=torch.long)
    weights = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    fused_in, composed_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fused_out = softmax_stats(fused_in, actions, log_ref=log_ref)
    log_pi = torch.log_softmax(composed_in, 1)
    composed_out = (*composed(composed_in, actions), nets.kl_divergence(log_pi, log_ref))
    for got, want in zip(fused_out, composed_out, strict=True):
        torch.testing.assert_close(got, want)
    sum(w @ out for w, out in zip(weights, fused_out, strict=True)).backward()
    sum(w @ out for w, out in zip(weights, composed_out, strict=True)).backward()
    assert torch.isfinite(fused_in.grad).all()
    torch.testing.assert_close(fused_in.grad, composed_in.grad)


def test_gradcheck_of_the_fused_form() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, generator=gen, dtype=torch.float64).requires_grad_()
    log_ref = torch.log_softmax(torch.randn(4, 9, generator=gen, dtype=torch.float64), 1)
    actions = torch.tensor([[0, 4], [8, 1], [2, 2], [5, 7]])
    assert torch.autograd.gradcheck(lambda x: nets._SoftmaxStats.apply(x, actions, None, log_ref), (logits,))


def test_softmax_stats_is_fused_from_the_threshold_on(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(nets._SoftmaxStats, "apply",
                        lambda logits, actions, *rest: calls.append(1) or (*composed(logits, actions), None))
    actions = torch.zeros(2, 1, dtype=torch.long)
    softmax_stats(torch.zeros(2, nets.FUSED_STATS_ITEMS - 1), actions)
    assert calls == []  # small catalogues: the composition itself, to the last bit
    softmax_stats(torch.zeros(2, nets.FUSED_STATS_ITEMS), actions)
    assert calls == [1]


def test_ppo_update_on_a_large_catalogue_matches_the_composed_loss(monkeypatch) -> None:
    """One PPO loss on 600 items through the fused form and through the composition: the same
    loss and the same gradients, up to rounding."""
    ppo = PPO(make_ctx(n_items=600, slate_size=1), demonstrations=0, skip_shown=True)
    obs = random_obs(64, torch.Generator().manual_seed(0), k=1)
    action = ppo.act(obs, explore=True)
    with torch.no_grad():
        old_logp, old_value, _, _ = ppo.evaluate(obs, action)
    args = (obs, action, old_logp - 0.1, old_value, torch.linspace(-1, 1, 64), old_value + 0.5)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        ppo.optimizer.zero_grad()
        loss = ppo.loss(*args)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in ppo.params if p.grad is not None]

    fused_loss, fused_grads = loss_and_grads()
    monkeypatch.setattr(nets, "FUSED_STATS_ITEMS", 10**9)
    composed_loss, composed_grads = loss_and_grads()
    torch.testing.assert_close(fused_loss, composed_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(fused_grads, composed_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_keep_freed_memory_sets_glibcs_thresholds() -> None:
    assert memory.keep_freed_memory() is True
    big = torch.ones(4 << 20)  # 16 MB, from the heap now: freed and taken again intact
    del big
    assert torch.zeros(4 << 20).sum() == 0


def test_keep_freed_memory_passes_values_a_c_int_holds(monkeypatch) -> None:
    """Undeclared, ctypes wrapped 1 << 32 to 0 and glibc took it: a trim threshold of 0, every
    free at the heap's top handed back (1.45 million page faults for one Beauty epoch, 0.50
    million with the threshold held)."""
    taken: list[tuple[int, int]] = []

    class Library:
        def mallopt(self, param: int, value: int) -> int:
            taken.append((param, value))
            return 1

    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: Library())
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: "libc.so.6")
    assert memory.keep_freed_memory() is True
    assert dict(taken) == {memory.M_MMAP_THRESHOLD: 1 << 30, memory.M_TRIM_THRESHOLD: (1 << 31) - 1,
                           memory.M_TOP_PAD: 1 << 26}


def test_keep_freed_memory_without_a_c_library_sets_nothing(monkeypatch) -> None:
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: None)
    assert memory.keep_freed_memory() is False
