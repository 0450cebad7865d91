"""Picking the reward of each row: `get_reward_fn(algorithm_cfg)` returns `fn(response, prompt) -> float`.

`algorithm.reward_fn` is one of:
- `auto` (default), per row:
    * built-in tasks (`data_source` starting with "appo/")      -> `quickstart`
    * math rows (`ability == "math"`, or a known math source)   -> `math_verify`, or `deep_research` when
      `algorithm.math_reward=f1` (what the published runs used)
    * everything else (QA, deep search)                         -> `deep_research`
- a registered name: deep_research, math_verify, qa_f1, qa_em, quickstart (see `REWARDS`);
- `package.module:function`, called as `function(response, prompt)`; a function with a `solution_str`
  parameter is called verl-style as `function(data_source=, solution_str=, ground_truth=, extra_info=)`.
  It returns a number, or a dict with a "score" entry.

A reward function that raises, or returns something that is not a finite number, stops the run with a
`RewardError` naming the function and the row: scoring it as -1 instead would silently train the policy
against a bug in the reward.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

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

RewardFn = Callable[[str, Prompt], float]

BUILTIN_TASK_PREFIX = "appo/"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardError(RuntimeError):
    """A reward function failed on a row; the message names the function and the row."""


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


def _import_user_fn(spec: str) -> Callable[..., Any]:
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise RewardError(
            f"algorithm.reward_fn='{spec}' must be 'auto', a registered name "
            f"({', '.join(sorted(REWARDS))}) or 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardError(f"algorithm.reward_fn='{spec}': cannot import module '{module_name}' ({e})") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RewardError(
            f"algorithm.reward_fn='{spec}': module '{module_name}' has no function '{func_name}'; "
            f"its functions: {', '.join(public) or '(none)'}"
        )
    if "solution_str" in inspect.signature(fn).parameters:

        def verl_style(response: str, prompt: Prompt) -> Any:
            return fn(
                data_source=prompt.data_source,
                solution_str=response,
                ground_truth=prompt.ground_truth,
                extra_info=dict(prompt.extra, index=prompt.index),
            )

        return verl_style
    return fn


def _checked(name: str, fn: Callable[..., Any]) -> RewardFn:
    def reward(response: str, prompt: Prompt) -> float:
        try:
            value = fn(response, prompt)
        except Exception as e:
            raise RewardError(
                f"reward function '{name}' raised {type(e).__name__}: {e} "
                f"(row index={prompt.index}, data_source={prompt.data_source!r})"
            ) from e
        if isinstance(value, dict):
            value = value.get("score")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RewardError(
                f"reward function '{name}' returned {value!r}, not a finite number "
                f"(row index={prompt.index}, data_source={prompt.data_source!r})"
            )
        return float(value)

    reward.__name__ = f"reward[{name}]"
    return reward


def get_reward_fn(algorithm_cfg) -> RewardFn:
    """The reward `fn(response, prompt) -> float` selected by `algorithm.reward_fn` (and `math_reward`)."""
    name = algorithm_cfg.reward_fn
    if name == "auto":
        return _checked(f"auto(math={algorithm_cfg.math_reward})", _auto(algorithm_cfg.math_reward))
    if name in REWARDS:
        return _checked(name, REWARDS[name])
    if ":" not in name:
        raise RewardError(
            f"unknown algorithm.reward_fn '{name}'; choose 'auto', one of "
            f"{', '.join(sorted(REWARDS))}, or 'package.module:function'"
        )
    return _checked(name, _import_user_fn(name))
