"""A process that ran the vLLM engine ends cleanly: no `ValueError: Invalid process group specified` from
vLLM's exit handler after `appo train` left the process group, and no `RotaryEmbedding: Failed to load
weights` at each weight push (a layer with only a cache, which vLLM restores), while a real failure to
load weights would still be reported (the filter knows cache-only layers by their tensors).

Runs the engine in a child process, as `appo train` does, and reads what it printed. Needs the optional
vllm extra; skips without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")

SCRIPT = textwrap.dedent("""
    import sys
    from appo.models import build_tiny, load_model, load_tokenizer
    from appo.rollout.engine import GenRequest
    from appo.rollout.vllm import VLLMEngine
    from appo.train import distributed

    path = build_tiny(sys.argv[1], size="10m")
    tok, model = load_tokenizer(str(path)), load_model(str(path))
    engine = VLLMEngine(str(path), tok, dtype="float32", max_model_len=256, enforce_eager=True)
    for _ in range(2):
        engine.load_weights(lambda: model.state_dict())
    (res,) = engine.generate([GenRequest(tok.encode("hello", add_special_tokens=False), 4, temperature=0)])
    print("GENERATED", len(res.token_ids), flush=True)
    distributed.shutdown()  # what `appo train` does last
""")


def test_a_vllm_run_ends_without_errors_or_reload_warnings(tmp_path):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "tiny10m")], env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "GENERATED 4" in proc.stdout
    assert "Invalid process group" not in out and "Traceback" not in out, out[-3000:]
    assert "Failed to load weights" not in out, out[-3000:]


def test_the_reload_filter_keeps_warnings_for_layers_with_weights():
    import logging

    import torch

    from appo.rollout.vllm import _RELOAD_NOISE, _cache_only_layers

    class Rotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("cos_sin_cache", torch.zeros(4), persistent=False)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rotary, self.proj = Rotary(), torch.nn.Linear(2, 2)
            self.register_buffer("scale", torch.ones(1))  # a persistent buffer: a checkpoint holds it

    assert _cache_only_layers(Net()) == {"Rotary"}

    def record(name):
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, "%s: Failed to load weights", (name,), None)

    _RELOAD_NOISE.layers.add("Rotary")
    assert not _RELOAD_NOISE.filter(record("Rotary"))
    assert _RELOAD_NOISE.filter(record("Linear")) and _RELOAD_NOISE.filter(record("Net"))
