"""Output bounding: the truncation marker and the capped capture buffer."""

from __future__ import annotations

from appo.tools.output import CappedBuffer, truncate


def test_truncate_keeps_head_or_tail_within_the_limit():
    text = "".join(str(i % 10) for i in range(1000))
    head = truncate(text, 100)
    assert len(head) <= 100 and head.startswith("0123") and head.endswith("of 1000 characters]")
    tail = truncate(text, 100, keep="tail")
    assert len(tail) <= 100 and tail.startswith("[... truncated: showing the last") and tail.endswith("789")
    assert truncate(text, 1000) == text
    assert truncate(truncate(text, 100), 100) == truncate(text, 100)  # idempotent (runner re-applies it)
    assert truncate(text, 10) == text[:10] and truncate(text, 10, keep="tail") == text[-10:]
    assert "of 5000 characters" in truncate(text[:300], 100, total=5000)


def test_capped_buffer_holds_head_and_tail_only():
    buf = CappedBuffer(cap=10)
    for _ in range(1000):
        buf.feed(b"abcdefghij" * 10)
    assert buf.total == 100_000 and len(buf.head) == 10 and len(buf.tail) == 10
    assert buf.text("head") == ("abcdefghij", 100_000) and buf.text("tail") == ("abcdefghij", 100_000)
    small = CappedBuffer(cap=10)
    small.feed("héllo wörld!".encode())
    assert small.text("head") == ("héllo wörld!", 12)


# Clipboard write (OSC 52), window title (OSC 0), a cursor move, a bell, a C1 control (CSI as one code point).
HOSTILE = "a\x1b]52;c;cHduZWQ=\x07b\x1b]0;owned\x1b\\c\x1b[2J\x9b31md\r\x7fe"


def test_terminal_text_shows_control_characters_instead_of_obeying_them():
    from appo.tools.output import terminal_text

    shown = terminal_text(HOSTILE + "\nnext\tline")
    assert not any(ord(c) < 32 and c not in "\n\t" or 0x7f <= ord(c) <= 0x9f for c in shown), repr(shown)
    assert shown.startswith("a\\x1b]52;c;cHduZWQ=\\x07b") and shown.endswith("\nnext\tline")


def test_appo_tool_python_prints_no_escape_sequences():
    import shutil

    import pytest

    from tests.unit.appo_cli import run_appo

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")
    proc = run_appo("tool", "python", "--code", f"print({HOSTILE!r})")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\x9b" not in proc.stdout
    assert "\\x1b]52;c;" in proc.stdout
