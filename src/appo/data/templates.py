"""System prompts, by name.

- `reference`: the system prompt of every row of the reference RL parquet files (APPO/ARPO
  `rl_datasets/*.parquet`) with its backspace repaired. The data builder wrote "\\boxed" in a non-raw
  Python string, so the files hold a 0x08 character followed by "oxed"; `fix_backspace` restores "\\b".
  The repaired text is character for character the reference *evaluation* prompt (`code_search` in
  `evaluation/src/prompt_manager.py`), which is why one constant serves both.
- `quickstart`: a short prompt for the built-in tasks, so that a 135M model with a 512-token budget
  spends its context on the problem rather than on instructions.
- `none`: no system message at all.
"""

from __future__ import annotations

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

SYSTEM_PROMPTS: dict[str, str | None] = {
    "reference": REFERENCE_SYSTEM_PROMPT,
    "quickstart": QUICKSTART_SYSTEM_PROMPT,
    "none": None,
}


def fix_backspace(text: str) -> str:
    """Undo the reference data's escape accident: each 0x08 was meant to be the two characters "\\b"."""
    return text.replace("\x08", "\\b")


def resolve_system_prompt(name_or_text: str) -> str | None:
    """A registered prompt by name (see `SYSTEM_PROMPTS`), else the text itself; None means no system turn."""
    return SYSTEM_PROMPTS.get(name_or_text, name_or_text)
