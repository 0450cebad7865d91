"""The deep-search browser end to end on loopback: a Serper-format search server returning result URLs, page
servers on 127.0.0.1 and 127.0.0.2 (HTML, PDF, slow, huge, redirecting across hosts, missing) and an
OpenAI-compatible summariser scripted to answer, fail or hang; then the same tool inside the rollout loop and
an evaluation run."""

from __future__ import annotations

import time

import pytest

from appo.config import BrowserConfig, SearchToolConfig, ToolsConfig, load_config
from appo.tools.base import ToolCall
from appo.tools.browse import (
    BROWSER_PROMPT,
    extract_summary,
    reasoning_steps,
    render_prompt,
    truncate_reasoning,
)
from appo.tools.registry import build_tools
from appo.tools.search_backends import build_index

from .browse_servers import LOOPBACK_PAGES, PageServer, SummariserServer

QUERY = "eiffel tower height"
REASONING = "<think>I need the height of the tower.</think><search>eiffel tower height</search>"
ANSWER = "<think>Page 1 says 330 m.</think>\n**Final Information**\n\nThe Eiffel Tower is 330 metres tall."


@pytest.fixture()
def web(provider, monkeypatch):
    """(search provider, page server 127.0.0.1, page server 127.0.0.2) with the SERP pointing at the pages."""
    monkeypatch.setenv("SERPER_API_KEY", "serper-key-456")
    with PageServer("127.0.0.1") as a, PageServer("127.0.0.2") as b:
        a.redirect_to = b.url("/moved.html")
        results = [("Eiffel Tower facts", "/article.html", "The tower is 330 metres tall, about the same height "
                    "as an 81-storey building."),
                   ("Tower society report", "/report.pdf", "The tower received 6.3 million visitors."),
                   ("Slow site", "/slow.html", "A page that never finishes."),
                   ("Huge site", "/huge.html", "The tower is 330 metres tall."),
                   ("Moved", "/redirect", "The Statue of Liberty was a gift from France."),
                   ("Gone", "/gone.html", "A page that no longer exists.")]
        serp = {"organic": [{"title": t, "link": a.url(p), "snippet": s, "date": "2024-05-01T10:00:00"}
                            for t, p, s in results]}
        provider.replies = [(200, serp)] * 10
        yield provider, a, b


def _tools(provider, summariser, monkeypatch, call_timeout=20.0, result_max_chars=2000, **browser):
    monkeypatch.setenv("APPO_BROWSER_URL", summariser.url)
    monkeypatch.setenv("APPO_BROWSER_API_KEY", "sk-browse-789")
    cfg = BrowserConfig(**{"page_timeout": 1.0, "max_page_bytes": 100_000, "timeout": 5.0,
                           "allow_private": LOOPBACK_PAGES, **browser})
    return build_tools(ToolsConfig(enabled=["search"], timeout=call_timeout, result_max_chars=result_max_chars,
                                   search=SearchToolConfig(backend="serper", url=f"{provider.url}/search",
                                                           browse=True, browser=cfg)))


def _call(runner, reasoning=REASONING):
    t = time.monotonic()
    (result,) = runner.run([ToolCall("search", QUERY, reasoning=reasoning)])
    return result, time.monotonic() - t


def test_browse_reads_pages_and_returns_the_summary(web, monkeypatch):
    provider, a, b = web
    with SummariserServer([ANSWER]) as llm, _tools(provider, llm, monkeypatch) as runner:
        result, elapsed = _call(runner)
    assert result.ok and result.text == "The Eiffel Tower is 330 metres tall."
    (req,) = llm.requests
    assert req["path"] == "/v1/chat/completions" and req["model"] == "Qwen2.5-72B-Instruct"
    assert req["temperature"] == 0.6 and req["top_p"] == 0.95 and req["max_tokens"] == 4096
    assert llm.headers[0]["Authorization"] == "Bearer sk-browse-789"
    prompt = req["messages"][0]["content"]
    # The reference's shape: reasoning so far, the query, the pages with their passages.
    assert "**Previous Reasoning Steps:**\nStep 1: " + REASONING in prompt
    assert f"**Current Search Query:**\n{QUERY}" in prompt
    assert prompt.index("**Web Page 1:**") < prompt.index("**Web Page 6:**")
    assert "It was designed by the engineering company of Gustave Eiffel" in prompt   # HTML main text
    assert "Copyright" not in prompt and "Log in" not in prompt                       # boilerplate dropped
    assert "6.3 million visitors in 2023" in prompt                                    # PDF text
    assert "(the page could not be read: no complete answer within 1s)" in prompt      # slow page
    assert "Its copper skin was designed by Frederic Bartholdi" in prompt              # redirected page
    assert "(the page could not be read: HTTP 404)" in prompt                          # missing page
    assert '"date": "2024-05-01"' in prompt
    assert not {"Authorization", "Cookie"} & set(b.requests[0][1])
    meta = result.meta
    assert meta["pages"] == 6 and meta["pages_read"] == 4 and set(meta["page_errors"]) == {
        a.url("/slow.html"), a.url("/gone.html")}
    phases = meta["phases"]
    assert set(phases) == {"search", "fetch", "summarise"}
    assert 0.9 < phases["fetch"] < 2.5 and elapsed < 4.0   # the slow page costs its deadline, no more
    assert sum(phases.values()) <= result.seconds + 0.01
    print(f"\nbrowser call on loopback: search {phases['search']:.3f}s, fetch {phases['fetch']:.3f}s "
          f"(6 pages, one cut at its 1 s deadline), summarise {phases['summarise']:.3f}s, total {result.seconds:.3f}s")


def test_summariser_errors_are_retried_then_fall_back_to_snippets(web, monkeypatch):
    provider, _, _ = web
    with SummariserServer([500, "**Final Information**\nThe tower is 330 m."]) as llm, \
            _tools(provider, llm, monkeypatch, retries=2) as runner:
        result, _ = _call(runner)
        assert result.ok and result.text == "The tower is 330 m." and result.meta["summary_attempts"] == 2
        llm.script.extend([503, 503])
        result, _ = _call(runner)
    assert not result.ok and result.meta["summary_error"] == "HTTP 503"
    lines = result.text.split("\n")
    assert lines[0] == "Browsing failed (summariser: HTTP 503); the search snippets follow."
    assert lines[1] == "Page 1: The tower is 330 metres tall, about the same height as an 81-storey building."
    assert len(lines) == 7 and "sk-browse-789" not in result.text


def test_fallback_fits_the_result_budget_and_keeps_the_reason(web, monkeypatch):
    provider, _, _ = web
    with SummariserServer([500]) as llm, _tools(provider, llm, monkeypatch, result_max_chars=150) as runner:
        result, _ = _call(runner)
    assert not result.ok and len(result.text) <= 150
    assert result.text.startswith("Browsing failed (summariser: HTTP 500)")


def test_hanging_summariser_is_cut_at_its_timeout(web, monkeypatch):
    provider, _, _ = web
    with SummariserServer(["!hang"]) as llm, _tools(provider, llm, monkeypatch, timeout=1.0) as runner:
        result, elapsed = _call(runner)
    assert not result.ok and result.meta["summary_error"] == "no answer within 1s"
    assert 0.9 < result.meta["phases"]["summarise"] < 1.8 and elapsed < 4.0


def test_the_call_deadline_bounds_fetching_and_summarising(web, monkeypatch):
    provider, _, _ = web
    with SummariserServer([ANSWER]) as llm, _tools(provider, llm, monkeypatch, call_timeout=1.2, page_timeout=30.0) as r:
        result, elapsed = _call(r)
    assert not result.ok and result.meta["summary_error"] == "no time left in tools.timeout=1.2s"
    assert llm.requests == [] and elapsed < 2.0


def test_summariser_redirect_is_not_followed_with_the_key(web, monkeypatch):
    provider, _, b = web
    with SummariserServer([("redirect", b.url("/collect"))]) as llm, _tools(provider, llm, monkeypatch) as r:
        result, _ = _call(r)
    assert not result.ok and result.meta["summary_error"] == "HTTP 302"
    assert [path for path, _ in b.requests] == ["/moved.html"]   # the result page only, nothing at /collect


def test_empty_reply_and_unreachable_summariser_become_text(web, monkeypatch):
    provider, _, _ = web
    with SummariserServer(["<think>hmm</think>"]) as llm, _tools(provider, llm, monkeypatch) as runner:
        result, _ = _call(runner)
        assert not result.ok and result.meta["summary_error"] == "empty reply"
        llm.stop.set()
    with SummariserServer() as gone:
        pass
    with _tools(provider, gone, monkeypatch) as runner:
        result, _ = _call(runner)
    assert not result.ok and result.meta["summary_error"].startswith("connection failed")


def test_search_failure_and_no_results(web, monkeypatch):
    provider, _, _ = web
    with SummariserServer() as llm, _tools(provider, llm, monkeypatch) as runner:
        provider.replies = [(400, "bad query"), (200, {"organic": []})]
        failed, _ = _call(runner)
        empty, _ = _call(runner)
    assert not failed.ok and failed.text.startswith("Search failed: HTTP 400 from 127.0.0.1")
    assert empty.ok and empty.text == "No search results found." and llm.requests == []


def test_caches_skip_search_and_fetch_on_a_repeat(web, monkeypatch, tmp_path):
    provider, a, _ = web
    monkeypatch.setenv("APPO_BROWSER_URL", "unused")
    with SummariserServer([ANSWER, ANSWER]) as llm:
        monkeypatch.setenv("APPO_BROWSER_URL", llm.url)
        cfg = ToolsConfig(enabled=["search"], timeout=20.0, search=SearchToolConfig(
            backend="serper", url=f"{provider.url}/search", browse=True, sqlite_cache=str(tmp_path / "s.sqlite"),
            browser=BrowserConfig(page_timeout=1.0, max_page_bytes=100_000, url_cache=str(tmp_path / "u.sqlite"),
                                  allow_private=LOOPBACK_PAGES)))
        with build_tools(cfg) as runner:
            first, _ = _call(runner)
            fetched = len(a.requests)
            second, _ = _call(runner)
    assert first.ok and second.ok and second.meta["cache"] == "hit" and len(provider.requests) == 1
    assert second.meta["pages_cached"] == 4          # the four readable pages; failures are fetched again
    assert len(a.requests) - fetched == 2            # the slow page and the 404
    assert llm.prompts[0] == llm.prompts[1]


def test_local_documents_are_their_own_pages_and_urls_are_fetched(tmp_path, monkeypatch):
    docs = [{"id": "1", "title": "Tower", "text": "The Eiffel tower height is 330 metres. It is in Paris."},
            {"id": "2", "title": "Tower page", "text": "Eiffel tower height, see the page.", "url": ""}]
    with PageServer() as a, SummariserServer([ANSWER]) as llm:
        docs[1]["url"] = a.url("/article.html")
        build_index(docs, tmp_path / "index")
        monkeypatch.setenv("APPO_BROWSER_URL", llm.url)
        cfg = ToolsConfig(enabled=["search"], search=SearchToolConfig(
            backend="local", index_dir=str(tmp_path / "index"), browse=True,
            browser=BrowserConfig(allow_private=LOOPBACK_PAGES)))
        with build_tools(cfg) as runner:
            result, _ = _call(runner)
    assert result.ok and [p for p, _ in a.requests] == ["/article.html"]
    assert '"context": "The Eiffel tower height is 330 metres. It is in Paris."' in llm.prompts[0]
    assert "It was designed by the engineering company of Gustave Eiffel" in llm.prompts[0]


def test_startup_checks_name_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_BROWSER_URL", raising=False)
    browse = SearchToolConfig(backend="retriever", url="http://127.0.0.1:9/retrieve", browse=True,
                              browser=BrowserConfig(url_env="MY_BROWSER_URL"))
    with pytest.raises(ValueError, match="environment variable MY_BROWSER_URL"):
        build_tools(ToolsConfig(enabled=["search"], search=browse))
    monkeypatch.setenv("MY_BROWSER_URL", "http://127.0.0.1:9")
    bad = tmp_path / "prompt.txt"
    bad.write_text("Summarise {pages}")
    browse.browser.prompt_file = str(bad)
    with pytest.raises(ValueError, match=r"prompt.txt: the browser prompt template lacks \{query\}"):
        build_tools(ToolsConfig(enabled=["search"], search=browse))
    browse.browser.prompt_file = str(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="cannot read .*missing.txt"):
        build_tools(ToolsConfig(enabled=["search"], search=browse))


def test_browse_keys_are_documented_and_checked(monkeypatch):
    from appo.config import ConfigError, describe

    cfg = load_config("tiny", ["tools.search.browse=true", "tools.search.browser.top_pages=3"])
    assert cfg.tools.search.browse and cfg.tools.search.browser.top_pages == 3
    assert not load_config("tiny").tools.search.browse                       # off by default
    rows = {key: help_text for key, _, help_text in describe()}
    assert all(rows[k] for k in rows if k.startswith("tools.search.browser.")) and "tools.search.browse" in rows
    with pytest.raises(ConfigError, match="Valid keys under 'tools.search.browser.'"):
        load_config("tiny", ["tools.search.browser.pages=3"])
    with pytest.raises(ConfigError, match=r"tools.search.browser.min_f1=2.0 is out of range; valid: 0 to 1"):
        load_config("tiny", ["tools.search.browser.min_f1=2"])
    monkeypatch.setenv("APPO_BROWSER_URL", "http://127.0.0.1:9")
    zero = SearchToolConfig(backend="retriever", url="http://127.0.0.1:9/r", browse=True,
                            browser=BrowserConfig(page_timeout=0))
    with pytest.raises(ValueError, match=r"tools.search.browser.page_timeout=0 must be > 0"):
        build_tools(ToolsConfig(enabled=["search"], search=zero))


def test_custom_prompt_template_is_used(web, monkeypatch, tmp_path):
    provider, _, _ = web
    template = tmp_path / "mine.txt"
    template.write_text("Q={query}\nR={reasoning}\nP={pages}\nJSON example: {\"a\": 1}")
    with SummariserServer(["Short answer."]) as llm, \
            _tools(provider, llm, monkeypatch, prompt_file=str(template)) as runner:
        result, _ = _call(runner)
    assert result.ok and result.text == "Short answer."
    prompt = llm.prompts[0]
    assert prompt.startswith(f"Q={QUERY}\nR=Step 1: {REASONING}\nP=**Web Page 1:**")
    assert prompt.endswith('JSON example: {"a": 1}')


# ---------------------------------------------------------------------------------- pure parts

def test_render_substitutes_once():
    assert render_prompt("{query}|{reasoning}|{pages}|{other}", "r {pages}", "q {query}", "p") == \
        "q {query}|r {pages}|p|{other}"
    assert all(p in BROWSER_PROMPT for p in ("{reasoning}", "{query}", "{pages}", "**Final Information**"))


def test_reasoning_steps_and_the_reference_cut():
    text = ("plan <python>1</python> <result>\n1\n</result> think <search>a</search> <result>\nA\n</result>"
            " more <python>2</python> <result>\n2\n</result> then <search>b</search>")
    steps = reasoning_steps(text)
    assert steps == ["plan <python>1</python>", "<result>\n1\n</result>", "think <search>a</search>",
                     "<result>\nA\n</result>", "more <python>2</python>", "<result>\n2\n</result>",
                     "then <search>b</search>"]
    assert truncate_reasoning(text).split("\n\n") == [
        "Step 1: plan <python>1</python>", "...", "Step 3: think <search>a</search>",
        "Step 4: <result>\nA\n</result>", "Step 5: more <python>2</python>", "Step 6: <result>\n2\n</result>",
        "Step 7: then <search>b</search>"]
    long = " ".join(f"step{i} <python>{i}</python> <result>\n{i}\n</result>" for i in range(6))
    cut = truncate_reasoning(long).split("\n\n")
    assert cut[0] == "Step 1: step0 <python>0</python>" and cut[1] == "..." and len(cut) == 6
    assert truncate_reasoning("") == ""


def test_extract_summary():
    marker = "**Final Information**"
    assert extract_summary("x **Final Information** a\n**Final Information**\n\n b ", marker) == "b"
    assert extract_summary("<think>**Final Information** no</think>plain answer", marker) == "plain answer"
    assert extract_summary("open thinking</think>\n**Final Information**\n```\nfact\n```", marker) == "fact"
    assert extract_summary("<think>only thoughts</think>", marker) == ""


# ------------------------------------------------------------------------ rollouts and evaluation

def _agent(prompt_text, req):
    turn = prompt_text.split("<|im_start|>assistant")[-1]
    return "<answer>\\boxed{330}</answer><|im_end|>" if "<result>" in turn else REASONING


def test_browser_in_the_rollout_loop_sees_the_reasoning_and_reports_phases(web, monkeypatch, tiny_tokenizer):
    from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop

    from ..rollout.conftest import ScriptedEngine

    provider, _, _ = web
    tok = tiny_tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "How tall?"}], add_generation_prompt=True,
                                   tokenize=False)
    stats: dict = {}
    with SummariserServer([ANSWER]) as llm, _tools(provider, llm, monkeypatch) as tools:
        (traj,) = run_tool_loop(ScriptedEngine(tok, _agent), tools, [LoopStart.fresh(tok.encode(chat))],
                                RolloutLoopSettings(max_response_length=300), stats)
    assert "Step 1: <think>I need the height of the tower.</think><search>eiffel tower height</search>" in \
        llm.prompts[0]
    assert "<result>\nThe Eiffel Tower is 330 metres tall.\n</result>" in traj.response_text(tok)
    (entry,) = traj.tool_log
    assert entry["ok"] and set(entry["phases"]) == {"search", "fetch", "summarise"}
    assert stats["search_fetch_seconds"] == pytest.approx(entry["phases"]["fetch"])
    assert stats["search_summarise_seconds"] > 0 and stats["search_search_seconds"] > 0


def test_browser_in_evaluation_reports_phase_means(web, monkeypatch, tiny_tokenizer):
    from appo.eval.evaluate import EvalSet, run_sets

    from ..eval.test_run_sets import _Prompt
    from ..rollout.conftest import ScriptedEngine

    provider, _, _ = web
    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "How tall is the Eiffel Tower?"}]
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    cfg = load_config("tiny", ["tools.enabled=[search]", "eval.max_response_length=300", "tools.call_limit=1"])
    with SummariserServer([ANSWER]) as llm, _tools(provider, llm, monkeypatch) as tools:
        summary = run_sets(ScriptedEngine(tok, _agent), tools, [EvalSet("towers", "qa", [_Prompt(messages, ids, "330")])],
                           cfg, None, progress=False)["towers"]
    assert summary["search_calls_per_sample"] == 1 and summary["search_errors"] == 0
    assert 0.9 < summary["search_fetch_seconds"] < 2.5 and summary["search_summarise_seconds"] > 0
