"""`appo train` checks every plug-in, logger and model path before the first expensive stage, and a reward
that misbehaves mid-run stops it with one line and exit 2 (never a traceback, never exit 0)."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from tests.unit.appo_cli import assert_user_error, run_appo

REWARDS = textwrap.dedent('''
    def text(response):
        return "yes"

    def exits(response):
        raise SystemExit(0)

    def fine(response, ground_truth):
        return float(ground_truth in response)
''')


@pytest.fixture()
def workdir(tmp_path):
    """A user's folder: a reward module and a data file next to each other, nothing on PYTHONPATH."""
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    rows = [{"question": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _train(workdir, *overrides, timeout=300):
    cache = workdir / "model-cache"
    return run_appo("train", "--config", "tiny", "--no-progress", "data.train_files=[mine.jsonl]",
                    "tools.enabled=[python]", f"model.cache_dir={cache}", "trainer.output_dir=run",
                    "trainer.total_steps=1", "sft.enabled=false", *overrides, cwd=workdir, timeout=timeout)


@pytest.mark.parametrize("overrides, needles", [
    (["algorithm.reward_fn=my_rewardz:fine"], ["algorithm.reward_fn='my_rewardz:fine'", "cannot import module"]),
    (["algorithm.rewards=[{fn: my_rewards:fine}, {fn: my_rewards:nope, weight: 2}]"],
     ["algorithm.rewards[1].fn='my_rewards:nope'", "has no 'nope'", "fine"]),
    (["trainer.loggers=[jsonl, wandb]"], ["trainer.loggers includes 'wandb' but wandb is not installed"]),
    (["model.path=./no/such/model"], ["model.path=./no/such/model: no such directory", "tiny"]),
    (["sft.enabled=true", "sft.files=[convs.jsonl]"], ["sft.files[0]: convs.jsonl: no such file"]),
    (["data.val_files=[mine.jsonl, val.jsonl]"], ["data.val_files[1]: val.jsonl: no such file or folder"]),
    (["tools.enabled=[python, search]"], ["tools.search.index_dir", "appo index build"]),
])
def test_bad_plugins_loggers_and_paths_stop_before_any_work(workdir, overrides, needles):
    t0 = time.monotonic()
    proc = _train(workdir, *overrides, timeout=120)
    assert_user_error(proc, "train", *needles)
    assert time.monotonic() - t0 < 60
    assert not (workdir / "model-cache").exists(), "the model was built before the check"


def test_a_reward_that_returns_text_stops_the_run_with_one_line(workdir):
    proc = _train(workdir, "algorithm.reward_fn=my_rewards:text")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("appo train: reward 'my_rewards:text' returned 'yes' (str), not a number, on row index=")


def test_system_exit_inside_a_reward_does_not_end_the_run_with_success(workdir):
    proc = _train(workdir, "algorithm.reward_fn=my_rewards:exits")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("appo train: reward 'my_rewards:exits' called exit(0)")


def test_a_reward_asking_for_a_column_the_data_lacks_stops_before_the_model_loads(workdir, tiny_model_dir):
    (workdir / "my_rewards.py").write_text(REWARDS + "\ndef wants(response, difficulty):\n    return 1.0\n")
    proc = _train(workdir, "algorithm.reward_fn=my_rewards:wants", f"model.path={tiny_model_dir}", timeout=120)
    assert_user_error(proc, "train", "reward 'my_rewards:wants' needs argument(s) difficulty")
