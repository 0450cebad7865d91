"""The prompts a run trains and validates on: a built-in task's generated splits, or data files."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from appo.config import Config, ConfigError
from appo.data.datasets import DataError, build_prompts, load_prompts
from appo.data.tasks import TaskData, build_task
from appo.data.templates import system_prompt_for_tools
from appo.tools.registry import prompt_format, tool_specs
from appo.tools.search_backends import build_index
from appo.tools.spec import tools_system_prompt


def prepare_task(cfg: Config) -> TaskData | None:
    """The built-in task's rows (`data.task`), or None when the run reads data files."""
    if cfg.data.task is None:
        return None
    # The task's rows tell the model the tag protocol; in the chat template's own format they name the tools only.
    system = {"system_prompt": system_prompt_for_tools(cfg.tools.enabled, "chat_template")} \
        if cfg.tools.format == "chat_template" else {}
    return build_task(cfg.data.task, cfg.data.num_train, cfg.data.num_val, seed=cfg.data.seed,
                      multihop_fraction=cfg.data.multihop_fraction, **system)


def task_search_index(cfg: Config, task: TaskData | None) -> str | None:
    """Where the task's search corpus is indexed for the local search backend: built under output_dir when
    the task has a corpus, search is enabled with backend=local and no tools.search.index_dir is set;
    None when no index needs building."""
    search = cfg.tools.search
    if task is None or not task.corpus or "search" not in cfg.tools.enabled or search.backend != "local" \
            or search.index_dir:
        return None
    return str(build_index(task.corpus, Path(cfg.trainer.output_dir) / "search_index"))


def with_task_index(cfg: Config, task) -> Config:
    """`cfg` with tools.search.index_dir pointing at the built-in task's search index, built on first use
    (a copy: the caller's config is left as it was)."""
    index_dir = task_search_index(cfg, task)
    if index_dir is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.tools.search.index_dir = index_dir
    return cfg


def default_system_prompt(cfg: Config) -> str:
    """The system prompt of rows that bring none (data files; `appo serve` / `appo chat` conversations)."""
    if cfg.tools.format != "tags":  # the chat template shows every tool's schema; the prompt only names them
        return system_prompt_for_tools([s.name for s in tool_specs(cfg.tools)], cfg.tools.format)
    if cfg.tools.custom or cfg.tools.environment.spec:  # plug-ins: every tool with its arguments
        return tools_system_prompt(tool_specs(cfg.tools))
    return system_prompt_for_tools(cfg.tools.enabled, cfg.tools.format)


def load_prompt_sets(cfg: Config, tokenizer, task: TaskData | None = None) -> tuple[list, list]:
    """Training and held-out prompts: a built-in task's generated splits (`task`, from `prepare_task`), or
    data.train_files/val_files."""
    fmt = prompt_format(cfg.tools, tokenizer)
    if cfg.data.task is not None:
        task = task or prepare_task(cfg)
        sets = []
        for rows in (task.train, task.val):
            got, report = build_prompts(rows, tokenizer, cfg.data, source=cfg.data.task, tool_format=fmt)
            if rows and not got:  # training or evaluating on nothing would only fail later, with less to go on
                raise DataError(f"data.task={cfg.data.task}: no usable prompts ({report}){_too_long_hint(report, cfg)}")
            if report.dropped:  # e.g. the tools' schemas of tools.format=chat_template made them too long
                logging.getLogger(__name__).warning("data.task=%s: %s%s", cfg.data.task, report,
                                                    _too_long_hint(report, cfg))
            sets.append(got)
        return sets[0], sets[1]
    if not cfg.data.train_files:
        raise ConfigError("no training data: set data.task (a built-in task) or data.train_files=[...]")
    system = default_system_prompt(cfg)
    sets = []
    for key, files in (("data.train_files", cfg.data.train_files), ("data.val_files", cfg.data.val_files)):
        prompts = []
        for path in files:
            got, report = load_prompts(path, tokenizer, cfg.data, default_system=system, tool_format=fmt)
            hint = _too_long_hint(report, cfg)
            if not got:  # an empty set would only fail later, or train/evaluate on nothing
                raise DataError(f"{key}: {path}: no usable prompts ({report}){hint}")
            if report.dropped:
                logging.getLogger(__name__).warning("%s: %s%s", path, report, hint)
            prompts += got
        sets.append(prompts)
    return sets[0], sets[1]


def _too_long_hint(report, cfg: Config) -> str:
    if not report.counts.get("too_long"):
        return ""
    return (f"; prompts over data.max_prompt_length={cfg.data.max_prompt_length} tokens were dropped: raise "
            "it, or shorten the system prompt (data.system_prompt=...)")
