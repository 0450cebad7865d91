"""System prompts, by name.

- `reference`: the system prompt of every row of the reference RL parquet files (APPO/ARPO
  `rl_datasets/*.parquet`) with its backspace repaired. The data builder wrote "\\boxed" in a non-raw
  Python string, so the files hold a 0x08 character followed by "oxed"; `fix_backspace` restores "\\b".
  The repaired text is character for character the reference *evaluation* prompt (`code_search` in
  `evaluation/src/prompt_manager.py`), which is why one constant serves both.
- `quickstart`: a short prompt for the built-in tasks, so that a 135M model with a 512-token budget
  spends its context on the problem rather than on instructions.
- `chat_quickstart`: the same for `tools.format=chat_template`, where the chat template shows the tools.
- `none`: no system message at all.

A saved checkpoint carries the system prompt it was trained with in `appo_prompt.json` and as the default
system turn of its chat template (see `with_default_system`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

REFERENCE_SYSTEM_PROMPT = (
    "You are a helpful assistant that can solve the given question step by step with the help of the "
    "wikipedia search tool and python interpreter tool. Given a question, you need to first think about "
    "the reasoning process in the mind and then provide the answer. During thinking, you can invoke the "
    "wikipedia search tool to search and python interpreter tool to calculate the math problem for fact "
    "information about specific topics if needed. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags respectively, and the search query and result are "
    "enclosed within <search> </search> and <result> </result> tags respectively. For example, <think> "
    "This is the reasoning process. </think> <search> search query here </search> <result> search result "
    "here </result> <think> This is the reasoning process. </think> <python> python code here </python> "
    "<result> python interpreter result here </result> <think> This is the reasoning process. </think> "
    "<answer> The final answer is \\[ \\boxed{answer here} \\] </answer>. In the last part of the answer, "
    "the final exact answer is enclosed within \\boxed{} with latex format."
)

QUICKSTART_SYSTEM_PROMPT = (
    "Think in <think></think>. Run code with <python>print(...)</python> or look facts up with "
    "<search>query</search>; the result comes back in <result></result>. "
    "Finish with <answer>\\boxed{final answer}</answer>."
)

# With tools.format=chat_template the template lists the tools and shows how to call them; the system prompt only
# asks for thinking and the boxed answer that rewards and evaluation read from the final turn.
CHAT_QUICKSTART_SYSTEM_PROMPT = (
    "Think in <think></think>. Call python to run code (print the result) or search to look facts up. "
    "Finish with <answer>\\boxed{final answer}</answer>."
)

_TOOL_USES = {"python": "run code with <python>print(...)</python>", "search": "look facts up with <search>query</search>"}
_CHAT_TOOL_USES = {"python": "python to run code (print the result)", "search": "search to look facts up"}


def system_prompt_for_tools(tool_names: list[str], tool_format: str = "tags") -> str:
    """The system prompt of plain training rows that bring none: the short `quickstart` prompt when both
    built-in tools are enabled, else one offering exactly the enabled tools (a row never offers a tool the
    run does not have, and a small model's prompt budget goes to the question). With `tool_format`
    'chat_template' the prompt names the tools without tags: the chat template shows their schemas."""
    names = list(tool_names)
    if tool_format == "chat_template":
        if sorted(names) == ["python", "search"]:
            return CHAT_QUICKSTART_SYSTEM_PROMPT
        uses = [_CHAT_TOOL_USES.get(n, n) for n in names]
        tools = f" Call {' or '.join(uses)} when it helps." if uses else ""
        return f"Think in <think></think>.{tools} Finish with <answer>\\boxed{{final answer}}</answer>."
    if sorted(names) == ["python", "search"]:
        return QUICKSTART_SYSTEM_PROMPT
    uses = [_TOOL_USES.get(n, f"call {n} with <{n}>...</{n}>") for n in names]
    tools = (f" You may {' or '.join(uses)}; the result comes back in <result></result>." if uses else "")
    return f"Think in <think></think>.{tools} Finish with <answer>\\boxed{{final answer}}</answer>."


SYSTEM_PROMPTS: dict[str, str | None] = {
    "reference": REFERENCE_SYSTEM_PROMPT,
    "quickstart": QUICKSTART_SYSTEM_PROMPT,
    "chat_quickstart": CHAT_QUICKSTART_SYSTEM_PROMPT,
    "none": None,
}


def fix_backspace(text: str) -> str:
    """Undo the reference data's escape accident: each 0x08 was meant to be the two characters "\\b"."""
    return text.replace("\x08", "\\b")


def resolve_system_prompt(name_or_text: str) -> str | None:
    """A registered prompt by name (see `SYSTEM_PROMPTS`), else the text itself; None means no system turn."""
    return SYSTEM_PROMPTS.get(name_or_text, name_or_text)


# ------------------------------------------------------------------- the prompt format of a checkpoint

PROMPT_FILE = "appo_prompt.json"


def common_system_prompt(message_lists) -> str | None:
    """The system prompt a set of conversations was trained with: the most frequent system message (the
    built-in tasks and the reference data use one for every row); None when they have none."""
    counts: dict[str, int] = {}
    for messages in message_lists:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        if system is not None:
            counts[system] = counts.get(system, 0) + 1
    return max(counts, key=counts.get) if counts else None


_DEFAULT_OPEN, _DEFAULT_CLOSE = "{#- appo: training system prompt -#}", "{#- /appo -#}"


def with_default_system(chat_template: str, system_prompt: str) -> str:
    """`chat_template` with `system_prompt` as the system turn of conversations that bring none, so plain
    `apply_chat_template` (transformers, vLLM's chat endpoint) prompts the way the model was trained. A
    default set by an earlier save is replaced, not stacked."""
    if chat_template.startswith(_DEFAULT_OPEN) and _DEFAULT_CLOSE in chat_template:
        chat_template = chat_template.split(_DEFAULT_CLOSE, 1)[1]
    literal = json.dumps(system_prompt)  # a JSON string is a valid Jinja string literal
    return (_DEFAULT_OPEN + "{%- if not messages or messages[0]['role'] != 'system' -%}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
            "{%- endif -%}" + _DEFAULT_CLOSE + chat_template)


def write_prompt_format(out_dir: str | Path, system_prompt: str | None, tool_names: Iterable[str] = (),
                        tool_format: str = "tags") -> Path:
    """`<out_dir>/appo_prompt.json`: {"system_prompt": text or null, "tool_format": 'tags' | 'chat_template',
    "tags": the protocol's tags and, in the tags format, those of the tools the model was trained with}, read
    back by `appo eval` / `appo serve` (and anyone scripting against the checkpoint)."""
    path = Path(out_dir) / PROMPT_FILE
    tools = {name: f"<{name}></{name}>" for name in tool_names} if tool_format == "tags" else {}
    tags = {"think": "<think></think>", **tools, **({"result": "<result></result>"} if tool_format == "tags" else {}),
            "answer": "<answer>\\boxed{...}</answer>"}
    path.write_text(json.dumps({"system_prompt": system_prompt, "tool_format": tool_format, "tags": tags}, indent=2,
                               ensure_ascii=False) + "\n")
    return path


def read_prompt_format(model_dir: str | Path) -> dict | None:
    """The checkpoint's `appo_prompt.json`, or None when the directory has none (a base model)."""
    path = Path(model_dir) / PROMPT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("system_prompt"), (str, type(None))):
        raise ValueError(f"{path}: expected {{\"system_prompt\": text or null, ...}}")
    return data

