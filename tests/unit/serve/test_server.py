"""`appo serve` as a user runs it: a real server process on 127.0.0.1, queried over HTTP. The policy is the
scripted engine (tests/unit/serve/scripted_engine.py) where a real tool call is needed; the python tool is
the real sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.unit.appo_cli import SRC, appo_command, assert_user_error, run_appo

REPO = SRC.parent
SCRIPTED = "serve.engine=tests.unit.serve.scripted_engine:build"


def start_server(model_dir: Path, *overrides: str, startup: float = 180) -> tuple[subprocess.Popen, str]:
    """`appo serve` on a free port of 127.0.0.1; returns the process and its base URL once it listens."""
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(appo_command() + ["serve", "--model", str(model_dir), "--config", "tiny", "--port", "0",
                                              *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + startup
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on " in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line.split("listening on ", 1)[1].split()[0].rstrip("/").removesuffix("/v1")
    proc.kill()
    raise AssertionError(f"appo serve did not start: {''.join(lines)}\n{proc.stderr.read()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server closes its tools on the way out); a loaded machine may take a while."""
    proc.terminate()
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def post(url: str, body, timeout: float = 300) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=data,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ask(text: str, **extra) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": text}], **extra}


def assert_error(status: int, body: dict, want_status: int, *needles: str) -> None:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    assert status == want_status, (status, body)
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    for needle in needles:
        assert needle in body["error"]["message"], (needle, body)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, SCRIPTED, "tools.enabled=[python]", "tools.call_limit=2",
                             "rollout.max_response_length=200",
                             "tools.timeout=10", "serve.deadline=60", "serve.max_request_bytes=4096",
                             "serve.queue_size=1")
    yield url
    stop(proc)


def test_the_python_call_runs_in_the_sandbox_and_the_answer_carries_its_result(server):
    status, body = post(server, ask("Calculate 17 * 23 - 5."))
    assert status == 200, body
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert "\\boxed{386}" in choice["message"]["content"]
    trace = body["appo"]["trace"]
    assert [(t["tool"], t["input"], t["output"].strip(), t["ok"]) for t in trace] == \
        [("python", "print(17 * 23 - 5)", "386", True)]
    assert body["appo"]["finish_reason"] in ("eos", "answer") and body["appo"]["tool_calls"] == 1
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_the_chat_template_format_runs_the_same_call(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, SCRIPTED, "tools.enabled=[python]", "rollout.max_response_length=200",
                             "tools.format=chat_template", "tools.chat_template=chatml", "data.max_prompt_length=1024")
    try:
        status, body = post(url, ask("Calculate 17 * 23 - 5."))
    finally:
        stop(proc)
    assert status == 200, body
    assert body["appo"]["tool_format"] == "chat_template"
    assert "<tool_call>" in body["appo"]["response"] and "<tool_response>" in body["appo"]["response"]
    assert [(t["tool"], t["input"], t["output"].strip(), t["executed"]) for t in body["appo"]["trace"]] == \
        [("python", "print(17 * 23 - 5)", "386", True)]
    assert body["choices"][0]["message"]["content"] == "<answer>\\boxed{386}</answer>"


def test_a_request_over_the_tool_budget_stops_at_it(server):
    status, body = post(server, ask("Call python forever."))
    assert status == 200, body
    assert body["appo"]["finish_reason"] == "call_limit" and body["choices"][0]["finish_reason"] == "length"
    assert [t["output"].strip() for t in body["appo"]["trace"]] == ["20", "20"]  # tools.call_limit=2 ran
    # a request may lower the budget, never raise it
    status, body = post(server, ask("Call python forever.", appo={"max_tool_calls": 1}))
    assert status == 200 and len(body["appo"]["trace"]) == 1, body
    status, body = post(server, ask("Call python forever.", appo={"max_tool_calls": 50}))
    assert_error(status, body, 400, "max_tool_calls", "2")


def test_a_request_over_its_deadline_stops_there(server):
    status, body = post(server, ask("Sleep, then answer.", appo={"deadline": 1.0}))
    assert status == 200, body
    assert body["appo"]["finish_reason"] == "deadline" and body["choices"][0]["finish_reason"] == "length"
    assert [t["output"].strip() for t in body["appo"]["trace"]] == ["slept"]  # one 2 s call, then stopped


def test_an_oversize_request_is_refused_unread(server):
    status, body = post(server, ask("x" * 5000))
    assert_error(status, body, 413, "4096")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=60) as resp:
        return json.loads(resp.read())


def wait_for(url: str, **want) -> None:
    deadline = time.monotonic() + 120
    while any(health(url)[k] != v for k, v in want.items()):
        assert time.monotonic() < deadline, (want, health(url))
        time.sleep(0.05)


def test_a_full_queue_answers_503_with_a_json_error(server):
    results: dict[str, tuple[int, dict]] = {}

    def send(name: str, text: str, **extra) -> threading.Thread:
        t = threading.Thread(target=lambda: results.__setitem__(name, post(server, ask(text, **extra))))
        t.start()
        return t

    threads = [send("running", "Sleep", appo={"deadline": 5.0})]
    wait_for(server, running=1, waiting=0)
    threads.append(send("queued", "Calculate 17 * 23 - 5."))
    wait_for(server, running=1, waiting=1)   # serve.queue_size=1: the queue is full now
    threads.append(send("refused", "Calculate 17 * 23 - 5."))
    for t in threads:
        t.join(timeout=300)
    assert results["running"][0] == 200 and results["queued"][0] == 200, results
    assert "386" in results["queued"][1]["choices"][0]["message"]["content"]
    assert_error(*results["refused"], 503, "queue")
    assert health(server) == {"status": "ok", "running": 0, "waiting": 0, "queue_size": 1}


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "JSON"),
    ({"model": "x"}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "stream"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
])
def test_bad_requests_get_400_in_the_openai_error_shape(server, body, needle):
    status, got = post(server, body)
    assert_error(status, got, 400, needle)


def test_models_and_unknown_paths(server):
    with urllib.request.urlopen(server + "/v1/models", timeout=30) as resp:
        models = json.loads(resp.read())
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/v1/nothing", timeout=30)
    assert e.value.code == 404 and "error" in json.loads(e.value.read())


def test_the_hf_engine_serves_the_tiny_model(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, "tools.enabled=[python]", "rollout.max_response_length=16")
    try:
        status, body = post(url, ask("Calculate 1 + 2."))
    finally:
        stop(proc)
    assert status == 200, body
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] > 0 and body["appo"]["engine"] == "hf"


def test_a_bad_engine_setting_stops_at_start_up(tiny_model_dir):
    proc = run_appo("serve", "--model", str(tiny_model_dir), "--config", "tiny", "serve.engine=warp")
    assert_user_error(proc, "serve", "serve.engine", "auto")


def test_the_server_binds_loopback_by_default():
    from appo.config import Config

    assert Config().serve.host == "127.0.0.1"


if sys.platform != "linux":  # the sandbox needs Linux
    pytestmark = pytest.mark.skip("the python sandbox runs on Linux only")


def test_a_taken_port_stops_at_start_up_with_one_line(tiny_model_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_appo("serve", "--model", str(tiny_model_dir), "--config", "tiny", "--port", str(port))
    assert_user_error(proc, "serve", "cannot listen on 127.0.0.1", str(port))
