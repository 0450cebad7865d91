"""The trainer state of a checkpoint (issue 25): `--resume` loads it without running code, round-trips a real
learner's optimizer, scheduler and every RNG stream, and answers a tampered, old, mis-structured or
unwritable state with one line naming the file."""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from appo.train import checkpoint as ckpt
from appo.train.checkpoint import CheckpointError, load_trainer_state, save_checkpoint

from .test_learner import _batch, _learner, _rows


class _Payload:
    """What a tampered trainer_state.pt carries: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _step_dir(tmp_path) -> Path:
    step = tmp_path / "run" / "checkpoints" / "step_1"
    step.mkdir(parents=True)
    return step


@pytest.mark.parametrize("via", ["pickle", "torch.save"])
def test_a_tampered_trainer_state_runs_no_code(tmp_path, via):
    step, marker = _step_dir(tmp_path), tmp_path / "pwned"
    state = {"step": 1, "learner": {}, "rng": {}, "x": _Payload(marker)}
    if via == "pickle":
        (step / "trainer_state.pt").write_bytes(pickle.dumps(state))
    else:
        torch.save(state, step / "trainer_state.pt")
    with pytest.raises(CheckpointError) as err:
        load_trainer_state(step)
    assert not marker.exists(), "the checkpoint's payload ran"
    message = str(err.value)
    assert str(step / "trainer_state.pt") in message and "\n" not in message
    assert "model.path" in message  # says how to go on from the checkpoint's weights


def test_an_old_pickled_trainer_state_is_one_clear_line(tmp_path):
    # What appo wrote before: numpy's RNG state as an ndarray inside a tuple, loadable only by the unpickler.
    step = _step_dir(tmp_path)
    torch.save({"step": 1, "learner": {}, "rng": {"numpy": np.random.get_state()}}, step / "trainer_state.pt")
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt: .*(older|code)"):
        load_trainer_state(step)


@pytest.mark.parametrize("state", [[1, 2, 3], {"step": "one"}, {"step": 1, "learner": {}},
                                   {"step": 1, "learner": [], "rng": {}}])
def test_a_trainer_state_of_the_wrong_structure_is_one_clear_line(tmp_path, state):
    step = _step_dir(tmp_path)
    torch.save(state, step / "trainer_state.pt")
    with pytest.raises(CheckpointError) as err:
        load_trainer_state(step)
    assert str(step / "trainer_state.pt") in str(err.value) and "\n" not in str(err.value)


def test_a_real_learner_state_round_trips(tiny_model, tiny_tokenizer, tmp_path):
    prompts, responses = _rows(tiny_tokenizer, n=4)
    learner = _learner(tiny_model, tiny_tokenizer)
    learner.update(_batch(learner, prompts, responses))
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    history = [{"step": 1, "reward/mean": 0.5, "note": None}]
    final = save_checkpoint(tmp_path / "run", 1, tiny_model, tiny_tokenizer,
                            {"learner": learner.state_dict(), "start_path": None, "total_steps": 3, "history": history})
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)

    state = load_trainer_state(final)
    assert state["step"] == 1 and state["history"] == history and state["total_steps"] == 3
    restored = _learner(tiny_model, tiny_tokenizer)
    restored.load_state_dict(state["learner"])
    for a, b in zip(learner.optimizer.state.values(), restored.optimizer.state.values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"])
    assert restored.scheduler.last_epoch == learner.scheduler.last_epoch
    ckpt.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tiny_model, tiny_tokenizer,
                                                                                 tmp_path, monkeypatch):
    out = tmp_path / "run"
    state = {"learner": {}, "start_path": None, "total_steps": 3, "history": []}
    save_checkpoint(out, 1, tiny_model, tiny_tokenizer, state)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "_write_state", full)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(out, 2, tiny_model, tiny_tokenizer, state)
    message = str(err.value)
    assert "No space left on device" in message and "step_1" in message and "\n" not in message
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step_1" and load_trainer_state(root / "step_1")["step"] == 1
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1"]  # the partial step_2 is gone


def test_a_learner_state_that_does_not_fit_is_one_clear_line(tiny_model, tiny_tokenizer, tmp_path):
    from types import SimpleNamespace

    from appo.train.trainer import Trainer

    step = _step_dir(tmp_path)
    learner = _learner(tiny_model, tiny_tokenizer)
    torch.save({"step": 1, "learner": {"optimizer": {"state": 5}}, "rng": ckpt.rng_state()},
               step / "trainer_state.pt")
    with pytest.raises(CheckpointError) as err:
        Trainer.restore(SimpleNamespace(learner=learner), step)
    assert str(step / "trainer_state.pt") in str(err.value) and "\n" not in str(err.value)
