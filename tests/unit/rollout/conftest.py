"""Fixtures for rollout tests: a scripted engine (exact control over what the "policy" writes), a causal
LM that follows a token script (to drive the HF engine's decode loop), and real tools."""

from __future__ import annotations

import types

import pytest
import torch

from appo.config import Config, SearchToolConfig, ToolsConfig
from appo.rollout.engine import GenRequest, GenResult


class ScriptedEngine:
    """An Engine whose turns come from `script(prompt_text, request) -> str`. Each returned token gets a
    distinct log-prob (-0.001 * serial number) and entropy (0.001 * serial), so tests can check exactly
    where every record ended up. Stop strings and max_new_tokens are honoured like a real engine."""

    def __init__(self, tokenizer, script):
        self.tokenizer = tokenizer
        self.script = script
        self.serial = 0
        self.calls: list[GenRequest] = []
        self.eos_ids = {tokenizer.eos_token_id}

    def load_weights(self, state_dict):
        pass

    def generate(self, requests):
        self.calls += requests
        out = []
        for req in requests:
            text = self.script(self.tokenizer.decode(req.prompt_ids, skip_special_tokens=False), req)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            finish, stop_str, kept = "length", None, []
            for tok in ids:
                kept.append(tok)
                if tok in self.eos_ids:
                    finish = "eos"
                    break
                hit = next((s for s in req.stop if s in self.tokenizer.decode(kept, skip_special_tokens=False)), None)
                if hit:
                    finish, stop_str = "stop", hit
                    break
                if len(kept) >= req.max_new_tokens:
                    break
            kept = kept[:req.max_new_tokens]
            serials = [self.serial + i + 1 for i in range(len(kept))]
            self.serial += len(kept)
            out.append(GenResult(token_ids=kept, logprobs=[-0.001 * s for s in serials],
                                 entropies=[0.001 * s for s in serials],
                                 top_logprobs=[{t: -0.001 * s, 0: -5.0} for t, s in zip(kept, serials)]
                                 if req.logprobs else None,
                                 finish_reason=finish, stop_str=stop_str))
        return out


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM for the HF engine: at absolute position p it puts logit `margin` on
    `sequence[p + 1]`, so every row whose prompt is a prefix of `sequence` continues it (sampling follows
    it with probability ~1, greedy exactly). Rows with shorter prompts have further to go, so they finish
    later: a wrong position or a misaligned row after the batch shrinks shows up as a wrong token."""

    def __init__(self, config, sequence: list[int], margin: float = 30.0):
        super().__init__()
        self.config = config
        self.sequence = sequence
        self.margin = margin
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.batch_sizes: list[int] = []

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True,
                logits_to_keep=0):
        self.batch_sizes.append(input_ids.shape[0])
        logits = torch.zeros(input_ids.shape[0], 1, self.config.vocab_size)
        for row, pos in enumerate(position_ids[:, -1].tolist()):
            logits[row, 0, self.sequence[min(pos + 1, len(self.sequence) - 1)]] = self.margin
        return types.SimpleNamespace(logits=logits)


@pytest.fixture()
def scripted_lm(tiny_tokenizer):
    """build(sequence) -> a ScriptedLM over the tiny vocabulary."""
    from transformers import Qwen2Config

    def build(sequence: list[int]):
        cfg = Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)
        return ScriptedLM(cfg, sequence)

    return build


def make_cfg(**overrides) -> Config:
    """A Config with rollout/tools fields set by dotted keys, e.g. make_cfg(**{"rollout.n": 4})."""
    from appo.config import load_config

    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def python_tools():
    from appo.tools import build_tools

    runner = build_tools(ToolsConfig(enabled=["python"], timeout=10.0))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def search_tools(tmp_path_factory):
    """Python and search, the latter over a real BM25 index of a few documents."""
    from appo.tools import build_tools
    from appo.tools.search_backends import build_index

    index = build_index([{"id": "1", "title": "Paris", "text": "Paris is the capital of France."},
                         {"id": "2", "title": "Rome", "text": "Rome is the capital of Italy."},
                         {"id": "3", "title": "Nile", "text": "The Nile is a river in Africa."}],
                        tmp_path_factory.mktemp("bm25") / "index")
    runner = build_tools(ToolsConfig(enabled=["python", "search"], timeout=10.0,
                                     search=SearchToolConfig(backend="local", index_dir=str(index))))
    yield runner
    runner.close()


def chat_prompt(tok, text="Calculate 12 + 7."):
    """Token ids of a one-turn chat prompt, ready for the assistant's reply."""
    text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


@pytest.fixture()
def engine(tiny_model, tiny_tokenizer):
    """The HF engine over the tiny model."""
    from appo.rollout.hf import HFEngine

    return HFEngine(tiny_model, tiny_tokenizer, seed=0)
