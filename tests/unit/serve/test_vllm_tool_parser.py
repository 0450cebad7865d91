"""A model trained by appo in the chat-template format (tools.format=chat_template with the ChatML template appo
ships), served by vLLM's OpenAI server with `tools=` in the request: vLLM's own Hermes parser reads its call.
Needs the optional vllm extra; the server takes minutes to start on a 2-core CPU."""

from __future__ import annotations

import json

import pytest

from tests.unit.appo_cli import run_appo
from tests.unit.rollout.test_vllm_serving import _post, api_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")

CONVERSATION = {"messages": [
    {"role": "user", "content": "Calculate 17 * 23 - 5."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "python", "arguments": {"code": "print(17 * 23 - 5)"}}}]},
    {"role": "tool", "name": "python", "content": "386"},
    {"role": "assistant", "content": "<answer>\\boxed{386}</answer>"},
]}


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
                    f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with api_server(trained, "--max-model-len", "1024", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                    ready_within=600) as url:
        schema = tool_specs(ToolsConfig(enabled=["python"]))[0].schema()
        reply = _post(f"{url}/v1/chat/completions", {
            "model": str(trained), "messages": CONVERSATION["messages"][:1], "temperature": 0, "max_tokens": 128,
            "tools": [{"type": "function", "function": schema}]})
    message = reply["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    assert reply["choices"][0]["finish_reason"] == "tool_calls" and len(calls) == 1, reply
    assert calls[0]["function"]["name"] == "python"
    assert json.loads(calls[0]["function"]["arguments"]) == {"code": "print(17 * 23 - 5)"}
