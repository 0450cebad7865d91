"""A user's own data file, tried as a new user would: giving files means using them, the rows offer only
the enabled tools, columns map by config keys and reach the rewards untouched, and refusals name the key."""

from __future__ import annotations

import json

import pytest

from appo.config import load_config
from appo.data import DataError, build_prompts
from appo.data.prompt_sets import load_prompt_sets, prepare_task


@pytest.fixture()
def own_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"q": f"What is {a} * 3?", "solution": str(a * 3), "level": "easy" if a < 5 else "hard",
             "persona": "You are terse." if a == 2 else ""} for a in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_files_alone_train_on_them_not_the_builtin_task(own_file, tiny_tokenizer):
    cfg = load_config("quickstart", [f"data.train_files=[{own_file}]", "data.prompt_key=q",
                                     "data.answer_key=solution"])
    assert cfg.data.task is None and prepare_task(cfg) is None
    train, _ = load_prompt_sets(cfg, tiny_tokenizer)
    assert [p.ground_truth for p in train] == [str(a * 3) for a in range(1, 9)]


def test_rows_offer_only_the_enabled_tools(own_file, tiny_tokenizer):
    cfg = load_config("tiny", [f"data.train_files=[{own_file}]", "data.prompt_key=q", "data.answer_key=solution",
                               "tools.enabled=[python]"])
    train, _ = load_prompt_sets(cfg, tiny_tokenizer)
    system = train[0].messages[0]
    assert system["role"] == "system" and "<python>" in system["content"]
    assert "search" not in system["content"].lower()
    assert all(len(p.prompt_ids) <= 256 for p in train)  # fits the tiny preset's prompt budget


def test_column_mapping_and_other_columns_reach_the_rewards(own_file, tiny_tokenizer):
    cfg = load_config("tiny", [f"data.train_files=[{own_file}]", "data.prompt_key=q", "data.answer_key=solution",
                               "data.system_prompt_key=persona", "tools.enabled=[python]"])
    train, _ = load_prompt_sets(cfg, tiny_tokenizer)
    assert train[1].messages == [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": "What is 2 * 3?"}]
    assert train[0].messages[0]["content"] != "You are terse."  # empty persona: the tools' prompt
    assert train[6].extra == {"level": "hard"}  # consumed columns are not repeated


def test_refusals_name_the_key_to_change(own_file, tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"row 0: no column 'answer' \(data.answer_key\); its columns: q, solution"):
        build_prompts([{"q": "x", "solution": "1"}], tiny_tokenizer,
                      load_config("tiny", ["data.prompt_key=q", "data.answer_key=answer"]).data)
    with pytest.raises(DataError, match=r"set data.answer_key=<column>; its columns: question, solution"):
        build_prompts([{"question": "x", "solution": "1"}], tiny_tokenizer, load_config("tiny").data)
    with pytest.raises(DataError, match=r"set data.prompt_key=<column>; its columns: q, solution"):
        build_prompts([{"q": "x", "solution": "1"}], tiny_tokenizer, load_config("tiny").data)
    cfg = load_config("tiny", [f"data.train_files=[{own_file}]", "data.prompt_key=q", "data.answer_key=solution",
                               "data.max_prompt_length=8"])
    with pytest.raises(DataError, match=r"data.train_files: .*mine.jsonl: no usable prompts .*too_long: 8.*"
                                        r"data.max_prompt_length=8 tokens were dropped: raise it"):
        load_prompt_sets(cfg, tiny_tokenizer)


def test_cold_start_traces_from_a_column_of_tool_calls(tmp_path, tiny_tokenizer):
    from appo.data.traces import call_traces
    from appo.tools import build_tools

    path = tmp_path / "code.jsonl"
    rows = [{"q": "What is 6 * 7?", "a": "42", "code": "print(6 * 7)"},
            {"q": "What is 1 / 0?", "a": "inf", "code": "print(1 / 0)"},
            {"q": "What is 2 + 2?", "a": "4", "code": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config("tiny", [f"data.train_files=[{path}]", "data.prompt_key=q", "data.answer_key=a",
                               "tools.enabled=[python]", "sft.trace_key=code"])
    train, _ = load_prompt_sets(cfg, tiny_tokenizer)
    with build_tools(cfg.tools) as tools:
        traces = call_traces(train, "code", "python", tools, n=10)
    # the failing call and the row without code are left out; the result is the sandbox's real output
    assert [t["ground_truth"] for t in traces] == ["42"]
    assert traces[0]["messages"][:-1] == train[0].messages
    assert [s["text"] for s in traces[0]["segments"] if s["train"]] == ["<python>print(6 * 7)</python>",
                                                                        "<answer>\\boxed{42}</answer>"]
    assert traces[0]["segments"][1]["tool_output"].strip() == "42"
    with pytest.raises(Exception, match=r"sft.trace_tool='search' is not in tools.enabled \(python\)"):
        load_config("tiny", ["tools.enabled=[python]", "sft.trace_key=code", "sft.trace_tool=search"])
