"""Shell blocks of the README and the docs pages: which pages' commands the tests run, and how a block says it is not run.

A ```bash block runs unless the line right before it is `<!-- not-run: REASON -->`; the reason is shown
on the page's source and in the test report. The blocks of a page run in order, in one scratch folder.
A block of another language whose first line is a comment naming a file (`# my_agent.py, next to your
config`) is that file: it is written into the scratch folder, so the shell blocks after it can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")
SHELL = {"bash", "sh", "shell", "console"}
_FILE_COMMENT = re.compile(r"^(?:#|//)\s*([\w./-]+\.(?:py|yaml|yml|json|jsonl|toml|txt|csv))\b")


@dataclass
class Block:
    page: str
    line: int
    code: str
    not_run: str | None  # the reason, for a block that is not run
    file: str | None = None  # for a file block: the path it is written to


def blocks(page: Path, root: Path = REPO) -> list[Block]:
    text = page.read_text()
    name = page.relative_to(root).as_posix()
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1) not in SHELL:
            named = _FILE_COMMENT.match(m.group(2))
            if named:
                out.append(Block(name, text[:m.start()].count("\n") + 1, m.group(2), None, named.group(1)))
            continue
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = _NOT_RUN.search(before)
        out.append(Block(name, text[:m.start()].count("\n") + 1, m.group(2),
                         reason.group(1) if reason else None))
    return out


def nav_pages(nav, section: str | None = None) -> list[tuple[str | None, str]]:
    """(top-level section title, page path) for every page in the nav."""
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append((section, item))
            continue
        for title, value in item.items():
            if isinstance(value, str):
                out.append((section or title, value))
            else:
                out += nav_pages(value, section or title)
    return out


class NavLoader(yaml.SafeLoader):
    """mkdocs.yml may hold `!ENV`/`!!python` tags; the nav needs none of them."""


NavLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def run_pages() -> list[Path]:
    """The README, getting started and every how-to in the nav: the pages whose commands a user copies."""
    nav = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=NavLoader)["nav"]
    return [REPO / "README.md"] + [DOCS / page for section, page in nav_pages(nav)
                                   if section in ("Getting started", "How-to guides")]
