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
