"""Reward selection per row, named rewards, user functions and their errors."""

import textwrap

import pytest

from appo.config import load_config
from appo.errors import UserError
from appo.prompts import Prompt
from appo.rewards import REWARDS, RewardError, get_reward_fn, is_math

GOOD = "<think>t</think><answer>\\boxed{0.5}</answer>"


def prompt(gold="\\frac{1}{2}", source="DR_grpo_mix", ability=None, index=7):
    return Prompt(
        messages=[], prompt_ids=[], ground_truth=gold, data_source=source, ability=ability, index=index
    )


def algo(*overrides):
    return load_config(None, [f"algorithm.{o}" for o in overrides]).algorithm


def test_auto_uses_math_verify_for_math_rows_and_reference_f1_otherwise():
    fn = get_reward_fn(algo())
    assert fn(GOOD, prompt(ability="math")) == 1.0  # equivalence, not token F1
    assert fn(GOOD, prompt(source="math500")) == 1.0  # math source without an ability
    assert fn(GOOD, prompt(ability="qa")) == 0.0  # reference F1: "05" vs "frac12"
    assert fn("<answer>\\boxed{0.5}</answer>", prompt(ability="math")) == -1.0  # format still required


def test_math_reward_f1_switch_replays_the_reference():
    fn = get_reward_fn(algo("math_reward=f1"))
    assert fn(GOOD, prompt(ability="math")) == 0.0
    assert fn("<think>t</think><answer>\\boxed{\\frac{1}{2}}</answer>", prompt(ability="math")) == 1.0


def test_math_verify_bonus_for_both_tools():
    response = (
        "<think>t</think><search>q</search> <result>\nr\n</result><python>1</python> <result>\n1\n</result>"
        "<answer>\\boxed{1/2}</answer>"
    )
    assert get_reward_fn(algo("reward_fn=math_verify"))(response, prompt()) == pytest.approx(1.1)


def test_auto_routes_builtin_tasks_to_quickstart():
    fn = get_reward_fn(algo())
    arith = prompt(gold="-1475", source="appo/arithmetic", ability="math")
    assert (
        fn("<python>print(x)</python> <result>\n-1475.0\n</result><answer>\\boxed{-1475.0}</answer>", arith)
        == 1.0
    )
    assert fn("<python>print(x)</python> <result>\n-1475.0\n</result> so -1475", arith) == 1.0
    assert fn("<answer>\\boxed{-1474}</answer>", arith) == 0.0
    multihop = prompt(gold="Eldoria", source="appo/multihop", ability="qa")
    assert fn("<answer>\\boxed{Eldoria}</answer>", multihop) == 1.0
    assert fn("Eldoria", multihop) == 0.0


def test_named_rewards():
    assert set(REWARDS) >= {"deep_research", "math_verify", "qa_f1", "qa_em", "quickstart"}
    p = prompt(gold=["Paris", "Paris, France"])
    assert get_reward_fn(algo("reward_fn=qa_em"))("<answer>\\boxed{paris}</answer>", p) == 1.0
    assert get_reward_fn(algo("reward_fn=qa_f1"))("<answer>\\boxed{Paris city}</answer>", p) == pytest.approx(
        2 / 3
    )
    assert get_reward_fn(algo("reward_fn=deep_research"))("<answer>\\boxed{Paris}</answer>", p) == -1.0


def test_is_math():
    assert is_math(prompt(source="openai/gsm8k"))
    assert not is_math(prompt(source="hotpotqa", ability="qa"))


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent("""
        def length_reward(response, prompt):
            return len(response) / 100

        def verl_style(data_source, solution_str, ground_truth, extra_info=None):
            return {"score": float(ground_truth in solution_str) + extra_info["index"]}

        def broken(response, prompt):
            raise KeyError("oops")

        def not_a_number(response, prompt):
            return float("nan")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_user_functions(user_module):
    assert get_reward_fn(algo(f"reward_fn={user_module}:length_reward"))("x" * 50, prompt()) == 0.5
    verl = get_reward_fn(algo(f"reward_fn={user_module}:verl_style"))
    assert verl("it is Paris", prompt(gold="Paris", index=2)) == 3.0


def test_user_function_errors_name_function_and_row(user_module):
    with pytest.raises(RewardError, match=r"my_rewards:broken.*KeyError.*index=7.*DR_grpo_mix"):
        get_reward_fn(algo(f"reward_fn={user_module}:broken"))(GOOD, prompt())
    with pytest.raises(RewardError, match="not a finite number"):
        get_reward_fn(algo(f"reward_fn={user_module}:not_a_number"))(GOOD, prompt())


def test_bad_specs_explain_the_choices(user_module):
    with pytest.raises(UserError, match="algorithm.reward_fn='my_rewards:missing'.*has no 'missing'.*length_reward"):
        get_reward_fn(algo(f"reward_fn={user_module}:missing"))
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        get_reward_fn(algo("reward_fn=no_such_module_xyz:f"))
    with pytest.raises(RewardError, match="unknown algorithm.reward_fn 'f2'.*deep_research"):
        get_reward_fn(algo("reward_fn=f2"))
