"""`appo chat` driven through stdin: calls and results are shown as they happen, then the answer, and the
next message continues the conversation."""

from __future__ import annotations

import os
import subprocess

from tests.unit.appo_cli import SRC, appo_command

REPO = SRC.parent


def test_chat_runs_the_tool_and_keeps_the_conversation(tiny_model_dir):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(appo_command() + ["chat", "--model", str(tiny_model_dir), "--config", "tiny",
                                            "serve.engine=tests.unit.serve.scripted_engine:build",
                                            "tools.enabled=[python]", "rollout.max_response_length=200"],
                          input="Calculate 17 * 23 - 5.\nWhat did you get?\n", cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    call, result = out.find("print(17 * 23 - 5)"), out.find("386")
    first, second = out.find("\\boxed{386}"), out.find("Earlier I got \\boxed{386}")
    assert 0 <= call < result < first < second, out   # call, its result, the answer, then the next turn
    assert "Traceback" not in proc.stderr
