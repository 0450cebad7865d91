"""How a step's rows are sampled: `grpo` (n independent rollouts per prompt), `arpo` (entropy-triggered
copies at tool rounds, appo_spec.md §8.2) and `appo` (m initial rollouts, then n−m continuations from the
best-scored token prefixes, §4). Every strategy returns exactly n rows per prompt."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence

import torch

from appo.core.advantage import arpo_branch_decision, arpo_step_entropy
from appo.core.branching import branching_scores, entropy_from_topk, select_branch_points
from appo.rollout.engine import Engine, derive_seed
from appo.rollout.tool_loop import (
    KeptCaches,
    LoopRow,
    LoopStart,
    RolloutLoopSettings,
    ToolLoop,
    run_tool_loop,
)
from appo.rollout.trajectory import RolloutGroup, Trajectory

log = logging.getLogger(__name__)

# Per response token of each trajectory: log π_current(a) − log π_behind(a), the log-ratio inside APPO's
# future value (see `rollout.appo.fv_source`); None when the source has nothing to compare yet (e.g. no
# previous policy at the first step), which ranks by entropy alone.
Scorer = Callable[[list[Trajectory]], list[list[float]] | None]


def sample_groups(engine: Engine, tools, prompts: Sequence, cfg, *, step: int = 0, scorer: Scorer | None = None,
                  draw: Callable[[], float] | None = None, first_group: int = 0) -> tuple[list[RolloutGroup], dict]:
    """Sample `cfg.rollout.n` rows for each prompt (objects with `prompt_ids`) with `cfg.rollout.strategy`.

    `scorer` feeds APPO's future value (see `rollout.appo.fv_source`); `draw` replaces ARPO's seeded
    uniform draws (tests). `first_group` is the step-wide index of `prompts[0]`: seeds derive from the
    step-wide group index, so a rank sampling a slice of the step's prompts draws exactly the rows one
    process would. Returns the groups and metrics (counts, and seconds spent generating and in tools).
    """
    stats: dict = {}
    t0 = time.perf_counter()
    strategy = cfg.rollout.strategy
    if strategy == "grpo":
        groups = grpo_rollouts(engine, tools, prompts, cfg, step, stats, first_group)
    elif strategy == "arpo":
        groups = arpo_rollouts(engine, tools, prompts, cfg, step, stats, draw, first_group)
    elif strategy == "appo":
        groups = appo_rollouts(engine, tools, prompts, cfg, step, stats, scorer, first_group)
    else:
        raise ValueError(f"rollout.strategy={strategy!r} is not valid; choose one of: grpo, arpo, appo")
    stats["seconds"] = time.perf_counter() - t0
    stats["init_rows"] = sum(len(g.inits) for g in groups)
    stats["branch_rows"] = sum(len(g.branches) for g in groups)
    stats["tool_calls_per_row"] = _mean([t.tool_calls for g in groups for t in g.rows])
    stats["response_length"] = _mean([len(t) for g in groups for t in g.rows])
    return groups, {f"rollout/{k}": v for k, v in stats.items()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _fresh(prompt, group: int, seed: int, kind: str = "init", meta: dict | None = None,
           top_logprobs: bool = False) -> LoopStart:
    return LoopStart.fresh(prompt.prompt_ids, group=group, seed=seed, kind=kind, meta=meta,
                           keep_top_logprobs=top_logprobs)


# ------------------------------------------------------------------------------------------ grpo


def grpo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict, first_group: int = 0) -> list[RolloutGroup]:
    n, seed = cfg.rollout.n, cfg.rollout.seed
    settings = RolloutLoopSettings.from_config(cfg.rollout, cfg.tools)
    starts = [_fresh(p, g, derive_seed(seed, step, first_group + g, "init", j)) for g, p in enumerate(prompts) for j in range(n)]
    trajs = run_tool_loop(engine, tools, starts, settings, stats)
    return [RolloutGroup(p, inits=trajs[g * n:(g + 1) * n]) for g, p in enumerate(prompts)]


# ------------------------------------------------------------------------------------------ appo


def appo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict,
                  scorer: Scorer | None = None, first_group: int = 0) -> list[RolloutGroup]:
    r, a = cfg.rollout, cfg.rollout.appo
    m, budget, seed = r.initial_rollouts, r.n - r.initial_rollouts, r.seed
    topk = a.entropy_topk if a.entropy_source == "topk" else 0
    t0 = time.perf_counter()
    starts = [_fresh(p, g, derive_seed(seed, step, first_group + g, "init", j), top_logprobs=topk > 0)
              for g, p in enumerate(prompts) for j in range(m)]
    kept = KeptCaches() if budget > 0 else None  # the initial rollouts' caches, for the branches to start from
    inits = run_tool_loop(engine, tools, starts, RolloutLoopSettings.from_config(r, cfg.tools, topk), stats,
                          keep=kept)
    groups = [RolloutGroup(p, inits=inits[g * m:(g + 1) * m]) for g, p in enumerate(prompts)]
    stats["init_seconds"] = time.perf_counter() - t0
    if budget <= 0:
        return groups

    t0 = time.perf_counter()
    stops = [f"</{name}>" for name in (tools.names if tools is not None else [])]
    eos_ids = set(getattr(engine, "eos_ids", None) or {engine.tokenizer.eos_token_id})
    picked = choose_branch_points(inits, engine.tokenizer, stops, eos_ids, r.max_response_length, budget, a,
                                  scorer, stats)
    starts, owners = [], []
    for g, group in enumerate(groups):
        points = picked.get(g, [])
        for j in range(budget):
            branch_seed = derive_seed(seed, step, first_group + g, "branch", j)
            if j < len(points):
                row, pos, score = points[j]
                prefix = inits[row].prefix(pos + 1)
                prefix.kind, prefix.parent, prefix.split_pos, prefix.branch_score = "branch", row - g * m, pos, score
                starts.append(LoopStart(prefix, branch_seed, kv=kept.get(inits[row])))
            else:  # no candidate at all in this prompt's rollouts (e.g. all empty): fresh samples instead
                starts.append(_fresh(group.prompt, g, branch_seed, kind="branch", meta={"refill": True}))
                stats["refill_rows"] = stats.get("refill_rows", 0) + 1
            owners.append(g)
    stats["select_seconds"] = time.perf_counter() - t0
    kept.clear()  # caches no branch starts from are freed now; the starts hold the others until they join
    t0 = time.perf_counter()
    branches = run_tool_loop(engine, tools, starts, RolloutLoopSettings.from_config(r, cfg.tools), stats)
    for g, traj in zip(owners, branches):
        groups[g].branches.append(traj)
    stats["branch_seconds"] = time.perf_counter() - t0
    return groups


def choose_branch_points(inits: list[Trajectory], tokenizer, stops: list[str], eos_ids: set[int], max_len: int,
                         budget: int, appo_cfg, scorer: Scorer | None, stats: dict) -> dict[int, list]:
    """Branching scores over the generated tokens of every initial rollout, then `budget` points per
    prompt (`core.branching.select_branch_points`). Returns {group: [(row, pos, score), ...]} with rows
    indexing `inits`; a group missing from it (or short) had no candidate at all."""
    width = max((len(t) for t in inits), default=0)
    if width == 0:
        return {}
    valid = _padded([t.generated for t in inits], width, 0).bool()
    entropy = _entropies(inits, appo_cfg, width)
    candidates = candidate_mask(inits, tokenizer, stops, eos_ids, max_len, appo_cfg.exclude, width) & valid

    ratios = None
    if appo_cfg.fv_source != "none":
        if scorer is None:
            log.warning("rollout.appo.fv_source=%s needs a scorer for the future value but none was given; "
                        "ranking by entropy only", appo_cfg.fv_source)
        else:
            ratios = scorer(inits)
    use_fv = ratios is not None
    stats["fv_used"] = int(use_fv)
    if use_fv:
        log_ratio = torch.where(valid, _padded(ratios, width, 0.0), 0.0)
    else:
        log_ratio = torch.zeros(len(inits), width)
    ez, fz, score = branching_scores(entropy, log_ratio, valid, appo_cfg.fv_gamma, appo_cfg.fv_clip)

    group_ids = [t.group for t in inits]
    rows_of: dict[int, list[int]] = {}
    for row, g in enumerate(group_ids):
        rows_of.setdefault(g, []).append(row)
    for rows in rows_of.values():
        # A constant future value (fv_source=none, or no policy change yet) makes Z(FV) zero everywhere
        # and every score zero: rank by entropy alone instead, with "strict" meaning ez > 0.
        if not use_fv or bool((fz[rows].abs() < 1e-12).all()):
            score[rows] = ez[rows]
            fz[rows] = valid[rows].float()
            if use_fv:
                stats["fv_zero_variance_groups"] = stats.get("fv_zero_variance_groups", 0) + 1

    if appo_cfg.selection == "score":  # every candidate counts as strict: plain ranking by score
        points = select_branch_points(score, torch.ones_like(ez), torch.ones_like(fz), candidates, group_ids, budget)
    else:
        points = select_branch_points(score, ez, fz, candidates, group_ids, budget)
    picked: dict[int, list] = {}
    seen: set[tuple[int, int]] = set()
    for row, pos, s in points:
        kind = ("repeated" if (row, pos) in seen else
                "strict" if ez[row, pos] > 0 and fz[row, pos] > 0 and s > 0 else "fallback")
        stats[f"{kind}_points"] = stats.get(f"{kind}_points", 0) + 1
        seen.add((row, pos))
        picked.setdefault(group_ids[row], []).append((row, pos, s))
    stats["candidates"] = int(candidates.sum())
    return picked


def _padded(rows: list[list], width: int, fill) -> torch.Tensor:
    dtype = torch.float32 if isinstance(fill, float) else torch.long
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, values in enumerate(rows):
        if values:
            out[i, :len(values)] = torch.tensor(values, dtype=dtype)
    return out


def _entropies(inits: list[Trajectory], appo_cfg, width: int) -> torch.Tensor:
    if appo_cfg.entropy_source == "full":
        return _padded([t.entropies for t in inits], width, 0.0)
    out = torch.zeros(len(inits), width)
    for i, t in enumerate(inits):
        tops = t.top_logprobs or []
        k = max((len(d) for d in tops), default=0)
        if k == 0:
            continue
        table = torch.full((len(tops), k), float("-inf"))
        for pos, entry in enumerate(tops):
            if entry:
                table[pos, :len(entry)] = torch.tensor(list(entry.values()))
        out[i, :len(tops)] = entropy_from_topk(table)
    return out


def candidate_mask(trajs: list[Trajectory], tokenizer, stops: list[str], eos_ids: set[int], max_len: int,
                   exclude: str, width: int) -> torch.Tensor:
    """Positions that may become branch points (among generated tokens).

    Both modes drop whitespace-only tokens (the reference's filter) and points that leave no response
    budget for a continuation. 'fixed' also drops EOS, each response's final token, and tokens inside a
    tool's closing tag, where the stop string would straddle the split: the continuation would never
    see the whole tag and the call would be skipped (B8). The token that completes a closing tag stays a
    candidate: the continuation runs that call and samples what follows its result.
    """
    blank: dict[int, bool] = {}
    out = torch.zeros(len(trajs), width, dtype=torch.bool)
    for i, t in enumerate(trajs):
        excluded = _straddles(t, tokenizer, stops) if exclude == "fixed" else set()
        for pos, (tok, gen) in enumerate(zip(t.token_ids, t.generated)):
            if not gen or pos + 1 >= max_len or pos in excluded:
                continue
            if tok not in blank:
                blank[tok] = not tokenizer.decode([tok], skip_special_tokens=False).strip()
            if blank[tok]:
                continue
            if exclude == "fixed" and (tok in eos_ids or pos == len(t) - 1):
                continue
            out[i, pos] = True
    return out


def _straddles(t: Trajectory, tokenizer, stops: list[str]) -> set[int]:
    """Positions inside a closing tag that ends a turn, other than the tag's last token."""
    if not stops:
        return set()
    reach = max(len(s.encode("utf-8")) for s in stops) + 1
    out: set[int] = set()
    n = len(t)
    for end in range(n):
        if not t.generated[end] or (end + 1 < n and t.generated[end + 1]):
            continue  # not the last generated token of a turn
        for k in range(end, max(end - reach, -1), -1):
            if not t.generated[k]:
                break
            if any(s in tokenizer.decode(t.token_ids[k:end + 1], skip_special_tokens=False) for s in stops):
                out.update(range(k, end))
                break
    return out


# ------------------------------------------------------------------------------------------ arpo


def arpo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict,
                  draw: Callable[[], float] | None = None, first_group: int = 0) -> list[RolloutGroup]:
    """ARPO: m initial rollouts; after each tool round, every live row of a prompt with open slots may be
    copied (up to beam_size−1 times) when clip(u − w·(H_now − H_init), 0, 1) <= branch_probability.

    Fixed relative to the reference (B20): H_init is each rollout's own first-round entropy, recorded
    afresh every call (the reference kept it across training steps); a prompt whose rows have all ended
    with slots still open gets all of its missing rows as fresh rollouts at once (not one per round).
    Copies keep their prefix's generated flags, as in ARPO, where every row is trained. Each prompt draws
    its uniforms from its own seeded stream (unless `draw` is given), so a slice of prompts draws as the
    whole batch would.
    """
    r, a = cfg.rollout, cfg.rollout.arpo
    n, m, seed = r.n, r.initial_rollouts, r.seed
    draws = [draw or random.Random(derive_seed(seed, step, "arpo", first_group + g)).random
             for g in range(len(prompts))]
    vocab = len(engine.tokenizer)
    loop = ToolLoop(engine, tools, RolloutLoopSettings.from_config(r, cfg.tools, a.entropy_topk), stats)
    rows: list[list[LoopRow]] = [[loop.add(_fresh(p, g, derive_seed(seed, step, first_group + g, "init", j),
                                                  top_logprobs=True))
                                  for j in range(m)] for g, p in enumerate(prompts)]
    h_init: dict[int, float] = {}
    root: dict[int, int] = {id(row): j for group in rows for j, row in enumerate(group)}
    refills = 0
    while loop.active:
        h_now = {id(row): _step_entropy(row, vocab, a.entropy_tokens) for row in loop.step()}
        for key, h in h_now.items():
            h_init.setdefault(key, h)
        for g, group in enumerate(rows):
            open_slots = n - len(group)
            for row in [x for x in group if not x.done and id(x) in h_now]:
                for _ in range(a.beam_size - 1):
                    if open_slots <= 0:
                        break
                    branch, _prob = arpo_branch_decision(draws[g](), h_now[id(row)], h_init[id(row)], a.entropy_weight,
                                                         a.branch_probability)
                    if not branch:
                        continue
                    copy = loop.fork(row, kind="branch", parent=root[id(row)], split_pos=len(row.traj) - 1)
                    h_init[id(copy)] = h_init[id(row)]
                    root[id(copy)] = root[id(row)]
                    group.append(copy)
                    open_slots -= 1
            if open_slots > 0 and all(x.done for x in group):
                for j in range(open_slots):
                    start = _fresh(prompts[g], g, derive_seed(seed, step, first_group + g, "refill", j),
                                   meta={"refill": True}, top_logprobs=True)
                    row = loop.add(start)
                    root[id(row)] = sum(x.traj.kind == "init" for x in group)
                    group.append(row)
                refills += open_slots
    stats["refill_rows"] = refills
    groups = []
    for p, group in zip(prompts, rows):
        trajs = [x.traj for x in group]
        groups.append(RolloutGroup(p, inits=[t for t in trajs if t.kind == "init"],
                                   branches=[t for t in trajs if t.kind == "branch"]))
    return groups


def _step_entropy(row: LoopRow, vocab: int, max_tokens: int) -> float:
    """ARPO's entropy of the round `row` just generated, from the first `max_tokens` tokens' top-k."""
    tops = [d for d, gen in zip(row.traj.top_logprobs[row.round_start:], row.traj.generated[row.round_start:])
            if gen][:max_tokens]
    k = max((len(d) for d in tops), default=0)
    if k == 0:
        return 0.0
    table = torch.full((len(tops), k), -math.inf)
    for i, entry in enumerate(tops):
        table[i, :len(entry)] = torch.tensor(list(entry.values()))
    return arpo_step_entropy(table, vocab, max_tokens)
