"""`appo train` starting its own ranks: when it launches, and the rendezvous it gives torchrun's launcher
(keys first, then MASTER_ADDR / MASTER_PORT / NODE_RANK)."""

from __future__ import annotations

import pytest

from appo.config import ConfigError, load_config
from appo.train.launch import check_devices, launch_config, wants_launch


def _trainer(*overrides):
    return load_config("tiny", list(overrides)).trainer


def test_launches_only_for_several_processes_and_never_inside_torchrun():
    assert not wants_launch(_trainer(), {})
    assert wants_launch(_trainer("trainer.n_gpus_per_node=2"), {})
    assert not wants_launch(_trainer("trainer.n_gpus_per_node=2"), {"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"})


def test_one_node_is_a_loopback_c10d_rendezvous():
    cfg = launch_config(_trainer("trainer.n_gpus_per_node=2"), {})
    assert (cfg.nproc_per_node, cfg.min_nodes, cfg.max_nodes, cfg.rdzv_backend) == (2, 1, 1, "c10d")
    assert cfg.rdzv_endpoint.startswith("127.0.0.1:") and cfg.max_restarts == 0


def test_several_nodes_take_the_rendezvous_from_keys_or_the_environment():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234", "NODE_RANK": "1"}
    cfg = launch_config(_trainer("trainer.nnodes=2", "trainer.n_gpus_per_node=8"), env)
    assert (cfg.rdzv_backend, cfg.rdzv_endpoint, cfg.rdzv_configs["rank"], cfg.min_nodes) == (
        "static", "10.0.0.1:1234", 1, 2)
    keys = _trainer("trainer.nnodes=2", "trainer.master_addr=node0", "trainer.master_port=29400", "trainer.node_rank=0")
    cfg = launch_config(keys, env)  # the keys win over the environment
    assert (cfg.rdzv_endpoint, cfg.rdzv_configs["rank"]) == ("node0:29400", 0)
    with pytest.raises(ValueError, match="trainer.master_addr"):
        launch_config(_trainer("trainer.nnodes=2"), {})
    with pytest.raises(ValueError, match="must be in 0..1"):
        launch_config(_trainer("trainer.nnodes=2"), {"MASTER_ADDR": "a", "NODE_RANK": "5"})
    with pytest.raises(ConfigError, match="trainer.node_rank=3 must be below trainer.nnodes=2"):
        _trainer("trainer.nnodes=2", "trainer.node_rank=3")


def test_more_cuda_processes_than_gpus_fail_at_start():
    import torch

    if torch.cuda.device_count() >= 64:
        pytest.skip("this node has 64 GPUs")
    with pytest.raises(ValueError, match="trainer.n_gpus_per_node=64 but this node has"):
        check_devices(_trainer("trainer.n_gpus_per_node=64"), "cuda")
