"""Data: reference parquet / benchmark JSONL loading into `Prompt`s, built-in offline tasks, SFT traces."""

from appo.data.datasets import DataError, DropReport, Prompt, build_prompts, load_prompts, load_rows
from appo.data.tasks import TaskData, build_task, task_from_config
from appo.data.templates import (
    QUICKSTART_SYSTEM_PROMPT,
    REFERENCE_SYSTEM_PROMPT,
    SYSTEM_PROMPTS,
    fix_backspace,
)
from appo.data.traces import encode_trace, make_sft_traces

__all__ = [
    "QUICKSTART_SYSTEM_PROMPT",
    "REFERENCE_SYSTEM_PROMPT",
    "SYSTEM_PROMPTS",
    "DataError",
    "DropReport",
    "Prompt",
    "TaskData",
    "build_prompts",
    "build_task",
    "encode_trace",
    "fix_backspace",
    "load_prompts",
    "load_rows",
    "make_sft_traces",
    "task_from_config",
]
