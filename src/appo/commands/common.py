"""What every command sets up the same way: logging, the split of preset from overrides, and a built-in
task's search index."""

from __future__ import annotations

import logging
import os

from appo.data.prompt_sets import with_task_index  # noqa: F401  (the commands' import of it)


def setup_logging(level: int = logging.INFO) -> None:
    """Our own log lines at `level`, every other library's at WARNING (bm25s, httpx, ... are chatty)."""
    logging.basicConfig(level=logging.WARNING, format="[appo] %(message)s")
    logging.getLogger("appo").setLevel(level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def split_preset(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' names a preset or YAML file; the rest are dotted overrides."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args
