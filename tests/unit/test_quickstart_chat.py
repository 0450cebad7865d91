"""The quickstart-chat preset's budgets hold its prompts and cold-start traces whole with SmolLM2's tokenizer (the
quickstart's own budgets, sized for tags, drop every prompt and cut the two-search traces)."""

from __future__ import annotations

from appo.config import load_config
from appo.data.prompt_sets import load_prompt_sets, prepare_task, with_task_index
from appo.data.traces import encode_trace, make_sft_traces
from appo.formats import build_format
from appo.tools import build_tools
from appo.tools.registry import tool_specs


def test_the_chat_quickstart_budgets_fit_its_prompts_and_traces(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer("chatml")
    cfg = load_config("quickstart-chat", [f"trainer.output_dir={tmp_path}", "data.num_train=200"])
    assert (cfg.tools.format, cfg.tools.chat_template) == ("chat_template", "chatml")
    task = prepare_task(cfg)
    train, val = load_prompt_sets(cfg, tok, task)
    assert (len(train), len(val)) == (200, cfg.data.num_val)  # none dropped as too long
    cfg = with_task_index(cfg, task)
    fmt = build_format(cfg.tools.format, tok, tool_specs(cfg.tools), cfg.tools.chat_template)
    with build_tools(cfg.tools) as tools:
        traces = make_sft_traces(task.train, 80, seed=0, tools=tools, tool_format="chat_template")
    assert {t["data_source"] for t in traces} == {"appo/arithmetic", "appo/multihop"}
    for trace in traces:
        ids, mask = encode_trace(trace, tok, fmt)
        prompt = mask.index(1)
        assert len(ids) <= cfg.sft.max_length and len(ids) - prompt <= cfg.rollout.max_response_length
    tags = load_config("quickstart", [f"trainer.output_dir={tmp_path}"])
    assert max(len(encode_trace(t, tok, fmt)[0]) for t in traces) > tags.sft.max_length  # why the budgets differ
