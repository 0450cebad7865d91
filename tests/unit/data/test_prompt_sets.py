"""The system prompt a run's rows bring follows tools.format: tags tell the model the tag protocol; with the chat
template's own format they name the tools and leave calling them to the template."""

import pytest

from appo.config import load_config
from appo.data.datasets import DataError
from appo.data.prompt_sets import prepare_task
from appo.data.templates import CHAT_QUICKSTART_SYSTEM_PROMPT, QUICKSTART_SYSTEM_PROMPT, system_prompt_for_tools


def _system(cfg) -> set[str]:
    task = prepare_task(cfg)
    return {m["content"] for r in task.train + task.val for m in r["prompt"] if m["role"] == "system"}


def test_task_rows_in_the_chat_template_format_name_the_tools_without_tags():
    base = ["data.task=quickstart", "data.num_train=8", "data.num_val=4"]
    assert _system(load_config(None, base)) == {QUICKSTART_SYSTEM_PROMPT}
    chat = _system(load_config(None, base + ["tools.format=chat_template"]))
    assert chat == {CHAT_QUICKSTART_SYSTEM_PROMPT}
    assert "<python>" not in CHAT_QUICKSTART_SYSTEM_PROMPT and "<result>" not in CHAT_QUICKSTART_SYSTEM_PROMPT
    assert "\\boxed{final answer}" in CHAT_QUICKSTART_SYSTEM_PROMPT


def test_file_rows_without_a_system_prompt_get_one_for_the_format():
    assert system_prompt_for_tools(["python"]) == ("Think in <think></think>. You may run code with "
                                                   "<python>print(...)</python>; the result comes back in "
                                                   "<result></result>. Finish with <answer>\\boxed{final answer}</answer>.")
    assert system_prompt_for_tools(["python"], "chat_template") == (
        "Think in <think></think>. Call python to run code (print the result) when it helps. "
        "Finish with <answer>\\boxed{final answer}</answer>.")
    assert system_prompt_for_tools(["python", "search"], "chat_template") == CHAT_QUICKSTART_SYSTEM_PROMPT


def test_task_prompts_dropped_as_too_long_are_reported_with_the_fix(chat_tokenizer, caplog):
    """The tools' listing makes chat-template prompts longer (over 256 tokens on the tiny tokenizer): a task whose
    prompts no longer fit says so and names data.max_prompt_length, instead of an empty set with no reason."""
    from appo.data.prompt_sets import load_prompt_sets
    from appo.models import CHAT_TEMPLATE

    cfg = load_config(None, ["data.task=quickstart", "data.num_train=4", "data.num_val=2", "data.max_prompt_length=256",
                             "tools.format=chat_template", "tools.chat_template=chatml"])
    with pytest.raises(DataError) as err:
        load_prompt_sets(cfg, chat_tokenizer(CHAT_TEMPLATE))
    assert "kept 0/4 rows" in str(err.value) and "data.max_prompt_length=256" in str(err.value)
    cfg = load_config(None, ["data.task=quickstart", "data.num_train=4", "data.num_val=2", "data.max_prompt_length=900",
                             "tools.format=chat_template", "tools.chat_template=chatml"])
    train, val = load_prompt_sets(cfg, chat_tokenizer(CHAT_TEMPLATE))
    assert (len(train), len(val)) == (4, 2)
