"""Sampling (grpo, arpo, appo): exactly n rows per prompt whatever happens, branches from token prefixes that
may call tools, candidate filters (docs/reference-differences.md#b8), FV fallbacks, determinism, and ARPO's
rule on fixed draws."""

from __future__ import annotations

import math
import types

import pytest
import torch

from appo.rollout.appo import InitScores, candidate_mask, choose_branch_points, init_scorer
from appo.rollout.hf import HFEngine
from appo.rollout.sampling import sample_groups
from appo.rollout.teacher_forcing import teacher_forced_scores
from appo.rollout.trajectory import Trajectory

from .conftest import ScriptedEngine, make_cfg

ANSWER = "<answer>\\boxed{3}</answer><|im_end|>"


def _prompts(tok, k=2):
    out = []
    for i in range(k):
        chat = tok.apply_chat_template([{"role": "user", "content": f"Calculate {i} + 3."}],
                                       add_generation_prompt=True, tokenize=False)
        out.append(types.SimpleNamespace(prompt_ids=tok.encode(chat, add_special_tokens=False), index=i))
    return out


def _response(text):
    return text.split("<|im_start|>assistant\n")[-1]


def _no_tool_then_tool(text, req):
    """Initial rollouts answer without tools; a continuation from any prefix calls python, then answers."""
    resp = _response(text)
    if not resp:
        return "<think>a b c d e</think><answer>1</answer><|im_end|>"
    return "<python>print(3)</python>" if "<result>" not in resp else ANSWER


def _cfg(**kw):
    base = {"rollout.n": 4, "rollout.initial_rollouts": 2, "rollout.max_response_length": 64,
            "rollout.appo.fv_source": "none", "tools.call_limit": 2}
    return make_cfg(**{**base, **kw})


def _mismatch(model):
    """fv_source=train_infer_mismatch: a teacher-forced recompute against the sampler's own log-probs."""
    return init_scorer("train_infer_mismatch", lambda trajs, ent: teacher_forced_scores(model, trajs, with_entropy=ent),
                       lambda trajs: None)


def _check_rows(groups, n):
    assert all(len(g.rows) == n for g in groups)
    for g, group in enumerate(groups):
        assert all(t.group == g for t in group.rows)


def test_grpo_samples_n_independent_rollouts(tiny_tokenizer, python_tools):
    engine = ScriptedEngine(tiny_tokenizer, _no_tool_then_tool)
    cfg = _cfg(**{"algorithm.name": "grpo"})
    groups, metrics = sample_groups(engine, python_tools, _prompts(tiny_tokenizer, 3), cfg)
    _check_rows(groups, 4)
    assert all(not g.branches for g in groups) and metrics["rollout/init_rows"] == 12
    assert len({req.seed for req in engine.calls}) == 12


def test_appo_branches_continue_token_prefixes_and_call_tools(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, _no_tool_then_tool)
    groups, metrics = sample_groups(engine, python_tools, _prompts(tok), _cfg())
    _check_rows(groups, 4)
    for group in groups:
        assert [t.kind for t in group.inits] == ["init"] * 2 and [t.kind for t in group.branches] == ["branch"] * 2
        for b in group.branches:
            parent = group.inits[b.parent]
            cut = b.split_pos + 1
            assert b.token_ids[:cut] == parent.token_ids[:cut]
            assert b.logprobs[:cut] == parent.logprobs[:cut] and b.generated[:cut] == parent.generated[:cut]
            assert b.tool_calls == 1 and b.tool_log[0]["payload"] == "print(3)" and b.tool_log[0]["ok"]
            assert b.tool_log[0]["start"] > b.split_pos and b.finish_reason == "answer"
            assert tok.decode([parent.token_ids[b.split_pos]]).strip()  # never a whitespace-only token
            assert b.split_pos < len(parent) - 1 and parent.token_ids[b.split_pos] != tok.eos_token_id
    assert metrics["rollout/fv_used"] == 0 and metrics["rollout/branch_rows"] == 4
    assert metrics["rollout/strict_points"] == 4 and metrics["rollout/generate_seconds"] > 0
    assert metrics["rollout/tool_calls"] == 4 and "rollout/branch_seconds" in metrics


@pytest.mark.parametrize("init_text", ["<|im_end|>", "  \n \n<|im_end|>"])
def test_no_candidates_refills_with_fresh_rollouts(tiny_tokenizer, python_tools, init_text):
    """Empty or whitespace-only initial rollouts have no branch point: the prompt still gets n rows (B7)."""
    tok = tiny_tokenizer

    # the first engine call holds the 4 initial rollouts; later calls are the refills
    engine = ScriptedEngine(tok, lambda text, req: init_text if len(engine.calls) <= 4 else ANSWER)
    groups, metrics = sample_groups(engine, python_tools, _prompts(tok), _cfg())
    _check_rows(groups, 4)
    assert metrics["rollout/refill_rows"] == 4
    for group in groups:
        assert all(b.parent is None and b.split_pos is None and b.meta["refill"] for b in group.branches)
        assert all(b.response_text(tok) == "<answer>\\boxed{3}</answer>" for b in group.branches)


def test_budget_beyond_candidates_repeats_points_cyclically(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, lambda text, req: "ab<|im_end|>" if not _response(text) else ANSWER)
    cfg = _cfg(**{"rollout.n": 9, "rollout.initial_rollouts": 1})
    groups, metrics = sample_groups(engine, python_tools, _prompts(tok, 1), cfg)
    _check_rows(groups, 9)
    (init,) = groups[0].inits
    candidates = [p for p in range(len(init) - 1) if init.token_ids[p] != tok.eos_token_id]
    assert 0 < len(candidates) < 8
    splits = [b.split_pos for b in groups[0].branches]
    assert set(splits) == set(candidates)
    assert metrics["rollout/repeated_points"] == 8 - len(candidates)
    assert splits[len(candidates):] == splits[:8 - len(candidates)]


def test_candidate_filter_excludes_split_closing_tags_eos_and_final_token(tiny_tokenizer, python_tools):
    """The tiny tokenizer writes `print(1)</python>` ending in ')</', 'python', '>': splitting after ')</'
    or 'python' would hide the stop string from the continuation (B8). The tag's last token stays a
    candidate."""
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, lambda text, req: "<python>print(1)</python>" if "<result>" not in text else ANSWER)
    cfg = _cfg(**{"rollout.n": 2, "rollout.initial_rollouts": 2})
    (group,), _ = sample_groups(engine, python_tools, _prompts(tok, 1), cfg)
    traj = group.inits[0]
    pieces = [tok.decode([t]) for t in traj.token_ids]
    end = traj.tool_log[0]["start"]  # the result starts right after the closing tag
    assert pieces[end - 3:end] == [")</", "python", ">"]
    stops, eos = ["</python>", "</search>"], {tok.eos_token_id}
    fixed = candidate_mask([traj], tok, stops, eos, 64, "fixed", len(traj))[0]
    ref = candidate_mask([traj], tok, stops, eos, 64, "reference", len(traj))[0]
    assert fixed[end - 3:end].tolist() == [False, False, True] and ref[end - 3:end].tolist() == [True] * 3
    assert not fixed[traj.tool_log[0]["start"]:traj.tool_log[0]["end"]].any()  # tool-result tokens
    assert not fixed[-1] and ref[-1]  # the EOS (also the final token) only in reference mode
    assert not candidate_mask([traj], tok, stops, eos, len(traj) - 2, "reference", len(traj))[0][-3:].any()


def _with_scorer(tok, python_tools, scorer, **kw):
    engine = ScriptedEngine(tok, _no_tool_then_tool)
    cfg = _cfg(**{"rollout.appo.fv_source": "stale_policy", **kw})
    return sample_groups(engine, python_tools, _prompts(tok), cfg, score_inits=scorer)


def test_future_value_from_the_scorer_and_its_fallbacks(tiny_tokenizer, python_tools):
    tok = tiny_tokenizer
    seen = []

    def drifted(trajs, need_entropy):
        seen.extend(trajs)
        assert not need_entropy  # the scripted engine's entropies count as exact
        return InitScores([[0.05 * ((i * 7) % 5 - 2) for i in range(len(t))] for t in trajs])

    groups, metrics = _with_scorer(tok, python_tools, drifted)
    assert metrics["rollout/fv_used"] == 1 and "rollout/fv_zero_variance_groups" not in metrics
    assert all(t.kind == "init" for t in seen) and len(seen) == 4
    _check_rows(groups, 4)

    _, metrics = _with_scorer(tok, python_tools, lambda trajs, _: InitScores([[0.0] * len(t) for t in trajs]))
    assert metrics["rollout/fv_used"] == 1 and metrics["rollout/fv_zero_variance_groups"] == 2

    # No previous policy yet (first step), and no scorer at all: entropy alone.
    for scorer in (lambda trajs, _: InitScores(None), None):
        groups, metrics = _with_scorer(tok, python_tools, scorer)
        assert metrics["rollout/fv_used"] == 0
        _check_rows(groups, 4)


class _TopKEntropyEngine(ScriptedEngine):
    exact_entropy = False  # like vLLM: its entropies are top-k truncated


def test_engines_with_truncated_entropies_get_exact_ones_from_the_rescoring_forward(tiny_tokenizer, python_tools):
    """With entropy_source=full and an engine whose entropies are top-k (vLLM), the branching ranks by the
    entropies the rescoring forward returns; an engine with exact entropies is never asked for them."""
    tok = tiny_tokenizer
    asked = []

    def rescore(trajs, need_entropy):
        asked.append(need_entropy)
        # exact entropies that put the single highest value at position 3 of initial row 0
        ents = [[5.0 if (i == 0 and pos == 3) else 0.1 for pos in range(len(t))] for i, t in enumerate(trajs)]
        return InitScores(None, ents if need_entropy else None)

    cfg = _cfg(**{"rollout.appo.fv_source": "stale_policy", "rollout.n": 3, "rollout.initial_rollouts": 2})
    (group,), _ = sample_groups(_TopKEntropyEngine(tok, _no_tool_then_tool), python_tools, _prompts(tok, 1), cfg,
                                score_inits=rescore)
    assert asked == [True]
    (branch,) = group.branches
    assert (branch.parent, branch.split_pos) == (0, 3)
    (group,), _ = sample_groups(ScriptedEngine(tok, _no_tool_then_tool), python_tools, _prompts(tok, 1), cfg,
                                score_inits=rescore)
    assert asked == [True, False]
    assert group.branches[0].split_pos != 3 or group.branches[0].parent != 0


def test_topk_entropy_source_requests_top_logprobs_for_initial_rollouts_only(tiny_tokenizer, python_tools):
    engine = ScriptedEngine(tiny_tokenizer, _no_tool_then_tool)
    cfg = _cfg(**{"rollout.appo.entropy_source": "topk", "rollout.appo.entropy_topk": 5})
    groups, _ = sample_groups(engine, python_tools, _prompts(tiny_tokenizer), cfg)
    assert {req.logprobs for req in engine.calls[:4]} == {5} and {req.logprobs for req in engine.calls[4:]} == {0}
    _check_rows(groups, 4)
    assert all(len(t.top_logprobs) == len(t) for g in groups for t in g.rows)


def test_appo_with_the_real_engine_is_reproducible(tiny_model, tiny_tokenizer, python_tools):
    engine = HFEngine(tiny_model, tiny_tokenizer)
    cfg = _cfg(**{"rollout.max_response_length": 12, "rollout.appo.fv_source": "train_infer_mismatch",
                  "rollout.seed": 5})
    prompts = _prompts(tiny_tokenizer)
    runs = [sample_groups(engine, python_tools, prompts, cfg, step=3, score_inits=_mismatch(tiny_model))[0]
            for _ in range(2)]
    flat = [[(t.token_ids, t.split_pos, t.parent) for g in groups for t in g.rows] for groups in runs]
    assert flat[0] == flat[1]
    _check_rows(runs[0], 4)
    other = sample_groups(engine, python_tools, prompts, cfg, step=4, score_inits=_mismatch(tiny_model))[0]
    assert [t.token_ids for g in other for t in g.rows] != [t[0] for t in flat[0]]


def test_a_prompts_branches_run_while_other_prompts_initial_rows_still_run(tiny_tokenizer, python_tools):
    """Prompt 0's initial rows answer at once, prompt 1's call python three times first: prompt 0's
    branches must not wait for them (the batch would otherwise drain to prompt 1's rows alone)."""
    tok = tiny_tokenizer

    def script(text, req):
        resp = _response(text)
        if "Calculate 1 + 3" in text and resp.count("<result>") < 3 and "<think>" not in resp:
            return "<python>print(4)</python>"
        return _no_tool_then_tool(text, req)

    finished = []
    cfg = _cfg(**{"tools.call_limit": 3})
    groups, _ = sample_groups(ScriptedEngine(tok, script), python_tools, _prompts(tok), cfg,
                              on_done=lambda t: finished.append((t.kind, t.group)))
    _check_rows(groups, 4)
    assert all(len(t.tool_log) == 3 for t in groups[1].inits)
    last_init_1 = max(i for i, f in enumerate(finished) if f == ("init", 1))
    assert finished.index(("branch", 0)) < last_init_1
    assert sorted(finished) == sorted((t.kind, t.group) for g in groups for t in g.rows)  # each row once


def test_branching_one_prompt_at_a_time_picks_what_all_at_once_picks(tiny_tokenizer):
    """Why the branches of a prompt may start before the other prompts' rows are done: its points do
    not depend on the other prompts' rows (scores are z-scored per row, points picked per prompt)."""
    tok = tiny_tokenizer
    g = torch.Generator().manual_seed(3)
    m, groups = 3, 3
    inits = []
    for i in range(m * groups):
        n = 10 + 3 * i
        t = Trajectory(prompt_ids=[1, 2], token_ids=torch.randint(30, len(tok), (n,), generator=g).tolist(),
                       generated=[1] * n, group=i // m)
        t.entropies = torch.rand(n, generator=g).tolist()
        inits.append(t)
    ratios = [torch.randn(len(t), generator=g).mul(0.1).tolist() for t in inits]
    cfg = _cfg(**{"rollout.appo.fv_source": "stale_policy"}).rollout.appo
    args = (tok, ["</python>"], {tok.eos_token_id}, 64, 2, cfg)
    together = choose_branch_points(inits, *args, InitScores(ratios), {})
    for k in range(groups):
        rows = slice(k * m, (k + 1) * m)
        alone = choose_branch_points(inits[rows], *args, InitScores(ratios[rows]), {})
        assert [(row + k * m, pos) for row, pos, _ in alone[k]] == [(row, pos) for row, pos, _ in together[k]]
        assert [s for _, _, s in alone[k]] == pytest.approx([s for _, _, s in together[k]], abs=1e-6)


# ------------------------------------------------------------------------------------------ arpo


def _arpo_cfg(**kw):
    base = {"algorithm.name": "arpo", "rollout.arpo.beam_size": 2,
            "rollout.arpo.entropy_weight": 0.2, "rollout.arpo.branch_probability": 0.5}
    return _cfg(**{**base, **kw})


def test_arpo_branches_on_fixed_draws(tiny_tokenizer, python_tools):
    """n=4, m=2, two tool calls per row. Round 1 (before any tool result) only records each row's initial
    entropy: no draw. Round 2 (after result 1) draws 0.9 (row 0: no) and 0.2 (row 1: branch from the end of
    its first result); round 3 (after result 2) has one open slot: 0.3 branches row 0 from the end of its
    second result, and then no slot is left, so no further draw happens."""
    tok = tiny_tokenizer
    call = "<python>print(3)</python>"
    engine = ScriptedEngine(tok, lambda text, req: ANSWER if _response(text).count("<result>") >= 2 else call)
    draws = iter([0.9, 0.2, 0.3])
    used = []

    def draw():
        used.append(next(draws))
        return used[-1]

    (group,), metrics = sample_groups(engine, python_tools, _prompts(tok, 1), _arpo_cfg(), draw=draw)
    assert used == [0.9, 0.2, 0.3]
    _check_rows([group], 4)
    assert [t.kind for t in group.inits] == ["init", "init"]
    first, second = group.branches
    assert (first.parent, second.parent) == (1, 0)
    assert first.split_pos == group.inits[1].tool_log[0]["end"] - 1
    assert second.split_pos == group.inits[0].tool_log[1]["end"] - 1
    assert metrics["rollout/arpo_decisions"] == 3
    assert first.token_ids[:first.split_pos + 1] == group.inits[1].token_ids[:first.split_pos + 1]
    assert all(t.tool_calls == 2 and t.finish_reason == "answer" for t in group.rows)
    assert first.generated[:first.split_pos + 1] == group.inits[1].generated[:first.split_pos + 1]
    assert metrics["rollout/refill_rows"] == 0
    assert {req.logprobs for req in engine.calls} == {10}


class _EntropyAfterResult(ScriptedEngine):
    """The scripted agent calls python once, then answers; the top-k log-probs of what it writes after the
    tool result are spread over `after` equally likely tokens (before it: one sure token)."""

    def __init__(self, tok, after: int):
        super().__init__(tok, lambda text, req: ANSWER if "<result>" in _response(text) else "<python>print(3)</python>")
        self.after = after

    def generate(self, requests):
        out = super().generate(requests)
        for req, res in zip(requests, out):
            k = self.after if "<result>" in self.tokenizer.decode(req.prompt_ids) else 1
            res.top_logprobs = [{t + i: -math.log(k) for i in range(k)} for t in res.token_ids]
        return out


def test_arpo_entropy_rising_after_a_tool_result_makes_branching_likelier(tiny_tokenizer, python_tools):
    """ARPO's decision after a tool result compares the entropy of the tokens generated after it with the
    rollout's initial entropy: with the same uniform draw, a rise branches, flat entropy does not."""
    def run(after):
        engine = _EntropyAfterResult(tiny_tokenizer, after)
        cfg = _arpo_cfg(**{"rollout.arpo.entropy_weight": 5.0, "rollout.arpo.entropy_topk": 8})
        (group,), metrics = sample_groups(engine, python_tools, _prompts(tiny_tokenizer, 1), cfg, draw=lambda: 0.6)
        return group, metrics

    flat, flat_metrics = run(after=1)
    rising, rising_metrics = run(after=8)
    # one decision per initial row, after its one tool result (none in the first round)
    assert flat_metrics["rollout/arpo_decisions"] == 2 and not flat.branches
    assert flat_metrics["rollout/refill_rows"] == 2
    assert len(rising.branches) == 2 and rising_metrics["rollout/refill_rows"] == 0
    for branch in rising.branches:
        parent = rising.inits[branch.parent]
        assert branch.split_pos == parent.tool_log[0]["end"] - 1  # forked right after the result
        assert branch.token_ids[:branch.split_pos + 1] == parent.token_ids[:branch.split_pos + 1]


def test_arpo_refills_a_prompt_whose_rows_all_ended(tiny_tokenizer, python_tools):
    engine = ScriptedEngine(tiny_tokenizer, lambda text, req: ANSWER)
    cfg = _arpo_cfg(**{"rollout.n": 3, "rollout.initial_rollouts": 1})
    groups, metrics = sample_groups(engine, python_tools, _prompts(tiny_tokenizer, 2), cfg,
                                    draw=lambda: pytest.fail("no live row, so no draw"))
    _check_rows(groups, 3)
    assert metrics["rollout/refill_rows"] == 4
    assert all(t.kind == "init" for g in groups for t in g.rows)
    assert [bool(t.meta.get("refill")) for t in groups[0].rows] == [False, True, True]


def test_trajectory_prefix_copies_are_independent():
    t = Trajectory(prompt_ids=[1], top_logprobs=[])
    t.append([5, 6, 7], generated=1, logprobs=[-1.0, -2.0, -3.0], entropies=[1.0, 2.0, 3.0],
             top_logprobs=[{5: -1.0}, {6: -2.0}, {7: -3.0}])
    p = t.prefix(2)
    p.append([9], generated=0)
    assert t.token_ids == [5, 6, 7] and p.token_ids == [5, 6, 9]
    assert p.top_logprobs == [{5: -1.0}, {6: -2.0}, {}] and p.logprobs == [-1.0, -2.0, 0.0]


@pytest.mark.parametrize("selection", ["strict_first", "score"])
def test_selection_mode_orders_points(tiny_tokenizer, selection):
    from appo.core.branching import branching_scores
    from appo.rollout.appo import choose_branch_points

    tok = tiny_tokenizer
    ids = tok.encode("one two three four five six seven eight", add_special_tokens=False)
    n = len(ids)
    entropy = [0.1 + abs(math.sin(i * 0.9)) for i in range(n)]
    ratio = [0.3 * math.sin(i * 1.7) for i in range(n)]
    traj = Trajectory(prompt_ids=[1, 2], token_ids=ids, generated=[1] * n, logprobs=[-1.0] * n,
                      entropies=entropy, kind="init", group=0)
    cfg = _cfg(**{"rollout.appo.fv_source": "stale_policy", "rollout.appo.selection": selection,
                  "rollout.appo.exclude": "reference", "rollout.appo.fv_clip": "null", "rollout.appo.fv_gamma": 1.0})
    picked = choose_branch_points([traj], tok, [], {-1}, 1000, 1, cfg.rollout.appo, InitScores([ratio]), {})
    ez, fz, score = branching_scores(torch.tensor([entropy]), torch.tensor([ratio]), torch.ones(1, n), 1.0, None)
    usable = [t for t in range(n) if tok.decode([ids[t]]).strip()]  # whitespace-only tokens never branch
    strict = [t for t in usable if ez[0, t] > 0 and fz[0, t] > 0]
    best_strict = max(strict, key=lambda t: float(score[0, t]))
    best_any = max(usable, key=lambda t: float(score[0, t]))
    assert best_strict != best_any  # the two modes really differ on this input
    assert picked[0][0][1] == (best_strict if selection == "strict_first" else best_any)


def test_arpo_branches_once_per_tool_result(tiny_tokenizer, python_tools):
    """ARPO forks Z = beam_size - 1 paths at a node. A copy starts right after the copied tool result; its
    first round must not take another decision at that same node (before the fix, with branching certain,
    one tool result received every open slot as a chain of copies of copies)."""
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, lambda text, req: ANSWER if "<result>" in _response(text) else
                            "<python>print(3)</python>")
    cfg = _arpo_cfg(**{"rollout.n": 6, "rollout.initial_rollouts": 1, "rollout.arpo.branch_probability": 1.0})
    (group,), metrics = sample_groups(engine, python_tools, _prompts(tok, 1), cfg, draw=lambda: 0.0)
    _check_rows([group], 6)
    forks: dict[tuple, int] = {}
    for b in group.branches:
        forks[(b.parent, b.split_pos)] = forks.get((b.parent, b.split_pos), 0) + 1
    assert forks == {(0, group.inits[0].tool_log[0]["end"] - 1): 1}  # one node, beam_size - 1 = 1 fork
    assert metrics["rollout/arpo_decisions"] == 1  # the copy ends without a tool result of its own
    assert metrics["rollout/refill_rows"] == 4
