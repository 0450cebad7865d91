"""Functional behaviour of the sandboxed python tool: the reference's semantics, limits, sessions."""

from __future__ import annotations

import logging
import shutil

import pytest

from appo.config import PythonToolConfig
from appo.tools import sandbox as sandbox_mod
from appo.tools.base import ToolCall
from appo.tools.python import PythonTool
from appo.tools.registry import ToolRunner


def run(tool, code, history=()):
    return tool(ToolCall("python", code, tuple(history)))


def test_numpy_and_sympy_work(sandboxed):
    r = run(sandboxed, "import numpy as np, sympy as sp\nx = sp.symbols('x')\n"
                       "print(sp.solve(x**2 - 4, x), int(np.arange(5).sum()))")
    assert r.ok and r.text == "[-2, 2] 10"


def test_trailing_expression_is_printed_once(sandboxed):
    assert run(sandboxed, "a = 6\n# note\na * 7").text == "42"
    assert run(sandboxed, "print('once')").text == "once"
    assert run(sandboxed, "a = 1\na + 1\nb = 3").text == ""  # only a *trailing* expression prints


def test_error_text_is_the_traceback_of_model_code_only(sandboxed):
    r = run(sandboxed, "x = 1\n\ny = x / 0")
    assert not r.ok
    assert r.text.splitlines()[0] == "Traceback (most recent call last):"
    assert 'File "<string>", line 3, in <module>' in r.text
    assert r.text.endswith("ZeroDivisionError: division by zero")
    assert r.text.count('File "<string>"') == 1  # the driver's own frame is dropped
    assert "/work" not in r.text and "sandbox_driver" not in r.text


def test_syntax_error(sandboxed):
    r = run(sandboxed, "def f(:\n  pass")
    assert not r.ok and "SyntaxError" in r.text and "Traceback" not in r.text


def test_timeout_message_names_the_limit(quick):
    r = run(quick, "while True: pass")
    assert not r.ok and r.text == "Execution timeout (exceeded 0.6s)"
    assert r.meta["timed_out"] is True


def test_output_is_truncated_with_a_marker_head_for_output_tail_for_errors():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    tool = PythonTool(PythonToolConfig(), timeout=8.0, result_max_chars=200)
    out = run(tool, "print('a' * 10_000)")
    assert out.ok and len(out.text) <= 200 and out.text.startswith("aaa")
    assert out.text.endswith("[... truncated: showing the first 141 of 10000 characters]")
    err = run(tool, "for i in range(2000):\n    print('noise', i, file=__import__('sys').stderr)\nraise KeyError('last')")
    assert not err.ok and len(err.text) <= 200
    assert err.text.startswith("[... truncated: showing the last") and err.text.endswith("KeyError: 'last'")


def test_session_replays_earlier_cells_silently():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    tool = PythonTool(PythonToolConfig(session=True), timeout=8.0)
    history = ["x = 40", "print('noise')\nx", "raise ValueError('flaky')", "y = x + 2"]
    r = run(tool, "y", history)
    assert r.ok and r.text == "42"


def test_stateless_by_default(sandboxed):
    r = run(sandboxed, "y", ["y = 1"])
    assert not r.ok and "NameError" in r.text


def test_parallel_calls_overlap_and_keep_order(sandboxed):
    runner = ToolRunner({"python": sandboxed}, max_workers=4)
    calls = [ToolCall("python", f"import time\ntime.sleep(0.3)\nprint({i})") for i in range(4)]
    results = runner.run(calls)
    runner.close()
    assert [r.text for r in results] == ["0", "1", "2", "3"]
    # All four were running at one moment: the latest start precedes the earliest end.
    assert max(r.meta["start"] for r in results) < min(r.meta["end"] for r in results)


def test_missing_bwrap_refuses_with_install_hint(monkeypatch):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    with pytest.raises(sandbox_mod.SandboxUnavailable, match="apt-get install -y bubblewrap"):
        PythonTool(PythonToolConfig())


def test_unsandboxed_mode_warns_once_and_still_limits(caplog, monkeypatch):
    monkeypatch.setattr(sandbox_mod, "_UNSANDBOXED_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="appo.tools.sandbox"):
        tool = PythonTool(PythonToolConfig(sandbox="none", memory_mb=128), timeout=8.0)
        PythonTool(PythonToolConfig(sandbox="none"), timeout=8.0)
    assert sum("UNSANDBOXED" in m for m in caplog.messages) == 1
    assert run(tool, "print(6 * 7)").text == "42"
    assert "MemoryError" in run(tool, "x = bytearray(1 << 30)").text


def test_cpu_time_limit_stops_a_process_that_ignores_the_clock():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    # Four busy threads burn CPU time 4x faster than the wall clock; RLIMIT_CPU (timeout+1 s) ends them.
    tool = PythonTool(PythonToolConfig(), timeout=0.3)
    r = run(tool, "import threading\ndef spin():\n    while True: pass\n"
                  "ts = [threading.Thread(target=spin) for _ in range(4)]\n[t.start() for t in ts]\n[t.join() for t in ts]")
    assert not r.ok and r.text.startswith(("Execution timeout", "Execution stopped: CPU time limit"))
