"""`appo sft`: cold-start supervised fine-tuning on multi-turn tool-use conversations (sft.files, or the
built-in task's generated traces), saved as a Hugging Face directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from appo.commands.common import setup_logging, with_task_index
from appo.config import ConfigError, load_config
from appo.data.prompt_sets import prepare_task
from appo.models import load_model, load_tokenizer, resolve_device
from appo.precision import resolve_autocast
from appo.train.sft import train_sft


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appo sft", description="Cold-start SFT on tool-use conversations.")
    parser.add_argument("--config", default="quickstart", help="Preset name or YAML file.")
    parser.add_argument("--output", default=None, help="Output HF directory (default: <trainer.output_dir>/sft).")
    parser.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. sft.files=[traces.jsonl] sft.lr=5e-5.")
    args = parser.parse_intermixed_args(argv)  # overrides before and after flags alike
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        if not cfg.sft.files and cfg.data.task is None:
            raise ConfigError("SFT needs sft.files=[...] or a built-in data.task that generates traces")
    except ConfigError as e:
        print(f"appo sft: {e}", file=sys.stderr)
        return 2
    task = prepare_task(cfg) if not cfg.sft.files else None
    cfg = with_task_index(cfg, task)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.cache_dir)
    torch.manual_seed(cfg.trainer.seed)
    device = resolve_device(cfg.trainer.device)
    resolve_autocast(cfg.model.autocast, device)  # once, logged
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.cache_dir, device)
    train_sft(cfg, args.output or Path(cfg.trainer.output_dir) / "sft", model, tokenizer,
              task_rows=task.train if task is not None else None)
    return 0
