"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
arXiv:2503.20783): GRPO without its two length and difficulty biases. The advantage only centres the
group's rewards (no division by their std: `algorithm.norm_adv_by_std=false`), and each response's token
sum is divided by one constant, the response budget, instead of its own length
(`actor.loss_agg_mode=seq-mean-token-sum-norm`, `actor.loss_horizon` = rollout.max_response_length), so
a long wrong answer is not punished less per token than a short one."""

from __future__ import annotations

from appo.algorithms.base import Algorithm


class DrGRPO(Algorithm):
    name = "drgrpo"
    paper = "Liu et al. 2025, Understanding R1-Zero-Like Training (arXiv:2503.20783)"

    implies = {"algorithm.norm_adv_by_std": False, "actor.loss_agg_mode": "seq-mean-token-sum-norm"}
