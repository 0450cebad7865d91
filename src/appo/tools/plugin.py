"""User tools: a typed Python function with a docstring, or a class whose instances are called the same way,
named in the config (`tools.custom`) or passed from Python.

A plug-in runs in the trainer's process with the trainer's rights, on arguments the policy wrote; work
that must not (running the model's code, touching files) belongs in the sandbox: see docs/extending.md.
"""

from __future__ import annotations

import inspect
from typing import Any

from appo.plugins import PluginError, load_object
from appo.tools.base import ToolCall, ToolResult
from appo.tools.spec import ToolSpec, spec_from_callable


class FunctionTool:
    """A typed callable as a tool: the call's text is parsed into its arguments (`ToolSpec.parse`), a
    malformed call comes back as an error result, and the return value (str() of it) is the result text."""

    def __init__(self, fn: Any, spec: ToolSpec):
        self.fn, self.spec, self.name = fn, spec, spec.name

    def __call__(self, call: ToolCall) -> ToolResult:
        try:
            kwargs = self.spec.parse(call.payload)
        except ValueError as e:
            return ToolResult(str(e), ok=False)
        return as_result(self.fn(**kwargs))

    def close(self) -> None:
        close = getattr(self.fn, "close", None)
        if callable(close):
            close()


def as_result(value: Any) -> ToolResult:
    """A tool's return value as the result the model sees: a ToolResult as it is, None as empty, else str()."""
    if isinstance(value, ToolResult):
        return value
    return ToolResult("" if value is None else str(value), ok=True)


def make_tool(obj: Any, where: str, name: str | None = None, args: dict | None = None) -> FunctionTool:
    """A tool from a function, a class (instantiated with `args`) or a callable instance; `where` names the
    plug-in (its config key and spec) in errors."""
    args = dict(args or {})
    if inspect.isclass(obj):
        try:
            instance = obj(**args)
        except TypeError as e:
            raise PluginError(f"{where}: cannot construct {obj.__name__} with args {args} ({e})") from None
        if not callable(instance):
            raise PluginError(f"{where}: class {obj.__name__} has no __call__ method; a tool class is called "
                              "like a function")
        tool_name = name or getattr(obj, "name", None) or _snake(obj.__name__)
        return FunctionTool(instance, spec_from_callable(instance.__call__, tool_name, where, doc_owner=obj))
    if args:
        raise PluginError(f"{where}: args are given but {getattr(obj, '__name__', obj)!r} is not a class")
    if not callable(obj):
        raise PluginError(f"{where}: {obj!r} is not a function or class")
    tool_name = name or getattr(obj, "__name__", None) or _snake(type(obj).__name__)
    owner = None if inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj)  # a callable instance's class
    return FunctionTool(obj, spec_from_callable(obj, tool_name, where, doc_owner=owner))


def custom_entry(entry: Any, where: str) -> tuple[str, dict, str | None]:
    """(spec, args, name) of one `tools.custom` entry: a 'pkg.mod:fn' string, or a mapping with `spec` and
    optional `args` (constructor arguments of a class) and `name` (overrides the tool's name)."""
    if isinstance(entry, str):
        return entry, {}, None
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"spec", "args", "name"})
        if unknown or "spec" not in entry:
            raise PluginError(f"{where}: an entry is 'pkg.mod:fn' or {{spec: 'pkg.mod:Class', args: {{...}}, "
                              f"name: ...}}; got keys {sorted(entry)}")
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise PluginError(f"{where}.args: expected a mapping of constructor arguments, got {args!r}")
        return entry["spec"], args, entry.get("name")
    raise PluginError(f"{where}: expected 'pkg.mod:fn' or a mapping with spec/args, got {entry!r}")


def load_custom_tool(entry: Any, where: str) -> FunctionTool:
    spec, args, name = custom_entry(entry, where)
    return make_tool(load_object(spec, where), f"{where} ({spec})", name, args)


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return out.lstrip("_")
