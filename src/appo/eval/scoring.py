"""Per-sample scoring as the reference evaluation does it, so numbers compare with the published tables.

- Answer extraction (`extract_answer`): the last `<answer>` block, then the last `\\boxed{...}` inside it,
  then one `\\text{...}` wrapper stripped; no box: the answer block's text; no answer block: the last box
  anywhere; still empty: the last 5 lines of the response.
- QA metrics (`qa_metrics`): lower-case, collapse whitespace, drop articles, and, unlike SQuAD, keep
  punctuation ("Paris." != "Paris"), because that is what the published F1 columns used. `em` is exact
  match, `acc` is gold-is-a-substring, `f1` is token-overlap F1; each is the maximum over gold aliases
  (`appo.rewards.qa` with `strip_punctuation=False`).
- Math (`appo.rewards.math.math_equal`): symbolic equivalence with math-verify (stronger than the
  reference's string normalisation: `0.5` == `\\frac{1}{2}`); integer golds (AIME25 stores JSON ints) work,
  which the reference got wrong.
"""

from __future__ import annotations

import re

from appo.rewards.deep_research import last_boxed, unbox
from appo.rewards.math import math_equal
from appo.rewards.qa import cover_match, exact_match, token_f1

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TEXT = re.compile(r"^\\text\{(.*)\}$", re.DOTALL)


def _boxed(text: str) -> str | None:
    return unbox(last_boxed(text))


def extract_answer(response: str) -> str:
    blocks = _ANSWER.findall(response)
    if blocks:
        block = blocks[-1]
        boxed = _boxed(block)
        pred = block if boxed is None else boxed
    else:
        pred = _boxed(response) or ""
    pred = pred.strip()
    m = _TEXT.match(pred)
    if m:
        pred = m.group(1).strip()
    if not pred:
        pred = "\n".join(response.strip().splitlines()[-5:])
    return pred


def qa_metrics(pred: str, answer) -> dict[str, float]:
    return {"em": exact_match(pred, answer, strip_punctuation=False),
            "acc": cover_match(pred, answer, strip_punctuation=False),
            "f1": token_f1(pred, answer, strip_punctuation=False)}


def answer_key(pred: str) -> str:
    """Grouping key for majority voting: equal keys are the same vote."""
    return " ".join(pred.lower().split())


def score_sample(response: str, answer, kind: str) -> dict:
    """Rule metrics of one response; `rule_equal` is the binary correctness used without a judge."""
    pred = extract_answer(response)
    scores = qa_metrics(pred, answer)
    if kind == "math":
        scores["math_equal"] = float(math_equal(pred, answer))
    rule_equal = bool(scores["math_equal"] if kind == "math" else scores["em"])
    return {"pred": pred, "scores": scores, "rule_equal": rule_equal}
