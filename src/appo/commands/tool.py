"""`appo tool NAME [INPUT]`: run one call of any registered tool by hand (built-in, plug-in or environment
tool) and print exactly what the model would see.

    appo tool python --code 'print(6*7)'
    appo tool search "capital of France" --backend local --index-dir idx
    appo tool query "SELECT count(*) FROM users" --config examples/sql/config.yaml --row '{"db_seed": 3}'
    appo tool --list --config examples/sql/config.yaml

INPUT is the text between the tool's tags (a JSON object for tools with several arguments); read from stdin
when absent. An environment's tool runs on a fresh instance set up from `--row` (the row's columns as a
JSON object); `--before NAME=INPUT` calls run on it first (repeatable), as earlier calls of a trajectory.
Exit status 1 when the tool reports a failure, 2 for a bad config or tool name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from appo.config import ConfigError, load_config
from appo.errors import UserError
from appo.tools.base import ToolCall
from appo.tools.output import terminal_text

# Shortcut flags of the built-ins' config keys (any key works with --set).
_FLAG_KEYS = {"timeout": "tools.timeout", "max_chars": "tools.result_max_chars", "sandbox": "tools.python.sandbox",
              "memory_mb": "tools.python.memory_mb", "backend": "tools.search.backend",
              "index_dir": "tools.search.index_dir", "cache_file": "tools.search.cache_file",
              "sqlite_cache": "tools.search.sqlite_cache", "url": "tools.search.url",
              "max_results": "tools.search.max_results"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appo tool", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="the tool to call (see --list)")
    p.add_argument("input", nargs="?", help="the call's text (stdin when absent)")
    p.add_argument("--list", action="store_true", help="list the tools of the config with their argument schemas")
    p.add_argument("--config", help="preset or YAML file whose tools (tools.enabled/custom/environment) to use")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set tools.python.memory_mb=256 (repeatable)")
    p.add_argument("--row", default="{}", help="environment tools: the row's columns, a JSON object")
    p.add_argument("--before", action="append", default=[], metavar="NAME=INPUT",
                   help="environment tools: a call to run first on the same instance (repeatable)")
    p.add_argument("--code", help="python: the cell to run (same as INPUT)")
    p.add_argument("--history", action="append", default=[], metavar="CODE",
                   help="python: an earlier cell to replay silently first (repeatable; turns on tools.python.session)")
    p.add_argument("--timeout", type=float, help="tools.timeout: wall-clock seconds for the call")
    p.add_argument("--max-chars", type=int, help="tools.result_max_chars: longer output is truncated")
    p.add_argument("--sandbox", choices=("bwrap", "none"), help="tools.python.sandbox")
    p.add_argument("--memory-mb", type=int, help="tools.python.memory_mb")
    p.add_argument("--backend", help="tools.search.backend: local, cache, brightdata, serper or retriever")
    p.add_argument("--index-dir", help="tools.search.index_dir (backend=local)")
    p.add_argument("--cache-file", help="tools.search.cache_file (backend=cache)")
    p.add_argument("--sqlite-cache", help="tools.search.sqlite_cache: persistent result cache")
    p.add_argument("--url", help="tools.search.url: endpoint of brightdata/serper/retriever")
    p.add_argument("--max-results", type=int, help="tools.search.max_results")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in _FLAG_KEYS.items()
                 if getattr(args, flag, None) is not None]
    if args.history:
        overrides.append("tools.python.session=true")
    from appo.tools.registry import BUILTIN_TOOLS, build_tools, tool_specs

    try:
        cfg = load_config(args.config, overrides + args.set).tools
        if args.list:
            print(describe_tools(tool_specs(cfg)))
            return 0
        if not args.name:
            raise ConfigError("name the tool to call (appo tool NAME [INPUT]); `appo tool --list` lists them")
        names = [spec.name for spec in tool_specs(cfg)]
        if args.name not in names:
            raise ConfigError(f"unknown tool '{args.name}'; the config's tools: {', '.join(names) or '(none)'} "
                              "(built-ins in tools.enabled, plug-ins in tools.custom, tools.environment)")
        # Only the built-in that is called is built, so calling python needs no search backend.
        enabled = [args.name] if args.name in BUILTIN_TOOLS else []
        runner = build_tools(dataclasses.replace(cfg, enabled=enabled))
    except (ConfigError, UserError, ValueError, RuntimeError, OSError) as e:
        print(f"appo tool: {e}", file=sys.stderr)
        return 2
    with runner:
        payload = args.code if args.code is not None else args.input
        payload = sys.stdin.read() if payload is None else payload
        env = None
        if runner.environment is not None and args.name in runner.environment.specs:
            try:
                columns = json.loads(args.row)
                if not isinstance(columns, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                print(f"appo tool: --row must be a JSON object of the row's columns ({e})", file=sys.stderr)
                return 2
            env = runner.environment.session(columns)
        try:
            for before in args.before:
                name, _, text = before.partition("=")
                (result,) = runner.run([ToolCall(name, text, env=env)])
                print(f"[{name}] {terminal_text(result.text)}", file=sys.stderr)
            (result,) = runner.run([ToolCall(args.name, payload.strip(), tuple(args.history), env=env)])
            print(terminal_text(result.text))  # control characters shown, not obeyed by the terminal
            if env is not None:
                reward = env.finish()
                if reward is not None:
                    print(f"[environment reward] {reward:g}", file=sys.stderr)
        finally:
            if env is not None:
                env.close()
    return 0 if result.ok else 1


def describe_tools(specs) -> str:
    """One block per tool: how it is called, its description and its argument schema (JSON)."""
    blocks = []
    for spec in specs:
        schema = json.dumps(spec.schema()["parameters"], ensure_ascii=False)
        blocks.append(f"{spec.name}: {spec.usage()}\n    {spec.description}\n    arguments: {schema}")
    return "\n".join(blocks)
