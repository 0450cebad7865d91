import pytest

from appo.rewards import cover_match, exact_match, normalize_answer, token_f1


def test_normalisation():
    assert normalize_answer("  The  Eiffel-Tower, Paris! ") == "eiffeltower paris"
    assert normalize_answer("Paris.", strip_punctuation=False) == "paris."
    assert normalize_answer("an apple a day") == "apple day"


@pytest.mark.parametrize(
    "pred,gold,em,f1",
    [
        ("Paris", "paris", 1.0, 1.0),
        ("the city of Paris", "Paris", 0.0, 0.5),
        ("Paris", ["London", "PARIS."], 1.0, 1.0),
        ("New York", ["New York City", "NYC"], 0.0, 0.8),
        ("yes", "no", 0.0, 0.0),
        ("no", "no", 1.0, 1.0),
        ("Paris", [], 0.0, 0.0),
    ],
)
def test_em_and_f1(pred, gold, em, f1):
    assert exact_match(pred, gold) == em
    assert token_f1(pred, gold) == pytest.approx(f1)


def test_evaluation_style_keeps_punctuation():
    assert exact_match("Paris.", "Paris") == 1.0
    assert exact_match("Paris.", "Paris", strip_punctuation=False) == 0.0


def test_cover_match():
    assert cover_match("It is in Paris, France", ["Paris"]) == 1.0
    assert cover_match("London", ["Paris", "Lyon"]) == 0.0
