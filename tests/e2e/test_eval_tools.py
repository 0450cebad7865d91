"""`appo eval` with real tool calls: the tiny model is first overfit (a few seconds) to call the search tool
(reference cache: one hit, one miss) and the sandboxed python tool, so the evaluation's tool statistics,
cache-miss handling and answer scoring are exercised on genuine agent-loop trajectories."""

from __future__ import annotations

import json

import pytest
import torch

from appo.commands.eval import main
from appo.config import load_config
from appo.eval.evaluate import build_sets, load_benchmarks
from appo.models import load_model, load_tokenizer
from appo.tool_format import RESULT_TEMPLATE
from appo.tools import build_tools
from appo.tools.base import ToolCall

pytestmark = pytest.mark.slow

CACHED_QUERY = "Amy Smart film debut Campfire Tales"     # a key of the reference search cache
MISSING_QUERY = "height of the 2015 AFL Rising Star winner"


def _overrides(shared_data):
    return ["eval.max_response_length=160", "data.system_prompt=none", "data.max_prompt_length=256",
            "tools.enabled=[python,search]", "tools.call_limit=2", "tools.search.backend=cache",
            f"tools.search.cache_file={shared_data / 'reference_rl' / 'search_cache.json'}",
            "tools.search.max_results=1", "tools.search.result_length=60",
            f"eval.data_root={shared_data / 'benchmarks'}", "eval.max_samples=2",
            "eval.benchmarks=[gsm8k,hotpotqa]"]


def _scripts():
    """(benchmark, index) -> turns: (generated text, tool call or None)."""
    return {
        ("gsm8k", 0): [("<think>compute</think><python>print((16-3-4)*2)</python>", ("python", "print((16-3-4)*2)")),
                       ("<answer>\\boxed{18}</answer>", None)],
        ("gsm8k", 1): [("<think>easy</think><answer>\\boxed{3}</answer>", None)],
        ("hotpotqa", 0): [(f"<think>look up</think><search>{CACHED_QUERY}</search>", ("search", CACHED_QUERY)),
                          ("<answer>\\boxed{Frank Lowy}</answer>", None)],
        ("hotpotqa", 1): [(f"<think>look up</think><search>{MISSING_QUERY}</search>", ("search", MISSING_QUERY)),
                          ("<answer>\\boxed{1.95 m}</answer>", None)],
    }


def _sequences(sets, tokenizer, tools):
    """Token ids and a loss mask (generated segments only) for each scripted trajectory."""
    seqs = []
    for es in sets:
        for p in es.prompts:
            ids, mask = list(p.prompt_ids), [0] * len(p.prompt_ids)
            for text, call in _scripts()[(es.name, p.index)]:
                gen = tokenizer.encode(text, add_special_tokens=False)
                ids, mask = ids + gen, mask + [1] * len(gen)
                if call is not None:
                    (res,) = tools.run([ToolCall(*call)])
                    out = tokenizer.encode(RESULT_TEMPLATE.format(text=res.text), add_special_tokens=False)
                    ids, mask = ids + out, mask + [0] * len(out)
            ids, mask = ids + [tokenizer.eos_token_id], mask + [1]
            seqs.append((ids, mask))
    return seqs


def _overfit(model, seqs, steps=400):
    torch.manual_seed(0)
    width = max(len(ids) for ids, _ in seqs)
    x = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in seqs])
    m = torch.tensor([mask + [0] * (width - len(mask)) for _, mask in seqs], dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits[m[:, 1:]], x[:, 1:][m[:, 1:]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9 and bool((logits.argmax(-1)[m[:, 1:]] == x[:, 1:][m[:, 1:]]).all()):
            break
    model.eval()
    with torch.no_grad():
        logits = model(x[:, :-1]).logits
    assert bool((logits.argmax(-1)[m[:, 1:]] == x[:, 1:][m[:, 1:]]).all()), "the tiny model did not memorise the traces"


def test_eval_counts_real_tool_calls_cache_hits_and_misses(tiny_model_dir, shared_data, tmp_path):
    over = _overrides(shared_data)
    cfg = load_config("tiny", over)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    sets = build_sets(load_benchmarks(cfg), cfg, tokenizer)
    with build_tools(cfg.tools) as tools:
        seqs = _sequences(sets, tokenizer, tools)
    model = load_model(str(tiny_model_dir))
    _overfit(model, seqs)
    model_dir = tmp_path / "agent"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    out = tmp_path / "eval"
    assert main(["tiny", "--model", str(model_dir), "--output-dir", str(out), "--no-progress", *over]) == 0
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]
    gsm, hotpot = summary["gsm8k"], summary["hotpotqa"]
    assert gsm["pass@1"] == 1.0 and gsm["math_equal"] == 1.0
    assert gsm["python_calls_per_sample"] == 0.5 and gsm["python_errors"] == 0 and gsm["tool_use_rate"] == 0.5
    assert hotpot["pass@1"] == 1.0 and hotpot["em"] == 1.0 and hotpot["f1"] == 1.0
    assert hotpot["search_calls_per_sample"] == 1.0 and hotpot["search_errors"] == 1
    assert hotpot["tool_error_rate"] == 0.5
    samples = {(r["benchmark"], r["index"]): r for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    assert "<result>\n18\n</result>" in samples[("gsm8k", 0)]["response"]
    assert "Page 1:" not in samples[("hotpotqa", 1)]["response"]
    assert "not in the offline search cache" in samples[("hotpotqa", 1)]["response"]
    assert samples[("hotpotqa", 0)]["tool_log"][0]["ok"] and not samples[("hotpotqa", 1)]["tool_log"][0]["ok"]
