"""ARPO sampling (docs/reference-differences.md#s8-2): m initial rollouts, and entropy-triggered branches right
after tool results, until every prompt has n rows. Every row is trained (GRPO advantage over all n)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from appo.core.branching import arpo_branch_decision, arpo_step_entropy
from appo.rollout.tool_loop import KeptCaches, LoopRow, LoopStart, RolloutLoopSettings, ToolLoop
from appo.rollout.trajectory import RolloutGroup
from appo.seeding import derive_seed


def arpo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict,
                  draw: Callable[[], float] | None = None, first_group: int = 0,
                  on_done=None) -> list[RolloutGroup]:
    """ARPO: m initial rollouts per prompt, and entropy-triggered branches right after tool results.

    A rollout's initial entropy H_init is the step entropy of the first k = `rollout.arpo.entropy_tokens`
    tokens of its response. After each tool result, the row generates on; the step entropy H_now of the
    first k tokens it generates after that result decides, for up to beam_size−1 open slots of its prompt,
    whether to branch: clip(u − w·(H_now − H_init), 0, 1) <= branch_probability, so a rise in uncertainty
    after the tool's feedback makes branching likelier (the paper's rule). A branch copies the row up to
    the end of that tool result and samples on from there with its own seed. Branches inherit H_init and
    may branch again after their own later tool results; a copy's first round, which starts right after
    the copied result, takes no decision (the paper forks Z = beam_size−1 paths per node; before this was
    fixed a copy decided again at its parent's node, so one result could receive every open slot).

    Fixed relative to the reference (docs/reference-differences.md#b20): H_init is each rollout's own,
    recorded afresh every call (the reference kept it across training steps); a prompt whose rows have
    all ended with slots still open gets all of its missing rows as fresh rollouts at once. Copies keep
    their prefix's generated flags, as in ARPO, where every row is trained. Each prompt draws its uniforms
    from its own seeded stream (unless `draw` is given), so a slice of prompts draws as the whole batch would.
    """
    r, a = cfg.rollout, cfg.rollout.arpo
    n, m, seed = r.n, r.initial_rollouts, r.seed
    draws = [draw or random.Random(derive_seed(seed, step, "arpo", first_group + g)).random
             for g in range(len(prompts))]
    vocab = len(engine.tokenizer)
    finished = KeptCaches()  # KV caches of rows that ended this round: a branch may still fork from them
    loop = ToolLoop(engine, tools, RolloutLoopSettings.from_config(r, cfg.tools, a.entropy_topk), stats,
                    keep=finished, on_done=on_done)
    rows: list[list[LoopRow]] = [[loop.add(LoopStart.fresh(p.prompt_ids, group=g, keep_top_logprobs=True, row=p,
                                                           seed=derive_seed(seed, step, first_group + g, "init", j)))
                                  for j in range(m)] for g, p in enumerate(prompts)]
    h_init: dict[int, float] = {}
    root: dict[int, int] = {id(row): j for group in rows for j, row in enumerate(group)}
    forked_at: dict[int, int] = {}  # a copy's start: the node it was forked at, where it takes no decision
    forks: dict[int, int] = {}
    refills = decisions = 0
    while loop.active:
        generated = {id(row) for row in loop.step()}
        for g, group in enumerate(rows):
            open_slots = n - len(group)
            for row in [x for x in group if id(x) in generated]:
                h = _step_entropy(row, vocab, a.entropy_tokens)
                if id(row) not in h_init:  # the response's first tokens: this rollout's baseline
                    h_init[id(row)] = h
                    continue
                if not _after_tool_result(row) or forked_at.get(id(row)) == row.round_start:
                    continue
                for _ in range(a.beam_size - 1):
                    if open_slots <= 0:
                        break
                    decisions += 1
                    branch, _prob = arpo_branch_decision(draws[g](), h, h_init[id(row)], a.entropy_weight,
                                                         a.branch_probability)
                    if not branch:
                        continue
                    forks[id(row)] = forks.get(id(row), 0) + 1
                    copy = row.traj.prefix(row.round_start)
                    copy.kind, copy.parent, copy.split_pos = "branch", root[id(row)], row.round_start - 1
                    fork_seed = None if row.seed is None else derive_seed(row.seed, "fork", forks[id(row)])
                    kv = row.kv if row.kv is not None else finished.get(row.traj)  # shared, never copied
                    branch_row = loop.add(LoopStart(copy, fork_seed, kv=kv, parent=row.traj))
                    h_init[id(branch_row)] = h_init[id(row)]
                    forked_at[id(branch_row)] = row.round_start
                    root[id(branch_row)] = root[id(row)]
                    group.append(branch_row)
                    open_slots -= 1
            if open_slots > 0 and all(x.done for x in group):
                for j in range(open_slots):
                    start = LoopStart.fresh(prompts[g].prompt_ids, group=g, meta={"refill": True},
                                            seed=derive_seed(seed, step, first_group + g, "refill", j),
                                            keep_top_logprobs=True, row=prompts[g])
                    row = loop.add(start)
                    root[id(row)] = sum(x.traj.kind == "init" for x in group)
                    group.append(row)
                refills += open_slots
        finished.clear()
    loop.release()
    stats["refill_rows"] = refills
    stats["arpo_decisions"] = decisions
    groups = []
    for p, group in zip(prompts, rows):
        trajs = [x.traj for x in group]
        groups.append(RolloutGroup(p, inits=[t for t in trajs if t.kind == "init"],
                                   branches=[t for t in trajs if t.kind == "branch"]))
    return groups


def _after_tool_result(row: LoopRow) -> bool:
    """Whether the round `row` just generated began right after a tool result (the step also runs the call
    the round ended with, so that result may already follow it)."""
    return any(e["end"] == row.round_start for e in row.traj.tool_log)


def _step_entropy(row: LoopRow, vocab: int, max_tokens: int) -> float:
    """ARPO's step entropy of the round `row` just generated, from its first `max_tokens` tokens' top-k."""
    tops = [d for d, gen in zip(row.traj.top_logprobs[row.round_start:], row.traj.generated[row.round_start:])
            if gen][:max_tokens]
    k = max((len(d) for d in tops), default=0)
    if k == 0:
        return 0.0
    table = torch.full((len(tops), k), -math.inf)
    for i, entry in enumerate(tops):
        table[i, :len(entry)] = torch.tensor(list(entry.values()))
    return arpo_step_entropy(table, vocab, max_tokens)
