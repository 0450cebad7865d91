"""Tools as plug-ins: a typed function or class with a docstring becomes a tool (name, description and
argument schema from its signature), built-ins go through the same registry, and a bad plug-in stops
the run at start-up with one line naming it (exit 2)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from appo.config import ConfigError, load_config
from appo.plugins import PluginError
from appo.tools.base import ToolCall
from appo.tools.environment import EnvironmentFactory
from appo.tools.plugin import make_tool
from appo.tools.registry import build_tools, tool_specs
from tests.unit.appo_cli import assert_user_error, run_appo


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number,
            zero when left out
    """
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def test_a_typed_function_with_a_docstring_is_a_tool():
    tool = make_tool(add, "test")
    assert tool.name == "add" and tool.spec.description == "Add two integers."
    assert tool.spec.schema()["parameters"] == {
        "type": "object", "required": ["a"],
        "properties": {"a": {"type": "integer", "description": "the first number"},
                       "b": {"type": "integer", "description": "the second number, zero when left out"}}}
    assert tool(ToolCall("add", '{"a": 2, "b": 40}')).text == "42"
    assert tool.spec.usage() == '<add>{"a": integer, "b": integer (optional)}</add>'


def test_one_string_argument_takes_the_text_as_it_is():
    tool = make_tool(shout, "test")
    assert tool.spec.usage() == "<shout>text</shout>"
    assert tool(ToolCall("shout", "select {x}")).text == "SELECT {X}"
    assert tool(ToolCall("shout", '{"text": "json too"}')).text == "JSON TOO"


@pytest.mark.parametrize("payload, message", [
    ("2 and 40", "add takes a JSON object"),
    ('{"a": "two"}', "argument 'a' must be integer"),
    ('{"b": 1}', "missing argument(s) a"),
    ('{"a": 1, "c": 2}', "unknown argument(s) c"),
])
def test_a_malformed_call_comes_back_as_an_error_result(payload, message):
    result = make_tool(add, "test")(ToolCall("add", payload))
    assert not result.ok and message in result.text and "<add>{" in result.text


def test_a_class_tool_gets_its_constructor_arguments_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counting.py").write_text(textwrap.dedent('''
        class Counter:
            """Counts up."""
            def __init__(self, start: int = 0):
                self.count = start
            def __call__(self, step: int) -> str:
                self.count += step
                return str(self.count)
    '''))
    cfg = load_config(None, ["tools.enabled=[]", "tools.custom=[{spec: 'counting:Counter', args: {start: 10}}]"])
    with build_tools(cfg.tools) as runner:
        assert runner.names == ["counter"]
        assert [r.text for r in runner.run([ToolCall("counter", "5"), ToolCall("counter", '{"step": 1}')])] in (
            ["15", "16"], ["16", "15"])


def test_builtins_and_plugins_share_one_registry(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mytools.py").write_text("def shout(text: str) -> str:\n    '''Upper-case.'''\n    return text.upper()\n")
    cfg = load_config(None, ["tools.enabled=[python]", "tools.custom=[mytools:shout]"])
    assert [s.name for s in tool_specs(cfg.tools)] == ["python", "shout"]
    with build_tools(cfg.tools) as runner:
        assert runner.names == ["python", "shout"]
        assert [r.text for r in runner.run([ToolCall("python", "print(6*7)"), ToolCall("shout", "hi")])] == ["42", "HI"]


@pytest.mark.parametrize("source, needle", [
    ("def f(x):\n    '''Doc.'''\n    return x\n", "argument 'x' of tool 'f' has no type hint"),
    ("def f(x: str):\n    return x\n", "tool 'f' has no docstring"),
    ("def f(x: set):\n    '''Doc.'''\n", "cannot come from a JSON call"),
    ("def python(x: str):\n    '''Doc.'''\n", "tool name 'python' clashes with another tool"),
    ("def answer(x: str):\n    '''Doc.'''\n", "clashes with the protocol tag <answer>"),
    ("def result(x: str):\n    '''Doc.'''\n", "clashes with the protocol tag <result>"),
    ("import no_such_module_here\n", "cannot import module 'plug'"),
    ("raise RuntimeError('broken at import')\n", "cannot import module 'plug' (RuntimeError: broken at import)"),
])
def test_bad_plugins_stop_at_start_up_naming_the_plugin(tmp_path, monkeypatch, source, needle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "plug", raising=False)
    name = "python" if "def python" in source else "answer" if "def answer" in source else \
        "result" if "def result" in source else "f"
    (tmp_path / "plug.py").write_text(source)
    cfg = load_config(None, ["tools.enabled=[]", f"tools.custom=[plug:{name}]"])
    with pytest.raises(PluginError) as e:
        tool_specs(cfg.tools)
    assert needle in str(e.value) and "tools.custom[0]" in str(e.value)


def test_unknown_builtin_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown built-in tool 'calc'; choose from: python, search"):
        tool_specs(load_config(None, ["tools.enabled=[calc]"]).tools)


class _Env:
    """An environment."""

    def setup(self, table: str) -> None:
        if table == "broken":
            raise RuntimeError("no such table")

    def get(self, key: str) -> str:
        """Read a key."""
        return key


def test_an_environment_that_fails_to_set_up_from_a_real_row_stops_at_start_up():
    factory = EnvironmentFactory(_Env)
    factory.check({"table": "fine"})
    with pytest.raises(PluginError, match=r"_Env failed to set up from a data row \(RuntimeError: no such table\)"):
        factory.check({"table": "broken"})


def test_environment_reward_that_is_not_a_number_stops_the_run():
    class Bad(_Env):
        def reward(self):
            return "1.0"

    class Nan(_Env):
        def reward(self):
            return float("nan")

    for cls in (Bad, Nan):
        session = EnvironmentFactory(cls).session({"table": "t"})
        with pytest.raises(PluginError, match=r"reward\(\) returned .*; it must return a finite number or None"):
            session.finish()
        session.close()


PLUGIN_FILES = {
    "notypes.py": "def lookup(key):\n    '''Look a key up.'''\n    return key\n",
    "clash.py": "def search(query: str) -> str:\n    '''My search.'''\n    return query\n",
}


@pytest.mark.parametrize("spec, needle", [
    ("missing_module:fn", "tools.custom[0]='missing_module:fn': cannot import module 'missing_module'"),
    ("notypes:lookup", "argument 'key' of tool 'lookup' has no type hint"),
    ("clash:search", "tool name 'search' clashes with another tool"),
])
def test_cli_bad_plugin_is_one_line_and_exit_2(tmp_path, spec, needle):
    for name, text in PLUGIN_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "cfg.yaml").write_text(json.dumps({"tools": {"enabled": ["python"], "custom": [spec]}}))
    for command in (["tool", "--list", "--config", "cfg.yaml"], ["config", "show", "cfg.yaml"]):
        assert_user_error(run_appo(*command, cwd=tmp_path), command[0], needle)


def test_the_docs_sandboxed_tool_runs_the_models_code_in_the_sandbox():
    """docs/extending.md's Evaluate: a plug-in that runs model-written code under the python tool's sandbox."""
    from appo.tools.sandbox import Limits, Sandbox

    class Evaluate:
        """Evaluate a Python expression; its value comes back."""

        def __init__(self, memory_mb: int = 256, timeout: float = 5.0):
            self.sandbox = Sandbox("/usr/bin/python3", "bwrap", Limits(memory_mb=memory_mb))
            self.sandbox.check()
            self.timeout = timeout

        def __call__(self, expression: str) -> str:
            outcome = self.sandbox.run({"history": [], "code": expression}, self.timeout)
            out = outcome.stdout if outcome.returncode == 0 else outcome.stderr
            return out.text("head")[0].strip() or f"exit status {outcome.returncode}"

    tool = make_tool(Evaluate, "test", args={"memory_mb": 128})
    assert tool(ToolCall("evaluate", "6 * 7")).text == "42"
    # the sandbox has no network and a read-only root: what the model's code cannot do here
    assert "Error" in tool(ToolCall("evaluate", "open('/etc/evil', 'w')")).text
    assert "Error" in tool(ToolCall("evaluate", "__import__('socket').create_connection(('127.0.0.1', 9))")).text


def test_the_tools_system_prompt_lists_exactly_the_enabled_tools_with_their_arguments(tmp_path, monkeypatch):
    from appo.tools.registry import with_tools_prompt

    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "calc", raising=False)
    (tmp_path / "calc.py").write_text("def add(a: int, b: int) -> int:\n    '''Add two integers.\n\n    Args:\n"
                                      "        a: first\n        b: second\n    '''\n    return a + b\n")
    cfg = with_tools_prompt(load_config(None, ["tools.enabled=[python]", "tools.custom=[calc:add]",
                                               "data.system_prompt=tools"]))
    prompt = cfg.data.system_prompt
    assert "<python>code</python>: Run Python code" in prompt
    assert '<add>{"a": integer, "b": integer}</add>: Add two integers. Arguments: a (integer): first' in prompt
    assert "search" not in prompt  # today's reference prompt offers search even when it is off
    assert load_config(None, ["data.system_prompt=quickstart"]).data.system_prompt == "quickstart"


def test_appo_train_stops_before_the_model_loads_when_the_environment_cannot_set_up(tmp_path, tiny_model_dir):
    (tmp_path / "broken_env.py").write_text(textwrap.dedent('''
        class Shop:
            """A shop."""
            def setup(self, stock: int) -> None:
                raise RuntimeError(f"cannot open a shop with {stock} items")
            def buy(self, item: str) -> str:
                """Buy an item."""
                return item
    '''))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"question": "Buy milk.", "answer": "milk", "stock": 3}) + "\n")
    (tmp_path / "cfg.yaml").write_text(json.dumps({
        "defaults": "tiny", "data": {"task": None, "train_files": ["rows.jsonl"], "system_prompt": "Buy things."},
        "tools": {"enabled": [], "environment": {"spec": "broken_env:Shop"}}, "sft": {"enabled": False}}))
    proc = run_appo("train", "--config", "cfg.yaml", f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_user_error(proc, "train", "tools.environment (broken_env:Shop)",
                      "Shop failed to set up from a data row (RuntimeError: cannot open a shop with 3 items)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def _shout_rows(tmp_path, monkeypatch, *overrides):
    """A config whose only tool is the plug-in `shouting:shout` and whose data is one row without a system turn."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "shouting", raising=False)
    (tmp_path / "shouting.py").write_text("def shout(text: str) -> str:\n    '''Upper-case a text.'''\n"
                                          "    return text.upper()\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"question": "Shout hi.", "answer": "HI"}) + "\n")
    return load_config(None, ["data.task=null", "data.train_files=[rows.jsonl]", "tools.enabled=[]",
                              "tools.custom=[shouting:shout]", "data.max_prompt_length=1024", *overrides])


def test_rows_without_a_system_prompt_are_offered_exactly_the_runs_plugin_tools(tmp_path, monkeypatch, tiny_tokenizer):
    from appo.data.prompt_sets import load_prompt_sets

    cfg = _shout_rows(tmp_path, monkeypatch)
    (prompt,), _ = load_prompt_sets(cfg, tiny_tokenizer)
    system = prompt.messages[0]["content"]
    assert prompt.messages[0]["role"] == "system" and "<shout>text</shout>: Upper-case a text." in system
    assert "search" not in system and "python" not in system


def test_in_the_chat_template_format_plugin_tools_reach_the_prompt_through_the_template_not_as_tags(
        tmp_path, monkeypatch, chat_tokenizer):
    from appo.data.prompt_sets import load_prompt_sets
    from appo.models import CHAT_TEMPLATE

    tokenizer = chat_tokenizer(CHAT_TEMPLATE)  # its own (the loading sets chatml on it)

    cfg = _shout_rows(tmp_path, monkeypatch, "tools.format=chat_template", "tools.chat_template=chatml")
    (prompt,), _ = load_prompt_sets(cfg, tokenizer)
    system = prompt.messages[0]["content"]
    assert "shout" in system and "<shout>" not in system and "<result>" not in system
    text = tokenizer.decode(prompt.prompt_ids)
    assert "\n- shout(text: string): Upper-case a text." in text  # its signature, from the template
