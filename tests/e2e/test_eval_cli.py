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
