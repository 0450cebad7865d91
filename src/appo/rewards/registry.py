"""The named rewards and the resolution of reward specs: `build_rewards(algorithm_cfg)` -> a `RewardSet`.

A spec (in `algorithm.rewards[i].fn`, or the one-function shorthand `algorithm.reward_fn`) is one of:
- `auto` (the default), per row:
    * built-in tasks (`data_source` starting with "appo/")      -> `quickstart`
    * math rows (`ability == "math"`, or a known math source)   -> `math_verify`, or `deep_research` when
      `algorithm.math_reward=f1` (what the published runs used)
    * everything else (QA, deep search)                         -> `deep_research`
- a registered name: deep_research, math_verify, qa_f1, qa_em, quickstart (see `REWARDS`);
- `env`: the environment's own reward of the row;
- `package.module:function` (found on sys.path or in the working directory); how it is called, and what
  it may return, is in `appo.rewards.reward_set`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from appo.config import RewardConfig
from appo.plugins import is_spec, load_object
from appo.prompts import Prompt, is_math
from appo.rewards.deep_research import (
    deep_research_score,
    extract_boxed_answer,
    format_error,
    last_boxed,
    unbox,
)
from appo.rewards.math import as_number, math_equal, numbers_equal
from appo.rewards.qa import exact_match, token_f1
from appo.rewards.reward_set import ENV_REWARD, Reward, RewardError, RewardSet

RewardFn = Callable[[str, Prompt], float]

BUILTIN_TASK_PREFIX = "appo/"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def deep_research_reward(response: str, prompt: Prompt) -> float:
    """The reference reward (format -1, token F1, +0.1 for using both tools)."""
    return deep_research_score(response, prompt.ground_truth)


def math_verify_reward(response: str, prompt: Prompt) -> float:
    """The reference reward with its token F1 replaced by math-verify equivalence.

    -1 when the reference format check fails or no boxed answer is found in <answer>; else 1 when the
    answer is equivalent to the gold, plus 0.1 when the response used both search and python (so math
    and QA rows keep the same scale in a mixed batch); else 0.
    """
    if format_error(response) is not None:
        return -1.0
    answer = extract_boxed_answer(response)
    if answer is None:
        return -1.0
    if not math_equal(answer, prompt.ground_truth):
        return 0.0
    return 1.1 if "</search>" in response and "</python>" in response else 1.0


def quickstart_reward(response: str, prompt: Prompt) -> float:
    """Reward of the built-in tasks, in [0, 1], no format penalty (the small model is still learning tags).

    arithmetic: 1 when the last \\boxed{} (else the last number after the last </result>) equals the
    gold number; multihop: token F1 of the last \\boxed{} against the gold aliases.
    """
    answer = unbox(last_boxed(response))
    if is_math(prompt):
        if answer is None and "</result>" in response:
            numbers = _NUMBER.findall(response.rsplit("</result>", 1)[1])
            answer = numbers[-1] if numbers else None
        pred = as_number(answer) if answer is not None else None
        gold = as_number(str(prompt.ground_truth))
        return float(pred is not None and gold is not None and numbers_equal(pred, gold))
    return token_f1(answer, prompt.ground_truth) if answer is not None else 0.0


def qa_f1_reward(response: str, prompt: Prompt) -> float:
    """Token F1 of the boxed answer in <answer> (0 when there is none); no format penalty, no tool bonus."""
    answer = extract_boxed_answer(response)
    return token_f1(answer, prompt.ground_truth) if answer is not None else 0.0


def qa_em_reward(response: str, prompt: Prompt) -> float:
    """Exact match (SQuAD normalisation) of the boxed answer in <answer>; 0 when there is none."""
    answer = extract_boxed_answer(response)
    return exact_match(answer, prompt.ground_truth) if answer is not None else 0.0


REWARDS: dict[str, RewardFn] = {
    "deep_research": deep_research_reward,
    "math_verify": math_verify_reward,
    "qa_f1": qa_f1_reward,
    "qa_em": qa_em_reward,
    "quickstart": quickstart_reward,
}


def register_reward(name: str, fn: RewardFn) -> RewardFn:
    """Make `fn` selectable as `algorithm.reward_fn=<name>`."""
    REWARDS[name] = fn
    return fn


def _auto(math_reward: str) -> RewardFn:
    math_fn = math_verify_reward if math_reward == "math_verify" else deep_research_reward

    def auto_reward(response: str, prompt: Prompt) -> float:
        if (prompt.data_source or "").startswith(BUILTIN_TASK_PREFIX):
            return quickstart_reward(response, prompt)
        return math_fn(response, prompt) if is_math(prompt) else deep_research_reward(response, prompt)

    return auto_reward


def _resolve(spec: str, math_reward: str, key: str) -> tuple[str, Callable[..., Any] | None]:
    """(metric name, function) of one reward spec; the function is None for the environment's reward."""
    if spec == ENV_REWARD:
        return ENV_REWARD, None
    if spec == "auto":
        return "auto", _auto(math_reward)
    if spec in REWARDS:
        return spec, REWARDS[spec]
    if not is_spec(spec):
        raise RewardError(f"unknown {key} '{spec}'; choose 'auto', '{ENV_REWARD}' (the environment's reward), one "
                          f"of {', '.join(sorted(REWARDS))}, or 'package.module:function'")
    fn = load_object(spec, key)
    if not callable(fn):
        raise RewardError(f"{key}='{spec}' is a {type(fn).__name__}, not a function")
    return spec.rpartition(":")[2].rpartition(".")[2], fn


def build_rewards(algorithm_cfg, extra: Sequence[Any] = ()) -> RewardSet:
    """The rewards of a run: `algorithm.rewards` (or the one `algorithm.reward_fn`), then `extra` (from
    Python: functions, `(function, weight)` pairs or `Reward`s). Imports every function now, so a bad spec
    stops the run at start-up."""
    entries = []
    specs = list(algorithm_cfg.rewards) or ([] if extra and algorithm_cfg.reward_fn == "auto"
                                              else [RewardConfig(fn=algorithm_cfg.reward_fn)])
    for i, spec in enumerate(specs):
        key = f"algorithm.rewards[{i}].fn" if algorithm_cfg.rewards else "algorithm.reward_fn"
        name, fn = _resolve(spec.fn, algorithm_cfg.math_reward, key)
        entries.append(Reward(spec.name or name, fn, spec.weight, source=spec.fn))
    for item in extra:
        if isinstance(item, Reward):
            entries.append(item)
            continue
        fn, weight = item if isinstance(item, tuple) else (item, 1.0)
        entries.append(Reward(getattr(fn, "__name__", type(fn).__name__), fn, weight))
    return RewardSet(entries, algorithm_cfg.reward_timeout)


def get_reward_fn(algorithm_cfg) -> RewardSet:
    """The run's rewards as one callable, `fn(response, prompt) -> float` (see `build_rewards`)."""
    return build_rewards(algorithm_cfg)
