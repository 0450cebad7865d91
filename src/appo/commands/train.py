"""`appo train`: the whole pipeline (`appo.train.pipeline`, also callable from Python). With no arguments it
runs the `quickstart` preset:

    eval (base) -> cold-start SFT -> eval (after SFT) -> RL -> eval (after RL) -> report.md

`--resume` continues a killed run from its latest checkpoint (finished stages are not repeated; an
interrupted SFT restarts). Stage results live in <output_dir>/pipeline.json.

Several processes / GPUs (FSDP2 learner, data-parallel rollouts; rank 0 logs, evaluates and writes):

    appo train --config deepsearch-8b trainer.n_gpus_per_node=8 trainer.device=cuda
    torchrun --nproc_per_node=8 -m appo.cli train --config deepsearch-8b trainer.device=cuda
    torchrun --nproc_per_node=8 $(which appo) train --config deepsearch-8b trainer.device=cuda

Several nodes: on each, `appo train ... trainer.nnodes=2 trainer.n_gpus_per_node=8 trainer.node_rank=<R>
trainer.master_addr=<node 0>` (or MASTER_ADDR / MASTER_PORT / NODE_RANK in the environment).
"""

from __future__ import annotations

import argparse
import sys

from appo.commands.common import setup_logging
from appo.config import ConfigError, load_config, preset_names
from appo.models import resolve_device
from appo.train import distributed, launch
from appo.train.pipeline import Pipeline

__all__ = ["Pipeline", "main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appo train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart",
                        help=f"Preset ({', '.join(preset_names())}) or a YAML file (may say `defaults: <preset>`).")
    parser.add_argument("--resume", action="store_true", help="Continue the run in trainer.output_dir.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("overrides", nargs="*", help="Dotted overrides: rollout.n=16 actor.lr=1e-6 ...")
    args = parser.parse_intermixed_args(argv)  # overrides before and after flags alike
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        world = distributed.env_world_size()
        if launch.wants_launch(cfg.trainer):  # start the ranks through torchrun's launcher, each runs argv
            distributed.check_config(cfg, cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes)
            launch.check_devices(cfg.trainer, resolve_device(cfg.trainer.device))
            launch.launch_config(cfg.trainer)
        elif world > 1:
            distributed.check_config(cfg, world)
    except (ConfigError, ValueError) as e:
        print(f"appo train: {e}", file=sys.stderr)
        return 2
    if launch.wants_launch(cfg.trainer):
        return launch.launch(cfg.trainer, argv)
    distributed.init_from_env(resolve_device(cfg.trainer.device))
    try:
        Pipeline(cfg, progress=not args.no_progress).run(resume=args.resume)
    finally:
        distributed.shutdown()
    return 0
