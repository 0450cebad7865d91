"""The `appo` command. Each subcommand is a module of `appo.commands`; this file only dispatches, so
`appo --help` stays fast (no torch import)."""

from __future__ import annotations

import importlib
import sys

from appo.errors import UserError

# name -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("appo.commands.train:main", "Run the RL pipeline (cold-start SFT -> RL -> evaluation); default preset: quickstart."),
    "sft": ("appo.commands.sft:main", "Supervised fine-tuning on multi-turn tool-use conversations."),
    "eval": ("appo.commands.eval:main", "Evaluate a model with the agent loop on benchmark files (pass@k, maj@k, EM/F1, judge)."),
    "rollout": ("appo.commands.rollout:main", "Sample rollout groups without training; write JSONL and an HTML tree view."),
    "serve": ("appo.commands.serve:main", "Serve a trained agent: OpenAI-compatible chat completions that run its tools server-side."),
    "chat": ("appo.commands.chat:main", "Talk to a trained agent in the terminal; its tool calls and results are shown as they run."),
    "tool": ("appo.commands.tool:main", "Run a tool by hand: `appo tool python --code ...`, `appo tool search QUERY`."),
    "index": ("appo.commands.index:main", "Build a BM25 index for the local search backend: `appo index build`."),
    "config": ("appo.commands.config:main", "Show the resolved config (`appo config show [preset] [overrides]`) and all keys."),
    "prepare": ("appo.commands.prepare:main", "Convert/build the built-in models ahead of time (smollm2-135m-instruct, tiny)."),
    "convert": ("appo.commands.convert:main", "Convert a verl FSDP checkpoint into a Hugging Face directory: `appo convert --from verl-fsdp DIR --out HF_DIR`."),
}


def _usage() -> str:
    lines = ["usage: appo <command> [args]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `appo <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from appo import __version__
        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"appo: unknown command '{name}'. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except UserError as e:  # bad config/data/checkpoint/cache: one line naming the file, not a traceback
        print(f"appo {name}: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
