"""Generated tokens per second of the HF engine and the vLLM engine on the same token-id prompts and
seeds (batch x new tokens, T=1), measured side by side in one run. Needs the vllm extra.

    python benchmarks/bench_engines.py [--model tiny-10m|tiny|smollm2-135m-instruct|PATH] [--batch 32]
        [--new-tokens 128] [--dtype float32|bfloat16] [--eager/--no-eager]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from appo.models import build_tiny, load_model, load_tokenizer, resolve_model_path  # noqa: E402
from appo.rollout.engine import GenRequest  # noqa: E402
from appo.rollout.hf import HFEngine  # noqa: E402

QUESTIONS = ["Calculate 12 + 7.", "Who wrote the first film?", "Name three rivers in Africa.",
             "What is the capital of France?", "Explain why the sky is blue.", "Write a haiku about rain."]


def model_path(name: str) -> str:
    if name == "tiny-10m":
        return str(build_tiny(tempfile.mkdtemp(prefix="bench-tiny10m-") + "/model", size="10m"))
    return resolve_model_path(name)


def timed(engine, requests) -> tuple[float, int]:
    engine.generate(requests[:2])  # warm-up
    start = time.perf_counter()
    results = engine.generate(requests)
    return time.perf_counter() - start, sum(len(r.token_ids) for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-10m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                    help="vLLM enforce_eager (no torch.compile)")
    args = ap.parse_args()

    path = model_path(args.model)
    tok = load_tokenizer(path)
    texts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                     add_generation_prompt=True, tokenize=False) for i in range(args.batch)]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    requests = [GenRequest(p, args.new_tokens, temperature=1.0, seed=i) for i, p in enumerate(prompts)]

    hf_s, hf_n = timed(HFEngine(load_model(path, dtype=args.dtype), tok), requests)
    print(f"hf    {args.model} {args.dtype}: {hf_n} tokens in {hf_s:.2f}s = {hf_n / hf_s:.0f} tok/s "
          f"({torch.get_num_threads()} threads)", flush=True)

    from appo.rollout.vllm import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(path, tok, dtype=args.dtype, max_model_len=1024, enforce_eager=args.eager)
    init_s = time.perf_counter() - t0
    vl_s, vl_n = timed(engine, requests)
    print(f"vllm  {args.model} {args.dtype} eager={args.eager}: {vl_n} tokens in {vl_s:.2f}s = "
          f"{vl_n / vl_s:.0f} tok/s (engine start {init_s:.1f}s, {torch.get_num_threads()} threads)")
    print(f"ratio vllm/hf tok/s: {(vl_n / vl_s) / (hf_n / hf_s):.2f}")


if __name__ == "__main__":
    main()
