"""`appo serve` generating on vLLM (serve.engine=vllm; `auto` picks it where it is installed): the tool loop
streams through the in-process engine, a reply comes back over HTTP. Needs the optional vllm extra."""

from __future__ import annotations

import pytest

from tests.unit.serve.test_server import ask, post, start_server, stop

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")


def test_serve_generates_on_vllm(tmp_path, monkeypatch):
    from appo.models import build_tiny

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = build_tiny(tmp_path / "tiny10m", size="10m")  # head_dim 64: runs in vLLM
    proc, url = start_server(model, "tools.enabled=[python]", "rollout.max_response_length=16",
                             "model.autocast=none", startup=600)
    try:
        status, body = post(url, ask("Calculate 1 + 2.", appo={"deadline": 120}))
    finally:
        stop(proc)
    assert status == 200, body
    assert body["appo"]["engine"] == "vllm" and body["usage"]["completion_tokens"] > 0
