"""The deep-search browser (`tools.search.browse=true`): the `<search>` tool in the shape of the reference's
"simple deep search" mode.

One call: search (hits with URLs, through the search tool's cache and retries) -> read the top pages in
parallel (pages.py: per-page deadline, size cap, main text, URL cache) -> keep the passage around the
sentence that best matches each snippet (passages.py) -> ask an OpenAI-compatible model, given the
reasoning so far, the query and the pages, for the helpful information -> the text after the marker
("**Final Information**") is what the model sees.

Everything that can fail becomes text: a page that cannot be read is shown to the summariser as such;
when the summariser fails (HTTP error, hang, empty reply, no time left in `tools.timeout`) the model gets the
plain search snippets under a line saying why, with ok=False. `meta["phases"]` holds the seconds spent in
search, fetch and summarise.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from appo.config import ToolsConfig
from appo.tools.base import ToolCall, ToolResult
from appo.tools.openai_client import ChatClient, ChatError, endpoint_from_env
from appo.tools.output import truncate
from appo.tools.pages import Page, PageReader
from appo.tools.passages import select_passage
from appo.tools.search import NO_RESULTS, SearchError, SearchHit, SearchTool, clean_query, format_results
from appo.tools.search_cache import SqliteCache

BROWSER_PROMPT = """**Task:** You read web pages on behalf of a reasoning agent. You are given its \
**Previous Reasoning Steps**, its **Current Search Query** and the **Searched Web Pages**. Find the facts on \
these pages that answer the current query or move the reasoning forward toward the original question.

**How to work:**
1. Read every page and note what bears on the current query or on the question the reasoning works on.
2. Report only what the pages state. If no page helps, say that plainly.
3. Put your result after a line that reads exactly **Final Information**, like this:

**Final Information**

[the helpful information]

**Previous Reasoning Steps:**
{reasoning}

**Current Search Query:**
{query}

**Searched Web Pages:**
{pages}

Now go through the pages and give the information that helps with the query "{query}" and the reasoning \
so far."""

_PLACEHOLDER = re.compile(r"\{(reasoning|query|pages)\}")
_REQUIRED = ("{query}", "{pages}")
_RESULT_BLOCK = re.compile(r"<result>.*?</result>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_KEEP_LAST_STEPS = 4


def render_prompt(template: str, reasoning: str, query: str, pages: str) -> str:
    """One pass over the template, so braces or placeholder names inside the inserted texts stay as they are."""
    values = {"reasoning": reasoning, "query": query, "pages": pages}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def load_template(path: str | None) -> str:
    if path is None:
        return BROWSER_PROMPT
    file = Path(path).expanduser()
    try:
        template = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"tools.search.browser.prompt_file: cannot read {file} ({e.strerror or e})") from None
    missing = [p for p in _REQUIRED if p not in template]
    if missing:
        raise ValueError(f"{file}: the browser prompt template lacks {' and '.join(missing)} (placeholders: "
                         "{reasoning}, {query}, {pages})")
    return template


def reasoning_steps(text: str) -> list[str]:
    """The trajectory so far as steps: each stretch of model text, and each <result> block."""
    steps, pos = [], 0
    for m in _RESULT_BLOCK.finditer(text):
        if text[pos:m.start()].strip():
            steps.append(text[pos:m.start()].strip())
        steps.append(m.group(0))
        pos = m.end()
    if text[pos:].strip():
        steps.append(text[pos:].strip())
    return steps


def truncate_reasoning(text: str) -> str:
    """The reference's cut of long reasoning: with more than five steps keep the first, the last four, every
    step with a search call and the result right after one; each run of dropped steps becomes "..."."""
    steps = reasoning_steps(text)
    if len(steps) <= _KEEP_LAST_STEPS + 1:
        return "\n\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    kept: list[str] = []
    for i, step in enumerate(steps):
        searches = "<search>" in step and "</search>" in step
        search_result = step.startswith("<result>") and i > 0 and "<search>" in steps[i - 1]
        if i == 0 or i >= len(steps) - _KEEP_LAST_STEPS or searches or search_result:
            kept.append(f"Step {i + 1}: {step}")
        elif not kept or kept[-1] != "...":
            kept.append("...")
    return "\n\n".join(kept)


def extract_summary(reply: str, marker: str) -> str:
    """The reply's text after the last marker (all of it without one); a reasoning model's <think> block,
    closed or left open by a chat template that opened it, is dropped first."""
    text = _THINK.sub("", reply)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if marker and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip().strip("`").strip()


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class BrowseTool:
    name = "search"

    def __init__(self, search: SearchTool, tools_cfg: ToolsConfig, reader: PageReader, client: ChatClient,
                 template: str):
        self.search = search
        self.cfg = tools_cfg.search.browser
        self.search_cfg = tools_cfg.search
        self.timeout = tools_cfg.timeout
        self.result_max_chars = tools_cfg.result_max_chars
        self.reader = reader
        self.client = client
        self.template = template

    def __call__(self, call: ToolCall) -> ToolResult:
        start, began = time.time(), time.monotonic()
        deadline = began + self.timeout
        phases: dict[str, float] = {}
        query = clean_query(call.payload)
        if not query:
            return self._result("Search failed: the query is empty.", False, start, {"phases": phases})
        try:
            hits, search_meta = self.search.find_hits(query)
        except SearchError as e:
            phases["search"] = time.monotonic() - began
            return self._result(f"Search failed: {e}", False, start, {"phases": phases})
        phases["search"] = time.monotonic() - began
        hits = [h for h in hits if h.snippet.strip() or h.url or h.text][:self.cfg.top_pages]
        if not hits:
            return self._result(NO_RESULTS, True, start, {**search_meta, "phases": phases})

        t = time.monotonic()
        pages = self._pages(hits, deadline)
        phases["fetch"] = time.monotonic() - t
        documents = "\n".join(self._document(i, h, p) for i, (h, p) in enumerate(zip(hits, pages), 1))
        prompt = render_prompt(self.template, truncate_reasoning(call.reasoning), query, documents)

        t = time.monotonic()
        summary, error, attempts = self._summarise(prompt, deadline)
        phases["summarise"] = time.monotonic() - t
        meta = {**search_meta, "phases": phases, "pages": len(pages),
                "pages_read": sum(1 for p in pages if p.text), "pages_cached": sum(p.cached for p in pages),
                "page_errors": {p.url: p.error for p in pages if p.error}, "summary_attempts": attempts}
        if error:
            meta["summary_error"] = error
            return self._result(self._fallback(hits, error), False, start, meta)
        return self._result(summary, True, start, meta)

    def _pages(self, hits: list[SearchHit], deadline: float) -> list[Page]:
        """One Page per hit: the backend's own document, a fetched URL, or nothing but the snippet."""
        urls = _unique([h.url for h in hits if h.url and not h.text])
        fetched = dict(zip(urls, self.reader.read_many(urls, deadline)))
        pages = []
        for h in hits:
            if h.text:
                pages.append(Page(h.url, h.text[:self.cfg.page_max_chars], "document"))
            elif h.url:
                pages.append(fetched[h.url])
            else:
                pages.append(Page("", error="the search backend gives no URL for this result"))
        return pages

    def _document(self, i: int, hit: SearchHit, page: Page) -> str:
        if page.text:
            context, _ = select_passage(page.text, hit.snippet, self.cfg.context_chars, self.cfg.min_f1)
        else:
            context = f"(the page could not be read: {page.error})"
        doc = {"id": i, "title": hit.title, "url": hit.url, "date": hit.date, "snippet": hit.snippet,
               "context": context}
        return f"**Web Page {i}:**\n{json.dumps(doc, ensure_ascii=False, indent=2)}"

    def _summarise(self, prompt: str, deadline: float) -> tuple[str, str, int]:
        """(summary, error, attempts); exactly one of summary and error is empty."""
        error, attempts = "", 0
        for attempts in range(1, self.cfg.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0.05:
                return "", error or f"no time left in tools.timeout={self.timeout:g}s", attempts - 1
            try:
                reply = self.client.complete(prompt, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                             max_tokens=self.cfg.max_tokens, timeout=min(self.cfg.timeout, left))
            except ChatError as e:
                error = str(e)
                continue
            summary = extract_summary(reply, self.cfg.marker)
            if summary:
                return summary, "", attempts
            error = "empty reply"
        return "", error, attempts

    def _fallback(self, hits: list[SearchHit], error: str) -> str:
        """The snippets the plain search tool would have shown, under one line saying why, fitted to
        result_max_chars so the head (the reason) survives."""
        header = f"Browsing failed (summariser: {error}); the search snippets follow."
        body = format_results([h.snippet for h in hits], self.search_cfg.max_results, self.search_cfg.result_length)
        room = self.result_max_chars - len(header) - 1
        return f"{header}\n{truncate(body, room, 'head')}" if room > 0 else header[:self.result_max_chars]

    def close(self) -> None:
        self.search.close()
        self.reader.close()

    @staticmethod
    def _result(text: str, ok: bool, start: float, meta: dict) -> ToolResult:
        end = time.time()
        meta["phases"] = {k: round(v, 4) for k, v in meta.get("phases", {}).items()}
        return ToolResult(text=text, ok=ok, seconds=end - start, meta={**meta, "start": start, "end": end})


def build_browse_tool(search: SearchTool, tools_cfg: ToolsConfig) -> BrowseTool:
    """Checked now: the summariser endpoint variable, the prompt template, the extraction libraries."""
    cfg = tools_cfg.search.browser
    for name in ("page_timeout", "timeout"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"tools.search.browser.{name}={getattr(cfg, name)} must be > 0 (seconds)")
    base, key = endpoint_from_env(cfg.url_env, cfg.key_env)
    if not base:
        raise ValueError(f"tools.search.browse=true needs the summariser's base URL (an OpenAI-compatible "
                         f"server, e.g. http://localhost:8000/v1) in the environment variable {cfg.url_env}")
    template = load_template(cfg.prompt_file)
    reader = PageReader(cfg, SqliteCache(cfg.url_cache) if cfg.url_cache else None)
    return BrowseTool(search, tools_cfg, reader, ChatClient(base, key, cfg.model), template)
