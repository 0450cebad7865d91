"""Shell blocks of the README and the docs pages: which pages' commands the tests run, and how a block says it is not run.

A ```bash block runs unless the line right before it is `<!-- not-run: REASON -->`; the reason is shown
on the page's source and in the test report. The blocks of a page run in order, in one scratch folder.
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


@dataclass
class Block:
    page: str
    line: int
    code: str
    not_run: str | None  # the reason, for a block that is not run


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1) not in SHELL:
            continue
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = _NOT_RUN.search(before)
        out.append(Block(page.relative_to(REPO).as_posix(), text[:m.start()].count("\n") + 1, m.group(2),
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
