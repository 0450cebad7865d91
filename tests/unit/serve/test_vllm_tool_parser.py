"""A model trained by appo in the chat-template format (tools.format=chat_template with the ChatML template appo
ships), served by vLLM's OpenAI server with `tools=` in the request: vLLM's own Hermes parser reads its call.
Needs the optional vllm extra; the server takes minutes to start on a 2-core CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.unit.appo_cli import run_appo

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")

CONVERSATION = {"messages": [
    {"role": "user", "content": "Calculate 17 * 23 - 5."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "python", "arguments": {"code": "print(17 * 23 - 5)"}}}]},
    {"role": "tool", "name": "python", "content": "386"},
    {"role": "assistant", "content": "<answer>\\boxed{386}</answer>"},
]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def test_vllm_parses_the_call_of_a_model_trained_in_the_chat_template_format(tmp_path):
    from appo.config import ToolsConfig
    from appo.models import build_tiny
    from appo.tools.registry import tool_specs

    base = build_tiny(tmp_path / "tiny10m", size="10m")  # head_dim 64: runs in vLLM
    data = tmp_path / "calls.jsonl"
    data.write_text((json.dumps(CONVERSATION) + "\n") * 32)
    trained = tmp_path / "trained"
    proc = run_appo("sft", "--config", "tiny", "--output", str(trained), f"model.path={base}", f"sft.files=[{data}]",
                    "tools.enabled=[python]", "tools.format=chat_template", "tools.chat_template=chatml",
                    "sft.epochs=4", "sft.lr=3e-3", "sft.batch_size=1", "sft.packing=false", "sft.max_length=1024",
                    "model.autocast=none",
                    f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(trained),
                               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
                               "--dtype", "float32", "--enforce-eager", "--enable-auto-tool-choice",
                               "--tool-call-parser", "hermes"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, f"the server exited: {server.stderr.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not become ready in 600 s"
            time.sleep(2)
        schema = tool_specs(ToolsConfig(enabled=["python"]))[0].schema()
        reply = _post(f"{url}/v1/chat/completions", {
            "model": str(trained), "messages": CONVERSATION["messages"][:1], "temperature": 0, "max_tokens": 128,
            "tools": [{"type": "function", "function": schema}]})
    finally:
        server.terminate()
        server.wait(timeout=60)
    message = reply["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    assert reply["choices"][0]["finish_reason"] == "tool_calls" and len(calls) == 1, reply
    assert calls[0]["function"]["name"] == "python"
    assert json.loads(calls[0]["function"]["arguments"]) == {"code": "print(17 * 23 - 5)"}
