"""The docs site builds strictly (a broken link, a missing anchor or a page missing from the nav fails),
and its generated reference pages hold every config key and every command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .blocks import DOCS, REPO

pytest.importorskip("mkdocs", reason="mkdocs is not installed (requirements/dev.txt pins it)")
pytest.importorskip("material", reason="mkdocs-material is not installed (requirements/dev.txt pins it)")


def _build(site_dir, config=REPO / "mkdocs.yml"):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = f"{REPO / 'src'}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO / "src")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site_dir)], cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = _build(out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return out


def test_every_nav_page_is_built(site):
    import yaml

    from .blocks import NavLoader, nav_pages

    nav = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=NavLoader)["nav"]
    for _, page in nav_pages(nav):
        built = site / (page[:-3] + "/index.html" if page != "index.md" else "index.html")
        assert built.is_file(), f"{page} did not build"


def test_config_reference_has_every_key_and_choice(site):
    from appo.config import ALIASES, leaf_fields

    html = (site / "reference" / "configuration" / "index.html").read_text()
    for key, f, _default in leaf_fields():
        group, name = key.rsplit(".", 1)
        assert f'id="{group.replace(".", "")}"' in html or f">{group}<" in html, f"no section for {group}"
        assert f"<code>{name}</code>" in html, f"{key} missing from the configuration reference"
        for choice in f.metadata.get("choices") or ():
            shown = "null" if choice is None else str(choice)
            assert f"<code>{shown}</code>" in html, f"{key}: choice {shown} missing"
    for alias in ALIASES:
        assert f"<code>{alias}</code>" in html


def test_cli_reference_has_every_command_and_flag(site):
    from appo.cli import COMMANDS

    html = (site / "reference" / "cli" / "index.html").read_text()
    for name in COMMANDS:
        assert f"appo {name}" in html, name
    for flag in ("--resume", "--protocol", "--num-prompts", "--trust-pickle", "--cache-dir"):
        assert flag in html, flag


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is what makes the site test able to fail: a copy with one dead link must not build."""
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("results"))
    (docs / "results").mkdir()
    shutil.copytree(DOCS / "results" / "compare", docs / "results" / "compare")
    shutil.copytree(DOCS / "results" / "timing", docs / "results" / "timing")
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    config = (REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("scripts/docs_reference.py", str(REPO / "scripts" / "docs_reference.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    done = _build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert done.returncode != 0 and "no-such-page.md" in done.stderr


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "README.md is longer than 200 lines: move detail into docs/"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


_GROUPS = ("model", "data", "rollout", "tools", "algorithm", "actor", "sft", "trainer", "eval")
_KEY = re.compile("`((?:" + "|".join(_GROUPS) + r")\.[A-Za-z0-9_.\[\]]+?)(?:=[^`]*)?`")


def _known_keys() -> set[str]:
    from appo.config import ALIASES, FIXED_ALIASES, leaf_fields

    keys = {key for key, _, _ in leaf_fields()} | set(ALIASES) | set(FIXED_ALIASES)
    groups = {key.rsplit(".", i)[0] for key in keys for i in range(1, key.count(".") + 1)}
    return keys | groups


def test_config_keys_named_in_the_docs_exist():
    """A key the README or a page names in code (`rollout.appo.fv_source=...`) is a key of the config, so a
    renamed key cannot linger in the prose."""
    from appo.verl_keys import is_verl_key

    known, missing = _known_keys(), []
    for page in [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]:
        if "results" in page.relative_to(REPO).parts:
            continue
        for m in _KEY.finditer(page.read_text()):
            key = m.group(1).rstrip(".").replace("[]", "")
            if key.endswith((".md", ".py", ".yaml", ".json", ".jsonl")):
                continue  # a file name
            # a verl key, or its actor_rollout_ref.* key written short, in a page about the reference
            verl = is_verl_key(key) or is_verl_key(f"actor_rollout_ref.{key}") or f"actor_rollout_ref.{key}" in known
            if key not in known and not verl:
                missing.append(f"{page.relative_to(REPO)}: {key}")
    assert not missing, "keys named in the docs that the config does not have:\n" + "\n".join(missing)
