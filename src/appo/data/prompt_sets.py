"""The prompts a run trains and validates on: a built-in task's generated splits, or data files."""

from __future__ import annotations

import logging
from pathlib import Path

from appo.config import Config, ConfigError


def prepare_task(cfg: Config):
    """The built-in task's rows (`appo.data.tasks.TaskData`). When the task has a search corpus and search
    is enabled with the local backend and no index_dir, its BM25 index is built under output_dir and
    `cfg.tools.search.index_dir` is pointed at it."""
    from appo.data.tasks import build_task

    task = build_task(cfg.data.task, cfg.data.num_train, cfg.data.num_val, seed=cfg.data.seed,
                      multihop_fraction=cfg.data.multihop_fraction)
    search = cfg.tools.search
    if task.corpus and "search" in cfg.tools.enabled and search.backend == "local" and not search.index_dir:
        from appo.tools.search_backends import build_index

        search.index_dir = str(build_index(task.corpus, Path(cfg.trainer.output_dir) / "search_index"))
    return task


def load_prompt_sets(cfg: Config, tokenizer, task=None) -> tuple[list, list]:
    """Training and held-out prompts: a built-in task's generated splits, or data.train_files/val_files."""
    from appo.data.datasets import DataError, build_prompts, load_prompts

    if cfg.data.task is not None:
        task = task or prepare_task(cfg)
        return tuple(build_prompts(rows, tokenizer, cfg.data, source=cfg.data.task)[0]
                     for rows in (task.train, task.val))
    if not cfg.data.train_files:
        raise ConfigError("no training data: set data.task (a built-in task) or data.train_files=[...]")
    sets = []
    for files in (cfg.data.train_files, cfg.data.val_files):
        prompts = []
        for path in files:
            got, report = load_prompts(path, tokenizer, cfg.data)
            if not got:  # an empty set would only fail later, or train/evaluate on nothing
                raise DataError(f"{path}: no usable prompts ({report})")
            if report.dropped:
                logging.getLogger(__name__).warning("%s: %s", path, report)
            prompts += got
        sets.append(prompts)
    return sets[0], sets[1]
