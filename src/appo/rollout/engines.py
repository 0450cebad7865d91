"""Building the engine `rollout.engine` names (kept apart from the protocol, which knows no implementation)."""

from __future__ import annotations

from appo.rollout.engine import Engine


def make_engine(rollout_cfg, model, tokenizer, own_copy: bool = False) -> Engine:
    """The engine `rollout.engine` names, sampling with `model`: for 'hf' the learner's own module, or with
    `own_copy` a replica that `load_weights` refreshes."""
    if rollout_cfg.engine == "hf":
        from appo.rollout.hf import HFEngine

        return HFEngine(model, tokenizer, max_batch_size=rollout_cfg.gen_batch_size, seed=rollout_cfg.seed,
                        own_copy=own_copy, kv_reuse=rollout_cfg.kv_reuse)
    if rollout_cfg.engine == "vllm":
        from appo.rollout import vllm as vllm_engine

        return vllm_engine.VLLMEngine.from_config(rollout_cfg, model, tokenizer)
    raise ValueError(f"rollout.engine={rollout_cfg.engine!r} is not valid; choose one of: hf, vllm")
