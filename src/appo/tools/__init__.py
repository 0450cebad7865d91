"""The agent's tools: sandboxed Python and search, behind one runner (`build_tools(cfg.tools)`)."""

from appo.tools.base import Tool, ToolCall, ToolResult
from appo.tools.registry import ToolRunner, build_tools

__all__ = ["Tool", "ToolCall", "ToolResult", "ToolRunner", "build_tools"]
