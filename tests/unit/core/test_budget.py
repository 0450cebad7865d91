from __future__ import annotations

import pytest

from appo.core.budget import step_budget


def test_g9_reasoning_7b():
    b = step_budget(prompts_per_step=96, n=16, initial_rollouts=8, mini_batch_prompts=16, num_gpus=8,
                    dataset_prompts=10_000, epochs=2)
    assert b.branch_points_per_prompt == 8
    assert (b.init_rows, b.branch_rows, b.rows_per_step) == (768, 768, 1536)
    assert b.rows_per_gpu_per_mini_batch == 32
    assert b.optimizer_steps_per_step == 6
    assert b.total_steps == 208


def test_g9_deepsearch_14b_and_8b():
    b = step_budget(64, 12, 6, mini_batch_prompts=8, num_gpus=8, dataset_prompts=1071, epochs=5)
    assert (b.branch_points_per_prompt, b.rows_per_step) == (6, 768)
    assert (b.optimizer_steps_per_step, b.total_steps) == (8, 80)
    b = step_budget(128, 16, 8, mini_batch_prompts=16, num_gpus=8, dataset_prompts=1071, epochs=5)
    assert (b.rows_per_step, b.rows_per_mini_batch) == (2048, 256)
    assert (b.optimizer_steps_per_step, b.total_steps) == (8, 40)


def test_invalid_budgets_are_rejected():
    with pytest.raises(ValueError, match="initial_rollouts"):
        step_budget(8, 4, 5, 2, 1, 100, 1)
    with pytest.raises(ValueError, match="GPUs"):
        step_budget(8, 3, 2, 1, 2, 100, 1)
