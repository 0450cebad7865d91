from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from appo.core.loss import agg_loss, future_kl_loss, kl_penalty, ppo_loss

from . import naive

# ---- G5: future_kl golden numbers -------------------------------------------------------------------

OLD = torch.tensor([[-1.0, -0.5, -2.0, -0.3, -1.2]])
NEW = torch.tensor([[-0.9, -0.6, -0.5, -0.3, -1.1]])
ONES = torch.ones(1, 5)


def test_g5_positive_advantage():
    loss, metrics = future_kl_loss(NEW, OLD, ONES, ONES)
    assert loss.item() == pytest.approx(-2.250907, abs=1e-5)
    f = torch.tensor([1.101681, 1.0, 1.102805, 1.103981, 1.105171])
    assert metrics["fkl_influence_mean"].item() == pytest.approx(f.mean().item(), abs=1e-5)
    assert metrics["fkl_filtered_frac"].item() == 0.0
    vanilla, _ = ppo_loss(NEW, OLD, ONES, ONES)
    assert vanilla.item() == pytest.approx(-1.079036, abs=1e-5)


def test_g5_negative_advantage_dual_clip():
    loss, metrics = future_kl_loss(NEW, OLD, -ONES, ONES)
    assert loss.item() == pytest.approx(2.974273, abs=1e-5)
    assert metrics["pg_clipfrac_lower"].item() == pytest.approx(0.2)  # t = 2 (ratio 4.48 > 3)


def test_g5_safety_cap_and_sequence_filter():
    old = torch.tensor([[-3.0, -3.0, -1.0, -1.0]])
    new = torch.full((1, 4), -1.0)
    loss, metrics = future_kl_loss(new, old, -torch.ones(1, 4), torch.ones(1, 4))
    assert loss.item() == 0.0
    assert metrics["fkl_filtered_frac"].item() == 1.0
    # with one of the two dual-clipped tokens masked the row stays: per-token [6, 2, 2] (f capped to 1 at t=0)
    loss, _ = future_kl_loss(new, old, -torch.ones(1, 4), torch.tensor([[1, 0, 1, 1]]))
    assert loss.item() == pytest.approx(10 / 3, abs=1e-5)


def test_g5_low_var_kl():
    kl = kl_penalty(torch.tensor([-1.0, -0.5]), torch.tensor([-1.2, -0.5]), "low_var_kl")
    assert torch.allclose(kl, torch.tensor([0.018731, 0.0]), atol=1e-6)


@pytest.mark.parametrize("kind, expected", [
    ("kl", [0.2, -0.3]), ("k1", [0.2, -0.3]), ("abs", [0.2, 0.3]),
    ("mse", [0.02, 0.045]), ("k2", [0.02, 0.045]),
])
def test_kl_kinds(kind, expected):
    kl = kl_penalty(torch.tensor([-1.0, -0.8]), torch.tensor([-1.2, -0.5]), kind)
    assert torch.allclose(kl, torch.tensor(expected), atol=1e-6)


def test_low_var_kl_clamp_keeps_gradients_finite():
    logp = torch.tensor([-100.0, 0.0, -0.5], requires_grad=True)
    kl = kl_penalty(logp, torch.tensor([0.0, -100.0, -0.5]), "k3")
    assert torch.equal(kl, torch.tensor([10.0, 10.0, 0.0]))
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(ONES, ONES, "full")
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        agg_loss(ONES, ONES, "seq-sum")  # seq-mean-token-sum-norm is a mode now (Dr. GRPO)
    with pytest.raises(ValueError, match="clip_c"):
        ppo_loss(NEW, OLD, ONES, ONES, clip_c=1.0)


# ---- randomised agreement with the naive re-statement ------------------------------------------------


def _random_case(seed):
    rng = np.random.default_rng(seed)
    rows, length = int(rng.integers(1, 5)), int(rng.integers(1, 40))
    old = -rng.random((rows, length)) * 3
    new = old + rng.normal(size=(rows, length)) * [0.05, 0.5, 1.5][seed % 3]
    adv = rng.normal(size=(rows, length)) if seed % 2 else np.repeat(rng.normal(size=(rows, 1)), length, 1)
    mask = (rng.random((rows, length)) < 0.75).astype(float)
    mask[0] = 0 if seed % 5 == 0 else mask[0]  # an all-masked row now and then
    return old, new, adv, mask


@pytest.mark.parametrize("seed", range(24))
def test_losses_match_naive(seed):
    old, new, adv, mask = _random_case(seed)
    random.seed(seed)
    mode = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"][seed % 3]
    cl, ch, c = random.choice([(0.2, 0.28, 3.0), (0.1, 0.3, 2.0)])
    decay, eps = random.choice([64.0, 4.0, 1.0]), random.choice([0.2, 0.0, 0.5])
    high_only, weight, safety = seed % 2 == 0, random.choice([1.0, 0.0, 0.5]), random.choice([6.0, 1.5])
    t = [torch.tensor(x, dtype=torch.float32) for x in (new, old, adv, mask)]
    got, _ = future_kl_loss(*t, cl, ch, c, decay, eps, high_only, weight, safety, mode)
    want = naive.future_kl(new, old, adv, mask, cl, ch, c, decay, eps, high_only, weight, safety, mode)
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    got, _ = ppo_loss(*t, cl, ch, c, mode)
    assert got.item() == pytest.approx(naive.ppo(new, old, adv, mask, cl, ch, c, mode), rel=1e-5, abs=1e-6)
    assert agg_loss(t[2], t[3], mode).item() == pytest.approx(naive.agg(adv, mask, mode), rel=1e-5, abs=1e-6)
    for kind in ("kl", "abs", "mse", "low_var_kl"):
        ref = old + np.random.default_rng(seed).normal(size=old.shape) * [0.1, 3.0, 30.0][seed % 3]
        got_kl = kl_penalty(t[0], torch.tensor(ref, dtype=torch.float32), kind).double().numpy()
        want_kl = np.vectorize(lambda a, b, k=kind: naive.kl(a, b, k), otypes=[float])(new, ref)
        assert np.allclose(got_kl, want_kl, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 16, 128, None])
def test_future_kl_is_independent_of_chunking(chunk):
    old, new, adv, mask = (torch.tensor(x, dtype=torch.float32) for x in _random_case(7))
    base, base_metrics = future_kl_loss(new, old, adv, mask, decay_rate=8.0, chunk_size=10_000)
    got, metrics = future_kl_loss(new, old, adv, mask, decay_rate=8.0, chunk_size=chunk)
    assert got.item() == pytest.approx(base.item(), rel=1e-5, abs=1e-6)
    want = base_metrics["fkl_influence_mean"].item()
    assert metrics["fkl_influence_mean"].item() == pytest.approx(want, abs=1e-6)


def test_masked_positions_change_nothing():
    old, new, adv, mask = (torch.tensor(x, dtype=torch.float32) for x in _random_case(11))
    off = ~mask.bool()
    junk = [torch.where(off, torch.full_like(x, v), x) for x, v in ((new, 5.0), (old, -40.0), (adv, -7.0))]
    for fn in (future_kl_loss, ppo_loss):
        a, ma = fn(new, old, adv, mask)
        b, mb = fn(*junk, mask)
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
        assert all(ma[k].item() == pytest.approx(mb[k].item(), abs=1e-6) for k in ma)


def _fipo_reference(new, old, adv, mask, detach_influence):
    """Token-mean future-KL loss written out in torch, with or without a constant influence."""
    gamma = 2 ** (-1 / 4.0)
    delta = (new - old).clamp(-20, 20)
    x = torch.where(mask.bool() & (delta <= np.log(3.0)), delta, torch.zeros_like(delta))
    length = new.shape[1]
    decay = torch.tensor([[gamma ** (k - t) if k >= t else 0.0 for k in range(length)]
                          for t in range(length)])
    fk = x @ decay.T
    f = fk.exp().clamp(0.5, 1.5)
    f = f.detach() if detach_influence else f
    w = adv * (1 + f)
    r = delta.exp()
    c1 = torch.maximum(-w * r, -w * r.clamp(0.8, 1.28))
    per = torch.where(w < 0, torch.minimum(-w * 3.0, c1), c1)
    keep = mask.bool() & ~(((adv < 0) & (c1 > -w * 3.0) & mask.bool()).sum(-1, keepdim=True) > 1)
    return (per * keep).sum() / (keep.sum() + 1e-8)


def test_gradient_flows_only_through_log_prob():
    rng = torch.Generator().manual_seed(4)
    old = -torch.rand(3, 12, generator=rng)
    new = (old + 0.1 * torch.randn(3, 12, generator=rng)).requires_grad_(True)
    adv = torch.randn(3, 12, generator=rng).requires_grad_(True)
    old.requires_grad_(True)
    mask = (torch.rand(3, 12, generator=rng) < 0.8).int()
    # a wide influence range (f = clamp(exp(FK), 0.5, 1.5)) keeps f unclipped, so its gradient would show
    loss, metrics = future_kl_loss(new, old, adv, mask, decay_rate=4.0, fkl_clip=0.5,
                                   fkl_clip_high_only=False, safety_thresh=100.0)
    loss.backward()
    assert old.grad is None and adv.grad is None
    assert all(not v.requires_grad for v in metrics.values())
    assert torch.equal(new.grad[~mask.bool()], torch.zeros(int((mask == 0).sum())))
    probe = new.detach().clone().requires_grad_(True)
    (g_const,) = torch.autograd.grad(_fipo_reference(probe, old.detach(), adv.detach(), mask, True), probe)
    (g_live,) = torch.autograd.grad(_fipo_reference(probe, old.detach(), adv.detach(), mask, False), probe)
    assert torch.allclose(new.grad, g_const, atol=1e-6)
    assert not torch.allclose(new.grad, g_live, atol=1e-4)  # the check would notice a live influence


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_global_normalizer_makes_micro_batches_add_up(mode):
    rng = torch.Generator().manual_seed(0)
    loss = torch.randn(10, 7, generator=rng)
    mask = (torch.rand(10, 7, generator=rng) < 0.6).int()
    mask[3] = 0
    whole = agg_loss(loss, mask, mode)
    count = mask.sum() if mode == "token-mean" else (mask.sum(-1) > 0).sum()
    parts = sum(agg_loss(loss[i:i + 3], mask[i:i + 3], mode, normalizer=count) for i in range(0, 10, 3))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
    # and the same through the policy losses: gradients of the micro-batch sum equal the whole batch's
    old, adv = -torch.rand(10, 7, generator=rng), torch.randn(10, 7, generator=rng)
    new = (old + 0.3 * torch.randn(10, 7, generator=rng)).requires_grad_(True)
    whole, _ = ppo_loss(new, old, adv, mask, agg=mode)
    (g_whole,) = torch.autograd.grad(whole, new)
    split = sum(ppo_loss(new[i:i + 3], old[i:i + 3], adv[i:i + 3], mask[i:i + 3], agg=mode,
                         normalizer=count)[0] for i in range(0, 10, 3))
    (g_split,) = torch.autograd.grad(split, new)
    assert torch.allclose(g_split, g_whole, atol=1e-6)


def test_all_masked_batch_gives_zero_and_backpropagates():
    new = torch.randn(2, 3, requires_grad=True)
    for mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
        loss, _ = future_kl_loss(new, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), agg=mode)
        assert loss.item() == 0.0
        loss.backward()


def test_bfloat16_inputs_are_upcast():
    loss, _ = future_kl_loss(NEW.bfloat16(), OLD.bfloat16(), ONES, ONES)
    assert loss.dtype == torch.float32


def test_future_kl_on_policy_is_twice_vanilla():
    """At ratio 1 (the first optimizer step after sampling) the future KL is 0, so the weight f is exactly
    1 and the loss is vanilla's on 2A: the same Adam step. Why an ablation with one optimizer step per RL
    step cannot tell the two apart, and the study's `appo-2updates` pair takes two."""
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 7, generator=g) * 3
    adv = torch.randn(3, 1, generator=g).expand(3, 7).clone()
    mask = (torch.rand(3, 7, generator=g) > 0.2).float()
    grads = []
    for loss_fn in (future_kl_loss, ppo_loss):
        lp = old.clone().requires_grad_(True)
        loss, _ = loss_fn(lp, old, adv, mask)
        loss.backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], 2 * grads[1])
    assert grads[1].abs().sum() > 0
    moved = old + 0.3 * mask  # off policy: the weight departs from 1
    fk, _ = future_kl_loss(moved, old, adv, mask)
    pl, _ = ppo_loss(moved, old, adv, mask)
    assert not torch.isclose(fk, 2 * pl)
