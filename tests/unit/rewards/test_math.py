"""Math-verify equivalence, answer extraction, and the timeout guard (main thread and worker threads)."""

import threading

import pytest

from appo.rewards import extract_math_answer, math_equal, math_score
from appo.rewards import math as math_mod


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("12.0", "12"),
        ("-1475.0", "-1475"),
        ("1,000", "1000"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{2}{4}", "0.5"),
        ("3\\sqrt{3}-6", "3\\sqrt{3} - 6"),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\sqrt{4}", "2"),
        ("x", ["y", "x"]),
    ],
)
def test_equivalent(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize(
    "pred,gold", [("12.5", "12"), ("x", "y"), ("\\frac{1}{3}", "0.5"), ("", "1"), (None, "1")]
)
def test_not_equivalent(pred, gold):
    assert not math_equal(pred, gold)


@pytest.mark.parametrize(
    "response,expected",
    [
        ("<answer>a \\boxed{1} b \\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
        ("<answer>\\boxed{1}</answer> then <answer>\\boxed{\\text{7}}</answer>", "7"),
        ("<answer> 42 </answer>", "42"),
        ("no block, but \\boxed{5} and \\boxed{6}", "6"),
        ("nothing here", None),
    ],
)
def test_extract_math_answer(response, expected):
    assert extract_math_answer(response) == expected


def test_math_score():
    assert math_score("<think>t</think><answer>\\boxed{0.50}</answer>", "\\frac12") == 1.0
    assert math_score("<answer>\\boxed{3}</answer>", "4") == 0.0


def test_adversarial_latex_times_out_as_not_equal_and_helper_recovers():
    assert not math_equal("10^{10^{10^{10}}}", "1", timeout=1)
    assert math_equal("\\frac{6}{12}", "0.5")


def test_helper_is_killed_and_replaced_when_it_overruns(monkeypatch):
    # A negative grace makes the caller's hard deadline expire at once: the helper is killed, the call
    # counts as "not equal", and the next call starts a fresh helper.
    monkeypatch.setattr(math_mod, "_KILL_GRACE", -0.999)
    assert math_mod._helper.verify("10^{10^{10^{10}}}", "1", timeout=1) is None
    monkeypatch.setattr(math_mod, "_KILL_GRACE", 2.0)
    assert math_mod._helper.verify("\\sqrt{4}", "2", timeout=1) is True


def test_works_from_worker_threads():
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(math_equal("\\sqrt{9}", "3"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True]
