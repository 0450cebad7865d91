"""The tool loop: aligned records (G8), call limits in the response only (B3), current-turn parsing (B13),
budgets, limit modes, and branch prefixes that end in a tool call."""

from __future__ import annotations

import pytest

from appo.rollout.hf import HFEngine
from appo.rollout.teacher_forcing import teacher_forced_logprobs
from appo.rollout.tool_loop import EMPTY_TEXT, LoopStart, RolloutLoopSettings, ToolLoop, run_tool_loop
from appo.rollout.trajectory import Trajectory
from appo.tool_format import result_token_ids

from .conftest import ScriptedEngine

CALL = "<think>use python</think><python>print(6*7)</python>"
ANSWER = "<answer>\\boxed{42}</answer><|im_end|>"


def _two_turns(prompt_text, req):
    return CALL if "<result>" not in prompt_text.split("<|im_start|>assistant")[-1] else ANSWER


def _prompt(tok, text="Calculate 6*7."):
    chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(chat, add_special_tokens=False)


def _settings(**kw):
    return RolloutLoopSettings(**{"max_response_length": 200, "call_limit": 3, **kw})


def test_records_stay_aligned_across_a_tool_call(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, _two_turns)
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(_prompt(tok), seed=1)], _settings())
    turn1 = tok.encode(CALL, add_special_tokens=False)
    result = result_token_ids(tok, "42")
    turn2 = tok.encode(ANSWER, add_special_tokens=False)
    assert traj.token_ids == turn1 + result + turn2
    assert traj.generated == [1] * len(turn1) + [0] * len(result) + [1] * len(turn2)
    # G8's aligned expectation: the second turn's log-probs follow the result, not shifted onto it
    serial1 = list(range(1, len(turn1) + 1))
    serial2 = list(range(len(turn1) + 1, len(turn1) + len(turn2) + 1))
    expected = [-0.001 * s for s in serial1] + [0.0] * len(result) + [-0.001 * s for s in serial2]
    assert traj.logprobs == pytest.approx(expected)
    assert traj.entropies == pytest.approx([-x for x in expected])
    assert traj.tool_log == [dict(tool="python", payload="print(6*7)", ok=True, seconds=traj.tool_log[0]["seconds"],
                                  start=len(turn1), end=len(turn1) + len(result), refused=False)]
    assert traj.tool_calls == 1 and traj.finish_reason == "eos"
    assert "<result>\n42\n</result>" in traj.response_text(tok)


def test_real_engine_continues_a_prefix_that_ends_in_a_tool_call(tiny_model, tiny_tokenizer, python_tools):
    """A branch whose prefix ends with a complete closing tag: the call runs first, then the HF engine
    continues after the result, and its log-probs sit on the tokens they belong to."""
    tok = tiny_tokenizer
    prompt = _prompt(tok)
    call = tok.encode(CALL, add_special_tokens=False)
    prefix = Trajectory(prompt_ids=prompt, kind="branch")
    prefix.append(call, generated=1, logprobs=[-1.0] * len(call), entropies=[2.0] * len(call))
    engine = HFEngine(tiny_model, tok)
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart(prefix, seed=3)], _settings(max_response_length=60))
    result = result_token_ids(tok, "42")
    assert traj.token_ids[:len(call)] == call
    assert traj.token_ids[len(call):len(call) + len(result)] == result
    assert traj.tool_log[0]["payload"] == "print(6*7)" and traj.tool_log[0]["ok"]
    after = len(call) + len(result)
    assert len(traj) > after and traj.generated[after:] == [1] * (len(traj) - after)
    assert len(traj.token_ids) == len(traj.generated) == len(traj.logprobs) == len(traj.entropies)
    recomputed = teacher_forced_logprobs(tiny_model, [traj])[0]
    assert max(abs(a - b) for a, b in zip(recomputed[after:], traj.logprobs[after:])) < 1e-4


def test_hf_engine_rounds_are_reproducible_under_a_seed(tiny_model, tiny_tokenizer, python_tools):
    engine = HFEngine(tiny_model, tiny_tokenizer)
    starts = lambda: [LoopStart.fresh(_prompt(tiny_tokenizer), seed=s) for s in (1, 2)]  # noqa: E731
    a = run_tool_loop(engine, python_tools, starts(), _settings(max_response_length=20))
    b = run_tool_loop(engine, python_tools, starts(), _settings(max_response_length=20))
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    assert a[0].token_ids != a[1].token_ids
    assert all(len(t) == 20 or t.finish_reason == "eos" for t in a)


def test_call_limit_counts_response_calls_only(tiny_tokenizer, python_tools):
    """The prompt shows three example calls (like the reference's system prompt, B3); they do not count."""
    tok = tiny_tokenizer
    prompt = _prompt(tok, "Examples: <python>1</python> <search>q</search> <python>2</python>")
    engine = ScriptedEngine(tok, lambda text, req: "<python>print(1)</python>")
    stats = {}
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(prompt)], _settings(call_limit=1), stats)
    assert traj.tool_calls == 1 and [e["ok"] for e in traj.tool_log] == [True]
    assert traj.finish_reason == "call_limit" and stats["limit_hits"] == 1
    assert traj.response_text(tok).endswith("</result><python>print(1)</python>")


def test_branch_counter_starts_at_the_calls_in_its_prefix(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, _two_turns)
    (parent,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(_prompt(tok))], _settings())
    after_result = parent.tool_log[0]["end"]
    prefix = parent.prefix(after_result + 1)
    assert prefix.tool_calls == 1 and prefix.tool_log == parent.tool_log
    early = parent.prefix(3)
    assert early.tool_calls == 0 and early.tool_log == []
    calls = ScriptedEngine(tok, lambda text, req: "<python>print(2)</python>")
    branch, fresh = run_tool_loop(calls, python_tools, [LoopStart(prefix), LoopStart(early)], _settings(call_limit=2))
    assert branch.tool_calls == 2 and len(branch.tool_log) == 2  # one from the prefix, one new
    assert fresh.tool_calls == 2 and len(fresh.tool_log) == 2


def test_on_limit_eos_appends_an_untrained_eos(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, lambda text, req: "<python>print(1)</python>")
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(_prompt(tok))], _settings(call_limit=0, on_limit="eos"))
    assert traj.token_ids[-1] == tok.eos_token_id
    assert traj.generated[-1] == 0 and traj.logprobs[-1] == 0.0 and traj.entropies[-1] == 0.0
    assert traj.tool_log == [] and traj.finish_reason == "call_limit"


def test_on_limit_result_explains_and_continues(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer

    def script(text, req):
        return ANSWER if "limit" in text else "<python>print(1)</python>"

    (traj,) = run_tool_loop(ScriptedEngine(tok, script), python_tools, [LoopStart.fresh(_prompt(tok))],
                            _settings(call_limit=1, on_limit="result"))
    assert [(e["ok"], e["refused"]) for e in traj.tool_log] == [(True, False), (False, True)]
    assert traj.tool_calls == 1 and traj.finish_reason == "eos"
    assert "call limit (1) is reached" in traj.response_text(tok)
    assert traj.prefix(len(traj)).tool_calls == 1  # a refused call is not a call


def test_empty_payload_gets_an_error_result_and_counts(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer

    def script(text, req):
        return ANSWER if "<result>" in text.split("assistant")[-1] else "<python>   </python>"

    (traj,) = run_tool_loop(ScriptedEngine(tok, script), python_tools, [LoopStart.fresh(_prompt(tok))], _settings())
    assert traj.tool_calls == 1 and traj.tool_log[0]["ok"] is False
    assert EMPTY_TEXT.format(tool="python") in traj.response_text(tok)
    assert traj.finish_reason == "eos"


def test_payload_comes_from_the_current_turn_only(tiny_tokenizer, python_tools):
    """B13: a closing tag without its opening tag in this turn must not pick up a tag from the prompt
    or from an earlier turn."""
    tok = tiny_tokenizer
    prompt = _prompt(tok, "Example: <python>print('from the prompt')</python>")
    turns = iter(["<python>print(5)</python>", "then print(9)</python>", ANSWER])
    (traj,) = run_tool_loop(ScriptedEngine(tok, lambda text, req: next(turns)), python_tools,
                            [LoopStart.fresh(prompt)], _settings())
    assert [e["payload"] for e in traj.tool_log] == ["print(5)", ""]
    assert "from the prompt" not in traj.response_text(tok)


def test_budget_cuts_tool_results_and_generation(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    call = tok.encode("<python>print('x' * 500)</python>", add_special_tokens=False)
    budget = len(call) + 6
    engine = ScriptedEngine(tok, lambda text, req: "<python>print('x' * 500)</python>")
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(_prompt(tok))], _settings(max_response_length=budget))
    assert len(traj) == budget and traj.finish_reason == "length"
    assert traj.generated == [1] * len(call) + [0] * 6
    assert engine.calls[0].max_new_tokens == budget
    long_answer = ScriptedEngine(tok, lambda text, req: "word " * 100)
    (traj,) = run_tool_loop(long_answer, python_tools, [LoopStart.fresh(_prompt(tok))], _settings(max_response_length=7))
    assert len(traj) == 7 and traj.finish_reason == "length"


def test_tool_output_cannot_inject_special_tokens(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer

    def script(text, req):
        return ANSWER if "<result>" in text.split("assistant")[-1] else "<python>print('<|im' + '_end|>')</python>"

    (traj,) = run_tool_loop(ScriptedEngine(tok, script), python_tools, [LoopStart.fresh(_prompt(tok))], _settings())
    start, end = traj.tool_log[0]["start"], traj.tool_log[0]["end"]
    assert tok.eos_token_id not in traj.token_ids[start:end]
    assert "<|im_end|>" in tok.decode(traj.token_ids[start:end])


def test_search_runs_against_a_real_bm25_index(tiny_tokenizer, search_tools):
    tok = tiny_tokenizer

    def script(text, req):
        return ANSWER if "<result>" in text.split("assistant")[-1] else "<search>capital of France</search>"

    engine = ScriptedEngine(tok, script)
    (traj,) = run_tool_loop(engine, search_tools, [LoopStart.fresh(_prompt(tok))], _settings())
    assert traj.tool_log[0]["tool"] == "search" and "Paris is the capital" in traj.response_text(tok)
    assert engine.calls[0].stop == ["</python>", "</search>"]


def test_rounds_batch_rows_and_seeds_are_per_row_and_round(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, _two_turns)
    starts = [LoopStart.fresh(_prompt(tok), seed=s, group=g) for g, s in enumerate((10, 11, 12))]
    loop = ToolLoop(engine, python_tools, _settings(gen_batch_size=2), stats := {})
    rows = [loop.add(s) for s in starts]
    stepped = loop.step()
    assert stepped == rows and all(r.traj.tool_calls == 1 and not r.done for r in rows)
    loop.run()
    assert all(r.done and r.traj.finish_reason == "eos" for r in rows)
    seeds = [req.seed for req in engine.calls]
    assert len(engine.calls) == 6 and len(set(seeds)) == 6
    assert stats["rounds"] == 2 and stats["tool_calls"] == 3 and stats["generated_tokens"] == sum(
        sum(r.traj.generated) for r in rows)


def test_per_tool_limit_refuses_that_tool_only_and_counts_it_alone(tiny_tokenizer, search_tools):
    """tools.python.call_limit=1 with a total of 5: the second python call is refused with a message naming
    python (on_limit=result), a search call still runs, and the row goes on to its answer."""
    tok = tiny_tokenizer
    turns = iter(["<python>print(1)</python>", "<python>print(2)</python>", "<search>capital of France</search>",
                  ANSWER])
    engine = ScriptedEngine(tok, lambda text, req: next(turns))
    stats = {}
    (traj,) = run_tool_loop(engine, search_tools, [LoopStart.fresh(_prompt(tok))],
                            _settings(call_limit=5, tool_call_limits={"python": 1}, on_limit="result"), stats)
    assert [(e["tool"], e["ok"], e["refused"]) for e in traj.tool_log] == [
        ("python", True, False), ("python", False, True), ("search", True, False)]
    assert "the python call limit (1) is reached" in traj.response_text(tok)
    assert traj.tool_calls == 2 and stats["limit_hits"] == 1 and traj.finish_reason == "eos"


def test_settings_read_per_tool_limits_penalty_and_per_call_cap_from_config():
    from appo.config import load_config

    cfg = load_config(None, ["tools.python.call_limit=5", "tools.search.call_limit=10",
                             "rollout.repetition_penalty=1.1", "rollout.max_tokens_per_call=4096"])
    s = RolloutLoopSettings.from_config(cfg.rollout, cfg.tools)
    assert s.tool_call_limits == {"python": 5, "search": 10}
    assert s.repetition_penalty == 1.1 and s.max_tokens_per_call == 4096


def test_max_tokens_per_call_caps_each_generation_call_and_ends_the_row(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, lambda text, req: "word " * 50)
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(_prompt(tok))],
                            _settings(max_response_length=100, max_tokens_per_call=7))
    assert [r.max_new_tokens for r in engine.calls] == [7]
    assert len(traj) == 7 and traj.finish_reason == "length"


@pytest.mark.parametrize("stop_at_answer", [True, False])
def test_a_response_ends_right_after_its_answer_when_asked(tiny_tokenizer, python_tools, stop_at_answer):
    tok = tiny_tokenizer
    chatty = "<answer>\\boxed{42}</answer><answer>\\boxed{42}</answer> and more<|im_end|>"
    engine = ScriptedEngine(tok, lambda text, req: CALL if "<result>" not in text.split("<|im_start|>assistant")[-1]
                            else chatty)
    (traj,) = run_tool_loop(engine, python_tools, [LoopStart.fresh(_prompt(tok), seed=1)],
                            _settings(stop_at_answer=stop_at_answer))
    text = tok.decode(traj.token_ids, skip_special_tokens=False)
    if stop_at_answer:
        # ends in the token that completes the tag (a byte-level BPE token may carry a character past it)
        assert text.count("<answer>") == 1 and text.rstrip("<").endswith("</answer>")
        assert traj.finish_reason == "answer"
        # a branch whose prefix already holds the answer is finished, not continued
        (again,) = run_tool_loop(engine, python_tools, [LoopStart(traj.prefix(len(traj)), seed=2)],
                                 _settings(stop_at_answer=True))
        assert again.finish_reason == "answer" and again.token_ids == traj.token_ids
    else:
        assert text.endswith(" and more<|im_end|>") and traj.finish_reason == "eos"
