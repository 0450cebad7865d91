"""ARPO sampling (docs/reference-differences.md#s8-2): m initial rollouts, and entropy-triggered copies of live rows after tool
rounds, until every prompt has n rows. Every row is trained (GRPO advantage over all n)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from appo.core.branching import arpo_branch_decision, arpo_step_entropy
from appo.rollout.tool_loop import LoopRow, LoopStart, RolloutLoopSettings, ToolLoop
from appo.rollout.trajectory import RolloutGroup
from appo.seeding import derive_seed


def arpo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict,
                  draw: Callable[[], float] | None = None, first_group: int = 0) -> list[RolloutGroup]:
    """ARPO: m initial rollouts; after each tool round, every live row of a prompt with open slots may be
    copied (up to beam_size−1 times) when clip(u − w·(H_now − H_init), 0, 1) <= branch_probability.

    Fixed relative to the reference (docs/reference-differences.md#b20): H_init is each rollout's own first-round entropy, recorded
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
    rows: list[list[LoopRow]] = [[loop.add(LoopStart.fresh(p.prompt_ids, group=g, keep_top_logprobs=True,
                                                           seed=derive_seed(seed, step, first_group + g, "init", j)))
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
                    start = LoopStart.fresh(prompts[g].prompt_ids, group=g, meta={"refill": True},
                                            seed=derive_seed(seed, step, first_group + g, "refill", j),
                                            keep_top_logprobs=True)
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
