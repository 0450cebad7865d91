"""ARPO (Dong et al. 2025, "Agentic Reinforced Policy Optimization", arXiv:2507.19849;
docs/reference-differences.md#s8-2): m initial rollouts per prompt, and copies forked during generation
right after a tool result when the step entropy rises (`appo.rollout.arpo`), until every prompt has n
rows; the GRPO advantage over all n rows, every row trained (copies share their prefix's tokens)."""

from __future__ import annotations

from appo.algorithms.base import Algorithm


class ARPO(Algorithm):
    name = "arpo"
    paper = "Dong et al. 2025, Agentic Reinforced Policy Optimization (arXiv:2507.19849)"
    sampler = "arpo"
