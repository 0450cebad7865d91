"""Build the enabled tools from the config and run batches of calls in a bounded thread pool."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from appo.config import ToolsConfig
from appo.tools.base import Tool, ToolCall, ToolResult
from appo.tools.output import truncate

log = logging.getLogger(__name__)


class ToolRunner:
    """Runs tool calls in parallel; every call yields a ToolResult whose text is what the model sees
    (at most `result_max_chars` characters). Tool failures become results with ok=False, never raises."""

    def __init__(self, tools: dict[str, Tool], max_workers: int = 16, result_max_chars: int = 2000):
        self.tools = tools
        self.result_max_chars = result_max_chars
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="appo-tool")
        self._closers = [t for t in tools.values() if hasattr(t, "close")]

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        futures = [self.submit(call) for call in calls]
        return [f.result() for f in futures]

    def submit(self, call: ToolCall) -> Future:
        """Start one call in the pool; the future's result is its ToolResult (never an exception)."""
        return self._pool.submit(self._run_one, call)

    def _run_one(self, call: ToolCall) -> ToolResult:
        start = time.time()
        tool = self.tools.get(call.tool)
        if tool is None:
            result = ToolResult(f"Error: unknown tool '{call.tool}'; available tools: {', '.join(self.tools)}", False)
        else:
            try:
                result = tool(call)
            except Exception as e:  # a tool bug must not take the rollout down; the model sees the reason
                log.exception("tool %s failed", call.tool)
                result = ToolResult(f"Error: Tool({call.tool}) execution failed with message: {e}", False)
        if result.ok and not result.text.strip():
            result.text = f"Tool({call.tool}) returned empty output."  # the reference's wording
        result.text = truncate(result.text, self.result_max_chars, "head" if result.ok else "tail")
        end = time.time()
        result.meta.setdefault("start", start)
        result.meta.setdefault("end", end)
        if not result.seconds:
            result.seconds = end - start
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for tool in self._closers:
            tool.close()

    def __enter__(self) -> ToolRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_tools(tools_cfg: ToolsConfig) -> ToolRunner:
    """The enabled tools (`tools.enabled`), each built and checked now, so a missing sandbox or backend
    fails at start-up with a message saying how to fix it."""
    if tools_cfg.timeout <= 0:
        raise ValueError(f"tools.timeout={tools_cfg.timeout} must be > 0 (seconds per tool call)")
    tools: dict[str, Tool] = {}
    for name in tools_cfg.enabled:
        if name == "python":
            from appo.tools.python import PythonTool

            tools[name] = PythonTool(tools_cfg.python, tools_cfg.timeout, tools_cfg.result_max_chars)
        elif name == "search":
            tools[name] = build_search_tool(tools_cfg)
        else:
            raise ValueError(f"tools.enabled: unknown tool '{name}'; choose from: python, search")
    return ToolRunner(tools, tools_cfg.max_workers, tools_cfg.result_max_chars)


def build_search_tool(tools_cfg: ToolsConfig):
    from appo.tools.search import SearchTool
    from appo.tools.search_backends import build_backend
    from appo.tools.search_cache import SqliteCache

    cfg = tools_cfg.search
    if cfg.request_timeout <= 0:
        raise ValueError(f"tools.search.request_timeout={cfg.request_timeout} must be > 0 (seconds)")
    cache = SqliteCache(cfg.sqlite_cache) if cfg.sqlite_cache else None
    search = SearchTool(cfg, build_backend(cfg), tools_cfg.timeout, tools_cfg.retry_count, cache)
    if not cfg.browse:
        return search
    from appo.tools.browse import build_browse_tool

    return build_browse_tool(search, tools_cfg)
