"""GRPO sampling (docs/reference-differences.md#s8-1): n independent rollouts per prompt with the tool loop,
no branching. Every row is trained with the group-normalised outcome."""

from __future__ import annotations

from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop
from appo.rollout.trajectory import RolloutGroup
from appo.seeding import derive_seed


def grpo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict, first_group: int = 0,
                  on_done=None) -> list[RolloutGroup]:
    """n independent rollouts per prompt through the tool loop; the seed of row j of group g derives from
    (rollout.seed, step, step-wide group index, j)."""
    n, seed = cfg.rollout.n, cfg.rollout.seed
    settings = RolloutLoopSettings.from_config(cfg.rollout, cfg.tools)
    starts = [LoopStart.fresh(p.prompt_ids, group=g, seed=derive_seed(seed, step, first_group + g, "init", j), row=p)
              for g, p in enumerate(prompts) for j in range(n)]
    trajs = run_tool_loop(engine, tools, starts, settings, stats, on_done=on_done)
    return [RolloutGroup(p, inits=trajs[g * n:(g + 1) * n]) for g, p in enumerate(prompts)]
