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

from appo.errors import UserError

_BUSY_TIMEOUT_S = 60.0


class SearchCacheError(UserError):
    """The cache file cannot be used (not a database, damaged, unwritable); the message names it."""


class SqliteCache:
    """Opening checks the whole file (`PRAGMA quick_check`, fast even for large files: docs/performance.md) and that it can be
    written, so a damaged or read-only cache is one clear start-up error, not a failure mid-run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the database file
            conn.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                         "created REAL NOT NULL)")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"damaged ({'; '.join(problems[:3])})")
            conn.execute("SELECT key, value, created FROM cache LIMIT 1").fetchall()
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock: fails now if the file is read-only
            conn.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as e:
            self.close()
            raise self._error(e) from None

    def _error(self, e: Exception) -> SearchCacheError:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return SearchCacheError(f"search cache {self.path}: {reason}; delete or repair the file, or set "
                                "tools.search.sqlite_cache to another path (null disables the cache)")

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
        try:
            row = self._conn().execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            raise self._error(e) from None
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        try:
            self._conn().execute("INSERT OR REPLACE INTO cache (key, value, created) VALUES (?, ?, ?)",
                                 (key, value, time.time()))
        except sqlite3.Error as e:
            raise self._error(e) from None

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
