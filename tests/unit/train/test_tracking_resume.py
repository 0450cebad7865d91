"""metrics.jsonl on resume (issue 25): the history is cut back by writing a new file and renaming it, so a
failure mid-rewrite leaves it whole; a torn last line (a write cut short) is dropped, not fatal; a damaged
line elsewhere is one line naming the file and the line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from appo.errors import UserError
from appo.train.tracking import Tracker, read_metrics


def _history(path, steps):
    rows = [{"step": s, "reward/mean": 0.1 * s, "pad": "x" * 200} for s in steps]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_a_failure_mid_rewrite_leaves_the_history_whole(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = _history(metrics, range(1, 20_001))   # ~4.5 MB
    before = metrics.read_bytes()
    # The rewrite runs out of room after 1 MB (RLIMIT_FSIZE: a full disk or quota, deterministically).
    child = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from appo.train.tracking import Tracker
        Tracker({str(tmp_path)!r}, ["jsonl"], resume_step=15_000)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode != 0
    assert metrics.read_bytes() == before, "the history was damaged by a failed rewrite"
    assert read_metrics(metrics) == rows
    assert not [p.name for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # no temporary left behind


def test_resume_cuts_history_after_the_checkpoint(tmp_path):
    rows = _history(tmp_path / "metrics.jsonl", range(1, 6))
    Tracker(tmp_path, ["jsonl"], resume_step=3).log({"reward/mean": 0.9}, 4)
    assert read_metrics(tmp_path / "metrics.jsonl") == rows[:3] + [{"step": 4, "reward/mean": 0.9}]


def test_a_torn_last_line_is_dropped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = _history(metrics, range(1, 4))
    with metrics.open("a") as f:
        f.write('{"step": 4, "reward/me')   # the process died inside this write
    assert read_metrics(metrics) == rows
    Tracker(tmp_path, ["jsonl"], resume_step=3).log({"reward/mean": 0.5}, 4)
    assert read_metrics(metrics) == rows + [{"step": 4, "reward/mean": 0.5}]


@pytest.mark.parametrize("bad", [b'{"step": 2, "reward', b"[" * 100_000, b"\xff\xfe{}", b"[1, 2]"])
def test_a_damaged_line_in_the_middle_is_one_line_naming_it(tmp_path, bad):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(b'{"step": 1}\n' + bad + b'\n{"step": 3}\n')
    with pytest.raises(UserError) as err:
        read_metrics(metrics)
    assert f"{metrics}:2:" in str(err.value) and "\n" not in str(err.value)
