"""Cold-start traces of the `study` task: always the tools, the right procedure, and each flaw (a skipped
search, a near-miss query, an arithmetic slip) at its configured rate, with real tool results."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from appo.config import load_config
from appo.data import build_task, make_sft_traces
from appo.data.tasks import evaluate_expression
from appo.tools import build_tools
from appo.tools.search_backends import build_index

RATES = {"skip": 0.2, "query": 0.15, "wrong": 0.1}
N = 240


@pytest.fixture(scope="module")
def task():
    return build_task("study", num_train=150, num_val=10, seed=5)


@pytest.fixture(scope="module")
def traces(task, tmp_path_factory):
    index = build_index(task.corpus, tmp_path_factory.mktemp("study") / "index")
    cfg = load_config("study", [f"tools.search.index_dir={index}"])
    with build_tools(cfg.tools) as tools:
        return make_sft_traces(task.train, N, seed=2, tools=tools, p_skip=RATES["skip"], p_query=RATES["query"],
                               p_wrong=RATES["wrong"])


def calls(trace, tool):
    return re.findall(rf"<{tool}>(.*?)</{tool}>", trace["messages"][-1]["content"], re.DOTALL)


def answer(trace):
    return trace["messages"][-1]["content"].rsplit("\\boxed{", 1)[1].split("}")[0]


def plan_of(task, trace):
    return next(r for r in task.train if r["extra_info"]["index"] == trace["index"])["extra_info"]["plan"]


def test_every_trace_searches_then_computes_in_python(traces):
    assert len(traces) == N
    for t in traces:
        assert len(calls(t, "search")) >= 1 and len(calls(t, "python")) == 1
        assert t["messages"][-1]["content"].index("<python>") > t["messages"][-1]["content"].rindex("</search>")
        assert t["variant"] != "notool"


def test_flaws_appear_at_their_configured_rates(traces):
    counts = Counter(t["variant"] for t in traces)
    expected = {**RATES, "tool": 1 - sum(RATES.values())}
    for variant, p in expected.items():
        sd = math.sqrt(N * p * (1 - p))
        assert abs(counts[variant] - N * p) <= 4 * sd, (variant, counts)


def test_clean_traces_are_right_and_flawed_ones_wrong_in_their_own_way(task, traces):
    for t in traces:
        plan = plan_of(task, t)
        canonical = [s["payload"] for s in plan if s["tool"] == "search"]
        sent = calls(t, "search")
        near = {s["near"]["payload"] for s in plan if "near" in s}
        # the answer is what python printed, and python ran what the trace wrote
        printed = t["segments"][-2]["tool_output"]
        code = calls(t, "python")[0]
        assert answer(t) == printed == str(evaluate_expression(code[len("print("):-1]))
        if t["variant"] == "tool":
            assert sent == canonical and answer(t) == t["ground_truth"]
            continue
        assert answer(t) != t["ground_truth"]
        if t["variant"] == "skip":
            assert len(sent) == len(canonical) - 1 and set(sent) < set(canonical)
        elif t["variant"] == "query":
            assert len(sent) == len(canonical) and len(set(sent) & near) == 1
        else:  # an arithmetic slip: the right searches, one digit changed in the cell
            assert sent == canonical
            right = plan[-1]["payload"]
            assert len(code) == len(right) and sum(a != b for a, b in zip(code, right, strict=True)) == 1


def test_study_traces_refuse_to_skip_the_tools(task):
    with pytest.raises(ValueError, match="p_notool"):
        make_sft_traces(task.train, 4, p_notool=0.5)
    with pytest.raises(ValueError, match="<= 1"):
        make_sft_traces(task.train, 4, p_skip=0.5, p_query=0.4, p_wrong=0.2)


def test_chat_template_study_traces_are_the_same_procedures_as_calls(task, traces, tmp_path):
    """In tools.format=chat_template the study traces hold the same calls, results and answers, each step an
    assistant turn with its think and one call."""
    index = build_index(task.corpus, tmp_path / "index")
    cfg = load_config("study", [f"tools.search.index_dir={index}"])
    with build_tools(cfg.tools) as tools:
        chats = make_sft_traces(task.train, 40, seed=2, tools=tools, p_skip=RATES["skip"], p_query=RATES["query"],
                                p_wrong=RATES["wrong"], tool_format="chat_template")
    for tag, chat in zip(traces[:40], chats, strict=True):
        turns = [m for m in chat["messages"] if m.get("tool_calls")]
        made = [(c["function"]["name"], c["function"]["arguments"]) for m in turns for c in m["tool_calls"]]
        assert made == [(tool, {"query" if tool == "search" else "code": payload})
                        for tool in ("search", "python") for payload in calls(tag, tool)]
        assert [len(m["tool_calls"]) for m in turns] == [1] * len(turns)
        assert chat["messages"][-1]["content"].endswith(f"\\boxed{{{answer(tag)}}}</answer>")
        results = [m["content"] for m in chat["messages"] if m["role"] == "tool"]
        assert [s["tool_output"] for s in tag["segments"] if not s["train"]] == results
