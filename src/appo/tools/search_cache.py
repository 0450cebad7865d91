"""A persistent key/value cache for search results, shared by threads and processes.

SQLite in WAL mode: readers never block writers, each write is one atomic transaction, and a crash
mid-write leaves the previous state (the journal is replayed or discarded on the next open). Each
thread of each process gets its own connection; a busy database is waited on, not failed. Keep the file
on a local disk: WAL needs shared memory, which network filesystems do not provide.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

_BUSY_TIMEOUT_S = 60.0


class SqliteCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the database file
        conn.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                     "created REAL NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        # A connection must not cross a fork or be shared by threads: key it by process and thread.
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # check_same_thread=False only so close() may close every thread's connection at the end.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._all.append(conn)
        return conn

    def get(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        self._conn().execute("INSERT OR REPLACE INTO cache (key, value, created) VALUES (?, ?, ?)",
                             (key, value, time.time()))

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
