"""The commands in the docs run: every shell block of getting started and the how-tos, in order, in a
scratch folder (with the files the page's named code blocks define), with this tree's `appo` on PATH. A block marked `<!-- not-run: REASON -->` (a GPU, a
network service, a long run) is not run, but its syntax is checked and every `appo train` in it has its
preset and keys checked by `appo config show`, so a key renamed in the code fails here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appo.config import preset_names

from .blocks import REPO, blocks, run_pages

pytestmark = pytest.mark.slow

PAGES = run_pages()
PRESETS = set(preset_names())
_TRAIN = re.compile(r"(?:^|\s)(?:\./)?appo(?:\.cli)?\s+train\s+(.*)$")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO / 'src'}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO / "src")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _train_args(code: str) -> list[list[str]]:
    """The preset and key=value arguments of every `appo train` command in a block."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        m = _TRAIN.search(line.split("#", 1)[0])
        if not m:
            continue
        words, preset = shlex.split(m.group(1)), []
        for i, word in enumerate(words):
            if word == "--config" and i + 1 < len(words):
                preset = [words[i + 1]]
        out.append(preset + [w for w in words if "=" in w and not w.startswith("-")])
    return out


def test_the_run_pages_are_found():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"README.md", "docs/getting-started.md"} <= names and any(n.startswith("docs/howto/") for n in names), names
    for page in PAGES:
        assert page.is_file(), f"{page} is in the nav but missing"


@pytest.mark.timeout(1800)  # a page runs several tiny trainings; on a loaded 2-core machine they add up
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_page_commands_run(page, tmp_path):
    env = _env()
    if (REPO / "examples").is_dir():  # the scratch folder stands for the repository root a user runs from
        shutil.copytree(REPO / "examples", tmp_path / "examples")
    ran = 0
    for block in blocks(page):
        where = f"{block.page}:{block.line}"
        if block.file is not None:
            target = tmp_path / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            continue
        syntax = subprocess.run(["bash", "-n"], input=block.code, text=True, capture_output=True)
        assert syntax.returncode == 0, f"{where}: not valid bash: {syntax.stderr}"
        if block.not_run is not None:
            assert block.not_run.strip(), f"{where}: a not-run block must say why"
            for args in _train_args(block.code):
                if args and "=" not in args[0] and args[0] not in PRESETS and not (tmp_path / args[0]).exists():
                    continue  # a config file the block's reader writes (from their own script): nothing to check
                shown = subprocess.run([sys.executable, "-m", "appo.cli", "config", "show", *args], env=env,
                                       cwd=tmp_path, text=True, capture_output=True, timeout=120)
                assert shown.returncode == 0, f"{where}: appo train {' '.join(args)}: {shown.stderr.strip()}"
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], env=env, cwd=tmp_path, text=True,
                              capture_output=True, timeout=600)
        assert done.returncode == 0, (f"{where}: exit {done.returncode}\n--- block\n{block.code}"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        ran += 1
    assert ran or page.name != "getting-started.md", "getting started must have commands that run"


def test_train_args_reads_presets_and_keys():
    code = "torchrun --nproc_per_node=8 -m appo.cli train --config deepsearch-8b model.path=/x \\\n  rollout.n=4  # c\n"
    assert _train_args(code) == [["deepsearch-8b", "model.path=/x", "rollout.n=4"]]
    assert _train_args("./appo train    # first run") == [[]]



def test_blocks_read_files_shell_commands_and_reasons(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\n# my_agent.py, next to your config\nX = 1\n```\n\n```yaml\nkey: 1\n```\n\n"
                    "<!-- not-run: needs a GPU -->\n```bash\nappo train\n```\n\n```bash\nls\n```\n")
    found = blocks(page, tmp_path)
    assert [(b.file, b.not_run, b.code) for b in found] == [
        ("my_agent.py", None, "# my_agent.py, next to your config\nX = 1\n"),
        (None, "needs a GPU", "appo train\n"),
        (None, None, "ls\n"),
    ]
