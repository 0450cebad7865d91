from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from appo.core.advantage import appo_advantages, grpo_advantages
from appo.core.branching import arpo_branch_decision, arpo_step_entropy

from . import naive

# ---- G4: APPO advantage and the verl GRPO baseline -------------------------------------------------

SCORES = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0.5])
IS_BRANCH = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
SPLITS = [(0, 4, 2), (0, 5, 4), (1, 6, 1), (3, 7, 5)]


def _g4_mask():
    mask = torch.ones(8, 6)
    mask[1, 5] = 0
    return mask


def test_g4_appo_advantages():
    adv = appo_advantages(SCORES, ["q"] * 8, IS_BRANCH, _g4_mask(), SPLITS)
    expected = torch.tensor([
        [1.904530] * 5 + [0.999998],
        [-2.507551, -2.507551, -0.999998, -0.999998, -0.999998, 0],
        [-0.999998] * 6,
        [0.698487] * 6,
    ])
    assert torch.allclose(adv[:4], expected, atol=1e-5)
    assert torch.equal(adv[4:], torch.zeros(4, 6))


def test_g4_grpo_baseline():
    adv = grpo_advantages(SCORES, ["q"] * 8, torch.ones(8, 6))
    expected = torch.tensor([0.882917, -1.135179, -1.135179, 0.882917,
                             0.882917, 0.882917, -1.135179, -0.126131])
    assert torch.allclose(adv, expected.unsqueeze(1).expand(8, 6), atol=1e-5)


def test_singletons_and_zero_variance():
    mask = torch.ones(3, 2)
    # verl GRPO: a singleton group is (s - 0)/(1 + eps); without std normalisation it is s
    adv = grpo_advantages(torch.tensor([2.0, 0.3, 0.3]), ["a", "b", "b"], mask)
    assert torch.allclose(adv[0], torch.full((2,), 2.0 / (1 + 1e-6)))
    assert torch.equal(adv[1:], torch.zeros(2, 2))  # identical scores: exactly 0, not rounding noise / eps
    adv = grpo_advantages(torch.tensor([2.0, 0.3, 0.5]), ["a", "b", "b"], mask, norm_by_std=False)
    assert torch.allclose(adv[:, 0], torch.tensor([2.0, -0.1, 0.1]))
    # APPO: a singleton (prompt, kind) group gets 0; eight identical F1 scores give exact zeros
    adv = appo_advantages(torch.tensor([0.7, 0.4]), ["a", "a"], torch.tensor([0, 1]), mask[:2], [(0, 1, 1)])
    assert torch.equal(adv, torch.zeros(2, 2))
    adv = appo_advantages(torch.full((8,), 0.1), ["a"] * 8, torch.zeros(8), torch.ones(8, 3), [])
    assert torch.equal(adv, torch.zeros(8, 3))


def test_invalid_split_entries_are_ignored_like_the_reference():
    mask = torch.ones(4, 3)
    scores, kinds = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1])
    clean = appo_advantages(scores, ["a"] * 4, kinds, mask, [(0, 2, 1)])
    junk = [(2, 3, 1), (0, 1, 1), (0, 3, -1), (9, 2, 0)]  # branch->branch, init->init, negative, out of range
    noisy = appo_advantages(scores, ["a"] * 4, kinds, mask, [(0, 2, 1), *junk])
    assert torch.equal(clean, noisy)
    far = appo_advantages(scores, ["a"] * 4, kinds, mask, [(0, 2, 99)])  # a split past the end covers the row
    assert torch.allclose(far[0], torch.full((3,), 2.0), atol=1e-5)


@pytest.mark.parametrize("seed", range(15))
def test_appo_and_grpo_match_naive(seed):
    random.seed(seed)
    rows, length = random.randint(1, 14), random.randint(1, 9)
    groups = [random.choice("abc") for _ in range(rows)]
    is_branch = [random.random() < 0.5 for _ in range(rows)]
    scores = [random.choice([-1.0, 0.0, 1.0, 0.5, 1.1, random.random()]) for _ in range(rows)]
    mask = (np.random.default_rng(seed).random((rows, length)) < 0.8).astype(float)
    splits = []
    for b in range(rows):
        origins = [o for o in range(rows) if groups[o] == groups[b] and not is_branch[o]]
        if is_branch[b] and origins:
            splits.append((random.choice(origins), b, random.randrange(length + 1)))
    norm = seed % 4 != 0
    adv = appo_advantages(torch.tensor(scores), groups, torch.tensor(is_branch), torch.tensor(mask), splits,
                          norm_by_std=norm)
    assert np.allclose(adv.numpy(), naive.appo(scores, groups, is_branch, mask, splits, norm=norm), atol=1e-6)
    adv = grpo_advantages(torch.tensor(scores), groups, torch.tensor(mask), norm_by_std=norm)
    assert np.allclose(adv.numpy(), naive.grpo(scores, groups, mask, norm=norm), atol=1e-6)


def test_group_ids_may_be_a_tensor():
    a = grpo_advantages(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([5, 5, 6]), torch.ones(3, 1))
    b = grpo_advantages(torch.tensor([1.0, 0.0, 3.0]), ["x", "x", "y"], torch.ones(3, 1))
    assert torch.equal(a, b)


# ---- G6: ARPO ---------------------------------------------------------------------------------------


def test_g6_step_entropy():
    topk = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    assert arpo_step_entropy(topk, 151665) == pytest.approx(0.085354, abs=1e-6)
    # only the first max_tokens tokens count, and they are summed (not averaged)
    assert arpo_step_entropy(topk, 151665, max_tokens=1) == pytest.approx(math.log(2) / math.log(151665))
    assert arpo_step_entropy(torch.cat([topk] * 20), 151665) == pytest.approx(10 * 0.085354, abs=1e-5)
    assert arpo_step_entropy(torch.empty(0, 10), 151665) == 0.0


@pytest.mark.parametrize("u, h_now, h_init, expected", [
    (0.55, 0.30, 0.10, (False, 0.51)),
    (0.55, 0.10, 0.10, (False, 0.55)),
    (0.40, 0.0, 0.5, (True, 0.50)),
    (0.95, 0.0, 0.0, (False, 0.95)),
    (0.10, 5.0, 0.0, (True, 0.0)),  # clipped at 0
    (0.90, 0.0, 5.0, (False, 1.0)),  # clipped at 1
])
def test_g6_branch_decision(u, h_now, h_init, expected):
    branch, prob = arpo_branch_decision(u, h_now, h_init, weight=0.2, threshold=0.5)
    assert branch is expected[0]
    assert prob == pytest.approx(expected[1])
