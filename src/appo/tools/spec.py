"""What a tool looks like to the model: its name, description and arguments, read from a typed Python
signature and its docstring, and how the text between `<name>` and `</name>` becomes those arguments.

A tool with one string argument takes the tag's text as it is (`<query>SELECT 1</query>`); a tool with
several arguments (or one that is not a string) takes a JSON object (`<put>{"key": "a", "value": 3}</put>`).
A call that does not fit comes back to the model as an error result that shows the expected shape.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from appo.plugins import PluginError
from appo.tool_format import PROTOCOL_TAGS

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str                      # JSON schema type: string, integer, number, boolean, array, object
    description: str = ""
    required: bool = True


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def raw_text(self) -> bool:
        """Whether the call's text is the argument itself (one string argument) rather than a JSON object."""
        return len(self.params) == 1 and self.params[0].type == "string"

    @property
    def needs_input(self) -> bool:
        return any(p.required for p in self.params)

    def schema(self) -> dict:
        """The JSON schema of the arguments (what `appo config show` prints and the system prompt shows)."""
        props = {p.name: {"type": p.type, **({"description": p.description} if p.description else {})}
                 for p in self.params}
        return {"name": self.name, "description": self.description,
                "parameters": {"type": "object", "properties": props,
                               "required": [p.name for p in self.params if p.required]}}

    def usage(self) -> str:
        """How the model calls the tool, e.g. `<query>sql</query>` or `<put>{"key": ..., "value": ...}</put>`."""
        if self.raw_text:
            return f"<{self.name}>{self.params[0].name}</{self.name}>"
        fields = ", ".join(f'"{p.name}": {p.type}{"" if p.required else " (optional)"}' for p in self.params)
        return f"<{self.name}>{{{fields}}}</{self.name}>"

    def parse(self, payload: str) -> dict[str, Any]:
        """The keyword arguments of a call; ValueError with a message for the model when the text does not fit."""
        if self.raw_text:
            obj = _json_object(payload)
            if obj is not None and set(obj) == {self.params[0].name} and isinstance(obj[self.params[0].name], str):
                return obj
            return {self.params[0].name: payload}
        if not self.params:
            return {}
        obj = _json_object(payload)
        if obj is None and len(self.params) == 1:
            try:
                obj = {self.params[0].name: json.loads(payload)}
            except json.JSONDecodeError:
                obj = None
        if obj is None:
            raise ValueError(f"Error: {self.name} takes a JSON object: {self.usage()}")
        known = {p.name: p for p in self.params}
        unknown = [k for k in obj if k not in known]
        missing = [p.name for p in self.params if p.required and p.name not in obj]
        if unknown or missing:
            what = (f"unknown argument(s) {', '.join(unknown)}" if unknown else
                    f"missing argument(s) {', '.join(missing)}")
            raise ValueError(f"Error: {self.name}: {what}; call it as {self.usage()}")
        for k, v in obj.items():
            if not _fits(v, known[k].type):
                raise ValueError(f"Error: {self.name}: argument '{k}' must be {known[k].type}, got {json.dumps(v)}; "
                                 f"call it as {self.usage()}")
        return obj


def tools_system_prompt(specs: list[ToolSpec]) -> str:
    """A system prompt that lists exactly the given tools, each with how it is called, what it does and its
    arguments (`data.system_prompt: tools`)."""
    lines = ["Think in <think></think>. You can call these tools; each result comes back in <result></result>:"]
    for spec in specs:
        args = "; ".join(f"{p.name} ({p.type}{'' if p.required else ', optional'}){': ' + p.description if p.description else ''}"
                         for p in spec.params)
        lines.append(f"- {spec.usage()}: {spec.description}" + (f" Arguments: {args}." if args else ""))
    lines.append("Finish with <answer>\\boxed{final answer}</answer>.")
    return "\n".join(lines)


def _json_object(text: str) -> dict | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _fits(value: Any, json_type: str) -> bool:
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    want = {"string": str, "boolean": bool, "array": list, "object": dict}.get(json_type)
    return want is None or isinstance(value, want)


def check_name(name: str, where: str, taken: set[str] = frozenset()) -> None:
    """A tool name must be a tag name that is not a protocol tag nor another tool's name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PluginError(f"{where}: tool name {name!r} is not a valid tag name (letters, digits, _)")
    if name in PROTOCOL_TAGS:
        raise PluginError(f"{where}: tool name '{name}' clashes with the protocol tag <{name}> "
                          f"(reserved: {', '.join(PROTOCOL_TAGS)}); rename the tool")
    if name in taken:
        raise PluginError(f"{where}: tool name '{name}' clashes with another tool of that name "
                          f"(taken: {', '.join(sorted(taken))}); rename the tool")


def spec_from_callable(fn: Any, name: str, where: str, doc_owner: Any = None, method: bool = False) -> ToolSpec:
    """The spec of a typed callable: every argument needs a type hint, the tool a docstring (on `fn` or on
    `doc_owner`, e.g. the class of a callable instance). `method`: `fn` is a class's function, its first
    argument (self) is not the model's. `where` names the plug-in in errors."""
    doc = inspect.getdoc(fn) or (inspect.getdoc(doc_owner) if doc_owner is not None else None)
    if not doc or not doc.strip():
        raise PluginError(f"{where}: tool '{name}' has no docstring; its first lines are the description the "
                          "model reads")
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError) as e:
        raise PluginError(f"{where}: cannot read the signature of tool '{name}' ({e})") from None
    description, arg_docs = _split_docstring(doc)
    params = []
    for p in list(signature.parameters.values())[1 if method else 0:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PluginError(f"{where}: tool '{name}' takes *{p.name}; a tool's arguments must be named and typed")
        if p.name not in hints:
            raise PluginError(f"{where}: argument '{p.name}' of tool '{name}' has no type hint; the model is "
                              f"shown each argument's type (e.g. `{p.name}: str`)")
        params.append(Param(p.name, _json_type(hints[p.name], f"{where}: argument '{p.name}' of tool '{name}'"),
                            arg_docs.get(p.name, ""), p.default is p.empty))
    return ToolSpec(name, description, tuple(params))


def _json_type(tp: Any, where: str) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _json_type(args[0], where)
    base = origin or tp
    if base in _JSON_TYPES:
        return _JSON_TYPES[base]
    raise PluginError(f"{where}: type {tp!r} cannot come from a JSON call; use str, int, float, bool, list or dict")


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {argument: help}) from a Google-style docstring: the text before an `Args:` section,
    and that section's `name: help` lines (continuation lines indented further)."""
    lines = doc.splitlines()
    head, args, current = [], {}, None
    in_args = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if in_args:
            if line and not line[0].isspace() and line.strip().endswith(":"):
                in_args = False  # the next section (Returns:, ...)
                continue
            m = _ARG_LINE.match(line)
            if m and (current is None or len(line) - len(line.lstrip()) <= args[current][0]):
                current = m.group(1).lstrip("*")
                args[current] = (len(line) - len(line.lstrip()), m.group(3).strip())
            elif current is not None and line.strip():
                indent, text = args[current]
                args[current] = (indent, f"{text} {line.strip()}")
            continue
        if not args:
            head.append(line)
    description = " ".join(" ".join(head).split())
    return description, {k: v[1] for k, v in args.items()}
