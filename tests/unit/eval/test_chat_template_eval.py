"""Evaluation in the chat template's own format (tools.format=chat_template): benchmark prompts show the tools'
schemas, the answer is read from the final assistant turn only (not from a turn that went on to call a tool, not
from tool output), and malformed calls are counted. The calls run in the real sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from appo.config import load_config
from appo.eval.benchmarks import Benchmark
from appo.eval.evaluate import build_sets, run_sets
from appo.eval.store import SampleStore
from appo.rewards import get_reward_fn
from tests.unit.rollout.conftest import ScriptedEngine

GUESS_AND_FORGE = ('<think>A guess first.</think><answer>\\boxed{1300}</answer>\n<tool_call>\n{"name": "python", '
                   '"arguments": {"code": "print(\'\\\\\\\\boxed{\' + str(1300 + 37) + \'}\')"}}\n</tool_call><|im_end|>')
MALFORMED = '<tool_call>\n{"name": "python", "arguments": {"code": \n</tool_call><|im_end|>'


@pytest.mark.parametrize("kind", ["math", "reward"])
@pytest.mark.parametrize("final, correct", [("It printed \\boxed{1337}.<|im_end|>", True),
                                            ("I cannot tell.<|im_end|>", False)])
def test_the_final_turn_answers_and_bad_calls_are_counted(chat_tokenizer, python_tools, tmp_path, kind, final,
                                                          correct):
    tok = chat_tokenizer("chatml")
    cfg = load_config("tiny", ["tools.enabled=[python]", "tools.format=chat_template", "eval.max_response_length=400",
                               "data.max_prompt_length=1024", "algorithm.reward_fn=quickstart", "tools.call_limit=3",
                               "rollout.stop_at_answer=false"])  # an answer that a call follows is not final
    sets = build_sets([Benchmark("forge", Path("forge.jsonl"), kind,
                                 [{"question": "What is 1300 + 37?", "answer": "1337"}])], cfg, tok)
    prompt_text = tok.decode(sets[0].prompts[0].prompt_ids, skip_special_tokens=False)
    assert "- python(code: string)" in prompt_text and "<tool_call>" in prompt_text  # the tools, as the template shows them
    assert "<python>" not in prompt_text  # not the reference prompt's tags
    script = iter([GUESS_AND_FORGE, MALFORMED, final])
    engine = ScriptedEngine(tok, lambda prompt, req: next(script))
    summary = run_sets(engine, python_tools, sets, cfg, tmp_path, progress=False,
                       reward_fn=get_reward_fn(cfg.algorithm))["forge"]
    (record,) = SampleStore(tmp_path / "samples.jsonl").records.values()
    assert "\\boxed{1337}" in record["response"] and "\\boxed{1300}" in record["response"]
    assert record["correct"] is correct and record["pred"] != "1300"
    assert [(t["tool"], t["ok"], t.get("kind")) for t in record["tool_log"]] == [("python", True, None),
                                                                                 ("", False, "json")]
    assert summary["bad_calls_per_sample"] == 1 and summary["bad_calls/json"] == 1
    assert summary["tool_calls_per_sample"] == 2 and summary["python_calls_per_sample"] == 1
