"""The example's rewards, weighted in config.yaml. Each gets the response and, by name, the row's fields:
`ground_truth` is the answer column (data.answer_key), `difficulty` a column of the data file itself."""

from __future__ import annotations

import re

ANSWER = re.compile(r"<answer>\s*\\boxed\{([^{}]*)\}\s*</answer>\s*$")


def well_formed(response: str) -> float:
    """1 when the response ends with one `<answer>\\boxed{...}</answer>`, else 0."""
    return float(ANSWER.search(response) is not None)


def correct(response: str, ground_truth: str) -> float:
    """1 when the boxed answer is the gold number, else 0."""
    match = ANSWER.search(response)
    return float(match is not None and match.group(1).strip().replace(",", "") == ground_truth)


def used_python(response: str, difficulty: str) -> float | None:
    """For the hard rows (multiplications) only: 1 when the response ran code. None elsewhere: this reward
    does not apply to easy rows, so it neither helps nor hurts them."""
    if difficulty != "hard":
        return None
    return float("</python>" in response)
