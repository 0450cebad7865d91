"""`appo config`: print a resolved preset, or every key with its default and help."""

from __future__ import annotations

import argparse
import sys

import yaml

from appo.commands.common import split_preset
from appo.config import ConfigError, describe, load_config, preset_names, to_dict


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appo config", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="Print the resolved config as YAML.")
    show.add_argument("args", nargs="*", metavar="[PRESET|FILE] [key=value ...]",
                      help=f"Preset (default quickstart; one of {', '.join(preset_names())}) and overrides.")
    sub.add_parser("keys", help="Print every key with its default and help text.")
    sub.add_parser("presets", help="List the built-in presets.")
    args = parser.parse_args(argv)

    if args.action == "keys":
        for key, default, help_text in describe():
            print(f"{key} = {default}\n    {help_text}")
        return 0
    if args.action == "presets":
        print("\n".join(preset_names()))
        return 0
    preset, overrides = split_preset(args.args)
    try:
        cfg = load_config(preset or "quickstart", overrides)
    except ConfigError as e:
        print(f"appo config: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
