"""GRPO (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300; docs/reference-differences.md#s8-1): n
independent rollouts per prompt through the tool loop, the group z-scored outcome as every token's
advantage (verl's estimator, unbiased std), every row trained with dual-clip PPO. It is the base class
unchanged."""

from __future__ import annotations

from appo.algorithms.base import Algorithm


class GRPO(Algorithm):
    name = "grpo"
    paper = "Shao et al. 2024, DeepSeekMath (arXiv:2402.03300)"
