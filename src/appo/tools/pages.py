"""Result pages as text: fetch (web_fetch), extract the main text (trafilatura for HTML, pypdf for PDF) and
cache it by URL in the SQLite cache family of the search tool. Every failure becomes a Page with an
`error`, never an exception, and failures are not cached (a page that was down may be up next time)."""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from appo.config import BrowserConfig, ConfigError
from appo.tools.search_cache import SqliteCache
from appo.tools.web_fetch import AddressPolicy, FetchError, HttpResponse, http_get

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("text/plain", "text/markdown")


class PageError(Exception):
    """The page was fetched but holds no text we can use."""


@dataclass
class Page:
    url: str
    text: str = ""
    kind: str = ""          # html | pdf | text | document (the backend's own text, nothing fetched)
    error: str = ""         # why there is no text
    truncated: bool = False
    cached: bool = False


def check_extractors() -> None:
    """Fail at start-up, not at the first page, when the extraction libraries are missing."""
    try:
        import pypdf  # noqa: F401
        import trafilatura  # noqa: F401
    except ImportError as e:
        raise ValueError(f"tools.search.browse=true needs trafilatura and pypdf ({e}); install them with "
                         "`pip install -r requirements/cpu.txt`") from None


def _quiet_libraries() -> None:
    # Both report every odd page at WARNING; a page we cannot read is already reported as a Page error.
    for name in ("trafilatura", "pypdf", "htmldate", "courlan"):
        logging.getLogger(name).setLevel(logging.ERROR)


def html_text(body: bytes) -> str:
    import trafilatura

    text = trafilatura.extract(body, include_comments=False, include_tables=True, favor_recall=True)
    if not text or not text.strip():
        raise PageError("no main text found in the HTML")
    return text.strip()


def pdf_text(body: bytes, max_chars: int) -> str:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(body))
        parts, size = [], 0
        for page in reader.pages:  # stop once enough text is in hand: long PDFs are slow to parse
            text = page.extract_text() or ""
            parts.append(text)
            size += len(text)
            if size >= max_chars:
                break
    except Exception as e:  # pypdf raises many types for damaged files
        raise PageError(f"unreadable PDF ({type(e).__name__})") from None
    text = "\n".join(p.strip() for p in parts if p.strip())
    if not text:
        raise PageError("the PDF has no extractable text")
    return text


def response_text(resp: HttpResponse, max_bytes: int, max_chars: int) -> tuple[str, str]:
    """(kind, text) of a fetched page; raises PageError."""
    if resp.status != 200:
        raise PageError(f"HTTP {resp.status}")
    if resp.content_type == "application/pdf" or resp.body[:5] == b"%PDF-":
        if resp.truncated:
            raise PageError(f"the PDF is larger than max_page_bytes={max_bytes}")
        return "pdf", pdf_text(resp.body, max_chars)[:max_chars]
    if resp.content_type in _HTML_TYPES or (not resp.content_type and b"<html" in resp.body[:1024].lower()):
        return "html", html_text(resp.body)[:max_chars]
    if resp.content_type in _TEXT_TYPES:
        return "text", resp.body.decode(resp.charset or "utf-8", errors="replace").strip()[:max_chars]
    raise PageError(f"not a text page ({resp.content_type or 'no content type'})")


class PageReader:
    def __init__(self, cfg: BrowserConfig, cache: SqliteCache | None = None):
        check_extractors()
        _quiet_libraries()
        try:
            self.policy = AddressPolicy(cfg.allow_private)
        except ValueError as e:
            raise ConfigError(f"tools.search.browser.allow_private: {e}") from None
        self.cfg = cfg
        self.cache = cache
        self.headers = {"User-Agent": cfg.user_agent, "Accept": "text/html,application/xhtml+xml,"
                        "application/pdf;q=0.9,text/plain;q=0.8,*/*;q=0.5", "Accept-Language": "en-US,en;q=0.8"}

    def _key(self, url: str) -> str:
        return f"page|chars={self.cfg.page_max_chars}|{url}"

    def read(self, url: str, deadline: float) -> Page:
        """The page's text, fetched by the monotonic `deadline` (and within page_timeout)."""
        if self.cache is not None and (cached := self.cache.get(self._key(url))) is not None:
            entry = json.loads(cached)
            return Page(url, entry["text"], entry["kind"], truncated=entry["truncated"], cached=True)
        timeout = min(self.cfg.page_timeout, deadline - time.monotonic())
        if timeout <= 0:
            return Page(url, error="no time left in the call")
        try:
            resp = http_get(url, timeout=timeout, max_bytes=self.cfg.max_page_bytes, headers=self.headers,
                            policy=self.policy)
            kind, text = response_text(resp, self.cfg.max_page_bytes, self.cfg.page_max_chars)
        except (FetchError, PageError) as e:
            return Page(url, error=str(e))
        except Exception as e:  # an extractor bug on one odd page must not cost the other pages
            return Page(url, error=f"text extraction failed ({type(e).__name__})")
        if self.cache is not None:
            self.cache.put(self._key(url), json.dumps({"text": text, "kind": kind, "truncated": resp.truncated},
                                                      ensure_ascii=False))
        return Page(url, text, kind, truncated=resp.truncated)

    def read_many(self, urls: list[str], deadline: float) -> list[Page]:
        """Pages in the order of `urls`, fetched in parallel (fetch_workers at a time)."""
        if not urls:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.fetch_workers, len(urls)),
                                thread_name_prefix="appo-page") as pool:
            return list(pool.map(lambda u: self.read(u, deadline), urls))

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
