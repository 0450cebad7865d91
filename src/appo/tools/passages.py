"""The part of a page worth showing the summariser: the window around the sentence that best matches the
search snippet (the reference browser's rule: word-set F1 after lower-casing and dropping punctuation; the
best sentence must beat `min_f1`; else the head of the page)."""

from __future__ import annotations

import re
import string

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*|\n+")  # CJK text puts no space after a sentence
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def words(text: str) -> set[str]:
    return set(text.lower().translate(_PUNCTUATION).split())


def word_f1(reference: set[str], candidate: set[str]) -> float:
    common = len(reference & candidate)
    if not common:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank sentence: split after . ! ? (and their CJK forms) and at line breaks."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start:m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def select_passage(text: str, anchor: str, context_chars: int, min_f1: float) -> tuple[str, bool]:
    """(passage, matched): `context_chars` on each side of the best-matching sentence, or the first
    2 x context_chars when no sentence scores above `min_f1`."""
    target = words(anchor)
    best, best_f1 = None, min_f1
    if target:
        for start, end in sentence_spans(text):
            f1 = word_f1(target, words(text[start:end]))
            if f1 > best_f1:
                best, best_f1 = (start, end), f1
    if best is None:
        return text[:2 * context_chars], False
    return text[max(0, best[0] - context_chars):best[1] + context_chars], True
