"""One step's rows for a batch of prompts, sampled by the algorithm `rollout.strategy` names (implied by
`algorithm.name`): `appo.rollout.grpo`, `appo.rollout.arpo` or `appo.rollout.appo`. Every algorithm
returns exactly n rows per prompt."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from appo.rollout.appo import ScoreInits, appo_rollouts
from appo.rollout.arpo import arpo_rollouts
from appo.rollout.engine import Engine
from appo.rollout.grpo import grpo_rollouts
from appo.rollout.trajectory import RolloutGroup


def sample_groups(engine: Engine, tools, prompts: Sequence, cfg, *, step: int = 0,
                  score_inits: ScoreInits | None = None, draw: Callable[[], float] | None = None,
                  first_group: int = 0, on_done: Callable | None = None) -> tuple[list[RolloutGroup], dict]:
    """Sample `cfg.rollout.n` rows for each prompt (objects with `prompt_ids`) with `cfg.rollout.strategy`.

    `score_inits` rescores APPO's initial rows (future value, exact entropies: `appo.rollout.appo.init_scorer`); `draw` replaces ARPO's seeded
    uniform draws (tests). `first_group` is the step-wide index of `prompts[0]`: seeds derive from the
    step-wide group index, so a rank sampling a slice of the step's prompts draws exactly the rows one
    process would. `on_done(trajectory)` is called as each row finishes (progress bars). Returns the
    groups and metrics (counts, and seconds spent generating and in tools).
    """
    stats: dict = {}
    t0 = time.perf_counter()
    strategy = cfg.rollout.strategy
    if strategy == "grpo":
        groups = grpo_rollouts(engine, tools, prompts, cfg, step, stats, first_group, on_done)
    elif strategy == "arpo":
        groups = arpo_rollouts(engine, tools, prompts, cfg, step, stats, draw, first_group, on_done)
    elif strategy == "appo":
        groups = appo_rollouts(engine, tools, prompts, cfg, step, stats, score_inits, first_group, on_done)
    else:
        raise ValueError(f"rollout.strategy={strategy!r} is not valid; choose one of: grpo, arpo, appo")
    rows = [t for g in groups for t in g.rows]
    stats["seconds"] = time.perf_counter() - t0
    stats["init_rows"] = sum(len(g.inits) for g in groups)
    stats["branch_rows"] = sum(len(g.branches) for g in groups)
    stats["tool_calls_per_row"] = sum(t.tool_calls for t in rows) / len(rows) if rows else 0.0
    stats["response_length"] = sum(len(t) for t in rows) / len(rows) if rows else 0.0
    return groups, {f"rollout/{k}": v for k, v in stats.items()}
