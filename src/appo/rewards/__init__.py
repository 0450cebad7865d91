"""Rewards: the reference deep-research reward, math-verify equivalence, QA EM/F1, the per-row registry."""

from appo.rewards.deep_research import deep_research_score, extract_boxed_answer, format_error
from appo.rewards.math import extract_math_answer, math_equal, math_score
from appo.rewards.qa import cover_match, exact_match, normalize_answer, token_f1
from appo.rewards.registry import REWARDS, RewardFn, build_rewards, get_reward_fn, is_math, register_reward
from appo.rewards.reward_set import Reward, RewardError, RewardSet

__all__ = [
    "REWARDS",
    "RewardError",
    "RewardFn",
    "Reward",
    "RewardSet",
    "build_rewards",
    "cover_match",
    "deep_research_score",
    "exact_match",
    "extract_boxed_answer",
    "extract_math_answer",
    "format_error",
    "get_reward_fn",
    "is_math",
    "math_equal",
    "math_score",
    "normalize_answer",
    "register_reward",
    "token_f1",
]
