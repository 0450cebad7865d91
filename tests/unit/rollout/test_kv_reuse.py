"""KV reuse and continuous batching in the HF engine: the same samples as the re-prefill path (token by
token, after tool results, for APPO branches and ARPO copies), only new tokens prefilled, caches freed,
and outputs that do not depend on how long tools take.

Tolerances: token ids must be equal; log-probs and entropies within 1e-4 absolute. Both paths run the
same float32 model on the same ids and draw the same per-row Gumbel noise; they differ only in how the
keys/values were computed (one prefill of everything vs. pieces, other padding and batch shapes), which
changes float sums in the last bits: measured at most 2.3e-5 on SmolLM2-135M over the quickstart
workload (8 rows, tools, branches) and 3e-6 on this tiny model. 1e-4 leaves room for other machines and thread
counts. It still catches a misplaced position, mask or cache entry: feeding a joined row's new tokens
one position too far moves this random model's log-probs by 7e-4 (checked by hand), and real models
far more; and a wrong cache entry changes the sampled tokens themselves.
"""

from __future__ import annotations

import random
import time
import types

import pytest
import torch

from appo.rollout.engine import GenRequest
from appo.rollout.hf import HFEngine, padded_groups
from appo.rollout.sampling import sample_groups
from appo.rollout.tool_loop import REJOIN_AFTER_STEPS, LoopStart, RolloutLoopSettings, ToolLoop, run_tool_loop
from appo.tools.base import ToolResult
from appo.tools.registry import ToolRunner

from .conftest import make_cfg

ATOL = 1e-4


class ToolHappyLM(torch.nn.Module):
    """The tiny random model with a bigram nudge toward `<python>...</python>`: every token makes `<` and
    `</` a little more likely, and `<`/`</` then `python` then `>` very likely, so rows call the tool
    often (a random model never would) while the distribution stays the model's own, position-dependent
    one over the whole vocabulary."""

    def __init__(self, inner, tok, start: float = 4.5, follow: float = 12.0):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config
        (lt,), (close,), (name,), (gt,) = (tok.encode(s, add_special_tokens=False) for s in ("<", "</", "python", ">"))
        bias = torch.zeros(inner.config.vocab_size, inner.config.vocab_size)
        bias[:, [lt, close]] = start
        bias[[lt, close], name] = follow
        bias[name, gt] = follow
        self.register_buffer("bias", bias)

    def forward(self, input_ids, logits_to_keep=0, **kw):
        out = self.inner(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw)
        if isinstance(logits_to_keep, int):
            current = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        else:
            current = input_ids[:, logits_to_keep]
        out.logits = out.logits + self.bias[current]
        return out


@pytest.fixture()
def tool_lm(tiny_model, tiny_tokenizer):
    return ToolHappyLM(tiny_model, tiny_tokenizer)


class SlowEcho:
    """A tool that answers with its payload's length after a random pause (a stand-in for a sandbox or a
    search backend whose speed varies)."""
    name = "python"

    def __init__(self, seed: int, max_pause: float):
        self.rng = random.Random(seed)
        self.max_pause = max_pause

    def __call__(self, call):
        time.sleep(self.rng.random() * self.max_pause)
        return ToolResult(f"len={len(call.payload)}", ok=True)


def _prompts(tok, k, system: str | None = None):
    out = []
    for i in range(k):
        turns = [{"role": "system", "content": system}] if system else []
        chat = tok.apply_chat_template(turns + [{"role": "user", "content": f"Calculate {i} * 7 with python."}],
                                       add_generation_prompt=True, tokenize=False)
        out.append(types.SimpleNamespace(prompt_ids=tok.encode(chat, add_special_tokens=False), index=i))
    return out


def _starts(tok, k=3, per=3, system=None):
    return [LoopStart.fresh(p.prompt_ids, group=g, seed=100 * g + j) for g, p in enumerate(_prompts(tok, k, system))
            for j in range(per)]


def _settings(**kw):
    return RolloutLoopSettings(**{"max_response_length": 128, "call_limit": 3, "gen_batch_size": 4, **kw})


def _assert_same(old, new):
    assert len(old) == len(new)
    for a, b in zip(old, new):
        assert a.token_ids == b.token_ids
        assert a.generated == b.generated and a.finish_reason == b.finish_reason
        assert [(e["start"], e["end"], e["payload"]) for e in a.tool_log] == \
               [(e["start"], e["end"], e["payload"]) for e in b.tool_log]
        assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0.0) < ATOL
        assert max((abs(x - y) for x, y in zip(a.entropies, b.entropies)), default=0.0) < ATOL


def test_tool_turns_match_the_reprefill_path_and_prefill_only_new_tokens(tool_lm, tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    old_stats, new_stats = {}, {}
    old = run_tool_loop(HFEngine(tool_lm, tok, kv_reuse=False), python_tools, _starts(tok), _settings(), old_stats)
    new = run_tool_loop(HFEngine(tool_lm, tok), python_tools, _starts(tok), _settings(), new_stats)
    _assert_same(old, new)
    turns = sum(len(t.tool_log) for t in new)
    assert turns >= 5 and sum(len(t.tool_log) >= 2 for t in new) >= 2  # generation went on after results
    for phase in ("initial", "tool"):
        assert old_stats[f"new_tokens/{phase}"] == new_stats[f"new_tokens/{phase}"]
    assert new_stats["prefill_tokens/tool"] == new_stats["new_tokens/tool"]
    # a prompt's rows that join the batch together prefill its ids once (same samples: checked above)
    assert new_stats["shared_prefill_tokens"] > 0
    assert new_stats["prefill_tokens/initial"] + new_stats["shared_prefill_tokens"] == new_stats["new_tokens/initial"]
    assert old_stats["prefill_tokens/tool"] > 1.5 * new_stats["prefill_tokens/tool"]


def test_prompts_with_a_common_start_prefill_it_once(tool_lm, tiny_tokenizer, python_tools):
    """Held-out evaluation and a step's prompts all open with the same system prompt."""
    tok = tiny_tokenizer
    system = "Think first. Run code with the python tool and put the final answer in a box at the end."
    old_stats, new_stats = {}, {}
    old = run_tool_loop(HFEngine(tool_lm, tok, kv_reuse=False), python_tools, _starts(tok, 4, 2, system),
                        _settings(gen_batch_size=8), old_stats)
    new = run_tool_loop(HFEngine(tool_lm, tok), python_tools, _starts(tok, 4, 2, system), _settings(gen_batch_size=8),
                        new_stats)
    _assert_same(old, new)
    prompts = [p.prompt_ids for p in _prompts(tok, 4, system)]
    common = next(i for i in range(len(prompts[0])) if len({p[i] for p in prompts}) > 1)
    assert common > 20
    identical = sum(len(p) for p in prompts)  # each prompt's second row
    assert new_stats["shared_prefill_tokens"] == identical + 3 * common
    assert new_stats["prefill_tokens/initial"] + new_stats["shared_prefill_tokens"] == new_stats["new_tokens/initial"]


def test_appo_branches_start_from_their_parents_cache(tool_lm, tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    cfg = make_cfg(**{"rollout.n": 6, "rollout.initial_rollouts": 3, "rollout.max_response_length": 96,
                      "rollout.gen_batch_size": 5, "rollout.appo.fv_source": "none", "tools.call_limit": 3})
    prompts = _prompts(tok, 3)
    old_groups, old_m = sample_groups(HFEngine(tool_lm, tok, kv_reuse=False), python_tools, prompts, cfg)
    new_groups, new_m = sample_groups(HFEngine(tool_lm, tok), python_tools, prompts, cfg)
    for a, b in zip(old_groups, new_groups):
        _assert_same(a.inits, b.inits)
        _assert_same(a.branches, b.branches)
        assert [t.split_pos for t in a.branches] == [t.split_pos for t in b.branches]
    branches = [t for g in new_groups for t in g.branches]
    assert all(t.parent is not None for t in branches)
    assert any(t.split_pos + 1 < t.tool_log[-1]["start"] for t in branches if t.tool_log)  # a call after the split
    # A branch prefills its split token (the parent kept no logits) and its tool results, never its prefix.
    assert new_m["rollout/prefill_tokens/branch"] == len(branches)
    assert new_m["rollout/prefill_tokens/branch"] == new_m["rollout/new_tokens/branch"]
    assert old_m["rollout/prefill_tokens/branch"] > 10 * new_m["rollout/prefill_tokens/branch"]


def test_arpo_copies_share_their_parents_cache(tool_lm, tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    cfg = make_cfg(**{"rollout.strategy": "arpo", "algorithm.adv_estimator": "grpo", "rollout.n": 4,
                      "rollout.initial_rollouts": 2, "rollout.max_response_length": 128,
                      "rollout.arpo.branch_probability": 1.0, "tools.call_limit": 3})
    prompts = _prompts(tok, 3)
    old_groups, _ = sample_groups(HFEngine(tool_lm, tok, kv_reuse=False), python_tools, prompts, cfg)
    new_groups, new_m = sample_groups(HFEngine(tool_lm, tok), python_tools, prompts, cfg)
    for a, b in zip(old_groups, new_groups):
        _assert_same(a.rows, b.rows)
    assert sum(len(g.branches) for g in new_groups) >= 2
    assert new_m["rollout/prefill_tokens/branch"] == new_m["rollout/new_tokens/branch"]


def test_outputs_do_not_depend_on_how_long_tools_take(tool_lm, tiny_tokenizer):
    tok = tiny_tokenizer
    runs = []
    for seed, pause in ((0, 0.0), (1, 0.05)):
        with ToolRunner({"python": SlowEcho(seed, pause)}, max_workers=4) as tools:
            runs.append(run_tool_loop(HFEngine(tool_lm, tok), tools, _starts(tok, k=2), _settings(gen_batch_size=3)))
    assert sum(len(t.tool_log) for t in runs[0]) >= 4
    for other in runs[1:]:
        assert [t.token_ids for t in other] == [t.token_ids for t in runs[0]]
        assert [t.logprobs for t in other] == [t.logprobs for t in runs[0]]  # bit for bit: same batches


def test_finished_rows_free_their_cache_at_once(tool_lm, tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    loop = ToolLoop(HFEngine(tool_lm, tok), python_tools, _settings())
    rows = [loop.add(s) for s in _starts(tok, k=2, per=2)]
    while loop.active:
        loop.step()
        assert all(r.kv is None for r in rows if r.done)
        assert all(r.kv is not None for r in rows if not r.done)  # live rows keep theirs between rounds
    assert loop._kv_bytes == 0 and loop.stats["peak_kv_bytes"] > 0


def test_rows_holding_a_cache_stay_about_the_batch_however_many_rows_a_call_runs(tool_lm, tiny_tokenizer,
                                                                                 python_tools):
    # Rows back from a tool rejoin before rows yet to start. Served in arrival order, all 16 rows had started
    # (and held their caches) before the first one resumed: an evaluation chunk of hundreds held them all.
    tok = tiny_tokenizer
    stats = {}
    trajs = run_tool_loop(HFEngine(tool_lm, tok), python_tools, _starts(tok, k=8, per=2), _settings(gen_batch_size=2),
                          stats)
    assert sum(len(t.tool_log) >= 2 for t in trajs) >= 4  # rows went back and forth between batch and tool
    # the batch, plus the rows that left it for a tool in the steps they sit out
    assert stats["peak_open_rows"] <= 2 * (1 + REJOIN_AFTER_STEPS), stats["peak_open_rows"]


def test_progress_callback_fires_once_per_row_as_it_finishes(tool_lm, tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    seen = []
    starts = _starts(tok)
    trajs = run_tool_loop(HFEngine(tool_lm, tok), python_tools, starts, _settings(),
                          on_done=lambda t: seen.append((id(t), t.finish_reason)))
    assert sorted(i for i, _ in seen) == sorted(id(t) for t in trajs)
    assert all(reason is not None for _, reason in seen)
    assert [i for i, _ in seen] != [id(t) for t in trajs]  # reported in finishing order, not all at the end


def test_rows_added_from_on_done_join_the_running_batch(tool_lm, tiny_tokenizer, python_tools):
    """A row added while the loop runs (APPO adds a prompt's branches when its initial rows are done) is
    decoded with the rows still running, not after all of them. Rows forced to open with 110 of the 128
    budget tokens finish first: the one that is added late must still finish before the full-length rows."""
    tok = tiny_tokenizer
    opening = tok.encode("the quick brown fox " * 40, add_special_tokens=False)[:110]

    def short(seed):
        start = LoopStart.fresh(_prompts(tok, 1)[0].prompt_ids, seed=seed)
        start.trajectory.append(opening, generated=0)
        return start

    order, late = [], []
    loop = ToolLoop(HFEngine(tool_lm, tok), python_tools, _settings(gen_batch_size=8))

    def done(traj):
        order.append(id(traj))
        if not late:
            late.append(loop.add(short(99)))

    loop.on_done = done
    rows = [loop.add(s) for s in _starts(tok, k=2, per=2) + [short(98)]]
    loop.run()
    assert all(r.done for r in rows + late) and len(order) == len(rows) + 1
    assert len(rows[-1].traj) - 110 < 20 and order[0] == id(rows[-1].traj)
    assert order.index(id(late[0].traj)) < len(order) - 1  # before the last of the first rows
    (alone,) = run_tool_loop(HFEngine(tool_lm, tok), python_tools, [short(99)], _settings(gen_batch_size=8))
    assert alone.token_ids == late[0].traj.token_ids  # the same row as if run on its own


def test_joining_rows_of_very_different_lengths_prefill_in_groups(tiny_model, tiny_tokenizer):
    """A tool result of 90 tokens and three of 10 joining together: padding all four to 90 would compute
    360 slots for 120 tokens; they run as two forwards instead, with the samples of the re-prefill path."""
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 500) for _ in range(n)] for n in (90, 10, 11, 9)]
    engine = HFEngine(tiny_model, tiny_tokenizer, max_batch_size=8, seed=0)
    expected = engine.generate([GenRequest(p, 6, seed=i) for i, p in enumerate(prompts)])
    widths = []
    hook = tiny_model.register_forward_pre_hook(
        lambda m, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    session = engine.open_session()
    for i, p in enumerate(prompts):
        session.add(i, GenRequest(p, 6, seed=i))
    got = {}
    while len(session):
        for key, result, _ in session.step():
            got[key] = result
    hook.remove()
    prefill = [w for w in widths if w[1] > 1]
    assert len(prefill) == 2 and sum(r * n for r, n in prefill) == 90 + 3 * 11
    for i, res in enumerate(expected):
        assert got[i].token_ids == res.token_ids
        assert max(abs(a - b) for a, b in zip(got[i].logprobs, res.logprobs)) < ATOL


def test_padded_groups_cut_where_padding_costs_more_than_a_forward():
    assert padded_groups([90, 10, 11, 9], overhead=32) == [[0], [2, 1, 3]]
    assert padded_groups([50, 48, 47], overhead=32) == [[0, 1, 2]]
    assert padded_groups([5], overhead=32) == [[0]]
    many = padded_groups([1] * 5 + [300] * 2, overhead=32)
    assert sorted(map(sorted, many)) == [[0, 1, 2, 3, 4], [5, 6]]
