"""Web search backends against loopback servers speaking each provider's wire format."""

from __future__ import annotations

import pytest

from appo.config import SearchToolConfig, ToolsConfig
from appo.tools.base import ToolCall
from appo.tools.registry import build_search_tool

ORGANIC = {"organic": [{"description": "Paris is the capital of France.", "snippet": "Paris is the capital."},
                       {"description": "Paris is the capital of France.", "snippet": "France, Europe."},
                       {"description": "", "snippet": ""},
                       {"description": "Population 2.1 million.", "snippet": "Population 2.1 million."}]}


def make(provider, backend, retry_count=1, timeout=10.0, **search):
    cfg = ToolsConfig(timeout=timeout, retry_count=retry_count,
                      search=SearchToolConfig(backend=backend, url=f"{provider.url}/x", retry_backoff=0.01, **search))
    return build_search_tool(cfg)


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("BRIGHTDATA_API_KEY", "bd-key-123")
    monkeypatch.setenv("BRIGHTDATA_ZONE", "serp_zone")
    monkeypatch.setenv("SERPER_API_KEY", "serper-key-456")


def test_brightdata_request_and_formatting(provider):
    provider.replies = [(200, ORGANIC)]
    r = make(provider, "brightdata")(ToolCall("search", 'capital of "France"'))
    assert r.ok and r.text == "Page 1: Paris is the capital of France.\nPage 2: Population 2.1 million."
    (req,) = provider.requests
    assert req["headers"]["Authorization"] == "Bearer bd-key-123"
    assert req["json"]["zone"] == "serp_zone" and req["json"]["format"] == "raw"
    assert req["json"]["url"] == ("https://www.bing.com/search?q=capital+of+France&mkt=en-US&setLang=en"
                                  "&brd_json=1&cc=us")


def test_brightdata_chinese_query_uses_chinese_market(provider):
    provider.replies = [(200, {"organic": []})]
    r = make(provider, "brightdata", location="cn")(ToolCall("search", "甄嬛传导演"))
    assert r.ok and r.text == "No search results found."
    assert "mkt=zh-CN&setLang=zh" in provider.requests[0]["json"]["url"]
    assert provider.requests[0]["json"]["url"].endswith("&brd_json=1&cc=cn")


def test_serper_request_and_formatting(provider):
    provider.replies = [(200, ORGANIC)]
    r = make(provider, "serper", max_results=2, result_length=10)(ToolCall("search", "paris"))
    assert r.ok and r.text == "Page 1: Paris is t\nPage 2: France, Eu"
    (req,) = provider.requests
    assert req["headers"]["X-Api-Key"] == "serper-key-456"
    assert req["json"] == {"q": "paris", "gl": "us", "num": 2}


def test_retriever_both_response_shapes(provider):
    hits = [{"document": {"id": "1", "contents": '"Paris"\nParis is the capital.'}, "score": 3.2}]
    provider.replies = [(200, {"result": [hits]}), (200, {"result": [[{"contents": "bare doc"}]]})]
    tool = make(provider, "retriever", max_results=3)
    assert tool(ToolCall("search", "paris")).text == 'Page 1: "Paris" Paris is the capital.'
    assert tool(ToolCall("search", "other")).text == "Page 1: bare doc"
    assert provider.requests[0]["json"] == {"queries": ["paris"], "topk": 3, "return_scores": True}


def test_retries_transient_500_then_succeeds(provider):
    provider.replies = [(500, "boom"), (503, "busy"), (200, ORGANIC)]
    r = make(provider, "serper", retry_count=3)(ToolCall("search", "q"))
    assert r.ok and r.meta["attempts"] == 3 and len(provider.requests) == 3


def test_all_attempts_fail_gives_a_clear_message(provider):
    provider.replies = [(500, "boom")] * 3
    r = make(provider, "serper", retry_count=3)(ToolCall("search", "q"))
    assert not r.ok and r.text.startswith("Search failed: HTTP 500 from 127.0.0.1")
    assert r.text.endswith("(after 3 attempts)") and len(provider.requests) == 3


def test_client_error_is_not_retried_and_key_is_redacted(provider):
    provider.replies = [(401, "invalid key serper-key-456")]
    r = make(provider, "serper", retry_count=3)(ToolCall("search", "q"))
    assert not r.ok and "HTTP 401" in r.text and "serper-key-456" not in r.text and "***" in r.text
    assert len(provider.requests) == 1


def test_timeout_and_malformed_json(provider):
    provider.replies = [(200, ("sleep", 1.0)), (200, "{not json")]
    slow = make(provider, "retriever", request_timeout=0.2)(ToolCall("search", "q"))
    assert not slow.ok and "did not answer within 0.2s" in slow.text
    bad = make(provider, "retriever")(ToolCall("search", "q"))
    assert not bad.ok and "malformed JSON" in bad.text


def test_unreachable_server_fails_cleanly():
    cfg = ToolsConfig(search=SearchToolConfig(backend="retriever", url="http://127.0.0.1:9/none"))
    r = build_search_tool(cfg)(ToolCall("search", "q"))
    assert not r.ok and r.text.startswith("Search failed: cannot reach 127.0.0.1:9")


def test_missing_key_is_a_startup_error(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY")
    with pytest.raises(ValueError, match="SERPER_API_KEY"):
        build_search_tool(ToolsConfig(search=SearchToolConfig(backend="serper")))


def test_sqlite_cache_answers_repeats_without_the_network(provider, tmp_path):
    provider.replies = [(200, ORGANIC)]
    db = str(tmp_path / "search.sqlite")
    first = make(provider, "serper", sqlite_cache=db)(ToolCall("search", "paris"))
    again = make(provider, "serper", sqlite_cache=db)(ToolCall("search", "paris"))  # a new process would see it too
    assert first.ok and again.text == first.text and again.meta["cache"] == "hit"
    assert len(provider.requests) == 1
    provider.replies = [(500, "down")]
    failed = make(provider, "serper", sqlite_cache=db)(ToolCall("search", "never cached"))
    assert not failed.ok
    assert make(provider, "serper", sqlite_cache=db).cache.get("serper|us|k=10|never cached") is None
