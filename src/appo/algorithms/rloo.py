"""RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs", arXiv:2402.14740): n independent samples per prompt, and each one's baseline is
the mean reward of the other n − 1 (`algorithm.adv_estimator=rloo`: A_i = r_i − mean_{j≠i} r_j, no std),
trained with the same clipped loss as GRPO. The baseline is unbiased only for independent samples, so
RLOO refuses branching samplers (rollout.strategy=arpo or appo)."""

from __future__ import annotations

from appo.algorithms.base import Algorithm


class RLOO(Algorithm):
    name = "rloo"
    paper = "Ahmadian et al. 2024, Back to Basics (arXiv:2402.14740)"
    estimator = "rloo"
