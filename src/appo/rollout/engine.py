"""The generation-engine contract: token ids in, token ids out, with per-token log-probs and entropies.

Shaped after vLLM's offline API so that engines are interchangeable: prompts are token ids (never text),
stop strings are kept in the output (like `include_stop_str_in_output=True`), every generated token comes
with the log-prob of the sampled token and the entropy of the distribution it was sampled from, and
optionally its top-k log-probs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "eos"]


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0          # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1                   # -1 (or 0) disables
    repetition_penalty: float = 1.0   # CTRL/HF penalty on tokens already in prompt + output; 1.0 disables
    stop: list[str] = field(default_factory=list)
    logprobs: int = 0                 # how many top log-probs to return per token (0: none)
    seed: int | None = None           # per-request seed; the same seed gives the same sample


@dataclass
class GenResult:
    token_ids: list[int]
    logprobs: list[float]                          # log-prob of each sampled token
    entropies: list[float]                         # entropy of each step's sampling distribution
    top_logprobs: list[dict[int, float]] | None    # per token: top-k ids -> log-prob (plus the sampled id)
    finish_reason: FinishReason
    stop_str: str | None = None                    # the stop string that ended the row, if any


class Engine(Protocol):
    """What the tool loop needs from a sampler (the HF engine here; vLLM behind the same calls)."""

    tokenizer: Any

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def load_weights(self, weights: Callable[[], dict]) -> None:
        """After each update: pull the new weights (`weights()`, a full state dict) into the engine's own copy;
        a no-op, without calling `weights`, for an engine that samples with the learner's module."""

    # Optional: an engine whose `supports_sessions` is true also has `open_session()`, a continuous batch
    # whose sequences keep their KV cache between segments (see hf.DecodeSession); the tool loop then
    # prefills only what is new. An engine whose `supports_streaming` is true has `open_stream()` (see
    # vllm.VLLMStream: add one request at a time, step, collect the finished ones) and the tool loop runs
    # each row through its own turns (stream_loop). Other engines get one `generate` call per round.
