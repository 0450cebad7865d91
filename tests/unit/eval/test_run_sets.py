"""run_sets on the real tiny model and HF engine: sampling, scoring, resuming, re-judging."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from appo.config import load_config
from appo.eval.evaluate import EvalSet, check_resume, run_sets
from appo.eval.judge import JudgeClient
from appo.eval.store import SampleStore

from .judge_server import JudgeServer


@dataclass
class _Prompt:  # the fields of appo.data.Prompt that evaluation reads
    messages: list[dict]
    prompt_ids: list[int]
    ground_truth: str | list[str]
    data_source: str = "test"
    ability: str | None = None
    index: int = 0
    extra: dict = field(default_factory=dict)


class CountingEngine:
    """The real HF engine, counting the rows it is asked to generate."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.rows = inner, inner.tokenizer, 0
        self.eos_ids = inner.eos_ids

    def generate(self, requests):
        self.rows += len(requests)
        return self.inner.generate(requests)

    def load_weights(self, state_dict):
        self.inner.load_weights(state_dict)


@pytest.fixture()
def engine(tiny_model, tiny_tokenizer):
    from appo.rollout.hf import HFEngine

    return CountingEngine(HFEngine(tiny_model.eval(), tiny_tokenizer, seed=0))


def _sets(tokenizer, n=3):
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Calculate {i} + 1."}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(_Prompt(messages, tokenizer.encode(text, add_special_tokens=False), str(i + 1), index=i))
    return [EvalSet("arith", "math", prompts)]


def _cfg(**extra):
    over = ["eval.k=2", "eval.temperature=1.0", "eval.max_response_length=12", "eval.batch_size=2",
            "tools.enabled=[python]"] + [f"{k}={v}" for k, v in extra.items()]
    return load_config("tiny", over)


def test_run_sets_samples_scores_and_summarizes(engine, tmp_path):
    cfg = _cfg()
    summaries = run_sets(engine, None, _sets(engine.tokenizer), cfg, tmp_path, progress=False)
    s = summaries["arith"]
    assert s["questions"] == 3 and s["samples"] == 6 and s["kind"] == "math"
    assert {"pass@1", "pass@2", "maj@2", "math_equal", "em", "generated_tokens_mean"} <= set(s)
    assert 0 < s["generated_tokens_mean"] <= 12
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["index"], r["sample"]) for r in lines) == [(i, j) for i in range(3) for j in range(2)]
    assert all(r["question"].startswith("Calculate") and r["gold"] == str(r["index"] + 1) for r in lines)
    assert engine.rows == 6


def test_progress_bar_moves_as_samples_finish(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """One chunk of 6 samples: the bar advances by one as each sample finishes (the loop reports rows as
    they end), instead of jumping from 0 to 6 when the chunk is done."""
    import appo.eval.evaluate as evaluate
    from appo.rollout.hf import HFEngine

    class Bar:
        updates: list[int] = []

        def __init__(self, **kw):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            Bar.updates.append(n)

    monkeypatch.setattr(evaluate, "tqdm", Bar)
    cfg = _cfg(**{"eval.batch_size": 3, "eval.max_response_length": 24})
    run_sets(HFEngine(tiny_model.eval(), tiny_tokenizer, seed=0), None, _sets(tiny_tokenizer), cfg, tmp_path)
    assert Bar.updates == [1] * 6


def test_resume_generates_only_missing_samples_and_matches_uninterrupted(engine, tmp_path):
    cfg = _cfg()
    run_sets(engine, None, _sets(engine.tokenizer), cfg, tmp_path, progress=False)
    path = tmp_path / "samples.jsonl"
    full = {(r["index"], r["sample"]): r for r in map(json.loads, path.read_text().splitlines())}
    kept = path.read_text().splitlines()[:3]
    path.write_text("\n".join(kept) + "\n" + kept[0][:25])   # 3 samples lost, plus a torn line
    engine.rows = 0
    run_sets(engine, None, _sets(engine.tokenizer), cfg, tmp_path, progress=False)
    assert engine.rows == 3
    again = SampleStore(path).records
    assert len(again) == 6
    for (_, i, s), rec in again.items():
        assert rec["response"] == full[(i, s)]["response"]    # per-sample seeds: same draws after resume
    engine.rows = 0
    run_sets(engine, None, _sets(engine.tokenizer), cfg, tmp_path, progress=False)
    assert engine.rows == 0


def test_resume_refuses_changed_settings(tmp_path):
    check_resume(tmp_path, _cfg())
    check_resume(tmp_path, _cfg())
    with pytest.raises(Exception, match="temperature"):
        check_resume(tmp_path, _cfg(**{"eval.temperature": 0.5}))


def test_enabling_the_judge_later_judges_stored_samples_without_resampling(engine, tmp_path, monkeypatch):
    cfg = _cfg(**{"eval.judge.enabled": "true", "eval.judge.retries": 2, "eval.judge.max_workers": 1})
    run_sets(engine, None, _sets(engine.tokenizer), cfg, tmp_path, progress=False)
    engine.rows = 0
    # 6 items: a 500 then success, malformed twice (-> error, falls back to rule), then canned verdicts
    script = [500, "Correct", None, "!garbage", "I am not sure", "Correct", "Incorrect", "Correct"]
    with JudgeServer(script=script, default="Incorrect") as srv:
        monkeypatch.setenv("APPO_JUDGE_URL", srv.url)
        judge = JudgeClient(cfg.eval.judge, backoff=0)
        s = run_sets(engine, None, _sets(engine.tokenizer), cfg, tmp_path, judge=judge, progress=False)["arith"]
    assert engine.rows == 0
    assert len(srv.requests) == 8
    assert s["judge_errors"] == 1 and s["judge_unparseable"] == 1
    assert s["judge_correct"] + s["judge_incorrect"] == 4
    records = SampleStore(tmp_path / "samples.jsonl").records.values()
    assert all(r["judge"] is not None for r in records)
    assert all(r["correct"] == (r["rule_equal"] or r["judge"]["status"] == "correct") for r in records)
    assert s["llm_equal"] == pytest.approx(sum(r["correct"] for r in records) / 6)


def test_library_evaluate_returns_flat_summary_and_writes_files(tiny_model, tiny_tokenizer, tmp_path):
    from appo.eval.evaluate import evaluate
    from appo.prompts import Prompt

    cfg = _cfg(**{"eval.k": 1, "eval.temperature": 0.0})
    prompts = [Prompt(p.messages, p.prompt_ids, p.ground_truth, "appo/arithmetic", "math", p.index)
               for p in _sets(tiny_tokenizer, 2)[0].prompts]
    summary = evaluate(tiny_model.eval(), tiny_tokenizer, prompts, cfg, name="after_rl", kind="reward",
                       output_dir=tmp_path, progress=False)
    assert summary["questions"] == 2 and summary["samples"] == 2 and summary["kind"] == "reward"
    assert "reward" in summary and summary["pass@1"] == 0.0
    assert json.loads((tmp_path / "summary.json").read_text())["benchmarks"]["after_rl"]["samples"] == 2
    assert evaluate(tiny_model, tiny_tokenizer, prompts, cfg, name="x", kind="math", progress=False)["samples"] == 2
