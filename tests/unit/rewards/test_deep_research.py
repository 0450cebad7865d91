"""The reference reward, case by case: appo_spec.md §12 G7 plus edge cases of its format and answer rules."""

import pytest

from appo.rewards import deep_research_score, extract_boxed_answer, format_error

BOTH_TOOLS = (
    "<think>a</think><search>q</search> <result>\nr\n</result><python>print(1)</python> <result>\n1\n"
    "</result><think>b</think>"
)
SEARCH_ONLY = "<think>a</think><search>q</search> <result>\nr\n</result><think>b</think>"


def wrap(answer: str, prefix: str = "<think>a</think>") -> str:
    return f"{prefix}<answer>{answer}</answer>"


G7 = [
    (wrap("\\boxed{Paris}", BOTH_TOOLS), "Paris", 1.1),
    (wrap("The answer is \\boxed{Paris}", SEARCH_ONLY), "Paris", 1.0),
    (wrap("\\boxed{the city of Paris}"), "Paris", 0.5),
    (wrap("\\boxed{London}"), "Paris", 0.0),
    ("<answer>\\boxed{Paris}</answer>", "Paris", -1.0),
    (wrap("\\boxed{Paris}") + "<answer>\\boxed{Paris}</answer>", "Paris", -1.0),
    (wrap("Paris"), "Paris", -1.0),
    (wrap("\\boxed{Paris}", "<think>a</think><search>q</search><think>b</think>"), "Paris", -1.0),
    (wrap("\\boxed{yes}"), "no", 0.0),
    (wrap("\\boxed{12}"), "12", 1.0),
    (wrap("\\boxed{12.0}"), "12", 0.0),
    (wrap("\\boxed{\\frac{1}{2}}"), "\\frac{1}{2}", 1.0),
    (wrap("\\boxed{0.5}"), "\\frac{1}{2}", 0.0),
    (wrap("\\boxed{3\\sqrt{3}-6}"), "3\\sqrt{3} - 6", 0.0),
    (wrap("\\boxed{E. H. Shepard}"), ["Ernest Shepard", "E. H. Shepard"], 1.0),
]


@pytest.mark.parametrize("response,gold,expected", G7)
def test_golden_g7(response, gold, expected):
    assert deep_research_score(response, gold) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "response,gold,expected",
    [
        # the last boxed group wins; nested braces are matched
        (wrap("\\boxed{London} then \\boxed{Paris}"), "Paris", 1.0),
        (wrap("\\boxed{\\text{Paris {France}}}"), "Paris France", 0.5),  # "\\text" glues onto Paris
        # "\boxed " (with a space) anywhere beats braces and runs to the next "$"
        (wrap("\\boxed{x} and \\boxed Paris$ rest"), "Paris", 1.0),
        (wrap("\\boxed Paris $ and \\boxed{London}"), "Paris", 1.0),
        # a last \boxed without a balanced group cannot be read: format failure
        (wrap("\\boxed{Paris} \\boxed{"), "Paris", -1.0),
        (wrap("\\boxed}{Paris}"), "Paris", -1.0),
        # \fbox after the boxed answer: the reference still reads from the last "\boxed"
        (wrap("\\boxed{Paris} \\fbox{London}"), "Paris London", 2 / 3),
        # partial credit and normalisation (case, punctuation, articles, whitespace)
        (wrap("\\boxed{  THE   Paris!! }"), "paris", 1.0),
        (wrap("\\boxed{New York City}"), "New York", 0.8),
        # yes/no/noanswer only match themselves
        (wrap("\\boxed{yes}"), "yes", 1.0),
        (wrap("\\boxed{no way}"), "no", 0.0),
        (wrap("\\boxed{noanswer}"), ["Paris", "noanswer"], 1.0),
        (wrap("\\boxed{yes Paris}"), ["yes", "Paris"], 2 / 3),
        # alias lists take the best; an empty list scores 0 (well formed)
        (wrap("\\boxed{Paris}"), ["London", "Paris"], 1.0),
        (wrap("\\boxed{Paris}"), [], 0.0),
        (wrap("\\boxed{}"), "Paris", 0.0),
        # unicode
        (wrap("\\boxed{東京}"), "東京", 1.0),
        (wrap("\\boxed{Élan}"), "élan", 1.0),
        # non-string gold (AIME's JSON ints), where the reference raises, is compared as text
        (wrap("\\boxed{204}"), 204, 1.0),
        # the bonus needs both closing tags, anywhere in the response
        (wrap("\\boxed{Paris}", BOTH_TOOLS), ["Paris", "x"], 1.1),
        (wrap("\\boxed{Paris city}", BOTH_TOOLS), "Paris", 2 / 3 + 0.1),
        (wrap("\\boxed{London}", BOTH_TOOLS), "Paris", 0.0),
    ],
)
def test_answer_rules(response, gold, expected):
    assert deep_research_score(response, gold) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "response,reason",
    [
        ("<think>a</think><think>b<answer>\\boxed{x}</answer>", "not paired"),
        ("<answer>\\boxed{x}</answer>", "not found"),
        ("<think>a</think><answer>\\boxed{x}</answer></answer>", "<answer> or </answer>"),
        ("<think>a</think></answer>\\boxed{x}<answer>", "must be before"),
        ("<think>a</think><search>q <result>r</result></search><answer>\\boxed{x}</answer>", "wrong order"),
        ("<think>a</think><python>q</python><answer>\\boxed{x}</answer>", "incomplete"),
        (
            "<think>a</think><python>q</python> <result>r</result><python>z</python>"
            "<answer>\\boxed{x}</answer>",
            "incomplete",
        ),
        ("<think>a</think><answer>\\boxed x</answer>", "missing \\boxed"),
    ],
)
def test_format_failures_score_minus_one(response, reason):
    assert reason in format_error(response)
    assert deep_research_score(response, "x") == -1.0


def test_valid_multi_round_format_and_extraction():
    response = (
        " <think>a</think><search>q1</search> <result>\n<r>\n</result><think>b</think><search>q2</search>"
        " <result>\nPage 1: x\n</result><python>print(2)</python> <result>\n2\n</result>"
        "<answer>The final answer is \\[ \\boxed{\\frac{1}{2}} \\]</answer><|im_end|>"
    )
    assert format_error(response) is None
    assert extract_boxed_answer(response) == "\\frac{1}{2}"
    assert deep_research_score(response, "\\frac{1}{2}") == pytest.approx(1.1)


def test_scores_are_floats():
    for response, gold, _ in G7:
        assert type(deep_research_score(response, gold)) is float
