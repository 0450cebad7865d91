"""Per-step row and optimizer-step arithmetic of an APPO run (the reference's batch bookkeeping)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepBudget:
    """Counts for one RL step; rows count initial rollouts and branches together, like verl's batch."""

    branch_points_per_prompt: int
    init_rows: int
    branch_rows: int
    rows_per_step: int
    rows_per_mini_batch: int
    rows_per_gpu_per_mini_batch: int
    optimizer_steps_per_step: int
    total_steps: int


def step_budget(prompts_per_step: int, n: int, initial_rollouts: int, mini_batch_prompts: int, num_gpus: int,
                dataset_prompts: int, epochs: int) -> StepBudget:
    """Budget of a run configured like the reference.

    ``n`` rows per prompt, of which ``initial_rollouts`` are initial and ``n − initial_rollouts`` branches;
    the mini-batch holds ``mini_batch_prompts · n`` rows split over ``num_gpus``; the data loader drops
    the last incomplete batch of every epoch.
    """
    if not 1 <= initial_rollouts <= n:
        raise ValueError(f"need 1 <= initial_rollouts <= n, got initial_rollouts={initial_rollouts}, n={n}")
    rows_per_step = prompts_per_step * n
    rows_per_mini_batch = mini_batch_prompts * n
    if rows_per_mini_batch % num_gpus:
        raise ValueError(f"{rows_per_mini_batch} mini-batch rows do not split evenly over {num_gpus} GPUs")
    return StepBudget(
        branch_points_per_prompt=n - initial_rollouts,
        init_rows=prompts_per_step * initial_rollouts,
        branch_rows=prompts_per_step * (n - initial_rollouts),
        rows_per_step=rows_per_step,
        rows_per_mini_batch=rows_per_mini_batch,
        rows_per_gpu_per_mini_batch=rows_per_mini_batch // num_gpus,
        optimizer_steps_per_step=-(-rows_per_step // rows_per_mini_batch),
        total_steps=(dataset_prompts // prompts_per_step) * epochs,
    )
