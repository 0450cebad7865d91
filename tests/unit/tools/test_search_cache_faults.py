"""A search cache file that is not what it should be: garbage, truncated, unwritable, changed underneath,
or holding values of the wrong type. Each is one clear error naming the file, or a logged miss."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest

from appo.config import SearchToolConfig, ToolsConfig
from appo.tools.base import ToolCall
from appo.tools.registry import build_search_tool
from appo.tools.search_cache import SearchCacheError, SqliteCache
from tests.unit.appo_cli import assert_user_error, run_appo

ORGANIC = {"organic": [{"snippet": "Paris is the capital."}]}


def _filled_cache(path, n=3000):
    cache = SqliteCache(path)
    for i in range(n):
        cache.put(f"key-{i}", json.dumps([f"snippet {i} " * 20]))
    cache.close()
    conn = sqlite3.connect(path)  # fold the WAL into the main file, as a finished run leaves it
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _garbage(path):
    path.write_bytes(b"this is not a database\x00\xff" * 500)


def _truncated(path):
    _filled_cache(path)
    data = path.read_bytes()
    assert len(data) > 100_000
    path.write_bytes(data[:len(data) // 2])


def _damaged_pages(path):
    _filled_cache(path)
    data = bytearray(path.read_bytes())
    data[8192:16384] = b"\xa5" * 8192  # two b-tree pages overwritten
    path.write_bytes(bytes(data))


def _parent_is_a_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "blocker").write_text("a file where a folder is needed")


def _a_directory(path):
    path.mkdir(parents=True)


BROKEN = {"garbage": (_garbage, "cache.sqlite"), "truncated": (_truncated, "cache.sqlite"),
          "damaged": (_damaged_pages, "cache.sqlite"), "unwritable": (_parent_is_a_file, "blocker/cache.sqlite"),
          "directory": (_a_directory, "cache.sqlite")}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_cache_file_is_one_error_naming_it(tmp_path, name):
    make, rel = BROKEN[name]
    path = tmp_path / rel
    make(tmp_path / "cache.sqlite")
    with pytest.raises(SearchCacheError) as err:
        SqliteCache(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "tools.search.sqlite_cache" in message


def test_the_cli_reports_a_corrupt_cache_in_one_line(tmp_path):
    path = tmp_path / "cache.sqlite"
    _truncated(path)
    proc = run_appo("tool", "search", "paris", "--backend", "retriever", "--url", "http://127.0.0.1:9/x",
                    "--sqlite-cache", str(path), timeout=60)
    assert_user_error(proc, "tool", str(path))


def _tool(provider, db):
    return build_search_tool(ToolsConfig(search=SearchToolConfig(backend="retriever", url=f"{provider.url}/r",
                                                                 sqlite_cache=str(db))))


HITS = {"result": [[{"document": {"contents": "fresh answer"}}]]}


@pytest.mark.parametrize("value", ['{"Page 1": "forged"}', "5", "not json at all", '[1, 2]', '"a string"',
                                   "[" * 100_000 + "]" * 100_000])   # nested 100,000 deep (issue 25)
def test_a_cached_value_of_the_wrong_type_is_a_miss_logged_once(provider, tmp_path, caplog, value):
    db = tmp_path / "cache.sqlite"
    tool = _tool(provider, db)
    key = f"{tool.backend.signature}|k=10|"
    for q in ("q1", "q2"):
        tool.cache.put(key + q, value)
    provider.replies = [(200, HITS), (200, HITS)]
    with caplog.at_level(logging.WARNING, logger="appo.tools.search"):
        first = tool(ToolCall("search", "q1"))
        second = tool(ToolCall("search", "q2"))
    assert first.ok and first.text == second.text == "Page 1: fresh answer"
    assert first.meta["cache"] == "miss" and len(provider.requests) == 2
    warnings = [r for r in caplog.records if "not a list of snippets" in r.getMessage()]
    assert len(warnings) == 1 and str(db) in warnings[0].getMessage()
    assert tool.cache.get(key + "q1") == '["fresh answer"]'  # the bad value is replaced
    again = tool(ToolCall("search", "q1"))
    assert again.meta["cache"] == "hit" and len(provider.requests) == 2


def test_a_cache_broken_mid_run_is_logged_once_and_searches_go_on(provider, tmp_path, caplog):
    db = tmp_path / "cache.sqlite"
    tool = _tool(provider, db)
    other = sqlite3.connect(db)  # another program replaces the table under the running tool
    other.execute("DROP TABLE cache")
    other.close()
    provider.replies = [(200, HITS), (200, HITS)]
    with caplog.at_level(logging.WARNING, logger="appo.tools.search"):
        results = [tool(ToolCall("search", q)) for q in ("a", "b")]
    assert all(r.ok and r.text == "Page 1: fresh answer" for r in results)
    warnings = [r for r in caplog.records if str(db) in r.getMessage()]
    assert len(warnings) == 1 and "without the cache" in warnings[0].getMessage()
    assert tool.cache is None


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, '[{"snippet": 5, "evil": 1}]', '"x"', "[1]"])
def test_a_bad_hits_value_is_a_miss_for_the_browser(provider, tmp_path, value):
    tool = _tool(provider, tmp_path / "cache.sqlite")
    tool.cache.put(f"{tool.backend.signature}|k=10|hits|q", value)
    provider.replies = [(200, HITS)]
    hits, meta = tool.find_hits("q")
    assert [h.snippet for h in hits] == ["fresh answer"] and meta["cache"] == "miss"


def test_a_cached_value_of_60000_snippets_is_formatted_in_linear_time(provider, tmp_path):
    import time

    tool = _tool(provider, tmp_path / "cache.sqlite")
    tool.cache.put(f"{tool.backend.signature}|k=10|q", json.dumps([f"snippet {i}" for i in range(60_000)]))
    started = time.monotonic()
    result = tool(ToolCall("search", "q"))
    assert result.ok and result.meta["cache"] == "hit" and result.text.count("Page ") == 10
    assert time.monotonic() - started < 1.0  # before: 26 s of quadratic de-duplication
