"""Several processes under torchrun: process-group set-up, FSDP2 sharding and the few collectives the
trainer needs. Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op, so the
single-process path never touches torch.distributed.

Launch: `torchrun --nproc_per_node=N -m appo.cli train --config <preset> [overrides]`. Rollouts are
data-parallel (each rank samples a contiguous slice of the step's prompts with its own unsharded
engine), the learner is sharded with FSDP2, and rank 0 alone logs and writes files.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 evaluates alone while the others wait at a barrier; give that wait room (the default is 30 min).
BARRIER_TIMEOUT = timedelta(hours=4)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes (nccl on cuda, gloo on cpu); nothing with one process."""
    if env_world_size() <= 1 or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    _joined.append(True)


_joined: list[bool] = []  # whether init_from_env created the process group (and shutdown should end it)


def shutdown() -> None:
    """Leave the process group this module joined, after vLLM has released the groups it built on top of
    it. A group that vLLM started for itself (a single-process run with rollout.engine=vllm) is left to
    vLLM's own exit handler: destroying it here made that handler fail on the destroyed group, printing
    `ValueError: Invalid process group specified` at the end of every such run."""
    if not _joined:
        return
    _joined.clear()
    if "vllm" in sys.modules:
        from appo.rollout.vllm import release_parallel_state

        release_parallel_state()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def my_share(items: list) -> tuple[int, list]:
    """This rank's contiguous share of `items` (all of them in one process), and where it starts. Every
    rank gets len(items) // world_size items (`check_config` makes the step's prompts divide evenly)."""
    share = len(items) // world_size()
    first = rank() * share
    return first, items[first:first + share]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def check_config(cfg, world: int) -> None:
    """Fail at start-up, naming the keys, on what cannot run in `world` processes."""
    if cfg.data.batch_size % world:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by the number of processes "
                         f"({world}): each rank samples batch_size / {world} prompts per step")
    if cfg.actor.mini_batch_size % world:
        raise ValueError(f"actor.mini_batch_size={cfg.actor.mini_batch_size} must be divisible by the number of "
                         f"processes ({world}): each rank trains on mini_batch_size / {world} rows per optimizer step")
    if cfg.rollout.tensor_parallel_size > 1:
        raise ValueError(f"rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size} runs in one process (vLLM "
                         "starts its own workers on that many GPUs); under torchrun every rank samples its own "
                         "prompts with its own engine: set rollout.tensor_parallel_size=1")
    if cfg.model.lora.rank > 0:
        raise ValueError("LoRA (model.lora.rank > 0) runs in one process for now; set model.lora.rank=0 for a "
                         "sharded full fine-tune")
    if cfg.sft.enabled and (cfg.sft.files or cfg.data.task is not None or cfg.sft.trace_key):
        raise ValueError("cold-start SFT runs in one process: run `appo sft` (or `appo train` without torchrun) "
                         "first, then launch RL with model.path=<its checkpoint> sft.enabled=false")


def sum_all(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def max_all(value: float) -> float:
    """The largest `value` over ranks (every rank must call it)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (keeps ranks stepping in lock-step)."""
    return sum_all(float(flag)) > 0


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(root: torch.nn.Module, layers, offload: bool = False) -> None:
    """FSDP2: each decoder layer is its own unit, `root` (which owns the embeddings, final norm and LM head,
    tied or not) the outer one. The root reshards after forward too: otherwise its gathered weights would
    outlive in-place changes to the shards (the stale-policy snapshot swap). `offload`: the shards (and their
    gradients) live in CPU memory and are copied to the device for each unit's forward and backward; the
    optimizer then steps on the CPU."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, offload_policy=policy)
    fully_shard(root, reshard_after_forward=True, offload_policy=policy)


def full_state_dict(model: torch.nn.Module, *, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a (possibly FSDP2-sharded) model. Collective: every rank calls it.
    `everywhere=False` (checkpoints) leaves it on rank 0's CPU only (others get {}); `everywhere=True`
    (engine weight sync) gives every rank the full tensors on their device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))
