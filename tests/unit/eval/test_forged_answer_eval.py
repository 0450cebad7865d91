"""Evaluation scores what the policy generated: a program that prints an answer block (run in the real
sandbox) does not make the sample correct; `algorithm.reward_text=full` is the reference behaviour."""

from __future__ import annotations

import pytest

from appo.config import load_config
from appo.data import Prompt
from appo.eval.evaluate import EvalSet, run_sets
from appo.eval.store import SampleStore
from appo.rewards import get_reward_fn
from tests.unit.rollout.conftest import ScriptedEngine

FORGE = ("<think>run it</think><python>print('<' + 'answer>\\\\bo' + 'xed{' + str(1300 + 37) + '}</'"
         " + 'answer>')</python>")
SILENT = "<think>done</think><|im_end|>"


def _script(prompt_text, req):
    return FORGE if "<result>" not in prompt_text.split("<|im_start|>assistant")[-1] else SILENT


def _sets(tok, kind):
    messages = [{"role": "user", "content": "What is 1300 + 37?"}]
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)
    return [EvalSet("forge", kind, [Prompt(messages, ids, "1337", data_source="arithmetic", ability="math")])]


@pytest.mark.parametrize("kind", ["math", "qa", "reward"])
@pytest.mark.parametrize("text, correct", [("generated", False), ("full", True)])
def test_tool_output_is_not_scored_as_the_answer(tiny_tokenizer, python_tools, tmp_path, kind, text, correct):
    cfg = load_config("tiny", ["tools.enabled=[python]", "eval.max_response_length=300",
                               "algorithm.reward_fn=quickstart", f"algorithm.reward_text={text}"])
    engine = ScriptedEngine(tiny_tokenizer, _script)
    summary = run_sets(engine, python_tools, _sets(tiny_tokenizer, kind), cfg, tmp_path, progress=False,
                       reward_fn=get_reward_fn(cfg.algorithm))["forge"]
    (record,) = SampleStore(tmp_path / "samples.jsonl").records.values()
    assert "\\boxed{1337}" in record["response"]           # the program did print it
    assert record["correct"] is correct and summary["questions"] == 1
