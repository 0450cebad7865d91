"""DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv:2503.14476): GRPO's sampling and advantage with four changes.

1. Clip-higher: an upper clip above the lower one (`actor.clip_ratio_low=0.2`, `clip_ratio_high=0.28`,
   this project's defaults already), so low-probability tokens can rise.
2. Dynamic sampling (`algorithm.dynamic_sampling`): groups whose rewards are all equal are dropped and
   further prompts sampled until the batch is full (`appo.algorithms.base.dynamic_sampling`).
3. Token-level aggregation (`actor.loss_agg_mode=token-mean`): every token weighs alike.
4. Overlong reward shaping (`algorithm.overlong_buffer`, a fifth of the response budget by default):
   the reward falls linearly over the last tokens of the budget (`appo.algorithms.base.overlong_shaping`).
No KL term (`actor.use_kl_loss=false`, the default). Dynamic sampling and overlong shaping are keys of
their own, so APPO or ARPO can switch them on too.
"""

from __future__ import annotations

from appo.algorithms.base import Algorithm


class DAPO(Algorithm):
    name = "dapo"
    paper = "Yu et al. 2025, DAPO (arXiv:2503.14476)"

    implies = {"algorithm.dynamic_sampling": True,
               "algorithm.overlong_buffer": lambda cfg: max(1, cfg.rollout.max_response_length // 5)}
