"""examples/own_data runs as documented (`appo train --config examples/own_data/config.yaml`), here on the
tiny model for 2 steps: the user's JSONL with its own column names, three weighted rewards from the
example's module (each logged on its own), and a cold-start SFT from traces of the rows' own code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.appo_cli import run_appo

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.autocast=none", "data.batch_size=4", "data.max_prompt_length=256", "rollout.n=4",
        "rollout.initial_rollouts=2", "rollout.max_response_length=24", "rollout.gen_batch_size=16",
        "actor.micro_batch_size=8", "actor.lr=1e-3", "sft.num_examples=8", "sft.batch_size=8",
        "sft.max_length=384", "sft.packing=false", "trainer.total_steps=2", "trainer.eval_stages=[]",
        "trainer.loggers=[jsonl]", "trainer.max_minutes=null", "trainer.device=cpu"]


def test_the_own_data_example_trains(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    proc = run_appo("train", "--config", "examples/own_data/config.yaml", "--no-progress",
                    f"model.path={tiny_model_dir}", f"trainer.output_dir={out}", *TINY, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sft: 8 traces made from sft.trace_key=code" in proc.stderr
    sft_log = [json.loads(line) for line in (out / "sft" / "sft_log.jsonl").read_text().splitlines()]
    assert sft_log and all(r["loss"] > 0 for r in sft_log)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"reward/correct", "reward/well_formed"} <= set(m)
    assert any("reward/used_python" in m for m in metrics)  # applies to the hard rows only
    rows = [json.loads(line) for line in (out / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4
