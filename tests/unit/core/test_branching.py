from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from appo.core.branching import (
    branching_scores,
    discounted_future_sum,
    entropy_from_logits,
    entropy_from_topk,
    future_values,
    mean_reward_scale_m,
    reward_scale_m,
    select_branch_points,
    zscore,
)

from . import naive

# ---- G1: truncated entropy -------------------------------------------------------------------------


def test_g1_truncated_entropy():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.1, 0.0]]))  # log 0 = -inf pads the second row
    assert torch.allclose(entropy_from_topk(lp), torch.tensor([1.029653, 0.536754]), atol=1e-5)


def test_topk_entropy_floor_and_padding():
    # a positive "log-prob" would give a negative sum: floored at 0 like the reference
    assert entropy_from_topk(torch.tensor([0.5])).item() == 0.0
    assert entropy_from_topk(torch.full((3,), -math.inf)).item() == 0.0


def test_entropy_from_logits_matches_definition():
    logits = torch.randn(3, 5, 11)
    p = torch.softmax(logits.double(), -1)
    expected = -(p * p.log()).sum(-1)
    assert torch.allclose(entropy_from_logits(logits).double(), expected, atol=1e-5)
    masked = logits.clone()
    masked[..., :4] = -math.inf  # masked vocabulary contributes nothing, no NaN
    p = torch.softmax(logits[..., 4:].double(), -1)
    assert torch.allclose(entropy_from_logits(masked).double(), -(p * p.log()).sum(-1), atol=1e-5)
    assert entropy_from_logits(logits.bfloat16()).dtype == torch.float32


# ---- G2: the reference's branching example ---------------------------------------------------------

H = [[0.10, 1.20, 0.90, 0.50, 1.60, 0.30, 0.05, 0.02], [0.40, 2.00, 0, 0, 1.00, 0.70, 0.20, 0]]
OLD = [[-0.05, -0.90, -0.60, -0.20, -1.10, -0.25, -0.01, -0.01], [-0.30, -1.50, 0, 0, -0.80, -0.40, -0.10, 0]]
BEH = [[-0.06, -0.85, -0.70, -0.20, -1.00, -0.20, -0.01, -0.01], [-0.32, -1.20, 0, 0, -0.85, -0.50, -0.10, 0]]
MASK = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1, 1, 0]]


def _g2(gamma=1.0):
    log_ratio = torch.tensor(OLD) - torch.tensor(BEH)
    mask = torch.tensor(MASK)
    candidates = mask.clone()
    candidates[0, 3] = 0  # "\n" is whitespace: it shapes the statistics but is not a candidate
    return log_ratio, mask, candidates


def test_g2_future_values_and_scores():
    log_ratio, mask, _ = _g2()
    fv = future_values(log_ratio, mask, 1.0, 0.2)
    assert torch.allclose(fv, torch.tensor([
        [0.913931, 0.904837, 0.951229, 0.860708, 0.860708, 0.951229, 1, 1],
        [0.878095, 0.860708, 1.161834, 1.161834, 1.161834, 1.105171, 1, 1]]), atol=1e-5)
    ez, fz, bs = branching_scores(torch.tensor(H), log_ratio, mask, 1.0, 0.2)
    assert torch.allclose(ez, torch.tensor([
        [-0.876509, 1.116586, 0.573015, -0.151747, 1.841348, -0.514128, -0.967104, -1.021461],
        [-0.728782, 1.806111, 0, 0, 0.221803, -0.253489, -1.045643, 0]]), atol=1e-4)
    assert torch.allclose(fz, torch.tensor([
        [-0.318601, -0.495273, 0.406022, -1.352611, -1.352611, 0.406022, 1.353526, 1.353526],
        [-1.029069, -1.174462, 0, 0, 1.343530, 0.869716, -0.009714, 0]]), atol=1e-4)
    assert torch.allclose(bs, torch.tensor([
        [0.279257, -0.553015, 0.232656, 0.205255, -2.490628, -0.208747, -1.309001, -1.382575],
        [0.749967, -2.121209, 0, 0, 0.297999, -0.220464, 0.010158, 0]]), atol=1e-4)


@pytest.mark.parametrize("budget, expected", [
    (3, [(1, 4, 0.297999), (0, 2, 0.232656), (1, 0, 0.749967)]),
    (6, [(1, 4, 0.297999), (0, 2, 0.232656), (1, 0, 0.749967), (0, 0, 0.279257), (1, 6, 0.010158),
         (0, 5, -0.208747)]),
])
def test_g2_selection(budget, expected):
    log_ratio, mask, candidates = _g2()
    ez, fz, bs = branching_scores(torch.tensor(H), log_ratio, mask, 1.0, 0.2)
    chosen = select_branch_points(bs, ez, fz, candidates, ["p", "p"], budget)
    assert [(r, t) for r, t, _ in chosen] == [(r, t) for r, t, _ in expected]
    assert np.allclose([s for *_, s in chosen], [s for *_, s in expected], atol=1e-4)
    if budget == 6:  # prefix = 2 prompt tokens + response[:t+1]; remaining = L - (t+1)
        assert [2 + t + 1 for _, t, _ in chosen] == [7, 5, 3, 3, 9, 8]
        assert [8 - (t + 1) for _, t, _ in chosen] == [3, 5, 7, 7, 1, 2]


def test_g2_gamma_09_variant():
    log_ratio, mask, _ = _g2()
    fv = future_values(log_ratio, mask, 0.9, 0.2)
    assert torch.allclose(fv, torch.tensor([
        [0.952053, 0.936407, 0.982701, 0.877656, 0.865022, 0.951229, 1, 1],
        [0.853725, 0.820419, 1.120080, 1.134282, 1.150274, 1.105171, 1, 1]]), atol=1e-5)


def test_g2_degenerate_b2_regime():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.2]])
    old = torch.tensor([[-1.0, -2.0, -1.5, -0.5]])
    mask = torch.ones(1, 4)
    assert torch.allclose(future_values(old, mask, 1.0, 0.2), torch.full((1, 4), 0.8))
    ez, fz, bs = branching_scores(entropy, old, mask, 1.0, 0.2)
    assert torch.equal(fz, torch.zeros(1, 4))
    chosen = select_branch_points(bs, ez, fz, mask, [0], 6)
    assert [(r, t) for r, t, _ in chosen] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 0), (0, 1)]
    assert all(s == 0 for *_, s in chosen)


def test_saturated_long_row_gives_exact_zero_fz():
    """Hundreds of identical FVs: float32 accumulation would leave noise/eps-sized z-scores (and spurious
    strict candidates); the statistics are exact, so fz is exactly 0 and nothing is strict."""
    old = -torch.rand(1, 500) - 1.0
    mask = torch.ones(1, 500)
    ez, fz, bs = branching_scores(torch.rand(1, 500), old, mask, 1.0, 0.2)
    assert torch.equal(fz, torch.zeros_like(fz))
    assert all(s == 0 for *_, s in select_branch_points(bs, ez, fz, mask, [0], 4))


# ---- selection edge cases ----------------------------------------------------------------------------


def test_group_without_candidates_yields_no_points_and_others_are_unaffected():
    score = torch.tensor([[0.5, 0.2], [0.0, 0.0], [0.3, 0.1]])
    ez = fz = torch.ones(3, 2)
    candidates = torch.tensor([[1, 1], [0, 0], [1, 0]])
    chosen = select_branch_points(score, ez, fz, candidates, ["a", "b", "a"], 3)
    assert [(r, t) for r, t, _ in chosen] == [(0, 0), (2, 0), (0, 1)]  # group "b" gets nothing
    assert select_branch_points(score, ez, fz, torch.zeros(3, 2), ["a", "b", "a"], 3) == []
    assert select_branch_points(score, ez, fz, candidates, ["a", "b", "a"], 0) == []


def test_ties_break_by_row_then_position_and_negative_product_is_not_strict():
    score = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    ez = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    fz = torch.tensor([[1.0, 1.0], [1.0, -2.0]])  # (1, 1): score 2 from two negatives: fallback only
    chosen = select_branch_points(score, ez, fz, torch.ones(2, 2), [7, 7], 4)
    assert [(r, t) for r, t, _ in chosen] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_groups_follow_first_row_with_a_candidate():
    score = torch.ones(3, 1)
    candidates = torch.tensor([[0], [1], [1]])
    chosen = select_branch_points(score, score, score, candidates, ["a", "b", "a"], 1)
    assert [r for r, *_ in chosen] == [1, 2]


def test_group_ids_length_is_checked():
    with pytest.raises(ValueError, match="group_ids"):
        select_branch_points(torch.ones(2, 2), torch.ones(2, 2), torch.ones(2, 2), torch.ones(2, 2), [0], 1)


# ---- randomised agreement with the naive re-statement ------------------------------------------------


def _random_mask(rng, rows, length):
    mask = (torch.rand(rows, length, generator=rng) < rng.initial_seed() % 3 * 0.3 + 0.3).int()
    mask[0] = 0  # an all-masked row
    if rows > 1:
        mask[1] = 0
        mask[1, length // 2] = 1  # a single valid token
    return mask


@pytest.mark.parametrize("seed", range(12))
def test_future_values_zscore_scores_selection_match_naive(seed):
    rng = torch.Generator().manual_seed(seed)
    random.seed(seed)
    rows, length = random.randint(2, 5), random.randint(1, 30)
    mask = _random_mask(rng, rows, length)
    entropy = torch.rand(rows, length, generator=rng) * 2
    if seed % 3 == 0:
        entropy = torch.round(entropy * 2) / 2  # many exact ties
    log_ratio = torch.randn(rows, length, generator=rng) * [0.05, 0.3, 2.0][seed % 3]
    gamma = [1.0, 0.9, 0.5, 0.0][seed % 4]
    eps = [0.2, None, 0.5][seed % 3]
    fv = future_values(log_ratio, mask, gamma, eps)
    ez, fz, bs = branching_scores(entropy, log_ratio, mask, gamma, eps)
    m = mask.tolist()
    for r in range(rows):
        fv_ref = naive.future_values(log_ratio[r].tolist(), m[r], gamma, eps)
        assert np.allclose(fv[r].numpy(), fv_ref, rtol=1e-5, atol=1e-6)
        ez_ref = naive.zscore(entropy[r].tolist(), m[r])
        fz_ref = naive.zscore(fv_ref, m[r])
        assert np.allclose(ez[r].numpy(), ez_ref, atol=2e-4)
        assert np.allclose(fz[r].numpy(), fz_ref, atol=2e-4)
        assert np.allclose(bs[r].numpy(), ez_ref * fz_ref, atol=2e-4)
    candidates = mask.clone()
    candidates[:, ::3] = 0
    groups = [random.choice("xyz") for _ in range(rows)]
    budget = random.randint(1, 8)
    # selection is checked on the implementation's own scores so that float ties resolve identically
    chosen = select_branch_points(bs, ez, fz, candidates, groups, budget)
    expected = naive.select(bs.tolist(), ez.tolist(), fz.tolist(), candidates.tolist(), groups, budget)
    assert [(r, t) for r, t, _ in chosen] == [(r, t) for r, t, _ in expected]
    assert np.allclose([s for *_, s in chosen], [s for *_, s in expected])


@pytest.mark.parametrize("length", [1, 7, 64, 129, 1000])
@pytest.mark.parametrize("chunk", [None, 1, 16, 128])
def test_chunked_future_sum_equals_direct(length, chunk):
    x = torch.randn(3, length, dtype=torch.float64)
    for gamma in (1.0, 0.989228, 0.5, 0.0):
        pos = torch.arange(length, dtype=torch.float64)
        dist = pos.unsqueeze(0) - pos.unsqueeze(1)
        direct = x @ torch.where(dist >= 0, gamma ** dist.clamp(min=0), torch.zeros(())).T
        assert torch.allclose(discounted_future_sum(x, gamma, chunk), direct, rtol=1e-10, atol=1e-10)
        y32 = discounted_future_sum(x.float(), gamma, chunk)
        assert torch.allclose(y32.double(), direct, rtol=1e-4, atol=1e-4)


def test_future_sum_validates_arguments():
    with pytest.raises(ValueError, match="gamma"):
        discounted_future_sum(torch.ones(1, 3), -0.1)
    assert discounted_future_sum(torch.ones(2, 0), 0.5).shape == (2, 0)


def test_masked_positions_change_nothing():
    rng = torch.Generator().manual_seed(3)
    mask = (torch.rand(4, 20, generator=rng) < 0.6).int()
    entropy, log_ratio = torch.rand(4, 20, generator=rng), torch.randn(4, 20, generator=rng)
    junk_e = torch.where(mask.bool(), entropy, torch.full_like(entropy, math.inf))
    junk_l = torch.where(mask.bool(), log_ratio, torch.full_like(log_ratio, math.nan))
    a = branching_scores(entropy, log_ratio, mask, 0.9, 0.2)
    b = branching_scores(junk_e, junk_l, mask, 0.9, 0.2)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
        assert torch.equal(x[~mask.bool()], torch.zeros(int((mask == 0).sum())))


def test_zscore_uses_population_std_and_eps():
    z = zscore(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]), eps=1e-6)
    assert torch.allclose(z, torch.tensor([[-1 / (1 + 1e-6), 1 / (1 + 1e-6), 0.0]]))


# ---- G3: reward scale M -----------------------------------------------------------------------------


def test_g3_reward_scale_m():
    expected = torch.tensor([1.18225, 1.2025, 1.225, 1.25, 1, 1])
    assert torch.allclose(reward_scale_m(3, 0.5, 2.0, 6, 0.9), expected)
    assert torch.equal(reward_scale_m(3, 0.0, 2.0, 6, 0.9), torch.ones(6))
    assert torch.equal(reward_scale_m(3, 1.0, 0.0, 6, 0.9), torch.ones(6))
    # a split beyond the response end: the distance still counts from the split point
    assert torch.allclose(reward_scale_m(9, 2.0, 2.0, 3, 0.5), 1 + 0.5 ** torch.tensor([9.0, 8.0, 7.0]))


def test_g3_scaled_reward_sums():
    reward = torch.zeros(6)
    reward[5] = 1.0
    m_avg = mean_reward_scale_m([(3, 0.5), (5, 1.0)], 2.0, 6, 0.9)
    assert torch.allclose(m_avg, torch.tensor([1.238748, 1.265275, 1.29475, 1.3275, 1.225, 1.25]))
    assert (reward * m_avg).sum().item() == pytest.approx(1.25, abs=1e-6)
    assert (reward * mean_reward_scale_m([(3, 2.0)], 2.0, 6, 0.9)).sum().item() == pytest.approx(1.0)
    assert torch.equal(mean_reward_scale_m([], 2.0, 6, 0.9), torch.ones(6))
