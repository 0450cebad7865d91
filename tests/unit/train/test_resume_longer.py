"""`--resume` of a finished run with a larger trainer.total_steps continues to the new total (before, the
pipeline saw `rl_done` and silently did nothing)."""

from __future__ import annotations

import json

from tests.unit.appo_cli import run_appo


def _train(run, tiny_model_dir, total: int, *extra: str):
    proc = run_appo("train", "--config", "tiny", "--no-progress", *extra, f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={run}", "sft.enabled=false", "tools.enabled=[python]",
                    "data.task=arithmetic", f"trainer.total_steps={total}", cwd=run.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_resume_a_finished_run_with_a_larger_total_continues_to_it(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    _train(run, tiny_model_dir, 1)
    assert (run / "checkpoints" / "latest").read_text() == "step_1"
    proc = _train(run, tiny_model_dir, 2, "--resume")
    assert (run / "checkpoints" / "latest").read_text() == "step_2", proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert "continuing the finished run from step 1 to step 2" in proc.stderr


def test_resume_a_finished_run_with_the_same_total_trains_nothing(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    _train(run, tiny_model_dir, 1)
    proc = _train(run, tiny_model_dir, 1, "--resume")
    assert "RL already reached step 1 of 1" in proc.stderr
    assert (run / "checkpoints" / "latest").read_text() == "step_1"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
