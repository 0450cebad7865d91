"""Throughput of a randomly initialised Qwen2-shaped model built from a config (no download): the HF engine's
generated tokens/s, the learner's trained tokens/s (forward + backward + AdamW step) with its model FLOPs
utilisation, and vLLM's generated tokens/s where vLLM is importable. Part of scripts/gpu_check.sh.

    python benchmarks/bench_gpu_throughput.py [--device cuda|cpu] [--size 0.5b|tiny] [--batch 32]
        [--new-tokens 256] [--learner-rows 8] [--row-tokens 1024]

`--size 0.5b` is Qwen2.5-0.5B's shape (24 layers, hidden 896, 151,936-token vocabulary: 494M parameters);
`tiny` is the tests' 1M-parameter model, for a CPU smoke run. MFU = 6 x parameters x tokens/s / the
device's dense bf16 peak (attention FLOPs not counted), printed where the peak is known.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from appo.config import ActorConfig, ModelConfig  # noqa: E402
from appo.models import TINY_SIZES  # noqa: E402
from appo.rollout.engine import GenRequest  # noqa: E402
from appo.rollout.hf import HFEngine  # noqa: E402
from appo.train.learner import Learner, UpdateBatch  # noqa: E402

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1000000.0)
# Dense bf16 peaks (FLOP/s) of the devices we may be lent, by a name fragment torch reports.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


class _IdsOnly:
    """The tokenizer surface the HF engine reads when requests carry no stop strings (ids in, ids out)."""

    def __init__(self, eos_id: int, pad_id: int):
        self.eos_token_id, self.pad_token_id = eos_id, pad_id
        self.all_special_ids = [eos_id, pad_id]

    def convert_tokens_to_ids(self, token):
        return None


def build(size: str, device: str, dtype: torch.dtype, out: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = QWEN2_05B if size == "0.5b" else dict(vocab_size=4096, tie_word_embeddings=True, **TINY_SIZES["1m"])
    torch.manual_seed(0)
    cfg = Qwen2Config(eos_token_id=shape["vocab_size"] - 1, pad_token_id=shape["vocab_size"] - 2,
                      bos_token_id=None, **shape)
    model = Qwen2ForCausalLM(cfg).to(dtype)
    model.save_pretrained(out)  # vLLM loads it from here
    return model.to(device)


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hf_generate(model, device: str, batch: int, new_tokens: int, prompt_len: int) -> float:
    vocab = model.config.vocab_size
    engine = HFEngine(model, _IdsOnly(model.config.eos_token_id, model.config.pad_token_id), max_batch_size=batch)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab - 2, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    engine.generate([GenRequest(p, 4, temperature=1.0, seed=i) for i, p in enumerate(prompts[:2])])  # warm-up
    sync(device)
    start = time.perf_counter()
    results = engine.generate([GenRequest(p, new_tokens, temperature=1.0, seed=i) for i, p in enumerate(prompts)])
    sync(device)
    return sum(len(r.token_ids) for r in results) / (time.perf_counter() - start)


def learner_step(model, device: str, rows: int, row_tokens: int) -> float:
    vocab = model.config.vocab_size
    actor = ActorConfig(lr=1e-6, micro_batch_size=max(1, rows // 2), share_prompts=False)
    autocast = "bfloat16" if device == "cuda" else "none"
    learner = Learner(model, actor, ModelConfig(autocast=autocast, gradient_checkpointing=device == "cuda"),
                      pad_id=model.config.pad_token_id, device=device)
    g = torch.Generator().manual_seed(2)
    half = row_tokens // 2
    prompts = [torch.randint(0, vocab - 2, (half,), generator=g).tolist() for _ in range(rows)]
    responses = [torch.randint(0, vocab - 2, (row_tokens - half,), generator=g).tolist() for _ in range(rows)]
    mask = torch.ones(rows, row_tokens - half)
    adv = torch.randn(rows, 1, generator=g).expand_as(mask).clone()
    batch = UpdateBatch(prompts, responses, mask, None, adv)
    learner.update(batch)  # warm-up (allocations, kernels)
    sync(device)
    start = time.perf_counter()
    learner.update(batch)
    sync(device)
    return rows * row_tokens / (time.perf_counter() - start)


def vllm_generate(path: str, batch: int, new_tokens: int, prompt_len: int, vocab: int) -> float:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.5, seed=0)
    g = torch.Generator().manual_seed(1)
    prompts = [{"prompt_token_ids": torch.randint(0, vocab - 2, (prompt_len,), generator=g).tolist()}
               for _ in range(batch)]
    params = SamplingParams(temperature=1.0, max_tokens=new_tokens, ignore_eos=True, detokenize=False, seed=0)
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--size", default="0.5b", choices=("0.5b", "tiny"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--learner-rows", type=int, default=8)
    ap.add_argument("--row-tokens", type=int, default=1024)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --size tiny for a smoke run)")

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    with tempfile.TemporaryDirectory(prefix="appo-throughput-") as tmp:
        model = build(args.size, args.device, dtype, tmp)
        params = sum(p.numel() for p in model.parameters())
        print(f"model: random Qwen2-shaped '{args.size}', {params / 1e6:.1f}M parameters, {dtype}, on {where}")
        gen = hf_generate(model, args.device, args.batch, args.new_tokens, args.prompt_tokens)
        print(f"HF engine: {gen:.0f} generated tokens/s (batch {args.batch}, {args.new_tokens} new tokens, T=1)")
        model.float()  # the learner keeps float32 master weights (bf16 autocast on CUDA)
        train = learner_step(model, args.device, args.learner_rows, args.row_tokens)
        peak = peak_flops(args.device)
        mfu = f"{6 * params * train / peak:.1%}" if peak else "n/a (device peak unknown)"
        print(f"learner: {train:.0f} trained tokens/s ({args.learner_rows} rows x {args.row_tokens} tokens, "
              f"fwd+bwd+AdamW), MFU {mfu}")
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if importlib.util.find_spec("vllm") is None:
            print("vLLM: not importable here, skipped")
        elif args.device != "cuda":
            print("vLLM: skipped on CPU (the GPU check measures it on CUDA)")
        else:
            tok_s = vllm_generate(tmp, args.batch, args.new_tokens, args.prompt_tokens, QWEN2_05B["vocab_size"]
                                  if args.size == "0.5b" else 4096)
            print(f"vLLM: {tok_s:.0f} generated tokens/s (batch {args.batch}, {args.new_tokens} new tokens, T=1)")


if __name__ == "__main__":
    main()
