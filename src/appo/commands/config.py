"""`appo config`: print a resolved preset, or every key with its default and help; `from-verl` turns a
verl launch script (the seed's) into the equivalent appo YAML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from appo.commands.common import split_preset
from appo.config import (
    ConfigError,
    describe,
    load_config,
    parse_override,
    preset_names,
    to_dict,
    translate_override,
)
from appo.verl_launch import LaunchScriptError, read_launch_script

ARPO_KEYS = ("actor_rollout_ref.rollout.beam_size", "actor_rollout_ref.rollout.branch_probability")


def _nest(data: dict, key: str, value) -> None:
    *groups, last = key.split(".")
    for g in groups:
        data = data.setdefault(g, {})
    data[last] = value


def from_verl(script: str, base: str | None = None) -> str:
    """The appo YAML equivalent to a verl launch script's trainer command: its overrides mapped onto appo's
    keys on top of a base preset (deepsearch-8b for the seed's deep-research yaml, else reasoning-7b), the
    ignored verl knobs and the unset ones listed as comments. Raises ConfigError / LaunchScriptError."""
    cmd = read_launch_script(script)
    base = base or ("deepsearch-8b" if cmd.config_name and "_dr" in cmd.config_name else "reasoning-7b")
    data: dict = {}
    notes, unset = [], []
    keys = set()
    for text in cmd.overrides:
        key, value = parse_override(text)
        keys.add(key)
        if value is None or value == "":
            unset.append(key)
            continue
        try:
            pairs, note = translate_override(key, value)
        except ConfigError as e:
            raise ConfigError(f"{script}: {e}") from None
        for k, v in pairs:
            _nest(data, k, v)
        if note:
            notes.append(note)
    if any(k in keys for k in ARPO_KEYS):  # the seed's ARPO scripts: ARPO sampling, GRPO advantages
        _nest(data, "algorithm.name", "arpo")
        _nest(data, "algorithm.drop_branch_rows", None)
    if "actor_rollout_ref.actor.policy_loss.loss_mode" not in keys:
        _nest(data, "actor.loss_mode", "vanilla")  # verl's default policy loss
    if "data.train_files" in keys:
        _nest(data, "data.task", None)
    head = [f"# appo config from-verl {script}", f"# verl base config: {cmd.config_name or '-'}; appo base preset: "
            f"{base}", *[f"# note: {n}" for n in notes],
            *[f"# unset in the script (the base preset's value stays): {k}" for k in unset]]
    return "\n".join(head) + "\n" + yaml.safe_dump({"defaults": base, **data}, sort_keys=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appo config", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="Print the resolved config as YAML.")
    show.add_argument("args", nargs="*", metavar="[PRESET|FILE] [key=value ...]",
                      help=f"Preset (default quickstart; one of {', '.join(preset_names())}) and overrides.")
    sub.add_parser("keys", help="Print every key with its default and help text.")
    sub.add_parser("presets", help="List the built-in presets.")
    conv = sub.add_parser("from-verl", help="Write the appo YAML equivalent to a verl launch script (the seed's).")
    conv.add_argument("script", help="A bash launch script with a `python -m verl.trainer.main_ppo ...` line.")
    conv.add_argument("--base", help="Base preset (default: deepsearch-8b for a *_dr yaml, else reasoning-7b).")
    conv.add_argument("-o", "--output", help="Write the YAML here (default: stdout).")
    args = parser.parse_args(argv)

    if args.action == "keys":
        for key, default, help_text in describe():
            print(f"{key} = {default}\n    {help_text}")
        return 0
    if args.action == "presets":
        print("\n".join(preset_names()))
        return 0
    if args.action == "from-verl":
        try:
            text = from_verl(args.script, args.base)
            if args.output:
                Path(args.output).write_text(text)
                load_config(args.output)  # the written file must load
            else:
                print(text, end="")
        except (ConfigError, LaunchScriptError) as e:
            print(f"appo config: {e}", file=sys.stderr)
            return 2
        return 0
    preset, overrides = split_preset(args.args)
    try:
        cfg = load_config(preset or "quickstart", overrides)
    except ConfigError as e:
        print(f"appo config: {e}", file=sys.stderr)
        return 2
    from appo.commands.tool import describe_tools
    from appo.errors import UserError
    from appo.tools.registry import tool_specs

    try:
        tools = describe_tools(tool_specs(cfg.tools))
    except UserError as e:
        print(f"appo config: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    # The tools as the model sees them, as YAML comments so the output stays a loadable config.
    print("# tools the model is given (name: how it is called, description, argument schema):")
    print("\n".join(f"#   {line}" for line in (tools or "(none)").splitlines()))
    return 0
