"""`--resume` from a checkpoint that is not there any more: an error naming the pointer file, with the
run's metrics left as they were (before, it retrained from step 0 and rewrote metrics.jsonl)."""

from __future__ import annotations

import json

import pytest

from appo.train.checkpoint import CheckpointError, load_trainer_state, resume_checkpoint
from tests.unit.appo_cli import assert_user_error, run_appo

METRICS = "".join(json.dumps({"step": s, "reward/mean": 0.1 * s}) + "\n" for s in (1, 2, 3))


def _run_with_dangling_pointer(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)   # an older step whose files are gone too
    (run / "checkpoints" / "latest").write_text("step_3")
    (run / "metrics.jsonl").write_text(METRICS)
    (run / "pipeline.json").write_text(json.dumps({"evals": {}, "start_path": None, "rl_done": False}))
    return run


def test_a_pointer_to_a_deleted_step_is_an_error_naming_it(tmp_path):
    run = _run_with_dangling_pointer(tmp_path)
    with pytest.raises(CheckpointError) as err:
        resume_checkpoint(run)
    assert str(run / "checkpoints" / "latest") in str(err.value) and "step_3" in str(err.value)


def test_no_checkpoint_at_all_resumes_from_the_start(tmp_path):
    assert resume_checkpoint(tmp_path / "fresh") is None


def test_a_torn_trainer_state_is_an_error_naming_it(tmp_path):
    step = tmp_path / "step_1"
    step.mkdir()
    (step / "trainer_state.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(CheckpointError, match="trainer_state.pt: cannot load"):
        load_trainer_state(step)


def test_train_resume_with_a_dangling_pointer_exits_2_and_keeps_the_metrics(tmp_path, tiny_model_dir):
    run = _run_with_dangling_pointer(tmp_path)
    proc = run_appo("train", "--config", "tiny", "--resume", "--no-progress", f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={run}", "sft.enabled=false", "tools.enabled=[python]",
                    "data.task=arithmetic", "trainer.total_steps=1", cwd=tmp_path, timeout=300)
    assert_user_error(proc, "train", str(run / "checkpoints" / "latest"), "step_3")
    assert (run / "metrics.jsonl").read_text() == METRICS
    assert not (run / "checkpoints" / "step_1").exists()
