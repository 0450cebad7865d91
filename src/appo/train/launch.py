"""`appo train` starting its own processes: `trainer.n_gpus_per_node` x `trainer.nnodes` ranks through
torchrun's elastic launcher (`torch.distributed.launcher.api.elastic_launch`, what `torchrun` itself
runs), each rank running the same `appo train` command line. Rendezvous comes from the trainer.* keys,
else the usual environment variables (MASTER_ADDR, MASTER_PORT, NODE_RANK), as torchrun reads them.

One node: a c10d rendezvous on the loopback (torchrun --standalone). Several nodes: the static
rendezvous at MASTER_ADDR:MASTER_PORT with this node's rank (torchrun --nnodes N --node-rank R
--master-addr A --master-port P). A process started by torchrun (by hand, or by this module) never
launches again.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Mapping

LAUNCHED_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun's agent in every process it starts


def wants_launch(trainer_cfg, env: Mapping[str, str] = os.environ) -> bool:
    """Whether this `appo train` should start the ranks itself (not when it already is one)."""
    return (trainer_cfg.n_gpus_per_node * trainer_cfg.nnodes > 1 and LAUNCHED_ENV not in env
            and "LOCAL_RANK" not in env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_config(trainer_cfg, env: Mapping[str, str] = os.environ):
    """torchrun's LaunchConfig for the trainer.* keys and the environment (keys first)."""
    from torch.distributed.launcher.api import LaunchConfig

    t = trainer_cfg
    nodes = t.nnodes
    common = dict(min_nodes=nodes, max_nodes=nodes, nproc_per_node=t.n_gpus_per_node, max_restarts=0,
                  start_method="spawn", monitor_interval=0.5)
    if nodes == 1:
        addr = t.master_addr or env.get("MASTER_ADDR") or "127.0.0.1"
        port = t.master_port or int(env.get("MASTER_PORT") or _free_port())
        return LaunchConfig(run_id=str(uuid.uuid4()), rdzv_backend="c10d", rdzv_endpoint=f"{addr}:{port}",
                            rdzv_configs={"rank": 0}, **common)
    addr = t.master_addr or env.get("MASTER_ADDR")
    if not addr:
        raise ValueError(f"trainer.nnodes={nodes} needs the rendezvous host: set trainer.master_addr (or "
                         "MASTER_ADDR) to node 0's address on every node")
    port = t.master_port or int(env.get("MASTER_PORT") or 29500)
    node_rank = t.node_rank if t.node_rank is not None else int(env.get("NODE_RANK") or 0)
    if not 0 <= node_rank < nodes:
        raise ValueError(f"node rank {node_rank} (trainer.node_rank or NODE_RANK) must be in 0..{nodes - 1}")
    return LaunchConfig(run_id=env.get("TORCHELASTIC_RUN_ID", "appo"), rdzv_backend="static",
                        rdzv_endpoint=f"{addr}:{port}", rdzv_configs={"rank": node_rank, "timeout": 900}, **common)


def check_devices(trainer_cfg, device: str) -> None:
    """On CUDA, one GPU per process on this node."""
    import torch

    n = trainer_cfg.n_gpus_per_node
    if device == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"trainer.n_gpus_per_node={n} but this node has {torch.cuda.device_count()} CUDA "
                         f"device(s); lower it, or set trainer.device=cpu for gloo processes")


def launch(trainer_cfg, train_args: list[str]) -> int:
    """Run `appo train TRAIN_ARGS` in every rank of this node; 0 when all of them finished, else 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    config = launch_config(trainer_cfg)
    print(f"[appo] starting {trainer_cfg.n_gpus_per_node} process(es) on this node of {trainer_cfg.nnodes} "
          f"(torchrun elastic launcher, rendezvous {config.rdzv_backend} at {config.rdzv_endpoint})", flush=True)
    try:
        elastic_launch(config, sys.executable)("-m", "appo.cli", "train", *train_args)
    except ChildFailedError as e:
        failed = ", ".join(f"rank {rank} (exit {f.exitcode})" for rank, f in sorted(e.failures.items()))
        print(f"appo train: a process failed: {failed}; its error is above", file=sys.stderr)
        return 1
    return 0
