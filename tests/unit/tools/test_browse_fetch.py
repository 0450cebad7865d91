"""The browser's page reading against loopback servers: main text from HTML and PDF, the per-page deadline,
the size cap, redirects across hosts without credentials, HTTP errors, the URL cache; and passage selection."""

from __future__ import annotations

import json
import time

import pytest

from appo.config import BrowserConfig, SearchToolConfig, ToolsConfig
from appo.tools.base import ToolCall
from appo.tools.pages import PageReader
from appo.tools.passages import select_passage, sentence_spans, word_f1, words
from appo.tools.registry import build_search_tool
from appo.tools.search_cache import SqliteCache

from .browse_servers import LOOPBACK_PAGES, PageServer


@pytest.fixture()
def pages():
    with PageServer("127.0.0.1") as a, PageServer("127.0.0.2") as b:
        a.redirect_to = b.url("/moved.html")
        yield a, b


def _reader(cache=None, **cfg) -> PageReader:
    return PageReader(BrowserConfig(**{"page_timeout": 5.0, "allow_private": LOOPBACK_PAGES, **cfg}), cache)


def _read(reader, url):
    return reader.read(url, time.monotonic() + 30)


def test_html_main_text_drops_navigation_and_footer(pages):
    page = _read(_reader(), pages[0].url("/article.html"))
    assert page.kind == "html" and not page.error
    assert "The tower is 330 metres tall" in page.text
    assert "Log in" not in page.text and "Copyright" not in page.text


def test_pdf_text_is_extracted(pages):
    page = _read(_reader(), pages[0].url("/report.pdf"))
    assert page.kind == "pdf" and not page.error
    assert "6.3 million visitors in 2023" in page.text


def test_trickling_server_is_cut_at_the_page_deadline(pages):
    # One byte every 0.05 s: a socket timeout alone would never fire; the overall deadline must.
    t = time.monotonic()
    page = _read(_reader(page_timeout=0.8), pages[0].url("/slow.html"))
    elapsed = time.monotonic() - t
    assert page.error == "no complete answer within 0.8s" and not page.text
    assert 0.7 < elapsed < 1.5


def test_call_deadline_bounds_the_page_too(pages):
    t = time.monotonic()
    page = _reader(page_timeout=30).read(pages[0].url("/slow.html"), time.monotonic() + 0.5)
    assert page.error.startswith("no complete answer within") and time.monotonic() - t < 1.2


def test_huge_page_is_read_up_to_the_cap_only(pages):
    t = time.monotonic()
    page = _read(_reader(max_page_bytes=100_000), pages[0].url("/huge.html"))
    assert page.truncated and page.kind == "html" and "330 metres tall" in page.text
    assert time.monotonic() - t < 5


def test_cut_pdf_is_reported_not_parsed(pages):
    page = _read(_reader(max_page_bytes=300), pages[0].url("/report.pdf"))
    assert page.error == "the PDF is larger than max_page_bytes=300"


def test_redirect_to_another_host_carries_no_credentials(pages):
    a, b = pages
    page = _read(_reader(), f"http://user:pw@127.0.0.1:{a.port}/redirect")
    assert "Statue of Liberty" in page.text
    (first_path, first), (second_path, second) = a.requests[-1], b.requests[-1]
    assert first_path == "/redirect" and first["Authorization"] == "Basic dXNlcjpwdw=="  # its own origin
    assert second_path == "/moved.html" and second["Host"] == f"127.0.0.2:{b.port}"
    assert not {"Authorization", "Cookie", "Proxy-Authorization"} & set(second)


def test_http_errors_and_non_text_pages_are_page_errors(pages):
    reader = _reader()
    assert _read(reader, pages[0].url("/nothing-here")).error == "HTTP 404"
    assert _read(reader, pages[0].url("/image.png")).error == "not a text page (image/png)"
    assert _read(reader, "ftp://127.0.0.1/x").error == "not an http(s) URL (scheme 'ftp')"
    pages[0].stop.set()
    with PageServer() as gone:
        url = gone.url("/article.html")
    assert _read(reader, url).error == "connection failed: ConnectionRefusedError"


def test_url_cache_keeps_pages_not_failures(pages, tmp_path):
    a, _ = pages
    reader = _reader(cache=SqliteCache(tmp_path / "urls.sqlite"))
    for _ in range(2):
        assert "330 metres" in _read(reader, a.url("/article.html")).text
        assert _read(reader, a.url("/nothing-here")).error == "HTTP 404"
    paths = [p for p, _ in a.requests]
    assert paths.count("/article.html") == 1 and paths.count("/nothing-here") == 2
    reader.close()
    again = _reader(cache=SqliteCache(tmp_path / "urls.sqlite"))   # persists across processes/runs
    page = _read(again, a.url("/article.html"))
    assert page.cached and "330 metres" in page.text and len(a.requests) == 3


def test_search_api_redirect_does_not_carry_the_key(pages, monkeypatch):
    """A search API answering 302 to another host: the key must not follow (urllib's default would copy it)."""
    a, b = pages
    a.redirect_to = b.url("/moved.html")
    monkeypatch.setenv("SERPER_API_KEY", "serper-key-456")
    tool = build_search_tool(ToolsConfig(search=SearchToolConfig(backend="serper", url=a.url("/redirect"))))
    result = tool(ToolCall("search", "q"))
    assert not result.ok and result.text.startswith("Search failed: HTTP 302 from 127.0.0.1")
    assert b.requests == []


# ------------------------------------------------------------------------------------------ passages

def test_passage_is_the_window_around_the_best_matching_sentence():
    filler = "Unrelated words fill this part of the page. " * 200
    text = filler + "The tower is 330 metres tall and made of iron. " + filler
    passage, matched = select_passage(text, "Eiffel tower: 330 metres tall", context_chars=100, min_f1=0.2)
    assert matched and "330 metres tall" in passage
    sentence_len = len("The tower is 330 metres tall and made of iron.")
    assert len(passage) == 200 + sentence_len


def test_passage_falls_back_to_the_head_without_a_good_match():
    text = "Nothing relevant here. " * 100
    passage, matched = select_passage(text, "eiffel height", context_chars=50, min_f1=0.2)
    assert not matched and passage == text[:100]


def test_word_f1_ignores_case_and_punctuation():
    assert words("The Tower, tall!") == {"the", "tower", "tall"}
    assert word_f1({"a", "b"}, {"a", "b"}) == 1.0
    assert word_f1({"a", "b"}, {"a", "c", "d", "e"}) == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert word_f1({"a"}, set()) == 0.0


def test_sentences_split_at_end_marks_and_lines():
    text = "One. Two!  Three?\nFour 四。五"
    assert [text[s:e] for s, e in sentence_spans(text)] == ["One.", "Two!", "Three?", "Four 四。", "五"]


def test_cached_page_entry_is_json(tmp_path, pages):
    cache = SqliteCache(tmp_path / "u.sqlite")
    _read(_reader(cache=cache, page_max_chars=50), pages[0].url("/article.html"))
    (key,) = [r[0] for r in cache._conn().execute("SELECT key FROM cache")]
    entry = json.loads(cache.get(key))
    assert key.startswith("page|chars=50|") and entry["kind"] == "html" and len(entry["text"]) == 50
