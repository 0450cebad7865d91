"""benchmarks/compare_algorithms.py on the random tiny model: one SFT, two arms, one step, one seed; the
per-run JSON, the table and the plot are written, and a second invocation skips the finished runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_algorithms.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_algorithms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_arms_one_step_then_resume_skips_them(tmp_path, tiny_model_dir, capsys):
    compare = _script()
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--out", str(out), "--work", str(work), "--steps", "1", "--eval-every", "1", "--eval-subset", "2",
            "--seeds", "1", "--arms", "grpo,appo", "--sampled-k", "2", "--rows", "grpo=4,appo=4:2",
            f"model.path={tiny_model_dir}", "model.autocast=none", "data.num_train=24", "data.num_val=3",
            "data.batch_size=2", "rollout.max_response_length=16", "rollout.gen_batch_size=16",
            "sft.num_examples=4", "sft.batch_size=4", "sft.warmup_steps=0", "trainer.device=cpu"]
    assert compare.main(argv) == 0
    runs = {arm: json.loads((out / arm / "seed1.json").read_text()) for arm in ("grpo", "appo")}
    for run in runs.values():
        assert run["finished"] and len(run["steps"]) == 1
        step = run["steps"][0]
        assert step["tokens"] > 0 and step["cum_tokens"] == step["tokens"]
        assert run["final"]["questions"] == 3 and "greedy/pass@1" in run["final"] and "sampled/pass@2" in run["final"]
        assert [e["step"] for e in run["evals"]] == [0, 1]
    assert runs["grpo"]["steps"][0]["rows"] == 2 * 4 and runs["grpo"]["steps"][0]["update_rows"] == 8
    assert runs["appo"]["steps"][0]["init_rows"] == 2 * 2  # m initial rows per prompt; the branches are dropped
    assert runs["appo"]["steps"][0]["update_rows"] == 4
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0
    assert "| grpo | 1 |" in (out / "summary.md").read_text()
    stamps = {arm: (out / arm / "seed1.json").stat().st_mtime_ns for arm in runs}
    sft_stamp = (work / "sft" / "done.json").stat().st_mtime_ns
    capsys.readouterr()
    assert compare.main(argv) == 0
    assert "grpo seed 1: finished before, skipped" in capsys.readouterr().out
    assert stamps == {arm: (out / arm / "seed1.json").stat().st_mtime_ns for arm in runs}
    assert (work / "sft" / "done.json").stat().st_mtime_ns == sft_stamp


def test_an_interrupted_run_starts_again(tmp_path, tiny_model_dir):
    compare = _script()
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--out", str(out), "--work", str(work), "--steps", "1", "--eval-every", "0", "--seeds", "1",
            "--arms", "grpo", "--sampled-k", "0", "--final-questions", "1",
            f"model.path={tiny_model_dir}", "model.autocast=none",
            "data.num_train=24", "data.num_val=2", "data.batch_size=2", "rollout.max_response_length=8",
            "sft.num_examples=4", "sft.batch_size=4", "sft.warmup_steps=0", "trainer.device=cpu"]
    stale = work / "grpo" / "seed1" / "eval" / "final" / "greedy"
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("from a killed run")
    assert compare.main(argv) == 0
    assert not (stale / "leftover").exists()
    run = json.loads((out / "grpo" / "seed1.json").read_text())
    assert run["finished"] and run["final"]["questions"] == 1
    # the SFT checkpoint is scored on the same questions as the runs' final evaluations
    assert json.loads((out / "sft.json").read_text())["full"]["questions"] == 1
