"""Build the tools a run uses (built-ins by name, plug-ins, an environment) and run batches of calls in a
bounded thread pool. Every name the rest of the package uses (stop strings, escaped tags, the system
prompt, `appo tool`) comes from the runner built here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from appo.config import ConfigError, ToolsConfig
from appo.tools.base import Tool, ToolCall, ToolResult
from appo.tools.environment import EnvironmentFactory, load_environment
from appo.tools.output import truncate
from appo.tools.plugin import load_custom_tool, make_tool
from appo.tools.spec import Param, ToolSpec, check_name, tools_system_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Builtin:
    spec: ToolSpec
    build: Callable[[ToolsConfig], Tool]


def _build_python(tools_cfg: ToolsConfig) -> Tool:
    from appo.tools.python import PythonTool

    return PythonTool(tools_cfg.python, tools_cfg.timeout, tools_cfg.result_max_chars)


# Built-in tools are registered here, as plug-ins are in the config; `tools.enabled` picks among them.
BUILTIN_TOOLS: dict[str, Builtin] = {}


def register_builtin(spec: ToolSpec, build: Callable[[ToolsConfig], Tool]) -> None:
    BUILTIN_TOOLS[spec.name] = Builtin(spec, build)


def _generic_spec(name: str) -> ToolSpec:
    """The spec of a tool object that brings none (a test double, an object passed from Python)."""
    return ToolSpec(name, f"The {name} tool.", (Param("input", "string"),))


def _spec_of(name: str, tool: Tool) -> ToolSpec:
    spec = getattr(tool, "spec", None)
    if spec is not None:
        return spec
    return default_spec(name)


def default_spec(name: str) -> ToolSpec:
    """The spec of a tool known by name only: the built-in's, else a generic one-string-argument spec."""
    return BUILTIN_TOOLS[name].spec if name in BUILTIN_TOOLS else _generic_spec(name)


class ToolRunner:
    """Runs tool calls in parallel; every call yields a ToolResult whose text is what the model sees
    (at most `result_max_chars` characters). Tool failures become results with ok=False, never raises.
    `environment`: the class whose per-trajectory instances serve the environment's tools (the rollout
    opens one per trajectory and passes it with each call as `ToolCall.env`)."""

    def __init__(self, tools: dict[str, Tool], max_workers: int = 16, result_max_chars: int = 2000,
                 environment: EnvironmentFactory | None = None):
        self.tools = tools
        self.environment = environment
        self.result_max_chars = result_max_chars
        self.specs: dict[str, ToolSpec] = {name: _spec_of(name, t) for name, t in tools.items()}
        if environment is not None:
            for name, spec in environment.specs.items():
                check_name(name, environment.where, set(self.specs))
                self.specs[name] = spec
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="appo-tool")
        self._closers = [t for t in tools.values() if hasattr(t, "close")]

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def needs_input(self, name: str) -> bool:
        """Whether an empty call of `name` is a mistake (false for tools without required arguments)."""
        spec = self.specs.get(name)
        return spec is None or spec.needs_input

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        futures = [self.submit(call) for call in calls]
        return [f.result() for f in futures]

    def submit(self, call: ToolCall) -> Future:
        """Start one call in the pool; the future's result is its ToolResult (never an exception)."""
        return self._pool.submit(self._run_one, call)

    def _run_one(self, call: ToolCall) -> ToolResult:
        start = time.time()
        tool = self.tools.get(call.tool)
        env_tool = self.environment is not None and call.tool in self.environment.specs
        if tool is None and not env_tool:
            result = ToolResult(f"Error: unknown tool '{call.tool}'; available tools: {', '.join(self.specs)}", False)
        elif env_tool and call.env is None:
            result = ToolResult(f"Error: {call.tool} acts on the environment, and this call has none", False)
        else:
            try:
                result = call.env.call(call.tool, call.payload) if env_tool else tool(call)
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


def build_tools(tools_cfg: ToolsConfig, custom: list | tuple = (), environment: Any = None) -> ToolRunner:
    """The tools of a run, each built and checked now, so a missing sandbox or backend, or a plug-in that
    cannot be loaded, fails at start-up with a message saying how to fix it: the built-ins `tools.enabled`
    names, the plug-ins of `tools.custom` plus `custom` (functions, classes or tool objects passed from
    Python), and the environment of `tools.environment` (or `environment`: a class or EnvironmentFactory)."""
    if tools_cfg.timeout <= 0:
        raise ConfigError(f"tools.timeout={tools_cfg.timeout} must be > 0 (seconds per tool call)")
    tools: dict[str, Tool] = {}
    for name in tools_cfg.enabled:
        if name not in BUILTIN_TOOLS:
            raise ConfigError(f"tools.enabled: unknown built-in tool '{name}'; choose from: "
                              f"{', '.join(BUILTIN_TOOLS)} (plug-ins go in tools.custom)")
        tools[name] = BUILTIN_TOOLS[name].build(tools_cfg)
    plugins = [load_custom_tool(entry, f"tools.custom[{i}]") for i, entry in enumerate(tools_cfg.custom)]
    for i, obj in enumerate(custom):
        plugins.append(obj if hasattr(obj, "spec") and hasattr(obj, "name") else make_tool(obj, f"custom tool {i}"))
    for i, tool in enumerate(plugins):
        check_name(tool.name, f"tools.custom[{i}]", set(BUILTIN_TOOLS) | set(tools))
        tools[tool.name] = tool
    return ToolRunner(tools, tools_cfg.max_workers, tools_cfg.result_max_chars, _environment(tools_cfg, environment))


def tool_specs(tools_cfg: ToolsConfig) -> list[ToolSpec]:
    """The specs of the tools `tools_cfg` gives the model, checked as `build_tools` checks them (plug-ins are
    loaded, built-ins not built, so no sandbox or search backend is needed)."""
    for name in tools_cfg.enabled:
        if name not in BUILTIN_TOOLS:
            raise ConfigError(f"tools.enabled: unknown built-in tool '{name}'; choose from: "
                              f"{', '.join(BUILTIN_TOOLS)} (plug-ins go in tools.custom)")
    specs = [BUILTIN_TOOLS[name].spec for name in tools_cfg.enabled]
    for i, entry in enumerate(tools_cfg.custom):
        tool = load_custom_tool(entry, f"tools.custom[{i}]")
        check_name(tool.name, f"tools.custom[{i}]", set(BUILTIN_TOOLS) | {s.name for s in specs})
        specs.append(tool.spec)
        tool.close()
    env = _environment(tools_cfg, None)
    if env is not None:
        for name, spec in env.specs.items():
            check_name(name, env.where, {s.name for s in specs})
            specs.append(spec)
    return specs


def prompt_format(tools_cfg: ToolsConfig, tokenizer):
    """The ToolFormat (appo.formats) that renders prompts with the configured tools when
    `tools.format=chat_template` (the template is set on `tokenizer` and probed, so a template that is not
    prefix-preserving stops the run here with one line); None with the tag format, whose prompts are the
    tokenizer's plain chat template."""
    if tools_cfg.format == "tags":
        return None
    from appo.formats import build_format

    return build_format(tools_cfg.format, tokenizer, tool_specs(tools_cfg), tools_cfg.chat_template)


def check_tools(tools_cfg: ToolsConfig, rows: list = ()) -> list[ToolSpec]:
    """The start-up check of a run's tools, before any expensive stage: every plug-in loads and has a
    schema, no name clashes, and the environment sets up (and closes) on the first data row. Returns the
    specs; raises a UserError (one line, exit 2) naming what is wrong."""
    specs = tool_specs(tools_cfg)
    env = _environment(tools_cfg, None)
    if env is not None and rows:
        from appo.tools.environment import env_columns

        env.check(env_columns(rows[0]))
    return specs


def with_tools_prompt(cfg):
    """`cfg` with `data.system_prompt: tools` replaced by the prompt that lists the run's tools with their
    schemas (`spec.tools_system_prompt`), so prompts, SFT traces, evaluation and checkpoints share one text."""
    if cfg.data.system_prompt != "tools":
        return cfg
    import dataclasses

    text = tools_system_prompt(tool_specs(cfg.tools))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, system_prompt=text))


def configured_tool_names(tools_cfg: ToolsConfig) -> list[str]:
    """The names of the tools `tools_cfg` gives the model."""
    return [spec.name for spec in tool_specs(tools_cfg)]


def _environment(tools_cfg: ToolsConfig, given: Any) -> EnvironmentFactory | None:
    if given is not None:
        return given if isinstance(given, EnvironmentFactory) else EnvironmentFactory(given, where="environment")
    env = tools_cfg.environment
    if env.spec is None:
        if env.args:
            raise ConfigError("tools.environment.args is set but tools.environment.spec is not")
        return None
    return load_environment(env.spec, env.args)


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


register_builtin(ToolSpec("python", "Run Python code in a sandbox; what it prints (or its last expression) comes "
                                    "back as the result.", (Param("code", "string", "a Python cell"),)),
                 _build_python)
register_builtin(ToolSpec("search", "Search for documents about a query; the top results come back as the result.",
                          (Param("query", "string", "what to look up"),)),
                 build_search_tool)
