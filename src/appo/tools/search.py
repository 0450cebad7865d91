"""The `<search>` tool: a backend behind a persistent cache, with retries, and the reference's formatting.

A backend returns the result snippets for a query; this module owns everything around that: the
query clean-up (`"` removed, as the reference), the SQLite cache, a deadline of `tools.timeout` per
call, bounded retries with exponential backoff for transient failures, and the text the model sees:
`Page i: snippet` lines, or `No search results found.`, or a one-line `Search failed: ...` message.
A search failure never raises into the rollout. `find_hits` gives the browser (browse.py) the same search
with result URLs and titles where the backend has them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from appo.config import SearchToolConfig
from appo.tools.base import ToolCall, ToolResult
from appo.tools.search_cache import SearchCacheError, SqliteCache

log = logging.getLogger(__name__)

NO_RESULTS = "No search results found."
_PAGE = re.compile(r"Page (\d+): ")
_T = TypeVar("_T")


class SearchError(Exception):
    """A failure worth reporting to the model as is; retrying would not help (bad key, cache miss)."""


class TransientSearchError(SearchError):
    """A failure that may pass: timeouts, connection errors, HTTP 429/5xx, malformed responses."""


@dataclass(frozen=True)
class SearchHit:
    """One result as the browser needs it. `text` is the whole document when the backend holds it (a local
    index, a retriever): then there is no page to fetch."""

    snippet: str
    title: str = ""
    url: str = ""
    date: str = ""
    text: str = ""


class SearchBackend(Protocol):
    name: str
    signature: str   # identifies the backend and the settings that change its answers (cache key prefix)

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        """Up to `k` result snippets, best first; raise SearchError/TransientSearchError on failure."""
        ...

    # Backends that know more than snippets (URLs, titles, whole documents) also define
    # hits(query, k, timeout) -> list[SearchHit]; see `backend_hits`.


def backend_hits(backend: SearchBackend, query: str, k: int, timeout: float) -> list[SearchHit]:
    if hasattr(backend, "hits"):
        return backend.hits(query, k, timeout)
    return [SearchHit(snippet=s) for s in backend.search(query, k, timeout)]


def format_results(snippets: list[str], max_results: int, result_length: int) -> str:
    """The reference's observation text: unique non-empty snippets, `Page i: ` numbered, each cut."""
    unique: list[str] = []
    seen: set[str] = set()  # a list's `in` made a 60,000-snippet cache value quadratic (26 s)
    for s in snippets:
        s = s.strip()
        if s and s not in seen:
            seen.add(s)
            unique.append(s)
            if len(unique) == max_results:
                break
    if not unique:
        return NO_RESULTS
    return "\n".join(f"Page {i}: {s[:result_length]}" for i, s in enumerate(unique[:max_results], 1))


def parse_results(text: str) -> list[str]:
    """Inverse of `format_results` (for the reference's cache values); a line that does not start the next
    page continues the current snippet."""
    if text.strip() == NO_RESULTS:
        return []
    snippets: list[str] = []
    for line in text.split("\n"):
        m = _PAGE.match(line)
        if m and int(m.group(1)) == len(snippets) + 1:
            snippets.append(line[m.end():])
        elif snippets:
            snippets[-1] += "\n" + line
        else:
            snippets.append(line)
    return snippets


def _json_or_none(raw: str):
    """The decoded value, or None for text that is not JSON or is nested too deeply to decode."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def clean_query(payload: str) -> str:
    return payload.replace('"', "").strip()


class SearchTool:
    name = "search"

    def __init__(self, cfg: SearchToolConfig, backend: SearchBackend, timeout: float = 20.0, attempts: int = 1,
                 cache: SqliteCache | None = None):
        self.cfg = cfg
        self.backend = backend
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.cache = cache
        self._cache_lock = threading.Lock()
        self._warned_bad_value = False

    def __call__(self, call: ToolCall) -> ToolResult:
        start = time.time()
        query = clean_query(call.payload)
        if not query:
            return self._result("Search failed: the query is empty.", False, start, {})
        key = f"{self.backend.signature}|k={self.cfg.max_results}|{query}"
        cached = self._cached(key)
        if cached is not None:
            text = format_results(cached, self.cfg.max_results, self.cfg.result_length)
            return self._result(text, True, start, {"cache": "hit", "attempts": 0})
        try:
            snippets, attempts = self._search_with_retries(query)
        except SearchError as e:
            return self._result(f"Search failed: {e}", False, start, {})
        cache = self.cache
        if cache is not None:
            try:
                cache.put(key, json.dumps(snippets, ensure_ascii=False))
            except SearchCacheError as e:
                self._drop_cache(e)
        text = format_results(snippets, self.cfg.max_results, self.cfg.result_length)
        return self._result(text, True, start, {"cache": "off" if cache is None else "miss", "attempts": attempts})

    def _cached_value(self, key: str, valid: Callable[[object], bool]):
        """The decoded cached value of `key` when `valid` accepts it, else None. A value of another shape
        (another program's, an old format, JSON nested too deeply to decode) is a miss, logged once, and
        is replaced by the fresh answer."""
        cache = self.cache
        try:
            raw = cache.get(key) if cache is not None else None
        except SearchCacheError as e:
            self._drop_cache(e)
            return None
        if raw is None:
            return None
        value = _json_or_none(raw)
        if valid(value):
            return value
        if not self._warned_bad_value:
            self._warned_bad_value = True
            log.warning("search cache %s: the value for %r is not a list of snippets (%.60r); treating it "
                        "as a miss (logged once)", cache.path, key, raw)
        return None

    def _cached(self, key: str) -> list[str] | None:
        return self._cached_value(key, lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v))

    def _cached_hits(self, key: str) -> list[SearchHit] | None:
        names = {f.name for f in dataclasses.fields(SearchHit)}

        def valid(value) -> bool:
            return isinstance(value, list) and all(
                isinstance(h, dict) and "snippet" in h and set(h) <= names and all(isinstance(v, str) for v in h.values())
                for h in value)

        value = self._cached_value(key, valid)
        return None if value is None else [SearchHit(**h) for h in value]

    def _drop_cache(self, error: SearchCacheError) -> None:
        """A cache that fails mid-run (file damaged or removed underneath): searches go on without it."""
        with self._cache_lock:
            if self.cache is None:
                return
            self.cache, cache = None, self.cache
        log.warning("%s; searching without the cache for the rest of the run", error)
        cache.close()

    def find_hits(self, query: str) -> tuple[list[SearchHit], dict]:
        """The browser's view of a search: hits with URLs where the backend has them, through the same
        cache (its own keys) and retries; raises SearchError."""
        key = f"{self.backend.signature}|k={self.cfg.max_results}|hits|{query}"
        cached = self._cached_hits(key)
        if cached is not None:
            return cached, {"cache": "hit", "attempts": 0}
        hits, attempts = self._with_retries(
            lambda timeout: backend_hits(self.backend, query, self.cfg.max_results, timeout))
        if self.cache is not None:
            self.cache.put(key, json.dumps([dataclasses.asdict(h) for h in hits], ensure_ascii=False))
        return hits, {"cache": "off" if self.cache is None else "miss", "attempts": attempts}

    def _search_with_retries(self, query: str) -> tuple[list[str], int]:
        return self._with_retries(lambda timeout: self.backend.search(query, self.cfg.max_results, timeout))

    def _with_retries(self, attempt_once: Callable[[float], _T]) -> tuple[_T, int]:
        """The answer and the attempts it took; transient failures are retried while attempts and the
        call's deadline allow, waiting retry_backoff, then twice as long each time."""
        deadline = time.monotonic() + self.timeout
        wait = self.cfg.retry_backoff
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                return attempt_once(min(self.cfg.request_timeout, remaining)), attempt
            except TransientSearchError as e:
                if attempt >= self.attempts or time.monotonic() + wait >= deadline:
                    suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise SearchError(f"{e}{suffix}") from e
                time.sleep(wait)
                wait *= 2

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    @staticmethod
    def _result(text: str, ok: bool, start: float, meta: dict) -> ToolResult:
        end = time.time()
        return ToolResult(text=text, ok=ok, seconds=end - start, meta={**meta, "start": start, "end": end})
