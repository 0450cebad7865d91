"""The rollout page: per-token entropy/advantage shading, branch markers with their score in plain ASCII,
tool results highlighted inside copied prefixes, collapsible groups with navigation, and trainer dumps."""

from __future__ import annotations

import json
import re

import pytest

from appo.errors import UserError
from appo.rollout.html import render_dump, render_html
from appo.tool_format import result_token_ids
from appo.rollout.trajectory import RolloutGroup, Trajectory


def _groups(tok):
    call = tok.encode("<python>print(1)</python>", add_special_tokens=False)
    result = result_token_ids(tok, "1")
    tail = tok.encode("<answer>1</answer>", add_special_tokens=False)
    init = Trajectory(prompt_ids=tok.encode("Q?", add_special_tokens=False), reward=1.0, finish_reason="eos")
    init.append(call, generated=1, logprobs=[-0.5] * len(call), entropies=[0.1 * (i + 1) for i in range(len(call))])
    start = len(init)
    init.append(result, generated=0)
    init.tool_log.append(dict(tool="python", payload="print(1)", ok=True, seconds=0.1, start=start, end=len(init)))
    init.append(tail, generated=1, logprobs=[-0.1] * len(tail), entropies=[2.0] * len(tail))
    split = len(init) - 2                                  # after the tool result: the prefix holds it
    branch = init.prefix(split + 1)
    branch.kind, branch.parent, branch.split_pos, branch.branch_score, branch.reward = "branch", 0, split, 0.4321, 0.0
    branch.append(tail[-1:], generated=1, logprobs=[-1.0], entropies=[1.0])
    init.meta["advantages"] = [0.5] * len(init)
    branch.meta["advantages"] = [-0.25] * len(branch)
    return [RolloutGroup(prompt=None, inits=[init], branches=[branch]),
            RolloutGroup(prompt=None, inits=[init.prefix(len(init))])], start


def test_page_has_shading_markers_prefix_tools_and_navigation(tiny_tokenizer):
    groups, tool_start = _groups(tiny_tokenizer)
    page = render_html(groups, tiny_tokenizer)
    assert page.count("<details class='group'") == 2 and "href='#p1'>next</a>" in page and "href='#p0'>prev" in page
    assert "[split 0.432]" in page and "⑂" not in page                 # ASCII marker with the score
    assert all(ord(c) < 128 for m in re.findall(r"<span class='split'[^>]*>([^<]*)<", page) for c in m)
    assert "class='k prefix tool'" in page                              # tool result inside a copied prefix
    assert "--ac:26,127,55" in page and "--ac:214,39,40" in page          # positive / negative advantages
    assert "advantage +0.500" in page and "entropy 2.000" in page
    assert "value='advantage' onchange='shade(this.value)'>" in page     # enabled: advantages are known


def test_without_advantages_the_switch_says_so(tiny_tokenizer):
    groups, _ = _groups(tiny_tokenizer)
    for g in groups:
        for t in g.rows:
            t.meta.pop("advantages")
    page = render_html(groups, tiny_tokenizer)
    assert "--ac:" not in page and "disabled" in page and "none recorded" in page
    for g in groups:
        for t in g.rows:
            t.meta["advantages"] = [0.0] * len(t)
    assert "all 0 in this step" in render_html(groups, tiny_tokenizer)


def test_render_dump_rebuilds_the_tree_from_a_trainer_dump(tiny_tokenizer, tmp_path):
    groups, _ = _groups(tiny_tokenizer)
    path = tmp_path / "step_3.jsonl"
    with path.open("w") as f:
        for g, group in enumerate(groups):
            for t in group.rows:
                record = t.to_dict(tiny_tokenizer) | {"group": g, "advantages": t.meta["advantages"]}
                record["meta"] = {}
                f.write(json.dumps(record) + "\n")
    page = render_dump(path, tiny_tokenizer)
    assert "step_3" in page and page.count("<details class='group'") == 2
    assert "[split 0.432]" in page and "branch at token" in page and "advantage -0.250" in page


def _dump(tmp_path, tok, change) -> str:
    groups, _ = _groups(tok)
    path = tmp_path / "step_1.jsonl"
    with path.open("w") as f:
        for g, group in enumerate(groups):
            for t in group.rows:
                record = t.to_dict(tok) | {"group": g, "advantages": t.meta["advantages"], "meta": {}}
                change(record)
                f.write(json.dumps(record) + "\n")
    return path


MARKUP = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def _hostile(record: dict) -> None:
    """Markup in every string field a dump holds (the fields the page renders included)."""
    record["finish_reason"] = record["kind"] == "init" and MARKUP or "eos" + MARKUP
    record["ground_truth"] = MARKUP
    record["tool_log"] = [dict(e, tool=MARKUP, payload=MARKUP) for e in record["tool_log"]]
    record["response_text"] = record["prompt_text"] = MARKUP


def test_a_dump_cannot_inject_markup_into_the_page(tiny_tokenizer, tmp_path):
    page = render_dump(_dump(tmp_path, tiny_tokenizer, _hostile), tiny_tokenizer)
    assert "<script>alert" not in page and "<img" not in page and "&lt;script&gt;alert(1)" in page


@pytest.mark.parametrize("field, value", [("reward", "1.0"), ("entropies", ["x"]), ("logprobs", None),
                                          ("branch_score", "0.5"), ("tool_log", [{"tool": "python"}]),
                                          ("group", "0"), ("advantages", ["a"]), ("token_ids", [1.5]),
                                          ("split_pos", "3")])
def test_a_dump_with_a_field_of_the_wrong_type_is_one_error_naming_it(tiny_tokenizer, tmp_path, field, value):
    from appo.errors import UserError

    path = _dump(tmp_path, tiny_tokenizer, lambda r: r.update({field: value}))
    with pytest.raises(UserError) as err:
        render_dump(path, tiny_tokenizer)
    assert f"{path}: line 1" in str(err.value) and field in str(err.value)


def test_a_chat_template_rollout_shows_its_calls_results_and_the_malformed_one(chat_tokenizer, tmp_path):
    """A real loop rollout in the chatml format: one turn with a good call and a malformed one (the sandbox runs
    the good one), then the answer; the page and a dump of it show the calls, mark the malformed one and shade
    the template's rendering of the results as not sampled."""
    from appo.config import ToolsConfig
    from appo.formats import build_format
    from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop
    from appo.tools import build_tools
    from tests.unit.rollout.conftest import ScriptedEngine

    tok = chat_tokenizer("chatml")
    script = iter(['<tool_call>\n{"name": "python", "arguments": {"code": "print(6 * 7)"}}\n</tool_call>\n'
                   '<tool_call>\n{"name": "python", "arguments": {"code": \n</tool_call><|im_end|>',
                   "<answer>\\boxed{42}</answer><|im_end|>"])
    engine = ScriptedEngine(tok, lambda prompt, req: next(script))
    with build_tools(ToolsConfig(enabled=["python"], timeout=10.0)) as tools:
        fmt = build_format("chat_template", tok, list(tools.specs.values()))
        settings = RolloutLoopSettings(max_response_length=300, tool_format="chat_template", stop_at_answer=False)
        [traj] = run_tool_loop(engine, tools, [LoopStart.fresh(fmt.prompt_ids([{"role": "user", "content": "6*7?"}]))],
                               settings)
    traj.reward = 1.0
    page = render_html([RolloutGroup(prompt=None, inits=[traj])], tok)
    assert "format chat_template" in page
    assert "tool calls: python, unreadable call (malformed JSON)" in page
    assert "<code>print(6 * 7)</code>" in page and "calls (2)" in page
    assert "results of python, unreadable call (not sampled)" in page
    shaded = "".join(re.findall(r"class='k tool'[^>]*>([^<]*)<", page))
    assert "&lt;|im_start|&gt;user" in shaded and "tool_response" in shaded and "42" in shaded
    path = tmp_path / "step_1.jsonl"
    path.write_text(json.dumps(traj.to_dict(tok) | {"group": 0, "advantages": None, "meta": {}}) + "\n")
    assert "tool calls: python, unreadable call (malformed JSON)" in render_dump(path, tok)
    path.write_text(json.dumps(traj.to_dict(tok) | {"group": 0, "advantages": None, "tool_format": "xml"}) + "\n")
    with pytest.raises(UserError, match="field 'tool_format' is \"xml\", not tags or chat_template"):
        render_dump(path, tok)
