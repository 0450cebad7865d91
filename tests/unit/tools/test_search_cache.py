"""The SQLite result cache under concurrent writers: threads and processes at once, and a crash."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time

from appo.tools.search_cache import SqliteCache


def _writer(path: str, tag: str, n: int) -> None:
    cache = SqliteCache(path)
    for i in range(n):
        cache.put(f"{tag}-{i}", f"value of {tag}-{i} " + "x" * (i % 97))
    cache.close()


def _endless_writer(path: str) -> None:
    cache = SqliteCache(path)
    i = 0
    while True:
        cache.put(f"crash-{i}", "y" * 5000)
        i += 1


def _integrity(path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_threads_and_processes_write_at_once(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    shared = SqliteCache(path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, f"p{k}", 60)) for k in range(2)]
    threads = [threading.Thread(target=lambda k=k: [shared.put(f"t{k}-{i}", f"value of t{k}-{i} " + "x" * (i % 97))
                                                    for i in range(60)]) for k in range(4)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    assert len(shared) == 6 * 60
    for tag in ["p0", "p1", "t0", "t1", "t2", "t3"]:
        for i in range(60):
            assert shared.get(f"{tag}-{i}") == f"value of {tag}-{i} " + "x" * (i % 97)
    shared.close()
    assert _integrity(path) == "ok"


def test_a_writer_killed_mid_write_leaves_the_cache_intact(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    cache = SqliteCache(path)
    cache.put("before", "kept")
    proc = multiprocessing.get_context("fork").Process(target=_endless_writer, args=(path,))
    proc.start()
    while len(cache) < 20:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert _integrity(path) == "ok"
    assert cache.get("before") == "kept"
    assert all(cache.get(f"crash-{i}") == "y" * 5000 for i in range(len(cache) - 2))
    cache.put("after", "works")
    assert SqliteCache(path).get("after") == "works"
