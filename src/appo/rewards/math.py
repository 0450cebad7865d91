"""Math answers judged by equivalence (math-verify), not token overlap: `12` = `12.0`, `\\frac{1}{2}` = `0.5`.

math-verify can spin for a long time on adversarial LaTeX (`10^{10^{10}}`), and its own timeout uses
SIGALRM, which only works in the main thread and cannot interrupt a long C call. So every comparison that
needs math-verify runs in one long-lived helper process: its main thread applies math-verify's soft
timeout, and the caller kills and replaces the process when even that does not come back in time.
Plain numbers are compared here directly, without the helper.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import re
import threading

from appo.rewards.deep_research import last_boxed, unbox

DEFAULT_TIMEOUT = 5.0
# Extra seconds the caller waits beyond the soft timeout before it kills the helper (pickling, scheduling).
_KILL_GRACE = 2.0
_START_TIMEOUT = 120.0
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _strip_text_wrapper(answer: str) -> str:
    if answer.startswith("\\text{") and answer.endswith("}"):
        return answer[len("\\text{") : -1]
    return answer


def extract_math_answer(response: str) -> str | None:
    """The final answer of a response, as the reference evaluation reads it.

    1. the last <answer>...</answer> block: its last \\boxed{...} (one \\text{...} wrapper removed);
    2. that block has no \\boxed: the block's text;
    3. no answer block: the last \\boxed{...} anywhere;
    4. otherwise None.
    """
    blocks = _ANSWER_BLOCK.findall(response)
    if blocks:
        block = blocks[-1].strip()
        boxed = unbox(last_boxed(block))
        return _strip_text_wrapper(boxed) if boxed else (block or None)
    boxed = unbox(last_boxed(response))
    return _strip_text_wrapper(boxed) if boxed else None


def as_number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    if text.startswith("$") and text.endswith("$") and len(text) > 1:
        text = text[1:-1].strip()
    if _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _verify(pred: str, gold: str, timeout: float) -> bool:
    """math-verify on two answer strings (run inside the helper process)."""
    from math_verify import parse, verify

    seconds = max(1, math.ceil(timeout))
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=seconds)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=seconds)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=seconds))
    except Exception:  # math-verify raises on unparsable input and on its own timeout: both are "not equal"
        return False


def _serve(conn) -> None:
    import logging

    import math_verify  # noqa: F401  (import before announcing readiness so the first call is not charged for it)

    # Its timeouts are expected here and are reported to the caller as "not equal"; keep stderr quiet.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    conn.send("ready")
    while True:
        try:
            pred, gold, timeout = conn.recv()
        except EOFError:
            return
        conn.send(_verify(pred, gold, timeout))


class _Helper:
    """One math-verify process shared by all threads; replaced when a call overruns its hard deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="appo-math-verify")
        proc.start()
        child.close()
        if not parent.poll(_START_TIMEOUT) or parent.recv() != "ready":
            proc.kill()
            raise RuntimeError("the math-verify helper process did not start")
        self._proc, self._conn = proc, parent

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None

    def verify(self, pred: str, gold: str, timeout: float) -> bool | None:
        """True/False from math-verify; None when the helper had to be killed (counted as not equal)."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self.stop()
                self._start()
            self._conn.send((pred, gold, timeout))
            if self._conn.poll(timeout + _KILL_GRACE):
                try:
                    return self._conn.recv()
                except EOFError:  # the helper died (e.g. out of memory): start a fresh one next time
                    pass
            self.stop()
            return None


_helper = _Helper()
atexit.register(_helper.stop)


def math_equal(pred: str | None, gold, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether `pred` equals any gold answer: whitespace-insensitive text, then numbers, then math-verify."""
    if pred is None:
        return False
    golds = [gold] if isinstance(gold, (str, int, float)) else list(gold)
    for g in golds:
        g = str(g)
        if "".join(pred.split()) == "".join(g.split()):
            return True
        p_num, g_num = as_number(pred), as_number(g)
        if p_num is not None and g_num is not None:
            if numbers_equal(p_num, g_num):
                return True
            continue
        if pred.strip() and g.strip() and _helper.verify(pred, g, timeout):
            return True
    return False


def math_score(response: str, ground_truth, timeout: float = DEFAULT_TIMEOUT) -> float:
    """1.0 when the final answer (see `extract_math_answer`) is equivalent to the gold, else 0.0."""
    return float(math_equal(extract_math_answer(response), ground_truth, timeout))
