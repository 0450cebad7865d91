"""Short-answer metrics: exact match and token F1 with SQuAD-style normalisation, over several gold aliases.

The normalisation is the SQuAD/HotpotQA one the reference reward uses: lower-case, drop ASCII punctuation,
drop the articles a/an/the, collapse whitespace. The reference *evaluation* scripts skip the punctuation
step ("Paris." != "Paris"); `strip_punctuation=False` reproduces that.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from appo.prompts import as_gold_list

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# HotpotQA's rule: a yes/no/noanswer side only ever matches itself, never by partial token overlap.
_CLOSED_ANSWERS = ("yes", "no", "noanswer")


def normalize_answer(text: str, strip_punctuation: bool = True) -> str:
    text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _pair_f1(prediction: str, gold: str) -> float:
    if prediction in _CLOSED_ANSWERS and prediction != gold:
        return 0.0
    if gold in _CLOSED_ANSWERS and prediction != gold:
        return 0.0
    pred_tokens, gold_tokens = prediction.split(), gold.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = 1.0 * same / len(pred_tokens)
    recall = 1.0 * same / len(gold_tokens)
    # Same operation order as the reference so scores agree to the last bit.
    return (2 * precision * recall) / (precision + recall)


def token_f1(prediction: str, ground_truth, strip_punctuation: bool = True) -> float:
    """Best token F1 of `prediction` against any gold alias (0.0 for an empty alias list)."""
    pred = normalize_answer(prediction, strip_punctuation)
    best = 0.0
    for gold in as_gold_list(ground_truth):
        best = max(best, _pair_f1(pred, normalize_answer(gold, strip_punctuation)))
    return best


def exact_match(prediction: str, ground_truth, strip_punctuation: bool = True) -> float:
    """1.0 when the normalised prediction equals any normalised gold alias, else 0.0."""
    pred = normalize_answer(prediction, strip_punctuation)
    return float(any(pred == normalize_answer(g, strip_punctuation) for g in as_gold_list(ground_truth)))


def cover_match(prediction: str, ground_truth, strip_punctuation: bool = True) -> float:
    """1.0 when any normalised gold alias occurs inside the normalised prediction (the evaluation's `acc`)."""
    pred = normalize_answer(prediction, strip_punctuation)
    return float(any(normalize_answer(g, strip_punctuation) in pred for g in as_gold_list(ground_truth)))
