from __future__ import annotations

import itertools
import random

import pytest

from appo.eval.aggregate import k_values, summarize
from appo.eval.scoring import answer_key


def _rec(index, sample, correct, pred="x", tools=(), gen=10, finish="eos", scores=None, judge=None):
    return {"benchmark": "b", "index": index, "sample": sample, "correct": correct, "pred": pred,
            "answer_key": answer_key(pred), "scores": scores or {"em": float(correct)},
            "tool_log": [{"tool": t, "ok": ok, "seconds": 0.1} for t, ok in tools], "judge": judge,
            "finish_reason": finish, "response_tokens": gen + 5, "generated_tokens": gen}


def _brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(5) == [1, 2, 4, 5]
    assert k_values(8) == [1, 2, 4, 8]


def test_pass_at_k_matches_brute_force_over_subsets():
    rng = random.Random(3)
    n, questions = 6, 7
    outcomes = {q: [rng.random() < 0.3 for _ in range(n)] for q in range(questions)}
    outcomes[0] = [False] * n
    outcomes[1] = [True] * n
    records = [_rec(q, s, c) for q, cs in outcomes.items() for s, c in enumerate(cs)]
    rng.shuffle(records)
    summary = summarize(records, n)
    assert summary["questions"] == questions and summary["samples"] == n * questions
    for k in (2, 4, 6):
        want = sum(_brute_pass_at_k(cs, k) for cs in outcomes.values()) / questions
        assert summary[f"pass@{k}"] == pytest.approx(want, abs=1e-12)
    assert summary["pass@1"] == pytest.approx(sum(sum(cs) / n for cs in outcomes.values()) / questions)


def test_maj_at_k_votes_on_extracted_answers():
    records = [
        # q0: majority "7" (2 of 3) is correct
        _rec(0, 0, True, "7"), _rec(0, 1, False, "8"), _rec(0, 2, True, " 7 "),
        # q1: majority "Paris" is wrong although one sample is right (pass@3 = 1, maj@3 = 0)
        _rec(1, 0, False, "Paris"), _rec(1, 1, True, "Lyon"), _rec(1, 2, False, "paris"),
        # q2: three-way tie goes to the first answer, which is correct
        _rec(2, 0, True, "a"), _rec(2, 1, False, "b"), _rec(2, 2, False, "c"),
    ]
    s = summarize(records, 3)
    assert s["maj@3"] == pytest.approx(2 / 3)
    assert s["pass@3"] == pytest.approx(1.0)
    assert s["pass@1"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)


def test_tool_judge_and_length_statistics():
    records = [
        _rec(0, 0, True, tools=[("python", True), ("search", False)], gen=10,
             judge={"status": "correct"}),
        _rec(1, 0, False, tools=[("python", True)], gen=30, finish="length",
             judge={"status": "unparseable"}),
        _rec(2, 0, False, gen=20, judge={"status": "error"}),
        _rec(3, 0, True, gen=40, judge={"status": "incorrect"}),
    ]
    s = summarize(records, 1)
    assert s["tool_calls_per_sample"] == pytest.approx(3 / 4)
    assert s["python_calls_per_sample"] == pytest.approx(2 / 4) and s["search_calls_per_sample"] == 0.25
    assert s["search_errors"] == 1 and s["python_errors"] == 0
    assert s["tool_error_rate"] == pytest.approx(1 / 3) and s["tool_use_rate"] == 0.5
    assert (s["judge_correct"], s["judge_incorrect"], s["judge_unparseable"], s["judge_errors"]) == (1, 1, 1, 1)
    assert s["llm_equal"] == 0.5
    assert s["generated_tokens_mean"] == 25 and s["generated_tokens_median"] == 25 and s["generated_tokens_max"] == 40
    assert s["truncated_rate"] == 0.25 and s["response_tokens_mean"] == 30
    assert "maj@1" not in s and "pass@2" not in s


def test_questions_with_fewer_samples_are_left_out_of_pass_at_k():
    records = [_rec(0, 0, True), _rec(0, 1, False), _rec(1, 0, False)]
    s = summarize(records, 2)
    assert s["pass@2"] == 1.0 and s["maj@2"] == 1.0
    assert s["pass@1"] == pytest.approx((0.5 + 0.0) / 2)


def test_bad_calls_of_the_chat_template_format_are_counted_by_kind():
    records = [_rec(0, 0, True, tools=[("python", True), ("", False), ("shell", False)]),
               _rec(1, 0, False, tools=[("python", False)])]
    records[0]["tool_log"][1]["kind"] = "json"          # malformed JSON: its tool could not be read
    records[0]["tool_log"][2]["kind"] = "unknown_tool"
    records[1]["tool_log"][0]["kind"] = "arguments"
    s = summarize(records, 1)
    assert s["bad_calls_per_sample"] == 1.5
    assert (s["bad_calls/json"], s["bad_calls/unknown_tool"], s["bad_calls/arguments"]) == (1, 1, 1)
    assert s["tool_calls_per_sample"] == 2.0 and s["tool_error_rate"] == 0.75
    assert "_calls_per_sample" not in s and s["python_calls_per_sample"] == 1.0 and s["shell_errors"] == 1
    assert summarize([_rec(0, 0, True, tools=[("python", True)])], 1)["bad_calls_per_sample"] == 0
