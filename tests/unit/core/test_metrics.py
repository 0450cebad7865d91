from __future__ import annotations

from math import comb

import pytest

from appo.core.metrics import maj_at_k, majority_vote, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 16, 40])
def test_pass_at_k_equals_the_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong samples: any k-subset holds a correct one
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 < pass_at_k(5000, 3, 100) < 1.0  # no overflow from huge binomials
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote_ties_go_to_the_first_seen_answer():
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["c", "a", "b", "a"]) == "a"
    assert majority_vote([None, "", "  "]) is None
    assert majority_vote([" 12", "12 ", "7"]) == " 12"  # default key strips whitespace
    assert majority_vote(["Paris", "paris", "Rome"], key=str.lower) == "Paris"


def test_maj_at_k_uses_the_first_k_answers():
    answers = ["1", "2", "2", "1", "1"]
    assert maj_at_k(answers, 3, lambda a: a == "2") == 1.0
    assert maj_at_k(answers, 5, lambda a: a == "2") == 0.0
    assert maj_at_k([None, None], 2, lambda a: True) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(answers, 6, lambda a: True)
