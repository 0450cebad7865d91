"""LLM-as-judge over any OpenAI-compatible `/v1/chat/completions` endpoint.

The prompt and decision rule follow the reference evaluation pipeline (ARPO `llm_evaluator_sds.py`), in our
own words:

- The judge sees the question, the golden answer (a Python list repr when there are several aliases;
  matching any one is enough) and the *extracted* predicted answer, never the whole trajectory.
- A reply is positive when its text (the `<judgment>` span if there is one; a `<think>` block is dropped
  first so a reasoning judge's deliberation does not leak into the verdict) contains "correct" and none of
  "incorrect", "wrong", "not correct". A reply that names neither outcome is *unparseable*: counted, and
  graded as incorrect, as the reference rule does.
- The final `llm_equal` is `rule_equal OR positive verdict`; when every attempt fails (network errors,
  HTTP errors, replies without a message), the item falls back to `rule_equal` and is counted as an error.

The endpoint URL and key are read from environment variables named in the config; neither is ever logged or
put into an error message.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from appo.config import JudgeConfig
from appo.tools.openai_client import ChatClient, ChatError, endpoint_from_env

JUDGE_PROMPT = """You are grading the answer of a question-answering system.

Question: {question}

Golden answer: {gold}
(The golden answer may list several acceptable options; matching any one of them counts as correct.)

Predicted answer: {pred}

Does the predicted answer fully agree with the meaning and the key information of the golden answer?
Reply with exactly one word: Correct or Incorrect."""

_NEGATIVE = ("incorrect", "wrong", "not correct")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_JUDGMENT = re.compile(r"<judgment>(.*?)</judgment>", re.DOTALL | re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge is misconfigured (missing endpoint variable); raised before any sample is graded."""


@dataclass
class Verdict:
    status: str          # "correct" | "incorrect" | "unparseable" | "error"
    reply: str           # the judge's raw reply ("" on error)
    attempts: int
    error: str = ""      # why the last attempt failed (status == "error")

    def as_dict(self) -> dict:
        return {"status": self.status, "reply": self.reply, "attempts": self.attempts, "error": self.error}


def format_gold(gold: str | list[str]) -> str:
    return repr(list(gold)) if isinstance(gold, (list, tuple)) else str(gold)


def build_judge_prompt(question: str, gold: str | list[str], pred: str) -> str:
    return JUDGE_PROMPT.format(question=question, gold=format_gold(gold), pred=pred)


def parse_verdict(reply: str) -> str:
    """'correct', 'incorrect' or 'unparseable' by the reference's substring rule."""
    text = _THINK.sub("", reply)
    span = _JUDGMENT.search(text)
    text = (span.group(1) if span else text).lower()
    if any(neg in text for neg in _NEGATIVE):
        return "incorrect"
    return "correct" if "correct" in text else "unparseable"


def decide(rule_equal: bool, verdict: Verdict | None) -> bool:
    """The reference's `llm_equal`: rule equivalence, or a positive judge verdict."""
    return bool(rule_equal) or (verdict is not None and verdict.status == "correct")


class JudgeClient:
    """Grades (question, gold, prediction) triples through an OpenAI-compatible chat endpoint."""

    def __init__(self, cfg: JudgeConfig, backoff: float = 1.0):
        base, key = endpoint_from_env(cfg.url_env, cfg.key_env)
        if not base:
            raise JudgeError(f"eval.judge.enabled=true but the environment variable {cfg.url_env} (the judge's "
                             "base URL, e.g. http://localhost:8000/v1) is not set")
        self._client = ChatClient(base, key, cfg.model)
        self.cfg = cfg
        self.backoff = backoff

    def judge(self, question: str, gold: str | list[str], pred: str) -> Verdict:
        prompt = build_judge_prompt(question, gold, pred)
        error = ""
        for attempt in range(1, self.cfg.retries + 1):
            try:
                reply = self._client.complete(prompt, temperature=self.cfg.temperature,
                                              max_tokens=self.cfg.max_tokens, timeout=self.cfg.timeout)
                return Verdict(parse_verdict(reply), reply, attempt)
            except ChatError as e:
                error = str(e)
            if attempt < self.cfg.retries:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        return Verdict("error", "", self.cfg.retries, error)

    def judge_many(self, items: list[tuple[str, str | list[str], str]]) -> list[Verdict]:
        """Judge (question, gold, pred) triples concurrently; results keep the input order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.max_workers, len(items))) as pool:
            return list(pool.map(lambda it: self.judge(*it), items))
