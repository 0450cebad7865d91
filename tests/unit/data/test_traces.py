"""SFT traces: real tool results, the headroom knobs, and token ids identical to the rollout's layout."""

import subprocess

import pytest

from appo.config import load_config
from appo.data import build_task, encode_trace, make_sft_traces
from appo.tool_format import result_token_ids


@pytest.fixture(scope="module")
def task():
    return build_task("quickstart", num_train=40, num_val=4, seed=2, multihop_fraction=0.5)


def arithmetic(rows):
    return [r for r in rows if r["data_source"] == "appo/arithmetic"]


def test_python_results_are_what_the_interpreter_prints(task):
    traces = make_sft_traces(arithmetic(task.train), 12, seed=1, p_wrong=0.5)
    assert {t["variant"] for t in traces} == {"tool", "wrong"}
    for t in traces:
        code = t["segments"][0]["text"].split("<python>")[1].split("</python>")[0]
        printed = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert t["segments"][1]["tool_output"] == printed
        assert t["segments"][1]["text"] == f" <result>\n{printed}\n</result>"
        assert t["segments"][2]["text"] == f"<answer>\\boxed{{{printed}}}</answer>"
        correct = float(printed) == float(t["ground_truth"])
        assert correct == (t["variant"] == "tool")


def test_python_traces_through_the_real_sandbox_match_local_ones(task):
    from appo.tools import build_tools

    rows = arithmetic(task.train)
    with build_tools(load_config(None, ["tools.enabled=[python]"]).tools) as tools:
        sandboxed = make_sft_traces(rows, 4, seed=7, p_wrong=0.5, tools=tools)
    assert sandboxed == make_sft_traces(rows, 4, seed=7, p_wrong=0.5)


def test_notool_share_and_determinism(task):
    rows = arithmetic(task.train)
    traces = make_sft_traces(rows, 200, seed=4, p_notool=0.6)
    share = sum(t["variant"] == "notool" for t in traces) / len(traces)
    assert 0.5 < share < 0.7
    direct = next(t for t in traces if t["variant"] == "notool")
    assert (
        direct["messages"][-1]["content"]
        == f"<think>Easy.</think><answer>\\boxed{{{direct['ground_truth']}}}</answer>"
    )
    assert make_sft_traces(rows, 200, seed=4, p_notool=0.6) == traces
    assert make_sft_traces(rows, 5, p_notool=1.0)[0]["variant"] == "notool"


def test_encode_trace_masks_exactly_the_tool_result(task, tiny_tokenizer):
    trace = make_sft_traces(arithmetic(task.train), 1, seed=0)[0]
    ids, mask = encode_trace(trace, tiny_tokenizer)
    prompt = tiny_tokenizer.apply_chat_template(
        trace["messages"][:-1], add_generation_prompt=True, tokenize=False
    )
    n_prompt = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    first = tiny_tokenizer(trace["segments"][0]["text"], add_special_tokens=False)["input_ids"]
    result = result_token_ids(tiny_tokenizer, trace["segments"][1]["tool_output"])
    start = n_prompt + len(first)
    assert ids[start : start + len(result)] == result
    assert mask[:n_prompt] == [0] * n_prompt and mask[start : start + len(result)] == [0] * len(result)
    assert sum(mask) == len(ids) - n_prompt - len(result)
    assert ids[-1] == tiny_tokenizer.eos_token_id and mask[-1] == 1
    assert tiny_tokenizer.decode(ids[n_prompt:-1]) == trace["messages"][-1]["content"]


def test_system_prompt_override_matches_rl_prompts(task):
    trace = make_sft_traces(arithmetic(task.train), 1, system_prompt="none")[0]
    assert [m["role"] for m in trace["messages"]] == ["user", "assistant"]


def test_search_traces_need_the_real_tool(task):
    multihop = [r for r in task.train if r["data_source"] == "appo/multihop"]
    with pytest.raises(ValueError, match="need the real search tool"):
        make_sft_traces(multihop, 2)
    with pytest.raises(ValueError, match="no rows with a tool plan"):
        make_sft_traces([{"extra_info": {}}], 1)


def test_multihop_traces_through_the_real_bm25_tool(task, tmp_path):
    from appo.tools import ToolCall, build_tools
    from appo.tools.search_backends import build_index

    build_index(task.corpus, tmp_path / "index")
    cfg = load_config(
        None,
        [
            "tools.enabled=[search]",
            "tools.search.backend=local",
            f"tools.search.index_dir={tmp_path / 'index'}",
            "tools.search.max_results=3",
        ],
    )
    multihop = [r for r in task.train if r["data_source"] == "appo/multihop"]
    with build_tools(cfg.tools) as tools:
        traces = make_sft_traces(multihop, 6, seed=0, tools=tools)
        for t in traces:
            results = [s for s in t["segments"] if not s["train"]]
            assert len(results) == 2
            for seg, step in zip(
                results,
                next(r for r in multihop if r["extra_info"]["index"] == t["index"])["extra_info"]["plan"],
                strict=True,
            ):
                direct = tools.run([ToolCall("search", step["payload"])])
                assert seg["tool_output"] == direct[0].text and step["fact"] in seg["tool_output"]
            assert t["segments"][-1]["text"] == f"<answer>\\boxed{{{t['ground_truth']}}}</answer>"


# ------------------------------------------------------------------------- tools.format=chat_template


def test_chat_traces_call_the_tool_with_its_schema_argument_and_keep_the_real_result(task):
    rows = arithmetic(task.train)
    tags = make_sft_traces(rows, 12, seed=1, p_wrong=0.5, p_notool=0.2)
    chats = make_sft_traces(rows, 12, seed=1, p_wrong=0.5, p_notool=0.2, tool_format="chat_template")
    assert {t["variant"] for t in chats} == {"tool", "wrong", "notool"}
    for tag, chat in zip(tags, chats, strict=True):  # the same plans, written in the other format
        assert chat["tool_format"] == "chat_template" and "segments" not in chat
        response = 1 if chat["variant"] == "notool" else 3
        assert (chat["variant"], chat["index"], chat["messages"][:-response]) == (tag["variant"], tag["index"],
                                                                                  tag["messages"][:-1])
        answer = chat["messages"][-1]
        assert answer["role"] == "assistant" and "tool_calls" not in answer
        if chat["variant"] == "notool":
            assert answer == tag["messages"][-1]
            continue
        turn, result = chat["messages"][-3], chat["messages"][-2]
        code = tag["segments"][0]["text"].split("<python>")[1].split("</python>")[0]
        assert turn["tool_calls"] == [{"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]
        printed = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert result == {"role": "tool", "name": "python", "content": printed}
        assert answer["content"] == f"<answer>\\boxed{{{printed}}}</answer>"


def test_chat_traces_encode_as_the_rollout_renders_them_on_smollm2(task, smollm2_tokenizer):
    from appo.formats import build_format
    from appo.formats.conversation import encode_chat
    from appo.tools.registry import BUILTIN_TOOLS

    tok = smollm2_tokenizer("chatml")
    fmt = build_format("chat_template", tok, [BUILTIN_TOOLS["python"].spec, BUILTIN_TOOLS["search"].spec])
    trace = make_sft_traces(arithmetic(task.train), 1, seed=0, tool_format="chat_template")[0]
    ids, mask = encode_trace(trace, tok, fmt)
    prompt, response, loss = encode_chat(fmt, trace["messages"])
    assert ids == prompt + response and mask == [0] * len(prompt) + loss
    assert prompt == fmt.prompt_ids(trace["messages"][:-3])
    trained = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    code = trace["messages"][-3]["tool_calls"][0]["function"]["arguments"]["code"]
    assert trained == (f'{trace["messages"][-3]["content"]}\n<tool_call>\n{{"name": "python", "arguments": '
                       f'{{"code": "{code}"}}}}\n</tool_call><|im_end|>{trace["messages"][-1]["content"]}<|im_end|>')
    with pytest.raises(ValueError, match="chat-template format object"):
        encode_trace(trace, tok)


def test_chat_multihop_traces_through_the_real_bm25_tool(task, tmp_path):
    from appo.tools import ToolCall, build_tools
    from appo.tools.search_backends import build_index

    build_index(task.corpus, tmp_path / "index")
    cfg = load_config(None, ["tools.enabled=[search]", "tools.search.backend=local",
                             f"tools.search.index_dir={tmp_path / 'index'}", "tools.search.max_results=3"])
    multihop = [r for r in task.train if r["data_source"] == "appo/multihop"]
    with build_tools(cfg.tools) as tools:
        traces = make_sft_traces(multihop, 4, seed=0, tools=tools, tool_format="chat_template")
        for t in traces:
            plan = next(r for r in multihop if r["extra_info"]["index"] == t["index"])["extra_info"]["plan"]
            calls = [m for m in t["messages"] if m.get("tool_calls")]
            results = [m for m in t["messages"] if m["role"] == "tool"]
            assert [c["tool_calls"][0]["function"]["arguments"] for c in calls] == [{"query": s["payload"]}
                                                                                  for s in plan]
            for result, step in zip(results, plan, strict=True):
                assert result["content"] == tools.run([ToolCall("search", step["payload"])])[0].text
                assert step["fact"] in result["content"]
            assert t["messages"][-1]["content"] == f"<answer>\\boxed{{{t['ground_truth']}}}</answer>"


def test_an_unknown_tool_format_is_refused(task):
    with pytest.raises(ValueError, match="choose one of: tags, chat_template"):
        make_sft_traces(arithmetic(task.train), 1, tool_format="json")


def test_a_rollout_that_writes_a_chat_trace_is_its_sft_encoding_token_for_token(task, smollm2_tokenizer):
    """The policy (scripted) writes each assistant turn of a multihop+arithmetic chat trace; the real loop with the
    real sandbox and BM25 appends the results: prompt, tokens and loss mask equal the trace's SFT encoding."""
    from appo.formats import build_format
    from appo.formats.conversation import assistant_text
    from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop
    from appo.tools import build_tools
    from tests.unit.rollout.conftest import ScriptedEngine

    tok = smollm2_tokenizer("chatml")
    with build_tools(load_config(None, ["tools.enabled=[python]"]).tools) as tools:
        fmt = build_format("chat_template", tok, list(tools.specs.values()))
        trace = make_sft_traces(arithmetic(task.train), 3, seed=5, p_wrong=0.5, tool_format="chat_template",
                                tools=tools)[0]
        messages = trace["messages"]
        script = iter([assistant_text(fmt, messages[:i], m) for i, m in enumerate(messages) if m["role"] == "assistant"])
        engine = ScriptedEngine(tok, lambda prompt, req: next(script))
        settings = RolloutLoopSettings(max_response_length=400, tool_format="chat_template", call_limit=3)
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        [traj] = run_tool_loop(engine, tools, [LoopStart.fresh(fmt.prompt_ids(messages[:first]))], settings)
    ids, mask = encode_trace(trace, tok, fmt)
    assert traj.prompt_ids + traj.token_ids == ids
    assert [0] * len(traj.prompt_ids) + traj.generated == mask
    assert traj.finish_reason == "eos" and traj.tool_format == "chat_template"
    assert [e["tool"] for e in traj.tool_log] == ["python"] and traj.tool_log[0]["ok"]
