"""Measured numbers live in docs/performance.md, not in docstrings and comments, where they go stale."""

from __future__ import annotations

import io
import re
import tokenize

from .blocks import REPO

# a duration in milliseconds, a throughput, or "took N s"/"N s to M s": what a measurement looks like
TIMING = re.compile(r"\b\d+(?:\.\d+)?\s?ms\b|\btok/s\b|\btook (?:about )?\d+(?:\.\d+)? ?(?:s|min)\b"
                    r"|\b\d+(?:\.\d+)? ?s (?:to|->|→) \d+(?:\.\d+)? ?s\b")


def _prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring-like string statement of a Python file."""
    statement_start = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL)
    out, previous = [], tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        docstring = tok.type == tokenize.STRING and previous in statement_start
        if tok.type == tokenize.COMMENT or docstring:
            out.append((tok.start[0], tok.string))
        if tok.type != tokenize.COMMENT:
            previous = tok.type
    return out


def test_no_measured_timings_in_docstrings_or_comments():
    found = []
    for path in sorted((REPO / "src" / "appo").rglob("*.py")):
        for line, text in _prose(path.read_text()):
            for m in TIMING.finditer(text):
                found.append(f"{path.relative_to(REPO)}:{line}: {m.group(0)!r}")
    assert not found, "measured numbers belong in docs/performance.md:\n" + "\n".join(found)


def test_the_pattern_finds_a_timing_in_a_docstring():
    source = 'def f():\n    """One decode step took 42 ms (was 3.1 s -> 1.2 s)."""\n    x = "12 ms"  # 7 tok/s\n'
    texts = [text for _, text in _prose(source)]
    assert len(texts) == 2 and all(TIMING.search(t) for t in texts)
