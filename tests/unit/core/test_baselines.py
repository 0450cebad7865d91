"""The field's baselines against their papers' formulas, with numbers worked out by hand: RLOO's leave-one-out
baseline, Dr. GRPO's constant-length normaliser, GSPO's sequence-level ratio and clip, DAPO's overlong
shaping and dynamic-sampling filter, and the sampler/learner mismatch correction (TIS and masking)."""

from __future__ import annotations

import math

import pytest
import torch

from appo.core.advantage import all_equal_groups, grpo_advantages, overlong_penalty, rloo_advantages
from appo.core.loss import agg_loss, gspo_loss, mismatch_summary, ppo_loss, rollout_correction


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    # group a: rewards 1, 0, 0, 1 -> A = r_i - mean(others): 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    # group b: 3 and 1 -> 3 - 1 = 2, 1 - 3 = -2;  group c (one row): no other sample -> 0
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 5.0])
    mask = torch.ones(7, 3)
    mask[0, 2] = 0
    adv = rloo_advantages(scores, ["a", "a", "a", "a", "b", "b", "c"], mask)
    assert adv[:, 0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 2.0, -2.0, 0.0])
    assert adv[0, 2] == 0 and adv[1].tolist() == pytest.approx([-2 / 3] * 3)


def test_dr_grpo_centres_without_std_and_normalises_by_a_constant_length():
    # advantage: r - mean, no division by the std (Liu et al. 2025, eq. 3 without 1/std)
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), [0, 0, 0, 0], torch.ones(4, 1), norm_by_std=False)
    assert adv[:, 0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    # loss: (1/G) sum_i (1/L_max) sum_t l_it, L_max = 8 whatever each response's length:
    # seq 1 = [1, 2] (2 tokens), seq 2 = [1, 1, 1, 1]: (3/8 + 4/8) / 2 = 7/16
    loss = torch.tensor([[1.0, 2.0, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert float(agg_loss(loss, mask, "seq-mean-token-sum-norm", horizon=8)) == pytest.approx(7 / 16)
    # micro-batches with the global sequence count add up to the whole batch's value
    parts = [agg_loss(loss[i:i + 1], mask[i:i + 1], "seq-mean-token-sum-norm", normalizer=2, horizon=8)
             for i in range(2)]
    assert float(sum(parts)) == pytest.approx(7 / 16)
    with pytest.raises(ValueError, match="horizon"):
        agg_loss(loss, mask, "seq-mean-token-sum-norm")


def test_gspo_ratio_is_the_length_normalised_sequence_ratio_with_its_clip():
    # one sequence, log pi - log pi_old = [0.1, -0.3] -> s = exp(-0.1) = 0.904837
    old = torch.tensor([[-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = math.exp(-0.1)
    for a, want_loss, want_grad in [
        # A = +1: max(-s, -clip(s, 1-3e-4, 1+4e-4)) = -s (unclipped); d/dlogp_t = -A*s/|y| = -s/2 per token
        (1.0, -s, [-s / 2, -s / 2, 0.0]),
        # A = -1: max(s, 0.9997) = 0.9997, clipped: a constant, no gradient
        (-1.0, 1 - 3e-4, [0.0, 0.0, 0.0]),
    ]:
        lp = (old + torch.tensor([[0.1, -0.3, 0.7]])).requires_grad_(True)
        loss, metrics = gspo_loss(lp, old, torch.full((1, 3), a), mask, clip_low=3e-4, clip_high=4e-4)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-6)
        assert lp.grad[0].tolist() == pytest.approx(want_grad, abs=1e-7)
        assert float(metrics["pg_clipfrac"]) == (1.0 if a < 0 else 0.0)


def test_gspo_token_gradient_equals_the_sequence_objectives():
    # GSPO: J = (1/G) sum_i min(s_i A_i, clip(s_i) A_i), s_i from the sum of the token log-ratios
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g) - 0.5
    step = 0.02 * torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0]])
    adv = torch.tensor([[1.0], [-0.5], [2.0]]).expand(3, 5)
    lp = (old + step).requires_grad_(True)
    gspo_loss(lp, old, adv, mask, clip_low=0.01, clip_high=0.01)[0].backward()
    ref_lp = (old + step).requires_grad_(True)
    s = torch.exp(((ref_lp - old) * mask).sum(-1) / mask.sum(-1))
    a = adv[:, 0]
    (-torch.minimum(s * a, torch.clamp(s, 0.99, 1.01) * a).mean()).backward()
    assert torch.allclose(lp.grad, ref_lp.grad * mask, atol=1e-6)


def test_dapo_overlong_penalty_falls_linearly_over_the_buffer():
    # L_max = 20, L_cache = 5 (Yu et al. 2025, eq. 13): 0 up to 15, ((20-5) - |y|)/5 inside, -1 past 20
    assert [overlong_penalty(n, 20, 5) for n in (10, 15, 17, 20, 25)] == pytest.approx([0, 0, -0.4, -1, -1])
    assert overlong_penalty(17, 20, 5, factor=0.5) == pytest.approx(-0.2)
    assert overlong_penalty(30, 20, 0) == 0.0


def test_dapo_dynamic_sampling_finds_the_groups_with_equal_rewards():
    assert all_equal_groups([1, 1, 0, 1, 0.5, 0.5, 0.0], [0, 0, 1, 1, 2, 2, 3]) == {0, 2, 3}


def test_dapo_token_level_aggregation_weighs_every_token_alike():
    # token-mean: (1 + 2 + 1 + 1 + 1 + 1) / 6, where the seq-mean would be ((1+2)/2 + 1) / 2
    loss = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert float(agg_loss(loss, mask, "token-mean")) == pytest.approx(7 / 6, rel=1e-6)


def test_rollout_correction_truncates_or_masks_the_sampler_learner_ratio():
    # learner log-probs [-1.0, -2.0] against the sampler's [-1.5, -1.0]: delta 0.5, -1.0; rho e^0.5, e^-1
    learner = torch.tensor([[-1.0, -2.0, 0.0]])
    sampler = torch.tensor([[-1.5, -1.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w, m = rollout_correction(learner, sampler, mask, "token", "truncate", threshold=1.5)
    assert w[0].tolist() == pytest.approx([1.5, math.exp(-1.0), 0.0])  # min(rho, 1.5)
    w, _ = rollout_correction(learner, sampler, mask, "token", "mask", threshold=1.5)
    assert w[0].tolist() == [0.0, 0.0, 0.0]  # e^0.5 > 1.5, e^-1 < 1/1.5
    w, _ = rollout_correction(learner, sampler, mask, "sequence", "truncate", threshold=1.5)
    assert w[0].tolist() == pytest.approx([math.exp(-0.25), math.exp(-0.25), 0.0])  # geometric mean
    summary = mismatch_summary([{k: float(v) for k, v in m.items()}])
    assert summary["abs_logp_diff_mean"] == pytest.approx(0.75) and summary["abs_logp_diff_max"] == pytest.approx(1.0)
    assert summary["truncated_frac"] == pytest.approx(0.5) and summary["masked_frac"] == pytest.approx(1.0)
    assert summary["seq_ratio_min"] == summary["seq_ratio_max"] == pytest.approx(math.exp(-0.25))
    assert summary["seq_ratio_std"] == pytest.approx(0.0, abs=1e-6)


def test_correction_weights_scale_the_per_token_policy_loss():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.ones(1, 2), torch.ones(1, 2)
    plain, _ = ppo_loss(lp, lp.detach(), adv, mask)
    weighted, _ = ppo_loss(lp, lp.detach(), adv, mask, weights=torch.tensor([[0.5, 0.0]]))
    assert float(plain) == pytest.approx(-1.0) and float(weighted) == pytest.approx(-0.25)
