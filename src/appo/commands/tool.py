"""`appo tool ...`: run one tool call by hand and print exactly what the model would see."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from appo.config import ConfigError, load_config
from appo.tools.base import ToolCall
from appo.tools.output import terminal_text


def _tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appo tool", description="Run one tool call as the agent would and print "
                                     "the result text (exit status 1 when the tool reports a failure).")
    sub = parser.add_subparsers(dest="tool", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, help="tools.timeout: wall-clock seconds for the call")
    common.add_argument("--max-chars", type=int, help="tools.result_max_chars: longer output is truncated")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config override, e.g. --set tools.python.memory_mb=256 (repeatable)")

    py = sub.add_parser("python", parents=[common], help="run Python code in the sandbox (code from --code or stdin)")
    py.add_argument("--code", help="the cell to run; read from stdin when absent")
    py.add_argument("--sandbox", choices=("bwrap", "none"), help="tools.python.sandbox")
    py.add_argument("--memory-mb", type=int, help="tools.python.memory_mb")
    py.add_argument("--history", action="append", default=[], metavar="CODE",
                    help="an earlier cell to replay silently first (repeatable; turns on tools.python.session)")

    se = sub.add_parser("search", parents=[common], help="run a search query through a backend")
    se.add_argument("query")
    se.add_argument("--backend", help="tools.search.backend: local, cache, brightdata, serper or retriever")
    se.add_argument("--index-dir", help="tools.search.index_dir (backend=local)")
    se.add_argument("--cache-file", help="tools.search.cache_file (backend=cache)")
    se.add_argument("--sqlite-cache", help="tools.search.sqlite_cache: persistent result cache")
    se.add_argument("--url", help="tools.search.url: endpoint of brightdata/serper/retriever")
    se.add_argument("--max-results", type=int, help="tools.search.max_results")
    return parser


_FLAG_KEYS = {"timeout": "tools.timeout", "max_chars": "tools.result_max_chars", "sandbox": "tools.python.sandbox",
              "memory_mb": "tools.python.memory_mb", "backend": "tools.search.backend",
              "index_dir": "tools.search.index_dir", "cache_file": "tools.search.cache_file",
              "sqlite_cache": "tools.search.sqlite_cache", "url": "tools.search.url",
              "max_results": "tools.search.max_results"}


def main(argv: list[str]) -> int:
    args = _tool_parser().parse_args(argv)
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in _FLAG_KEYS.items()
                 if getattr(args, flag, None) is not None]
    if args.tool == "python" and args.history:
        overrides.append("tools.python.session=true")
    from appo.tools.registry import build_tools

    try:
        cfg = load_config(None, overrides + args.set).tools
        runner = build_tools(dataclasses.replace(cfg, enabled=[args.tool]))
    except (ConfigError, ValueError, RuntimeError, OSError) as e:
        print(f"appo tool: {e}", file=sys.stderr)
        return 2
    if args.tool == "python":
        call = ToolCall("python", args.code if args.code is not None else sys.stdin.read(), tuple(args.history))
    else:
        call = ToolCall("search", args.query)
    with runner:
        (result,) = runner.run([call])
    print(terminal_text(result.text))
    return 0 if result.ok else 1
