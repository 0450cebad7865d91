"""The generated pages of the docs site: the configuration reference (from the config's own help text)
and the CLI reference (from each command's argparse help).

MkDocs runs this file as a hook (`hooks:` in mkdocs.yml): the two pages are made at build time, so a key
or a flag added in the code appears on the site without anyone editing a page. Run it directly to print
one page: `python scripts/docs_reference.py config|cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # mkdocs may run from a venv where appo is not installed from this tree
    sys.path.insert(0, str(ROOT / "src"))

CONFIG_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"
HELP_WIDTH = "100"  # argparse wraps to $COLUMNS: fixed, so the page does not depend on the terminal


def _escape(text: str) -> str:
    """Markdown table-cell text: tags such as <result> shown as text, pipes kept inside the cell; code
    spans (between backticks) are left as they are, since Markdown shows them literally anyway."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = (parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    .replace("*", r"\*").replace("_", r"\_"))
    return "`".join(parts).replace("|", r"\|").replace("\n", " ")


def _value(value: object) -> str:
    """A default as it is written in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _groups(cls: type, prefix: str = "") -> list[tuple[str, str, type]]:
    """(dotted group name, help, dataclass) of every config group, in declaration order; the items of a
    list of groups (`algorithm.rewards`) are the group `algorithm.rewards[]`."""
    import typing

    from appo.config import _hints, _is_dataclass_type

    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out.append((f"{prefix}{f.name}", f.metadata.get("help", ""), tp))
            out += _groups(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is list and typing.get_args(tp) and _is_dataclass_type(typing.get_args(tp)[0]):
            item = typing.get_args(tp)[0]
            out.append((f"{prefix}{f.name}[]", f"Each entry of `{prefix}{f.name}`.", item))
            out += _groups(item, f"{prefix}{f.name}[].")
    return out


def _rows(cls: type, prefix: str) -> dict[str, list[str]]:
    """Table rows by group, for the leaf fields of `cls` (keys under `prefix`)."""
    from appo.config import _range_text, leaf_fields

    by_group: dict[str, list[str]] = {}
    for key, f, default in leaf_fields(cls, prefix):
        group, name = key.rsplit(".", 1)
        meta = f.metadata
        notes = []
        if meta.get("choices"):
            notes.append("Choices: " + ", ".join(f"`{_value(c)}`" for c in meta["choices"]) + ".")
        if meta.get("low") is not None or meta.get("high") is not None:
            notes.append(f"Range: {_escape(_range_text(meta.get('low'), meta.get('high')))}.")
        text = " ".join([_escape(meta.get("help", ""))] + notes)
        by_group.setdefault(group, []).append(f"| `{name}` | `{_escape(_value(default))}` | {text} |")
    return by_group


def config_reference() -> str:
    from appo.config import ALIASES, FIXED_ALIASES, Config, preset_names

    groups = _groups(Config)
    by_group = _rows(Config, "")
    for group, _, cls in groups:
        if group.endswith("[]"):
            by_group.update(_rows(cls, group + "."))

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated at build time by scripts/docs_reference.py from the help text in src/appo/config.py. -->",
        "",
        "Every key of the configuration, with its default, its choices or range, and the help text the code",
        "carries (`appo config keys` prints the same). Set a key in a YAML file or on the command line as",
        "`group.key=value`: `appo train --config grpo rollout.n=16 actor.lr=1e-6`. An unknown key or a bad value",
        "stops the run at start-up with one line naming the valid choices (exit status 2).",
        "",
        f"Presets (`--config NAME`): {', '.join(f'`{p}`' for p in preset_names())}. "
        "`appo config show PRESET [key=value ...]` prints the resolved configuration.",
        "",
    ]
    for group, help_text, _ in groups:
        if group not in by_group:
            continue
        lines += [f"## {group}", "", _escape(help_text), "", "| key | default | meaning |", "|---|---|---|",
                  *by_group[group], ""]
    lines += [
        "## Reference (verl-style) aliases",
        "",
        "The reference implementation's keys are accepted verbatim and mapped onto appo's:",
        "",
        "| reference key | appo key |",
        "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in ALIASES.items()],
        *[f"| `{k}` | only `{_value(want)}` ({_escape(why)}) |" for k, (want, why) in FIXED_ALIASES.items()],
        "",
    ]
    return "\n".join(lines)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _parser_of(command: str) -> argparse.ArgumentParser:
    """The argparse parser a command builds, caught as it parses (the command itself never runs)."""
    import importlib

    from appo.cli import COMMANDS

    module, func = COMMANDS[command][0].split(":")
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        getattr(importlib.import_module(module), func)(["--help"])
    except _Captured as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise RuntimeError(f"appo {command} did not parse its arguments with argparse")


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _help(parser: argparse.ArgumentParser) -> str:
    with _columns(HELP_WIDTH):
        return parser.format_help().rstrip()


@contextlib.contextmanager
def _columns(width: str):
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def cli_reference() -> str:
    from appo.cli import COMMANDS, _usage

    lines = [
        "# CLI reference",
        "",
        "<!-- Generated at build time by scripts/docs_reference.py from each command's --help. -->",
        "",
        "`appo <command> --help` prints the same text. Every command takes `key=value` overrides of the",
        "[configuration](configuration.md) where it reads one; bad input stops it with one line and exit status 2.",
        "",
        "```text",
        _usage(),
        "```",
        "",
    ]
    for name in COMMANDS:
        with contextlib.redirect_stdout(io.StringIO()):  # a command's import may log
            parser = _parser_of(name)
        lines += [f"## appo {name}", "", "```text", _help(parser), "```", ""]
        for sub, sub_parser in _subparsers(parser):
            lines += [f"### appo {name} {sub}", "", "```text", _help(sub_parser), "```", ""]
    text = "\n".join(lines)
    return re.sub(r"[ \t]+\n", "\n", text)


GENERATED = {CONFIG_PAGE: config_reference, CLI_PAGE: cli_reference}


def on_files(files, config):
    """MkDocs hook: add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    for src_uri, make in GENERATED.items():
        existing = files.get_file_from_path(src_uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, src_uri, content=make()))
    return files


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which not in ("config", "cli"):
        print("usage: python scripts/docs_reference.py config|cli", file=sys.stderr)
        sys.exit(2)
    print(config_reference() if which == "config" else cli_reference())
