"""Bounding tool output: what the model sees is never longer than `tools.result_max_chars`; and showing it on
a terminal without obeying the control sequences model-written code can print."""

from __future__ import annotations

import re

# C0 controls but newline and tab, DEL, and C1 controls (0x9b alone starts a CSI on some terminals).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    """`text` with every control character but newline and tab written as a visible `\\xNN` escape, so that
    printing it cannot set the clipboard (OSC 52), the window title, or move the cursor over earlier lines."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _marker(shown: int, total: int, keep: str) -> str:
    where = "first" if keep == "head" else "last"
    return f"[... truncated: showing the {where} {shown} of {total} characters]"


def truncate(text: str, limit: int, keep: str = "head", total: int | None = None) -> str:
    """Cut `text` to at most `limit` characters, marker included, keeping its head or its tail.

    `total` is the length of the full output when `text` is already a capped capture of it (so the
    marker reports the real size). Errors keep the tail, where the exception line is.
    """
    total = len(text) if total is None else max(total, len(text))
    if total <= limit:
        return text
    shown = limit - len(_marker(limit, total, keep)) - 1
    if shown < 1:  # no room for a marker: a plain cut is the most useful thing left
        return text[:limit] if keep == "head" else text[len(text) - limit:]
    marker = _marker(shown, total, keep)
    if keep == "head":
        return f"{text[:shown]}\n{marker}"
    return f"{marker}\n{text[len(text) - shown:]}"


class CappedBuffer:
    """Keeps the first and the last `cap` bytes of a stream and counts the rest, so a huge print costs
    the host at most 2*cap bytes of memory."""

    def __init__(self, cap: int):
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.cap:
                del self.tail[: len(self.tail) - self.cap]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self, keep: str) -> tuple[str, int]:
        """(decoded text, total length estimate): the head part or the tail part when bytes were dropped."""
        if not self.dropped:
            text = (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace")
            return text, len(text)
        part = self.head if keep == "head" else self.tail
        text = bytes(part).decode("utf-8", errors="replace")
        return text, self.total
