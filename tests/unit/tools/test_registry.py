"""The tool runner and the CLI: the contract the rollout codes against."""

from __future__ import annotations

import shutil

import pytest

from appo.commands.tool import main as tool_main
from appo.config import ToolsConfig
from appo.tools import ToolCall, ToolResult, ToolRunner, build_tools


class Echo:
    name = "echo"

    def __call__(self, call: ToolCall) -> ToolResult:
        if call.payload == "boom":
            raise RuntimeError("exploded")
        return ToolResult(call.payload, ok=not call.payload.startswith("err"))


def test_runner_never_raises_and_keeps_order():
    with ToolRunner({"echo": Echo()}, max_workers=2, result_max_chars=80) as runner:
        assert runner.names == ["echo"]
        out = runner.run([ToolCall("echo", "hi"), ToolCall("echo", "boom"), ToolCall("nope", "x"),
                          ToolCall("echo", ""), ToolCall("echo", "y" * 500), ToolCall("echo", "err " + "e" * 500 + " END")])
    assert out[0].ok and out[0].text == "hi"
    assert not out[1].ok and out[1].text == "Error: Tool(echo) execution failed with message: exploded"
    assert not out[2].ok and out[2].text == "Error: unknown tool 'nope'; available tools: echo"
    assert out[3].ok and out[3].text == "Tool(echo) returned empty output."
    assert len(out[4].text) <= 80 and out[4].text.startswith("yyy") and "truncated" in out[4].text
    assert len(out[5].text) <= 80 and out[5].text.endswith(" END")  # failures keep their tail
    assert all(r.meta["end"] >= r.meta["start"] for r in out)


def test_build_tools_builds_only_the_enabled_tools(tmp_path):
    runner = build_tools(ToolsConfig(enabled=[]))
    assert runner.names == []
    with pytest.raises(ValueError, match="tools.timeout"):
        build_tools(ToolsConfig(timeout=0))
    with pytest.raises(ValueError, match="needs tools.search.index_dir"):
        build_tools(ToolsConfig(enabled=["search"]))


def test_cli_python_prints_what_the_model_sees(capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    assert tool_main(["python", "--code", "x = 21\nx * 2"]) == 0
    assert capsys.readouterr().out == "42\n"
    assert tool_main(["python", "--code", "x", "--history", "x = 5"]) == 0
    assert capsys.readouterr().out == "5\n"
    assert tool_main(["python", "--code", "1/0", "--set", "tools.python.memory_mb=128"]) == 1
    assert capsys.readouterr().out.strip().endswith("ZeroDivisionError: division by zero")


def test_cli_search_and_config_errors(shared_data, capsys):
    cache = shared_data / "reference_rl" / "search_cache.json"
    assert tool_main(["search", "Amy Smart film debut Campfire Tales", "--backend", "cache", "--cache-file", str(cache),
                      "--max-results", "1"]) == 0
    assert capsys.readouterr().out.startswith("Page 1: The film is made up of three")
    assert tool_main(["search", "q", "--backend", "nosuch"]) == 2
    assert "choose one of: local, cache, brightdata, serper, retriever" in capsys.readouterr().err
