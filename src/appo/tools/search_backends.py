"""Search backends: where snippets come from. Each returns a list of snippets, best first.

- `local`: BM25 (bm25s) over a JSONL corpus of {id, title, text}, built by `appo index build`.
- `cache`: the reference's JSON file {query: formatted result}, exact lookup; offline and free.
- `brightdata`: Bing SERP through Bright Data's request API, as the reference (key BRIGHTDATA_API_KEY,
  zone BRIGHTDATA_ZONE), snippets = organic descriptions.
- `serper`: Google results from google.serper.dev (key SERPER_API_KEY), snippets = organic snippets.
- `retriever`: a Search-R1-style retrieval server: POST {queries, topk, return_scores} ->
  {result: [[{document: {contents}, score}]]}.
Keys come only from the environment and are redacted from every error message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from appo.config import SearchToolConfig
from appo.tools.search import SearchBackend, SearchError, SearchHit, TransientSearchError, parse_results
from appo.tools.web_fetch import no_redirect_opener

BRIGHTDATA_URL = "https://api.brightdata.com/request"
SERPER_URL = "https://google.serper.dev/search"


def _bm25s():
    """bm25s, with its logger quieted: the package sets it to DEBUG on import and then reports every index
    load and build."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def post_json(url: str, body: dict, headers: dict[str, str], timeout: float, secrets: tuple[str, ...] = ()) -> object:
    """POST JSON and decode the JSON answer; HTTP 429/5xx, network errors, timeouts and malformed JSON
    raise TransientSearchError, other HTTP errors SearchError."""
    host = urllib.parse.urlsplit(url).netloc or url
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with no_redirect_opener().open(request, timeout=timeout) as response:  # keys stay with this host
            raw = response.read()
    except urllib.error.HTTPError as e:
        detail = _redact(e.read(300).decode("utf-8", errors="replace").strip(), secrets)
        message = f"HTTP {e.code} from {host}" + (f": {detail}" if detail else "")
        if e.code == 429 or e.code >= 500:
            raise TransientSearchError(message) from None
        raise SearchError(message) from None
    except TimeoutError:
        raise TransientSearchError(f"{host} did not answer within {timeout:g}s") from None
    except (urllib.error.URLError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise TransientSearchError(f"{host} did not answer within {timeout:g}s") from None
        raise TransientSearchError(_redact(f"cannot reach {host}: {reason}", secrets)) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise TransientSearchError(f"malformed JSON from {host}") from None


def _key(env: str, backend: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        raise ValueError(f"search backend '{backend}' needs the API key in the environment variable {env}")
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
        self.signature = f"brightdata|{self.location}"

    def request_body(self, query: str) -> dict:
        mkt, lang = ("zh-CN", "zh") if _is_chinese(query) else ("en-US", "en")
        params = urllib.parse.urlencode({"q": query, "mkt": mkt, "setLang": lang})
        target = f"https://www.bing.com/search?{params}&brd_json=1&cc={self.location}"
        return {"zone": self.zone, "url": target, "format": "raw"}

    def _serp(self, query: str, timeout: float) -> object:
        return post_json(self.url, self.request_body(query), {"Authorization": f"Bearer {self.key}"}, timeout,
                         (self.key,))

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
        self.signature = f"serper|{self.location}"

    def _serp(self, query: str, k: int, timeout: float) -> object:
        body = {"q": query, "gl": self.location, "num": k}
        return post_json(self.url, body, {"X-API-KEY": self.key}, timeout, (self.key,))

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        return _organic(self._serp(query, k, timeout), "snippet")[:k]

    def hits(self, query: str, k: int, timeout: float) -> list[SearchHit]:
        return _organic_hits(self._serp(query, k, timeout), "snippet", "date")[:k]


class RetrieverBackend:
    name = "retriever"

    def __init__(self, cfg: SearchToolConfig):
        if not cfg.url:
            raise ValueError("search backend 'retriever' needs tools.search.url (e.g. http://127.0.0.1:8000/retrieve)")
        self.url = cfg.url
        self.signature = f"retriever|{self.url}"

    def search(self, query: str, k: int, timeout: float) -> list[str]:
        return [" ".join(c.split()) for c in self._contents(query, k, timeout)]

    def hits(self, query: str, k: int, timeout: float) -> list[SearchHit]:
        return [SearchHit(snippet=" ".join(c.split()), text=c) for c in self._contents(query, k, timeout)]

    def _contents(self, query: str, k: int, timeout: float) -> list[str]:
        data = post_json(self.url, {"queries": [query], "topk": k, "return_scores": True}, {}, timeout)
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
            raise ValueError("search backend 'cache' needs tools.search.cache_file (a JSON object {query: result})")
        with open(Path(cfg.cache_file).expanduser(), encoding="utf-8") as f:
            entries = json.load(f)
        if not isinstance(entries, dict):
            raise ValueError(f"{cfg.cache_file}: expected a JSON object {{query: result}}")
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
            raise ValueError("search backend 'local' needs tools.search.index_dir; build one with "
                             "`appo index build --corpus FILE.jsonl --out DIR`")
        bm25s = _bm25s()

        path = Path(cfg.index_dir).expanduser()
        if not (path / "params.index.json").exists():
            raise ValueError(f"{path} is not a BM25 index; build one with `appo index build --corpus FILE.jsonl "
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
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"] if "text" in row else row["contents"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{line_no}: expected a JSON object with a 'text' field") from None
            doc = {"id": str(row.get("id", line_no)), "title": str(row.get("title") or ""), "text": str(text)}
            if row.get("url"):
                doc["url"] = str(row["url"])  # the browser fetches it (tools.search.browse)
            docs.append(doc)
    return docs


def build_index(docs: list[dict], out_dir: str | os.PathLike) -> Path:
    """Index {id, title, text} documents with BM25 (English stopwords) and save them with the index."""
    bm25s = _bm25s()

    if not docs:
        raise ValueError("cannot build a search index from an empty corpus")
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
        raise ValueError(f"tools.search.backend='{cfg.backend}' is not valid; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[cfg.backend](cfg)
