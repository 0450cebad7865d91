"""More prompt tokens at once than vLLM's per-step token budget, each request with its own seed (as every
rollout has): on a CPU, vLLM 0.32 splits such a prefill over steps and then rewinds the request's random
generator, which torch's CPU generator cannot do (`RuntimeError: CPU Generator does not use offset`). The
engine must still answer, and a seeded row must sample the same tokens in a crowd as alone.

Runs the engine in a child process (one vLLM engine per process). Needs the optional vllm extra; skips
without it.
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
    from appo.models import build_tiny, load_tokenizer
    from appo.rollout.engine import GenRequest
    from appo.rollout.vllm import VLLMEngine

    path = build_tiny(sys.argv[1], size="10m")
    tok = load_tokenizer(str(path))
    # A 256-token budget per step against 12 prompts of 120 tokens: without care, prefills are split.
    engine = VLLMEngine(str(path), tok, dtype="float32", max_model_len=256, enforce_eager=True,
                        max_num_batched_tokens=256)
    prompts = [tok.encode(f"question {i}: " + "tell me more " * 40, add_special_tokens=False)[:120]
               for i in range(12)]
    crowd = engine.generate([GenRequest(p, 8, temperature=1.0, seed=100 + i) for i, p in enumerate(prompts)])
    (alone,) = engine.generate([GenRequest(prompts[7], 8, temperature=1.0, seed=107)])
    print("ROWS", sum(len(r.token_ids) == 8 or r.finish_reason == "stop" for r in crowd), flush=True)
    print("SAME", crowd[7].token_ids == alone.token_ids, flush=True)
""")


def test_a_crowded_prefill_with_seeded_rows_answers_and_keeps_the_seeds_samples(tmp_path):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "tiny10m")], env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "ROWS 12" in proc.stdout, out[-3000:]
    assert "SAME True" in proc.stdout, out[-3000:]
