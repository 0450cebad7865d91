"""Config files a user may get wrong: each is one `appo config:` line naming the file (and line), rc 2."""

from __future__ import annotations

import pytest

from appo.config import ConfigError, load_config
from tests.unit.appo_cli import assert_user_error, run_appo


def _alias_bomb() -> str:
    """Nine levels of nine references to the level below: 9**9 (387 million) values once expanded, from a
    few hundred bytes."""
    lines = ["l0: &l0 {" + ", ".join(f"k{i}: 1" for i in range(9)) + "}"]
    for level in range(1, 9):
        lines.append(f"l{level}: &l{level} {{" + ", ".join(f"k{i}: *l{level - 1}" for i in range(9)) + "}")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert path.stat().st_size < 1000
    proc = run_appo("config", "show", str(path), memory_mb=1024, timeout=60)
    assert_user_error(proc, "config", str(path), "alias")


BAD_FILES = {
    "syntax": (b"model:\n  path: [tiny\n", ":3:"),
    "tab": (b"model:\n\tpath: tiny\n", ":2:"),
    "python_tag": (b"model:\n  path: !!python/object/apply:os.system ['echo owned']\n", ":2:"),
    "defaults_int": (b"defaults: 5\nrollout:\n  n: 4\n", ":1"),
    "binary": (b"model:\n  path: tiny\n\xff\xfe\x00\x81binary", ":3"),
    "nul": (b"model:\n  path: ti\x00ny\n", ":2"),
    "not_a_mapping": (b"- a\n- b\n", "mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_config_file_is_one_line_naming_file_and_line(tmp_path, name):
    content, where = BAD_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    proc = run_appo("config", "show", str(path), timeout=60)
    line = assert_user_error(proc, "config", str(path))
    assert where in line.split(str(path), 1)[1]
    assert "owned" not in proc.stdout


@pytest.mark.parametrize("override, valid", [
    ("tools.python.memory_mb=17592186044416", "16 to 1048576"),        # 2**44
    ("tools.python.max_processes=1000000000", "1 to 4096"),
    ("tools.python.disk_mb=100000000", "1 to 65536"),
    ("tools.python.max_file_mb=100000000", "1 to 65536"),
    ("tools.python.max_open_files=100000000", "8 to 65536"),
    ("tools.search.max_response_mb=100000", "0.001 to 1024"),
    ("tools.timeout=1e9", "0 to 3600"),
])
def test_absurd_resource_limits_name_the_key_and_the_valid_range(override, valid):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert key in str(err.value) and f"valid: {valid}" in str(err.value)


def test_resource_limit_in_a_file_is_refused_at_start_up(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("defaults: tiny\ntools:\n  python:\n    memory_mb: 17592186044416\n")
    proc = run_appo("config", "show", str(path), timeout=60)
    assert_user_error(proc, "config", "tools.python.memory_mb=17592186044416", "valid: 16 to 1048576")


def test_a_config_file_with_anchors_still_loads(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("defaults: tiny\nrollout:\n  n: &n 4\n  initial_rollouts: *n\n")
    cfg = load_config(str(path))
    assert (cfg.rollout.n, cfg.rollout.initial_rollouts) == (4, 4)
