"""`appo eval` end to end on the tiny model: two bundled benchmarks, the real sandbox and the reference
search cache, resuming, and the LLM judge against a loopback OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest

from appo.commands.eval import main
from appo.eval.store import SampleStore
from tests.unit.eval.judge_server import JudgeServer

pytestmark = pytest.mark.slow


def _args(model_dir, shared_data, out, *extra):
    return ["tiny", "--model", str(model_dir), "--benchmarks", "gsm8k", "hotpotqa",
            "--data-root", str(shared_data / "benchmarks"), "--max-samples", "2", "--output-dir", str(out),
            "--no-progress", "eval.max_response_length=16", "data.max_prompt_length=1024",
            "tools.enabled=[python,search]", "tools.search.backend=cache",
            f"tools.search.cache_file={shared_data / 'reference_rl' / 'search_cache.json'}", *extra]


def test_eval_two_benchmarks_writes_samples_summary_plot_and_resumes(tiny_model_dir, shared_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_args(tiny_model_dir, shared_data, out, "--k", "2", "--temperature", "1.0")) == 0
    printed = capsys.readouterr().out
    assert "| gsm8k |" in printed and "| hotpotqa |" in printed
    records = SampleStore(out / "samples.jsonl").records
    assert sorted(records) == sorted((b, i, s) for b in ("gsm8k", "hotpotqa") for i in range(2) for s in range(2))
    assert records[("gsm8k", 0, 0)]["gold"] == "18"          # GSM8K rationale cut at '####'
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert summary["gsm8k"]["kind"] == "math" and "math_equal" in summary["gsm8k"]
    assert summary["hotpotqa"]["kind"] == "qa" and "f1" in summary["hotpotqa"]
    for s in summary.values():
        assert s["questions"] == 2 and s["samples"] == 4 and {"pass@1", "pass@2", "maj@2"} <= set(s)
        assert 0 < s["generated_tokens_mean"] <= 16
    assert (out / "summary.md").read_text().startswith("| benchmark |")
    assert (out / "summary.png").stat().st_size > 1000

    before = (out / "samples.jsonl").read_bytes()
    assert main(_args(tiny_model_dir, shared_data, out, "--k", "2", "--temperature", "1.0")) == 0
    assert (out / "samples.jsonl").read_bytes() == before          # nothing recomputed
    assert main(_args(tiny_model_dir, shared_data, out, "--k", "2", "--temperature", "0.7")) == 2
    assert "different settings" in capsys.readouterr().err


def test_eval_with_loopback_judge_counts_errors_and_unparseable(tiny_model_dir, shared_data, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    # 4 items judged one at a time: 500 then Correct; malformed twice (error); unparseable; Incorrect
    script = [500, "Correct", None, "!garbage", "I cannot decide.", "Incorrect"]
    with JudgeServer(script=script) as srv:
        monkeypatch.setenv("APPO_JUDGE_URL", srv.url)
        monkeypatch.setenv("APPO_JUDGE_API_KEY", "sk-never-print-me")
        code = main(_args(tiny_model_dir, shared_data, out, "--judge", "eval.judge.retries=2",
                          "eval.judge.max_workers=1", "eval.judge.model=qwen-judge", "eval.batch_size=8"))
    assert code == 0
    assert len(srv.requests) == 6 and all(r["model"] == "qwen-judge" for r in srv.requests)
    assert all(h["Authorization"] == "Bearer sk-never-print-me" for h in srv.headers)
    data = json.loads((out / "summary.json").read_text())
    assert "sk-never-print-me" not in json.dumps(data) + (out / "samples.jsonl").read_text()
    s = data["benchmarks"]
    counts = {k: s["gsm8k"][k] + s["hotpotqa"][k]
              for k in ("judge_correct", "judge_incorrect", "judge_unparseable", "judge_errors")}
    assert counts == {"judge_correct": 1, "judge_incorrect": 1, "judge_unparseable": 1, "judge_errors": 1}
    assert "llm_equal" in s["gsm8k"]


def test_eval_rejects_unknown_benchmark_with_available_names(shared_data, tmp_path, capsys):
    code = main(["tiny", "--benchmarks", "nosuchset", "--data-root", str(shared_data / "benchmarks"),
                 "--output-dir", str(tmp_path), "--model", "tiny"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nosuchset" in err and "hotpotqa" in err and "gsm8k" in err


def test_protocol_reference_sets_every_knob_lists_them_and_pass1_is_the_mean_over_5_runs(
        tiny_model_dir, shared_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_args(tiny_model_dir, shared_data, out, "--protocol", "reference")) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "summary.json").read_text())
    meta = data["meta"]
    assert {k: meta[k] for k in ("protocol", "temperature", "top_p", "repetition_penalty", "max_tokens_per_call",
                                 "k", "tool_call_limits", "on_limit", "max_samples")} == {
        "protocol": "reference", "temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.1,
        "max_tokens_per_call": 4096, "k": 5, "tool_call_limits": {"python": 5, "search": 10},
        "on_limit": "result", "max_samples": 2}                     # --max-samples wins over the whole file
    for line in ("| protocol | reference |", "| repetition penalty | 1.1 |", "| tokens per generation call | 4096 |",
                 "| per-tool call budgets | python 5, search 10 |", "| independent runs (samples) per question | 5 |"):
        assert line in printed and line in (out / "summary.md").read_text()
    records = SampleStore(out / "samples.jsonl").records
    for name in ("gsm8k", "hotpotqa"):
        s = data["benchmarks"][name]
        assert s["k"] == 5 and s["samples"] == 10 and "pass@5" in s
        runs = [[records[(name, i, run)]["correct"] for i in range(2)] for run in range(5)]
        assert s["pass@1"] == sum(sum(r) / 2 for r in runs) / 5          # the mean over the 5 runs
        assert s["pass@5"] == sum(any(r[i] for r in runs) for i in range(2)) / 2
    texts = {records[("gsm8k", 0, run)]["response"] for run in range(5)}
    assert len(texts) > 1                                               # independent runs, not one sample 5x


def test_protocol_reference_evaluates_the_whole_file_unless_asked():
    from appo.config import load_config
    from appo.eval.evaluate import protocol_overrides

    assert load_config("tiny", ["eval.max_samples=500"] + protocol_overrides("reference")).eval.max_samples is None
    assert load_config("tiny", protocol_overrides("reference") + ["eval.max_samples=7"]).eval.max_samples == 7


def _no_model_load(monkeypatch):
    import appo.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the check failed")

    monkeypatch.setattr(appo.models, "load_model", refuse)


def test_default_preset_fails_before_the_model_loads_naming_what_to_set(
        tiny_model_dir, shared_data, tmp_path, capsys, monkeypatch):
    """A benchmark evaluated with the quickstart preset's search (docs/howto/evaluation.md): the local search
    backend has no index."""
    _no_model_load(monkeypatch)
    code = main(["--model", str(tiny_model_dir), "--benchmarks", "gsm8k", "--data-root", str(shared_data / "benchmarks"),
                 "--max-samples", "2", "--output-dir", str(tmp_path / "eval"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tools.search.index_dir" in err and "Traceback" not in err


def test_a_benchmark_whose_rows_are_all_dropped_stops_with_an_error(
        tiny_model_dir, shared_data, tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    code = main(_args(tiny_model_dir, shared_data, tmp_path / "eval", "data.max_prompt_length=8"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no row is left" in err and "data.max_prompt_length" in err and "gsm8k" in err


def test_eval_prompts_with_the_checkpoints_training_prompt(tiny_model_dir, shared_data, tmp_path, caplog):
    import shutil

    from appo.data.templates import QUICKSTART_SYSTEM_PROMPT, write_prompt_format

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    write_prompt_format(ckpt, QUICKSTART_SYSTEM_PROMPT)
    out = tmp_path / "eval"
    with caplog.at_level("INFO", logger="appo"):
        assert main(_args(ckpt, shared_data, out)) == 0
    assert json.loads((out / "run.json").read_text())["system_prompt"] == QUICKSTART_SYSTEM_PROMPT
    assert "the checkpoint's training prompt" in caplog.text
    meta = json.loads((out / "summary.json").read_text())["meta"]
    assert "appo_prompt.json" in meta["system_prompt_source"]
    told = tmp_path / "told"   # told otherwise: the benchmark's own reference prompt
    assert main(_args(ckpt, shared_data, told, "data.system_prompt=reference")) == 0
    assert json.loads((told / "run.json").read_text())["system_prompt"] == "reference"


def test_a_missing_engine_fails_before_the_model_loads(tiny_model_dir, shared_data, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    _no_model_load(monkeypatch)
    assert main(_args(tiny_model_dir, shared_data, tmp_path / "eval", "rollout.engine=vllm")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "rollout.engine=vllm needs vLLM" in err
