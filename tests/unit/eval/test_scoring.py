from __future__ import annotations

import pytest

from appo.eval.scoring import extract_answer, math_equal, qa_metrics, score_sample


@pytest.mark.parametrize("response,pred", [
    ("<think>x</think><answer>The final answer is \\[ \\boxed{42} \\]</answer>", "42"),
    ("<answer>\\boxed{1}</answer> then <answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
    ("<answer>\\boxed{\\text{Paris}}</answer>", "Paris"),
    ("<answer> Paris </answer>", "Paris"),
    ("no tags but \\boxed{7} and \\boxed{8}", "8"),
    ("line1\nline2\nline3\nline4\nline5\nline6", "line2\nline3\nline4\nline5\nline6"),
])
def test_extract_answer_follows_reference_order(response, pred):
    assert extract_answer(response) == pred


def test_qa_metrics_keep_punctuation_and_take_best_alias():
    assert qa_metrics("Paris", ["Lyon", "paris"])["em"] == 1.0
    assert qa_metrics("Paris.", "Paris")["em"] == 0.0        # the evaluation keeps punctuation
    m = qa_metrics("the city of Paris", "Paris")
    assert m["em"] == 0.0 and m["acc"] == 1.0 and m["f1"] == pytest.approx(0.5)


def test_math_equal_is_symbolic_and_handles_int_gold():
    assert math_equal("0.5", "\\frac{1}{2}")
    assert math_equal("3\\sqrt{3}-6", "3\\sqrt{3} - 6")
    assert math_equal("204", 204)
    assert not math_equal("205", "204")
    assert not math_equal("\\frac{", "1")


def test_score_sample_rule_equal_by_kind():
    math = score_sample("<answer>\\boxed{0.5}</answer>", "\\frac{1}{2}", "math")
    assert math["rule_equal"] and math["scores"]["math_equal"] == 1.0 and math["scores"]["em"] == 0.0
    qa = score_sample("<answer>\\boxed{New York}</answer>", ["NYC", "new york"], "qa")
    assert qa["rule_equal"] and "math_equal" not in qa["scores"] and qa["pred"] == "New York"
