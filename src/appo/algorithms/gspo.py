"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071): GRPO's sampling and
advantage, but the importance ratio is the sequence's, length-normalised:
s_i = (π(y_i|x) / π_old(y_i|x))^(1/|y_i|), clipped to [1 − 3e-4, 1 + 4e-4] (`actor.ratio_level=sequence`,
`actor.sequence_clip_ratio_low/high`), and each sequence's loss is the mean over its tokens
(`actor.loss_agg_mode=seq-mean-token-mean`). The loss is `appo.core.loss.gspo_loss` in its GSPO-token
form, which equals GSPO when a sequence has one advantage and lets APPO's per-token prefix credit
through (`algorithm.name=appo actor.ratio_level=sequence`)."""

from __future__ import annotations

from appo.algorithms.base import Algorithm


class GSPO(Algorithm):
    name = "gspo"
    paper = "Zheng et al. 2025, Group Sequence Policy Optimization (arXiv:2507.18071)"

    implies = {"actor.ratio_level": "sequence", "actor.loss_agg_mode": "seq-mean-token-mean"}
