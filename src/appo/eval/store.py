"""Append-only per-sample JSONL store that makes evaluation resumable.

Each line is one finished sample keyed by (benchmark, question index, sample index). A crash can leave a
torn last line; opening the store drops it (and truncates the file back to the last complete line) so the
next append starts on a clean line. When a key appears twice (e.g. a sample re-judged later), the last
line wins. Without a path the store lives in memory only (evaluations that keep no files).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

Key = tuple[str, int, int]


def sample_key(record: dict) -> Key:
    return (record["benchmark"], int(record["index"]), int(record["sample"]))


class SampleStore:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.records: dict[Key, dict] = {}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                        self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
        bad = 0
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.records[sample_key(rec)] = rec
            except (KeyError, TypeError, ValueError, RecursionError):  # ValueError: bad JSON, a 4,301-digit int
                bad += 1
        if bad:
            log.warning("%s: skipped %d unreadable lines", self.path, bad)

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: list[dict]) -> None:
        """Write finished samples durably (one flush + fsync per batch)."""
        if self.path is not None and records:
            self._write(records)
        for rec in records:
            self.records[sample_key(rec)] = rec

    def _write(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def for_benchmark(self, name: str) -> list[dict]:
        return [r for (b, _, _), r in sorted(self.records.items()) if b == name]
