"""A full disk while a training step's rollouts are dumped: `appo train` stops with one line (exit 2) that
names the dump and says the run's files are consistent (no torn step_N.jsonl, metrics.jsonl and the
checkpoints end at the same step, --resume continues), instead of an OSError traceback and a torn file."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from tests.unit.appo_cli import run_appo


def _tiny_tmpfs(path):
    """A 4 KiB tmpfs at `path` (a real ENOSPC); None where this process may not mount one."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(path)], capture_output=True)
    return path if proc.returncode == 0 else None


def _train(run, tiny_model_dir, *extra):
    return run_appo("train", "--config", "tiny", "--no-progress", f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={run}", "sft.enabled=false", "tools.enabled=[python]",
                    "data.task=arithmetic", "trainer.total_steps=2", "trainer.save_freq=1", *extra,
                    cwd=run.parent, timeout=600)


def test_a_full_disk_while_dumping_rollouts_stops_cleanly_and_resume_continues(tmp_path, tiny_model_dir):
    dumps = _tiny_tmpfs(tmp_path / "dumps")
    if dumps is None:
        pytest.skip("cannot mount a tmpfs here (not root); the monkeypatched test below covers the write")
    try:
        run = tmp_path / "run"
        proc = _train(run, tiny_model_dir, f"trainer.rollout_data_dir={dumps}")
        # (start-up lines come first; the error is the last line)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        line = proc.stderr.strip().splitlines()[-1]
        for needle in ("appo train: ", str(dumps / "step_1.jsonl"), "No space left on device", "consistent",
                       "--resume"):
            assert needle in line, (needle, proc.stderr[-3000:])
        assert list(dumps.iterdir()) == [], line                       # no torn dump, no temporary file
        assert not (run / "metrics.jsonl").exists() or (run / "metrics.jsonl").read_text() == ""
        assert not (run / "checkpoints" / "latest").exists()
    finally:
        subprocess.run(["umount", str(dumps)], check=True)
    proc = _train(run, tiny_model_dir, f"trainer.rollout_data_dir={dumps}", "--resume")   # space again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in dumps.glob("*.jsonl")) == ["step_1.jsonl", "step_2.jsonl"]


def test_a_failed_dump_write_keeps_the_previous_dump_and_leaves_no_temporary(tmp_path, monkeypatch):
    from appo import files
    from appo.errors import UserError
    from appo.train import rollout_dump

    path = tmp_path / "step_3.jsonl"
    path.write_text('{"old": 1}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(UserError) as err:
        rollout_dump.write_rollout_dump(path, [{"row": i} for i in range(3)], step=3)
    assert str(path) in str(err.value) and "No space left on device" in str(err.value)
    assert path.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["step_3.jsonl"]


def test_a_full_output_disk_is_warnings_and_one_error_line_not_tracebacks(tmp_path, tiny_model_dir):
    out = _tiny_tmpfs(tmp_path / "out")
    if out is None:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        proc = _train(out / "run", tiny_model_dir)
    finally:
        subprocess.run(["umount", str(out)], check=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("appo train: ") and "No space left on device" in last, proc.stderr[-3000:]
