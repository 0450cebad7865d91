"""Weighted reward lists: call shapes, None, async, the environment's entry, and every way a reward can fail
(one RewardError line naming the function and the row, never a traceback or a silent score)."""

from __future__ import annotations

import textwrap
import time

import pytest

from appo.config import ConfigError, load_config
from appo.prompts import Prompt
from appo.rewards import Reward, RewardError, RewardSet, build_rewards

FORMATTED = "<think>t</think><answer>\\boxed{42}</answer>"


def row(gold="42", index=3, **extra):
    return Prompt(messages=[{"role": "user", "content": "What is 6 * 7?"}], prompt_ids=[], ground_truth=gold,
                  data_source="mine", index=index, extra=extra)


@pytest.fixture()
def mod(tmp_path, monkeypatch):
    """A user's reward module, imported from the working directory (no PYTHONPATH)."""
    (tmp_path / "user_rewards.py").write_text(textwrap.dedent('''
        import asyncio, time

        def fmt(response):
            return float("<answer>" in response)

        def correct(response, ground_truth, difficulty):
            if difficulty == "skip":
                return None
            return float(ground_truth in response) * (2 if difficulty == "hard" else 1)

        def text(response): return "yes"
        def nan(response): return float("nan")
        def inf(response): return float("inf")
        def huge(response): return 10 ** 400
        def raises(response): raise KeyError("oops")
        def exits(response): raise SystemExit(0)
        def hangs(response): time.sleep(60)
        async def hangs_async(response): await asyncio.sleep(60)
        def none(response): return None
        def wants(response, missing_column): return 1.0

        async def slow_async(response, index):
            await asyncio.sleep(0.3)
            return float(index)
    '''))
    monkeypatch.chdir(tmp_path)
    return "user_rewards"


def algo(*overrides):
    return load_config(None, [f"algorithm.{o}" for o in overrides]).algorithm


def test_a_weighted_list_sums_what_applies_and_logs_each_mean(mod):
    rewards = build_rewards(algo(f"rewards=[{{fn: {mod}:fmt, weight: 0.5}}, {{fn: {mod}:correct, weight: 2}}]"))
    rows = [(FORMATTED, row(difficulty="easy")), (FORMATTED, row(difficulty="hard")),
            ("42 no tags", row(difficulty="skip")), ("<answer>1</answer>", row(difficulty="easy"))]
    assert rewards.score(rows) == [0.5 + 2 * 1, 0.5 + 2 * 2, 0.0, 0.5]
    # 'correct' did not apply to the third row: its mean is over the three others
    assert rewards.metrics() == {"reward/fmt": 0.75, "reward/correct": pytest.approx(1.0)}
    assert rewards.metrics() == {}  # collected values are reset by each call


def test_one_function_logs_no_extra_metric_and_keeps_the_old_shapes(mod):
    legacy = RewardSet([Reward("legacy", lambda response, prompt: len(response) / 10)])
    verl = RewardSet([Reward("verl", lambda data_source, solution_str, ground_truth, extra_info:
                             {"score": float(ground_truth in solution_str) + extra_info["index"]})])
    assert legacy("x" * 5, row()) == 0.5
    assert verl(FORMATTED, row(index=3)) == 4.0
    assert legacy.metrics() == {}


def test_the_environment_reward_is_one_more_entry(mod):
    rewards = build_rewards(algo(f"rewards=[{{fn: env, weight: 3}}, {{fn: {mod}:fmt}}]"))
    assert rewards.score([(FORMATTED, row()), ("plain", row())], [0.5, None]) == [1.5 + 1.0, 0.0]


def test_a_row_no_reward_applies_to_is_refused(mod):
    with pytest.raises(RewardError, match=r"no reward applies to row index=3.*none"):
        build_rewards(algo(f"reward_fn={mod}:none"))(FORMATTED, row())


def test_async_rewards_run_concurrently(mod):
    rewards = build_rewards(algo(f"reward_fn={mod}:slow_async"))
    t0 = time.monotonic()
    assert rewards.score([(FORMATTED, row(index=i)) for i in range(8)]) == [float(i) for i in range(8)]
    assert time.monotonic() - t0 < 1.5  # eight 0.3 s calls, not 2.4 s one after another


@pytest.mark.parametrize("fn, message", [
    ("text", r"reward 'user_rewards:text' returned 'yes' \(str\), not a number, on row index=3"),
    ("nan", r"returned nan, not a finite number, on row index=3"),
    ("inf", r"returned inf, not a finite number"),
    ("huge", r"returned 10000000000000000000\.\.\. \(401 digits\), not a finite number"),
    ("raises", r"reward 'user_rewards:raises' raised KeyError: 'oops' on row index=3"),
    ("exits", r"called exit\(0\) on row index=3"),
])
def test_a_bad_reward_is_one_line_naming_function_and_row(mod, fn, message):
    with pytest.raises(RewardError, match=message) as e:
        build_rewards(algo(f"reward_fn={mod}:{fn}"))(FORMATTED, row())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fn", ["hangs", "hangs_async"])
def test_a_hanging_reward_meets_its_deadline(mod, fn):
    rewards = build_rewards(algo(f"reward_fn={mod}:{fn}", "reward_timeout=0.5"))
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"did not return within 0.5 s on row index=3.*algorithm.reward_timeout"
                       if fn == "hangs" else r"(ran past its deadline|did not return).*row index=3"):
        rewards(FORMATTED, row())
    assert time.monotonic() - t0 < 5


def test_a_missing_argument_is_found_from_the_first_row(mod):
    rewards = build_rewards(algo(f"reward_fn={mod}:wants"))
    with pytest.raises(RewardError, match=r"needs argument\(s\) missing_column.*fields: .*ground_truth"):
        rewards.check_row(row())


def test_bad_reward_configs_fail_at_start_up(mod):
    with pytest.raises(ConfigError, match=r"algorithm.rewards\[0\].weigth"):
        algo(f"rewards=[{{fn: {mod}:fmt, weigth: 2}}]")
    with pytest.raises(ConfigError, match=r"algorithm.rewards\[1\]: 'fn' is required"):
        algo(f"rewards=[{{fn: {mod}:fmt}}, {{weight: 2}}]")
    with pytest.raises(ConfigError, match="reward_fn='quickstart' and algorithm.rewards are both set"):
        algo("reward_fn=quickstart", f"rewards=[{{fn: {mod}:fmt}}]")
    with pytest.raises(RewardError, match="two rewards are named 'fmt'"):
        build_rewards(algo(f"rewards=[{{fn: {mod}:fmt}}, {{fn: {mod}:fmt}}]"))
    with pytest.raises(RewardError, match=r"unknown algorithm.rewards\[0\].fn 'nope'"):
        build_rewards(algo("rewards=[{fn: nope}]"))
