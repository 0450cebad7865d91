"""A scripted policy for `appo serve` / `appo chat` tests, loaded in the server process as the plug-in engine
`serve.engine=tests.unit.serve.scripted_engine:build`. What it writes depends on the last user message; an
answer that quotes a tool result can only be right if the call really ran."""

from __future__ import annotations

import re

from tests.unit.rollout.conftest import ScriptedEngine

USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)
RESULT = re.compile(r"<result>\n(.*?)\n</result>", re.S)
BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def script(prompt: str, request) -> str:
    users = USER.findall(prompt)
    question = users[-1] if users else ""
    turn = prompt.rsplit("<|im_start|>assistant\n", 1)[-1]  # this reply so far (tool results included)
    results = RESULT.findall(turn)
    if question.startswith("Calculate 17 * 23 - 5"):
        if not results:
            return "<think>Let me run it.</think><python>print(17 * 23 - 5)</python>"
        return f"<answer>\\boxed{{{results[-1].strip()}}}</answer><|im_end|>"
    if question.startswith("Call python forever"):
        return "<python>print(len(str(2 ** 64)))</python>"
    if question.startswith("Sleep"):
        return "<python>import time; time.sleep(2); print('slept')</python>"
    if question.startswith("What did you get"):  # multi-turn: the earlier answer must be in the prompt
        earlier = BOXED.findall(prompt)
        return f"<answer>Earlier I got \\boxed{{{earlier[-1] if earlier else 'nothing'}}}</answer><|im_end|>"
    return "<answer>\\boxed{0}</answer><|im_end|>"


def build(tokenizer, cfg):
    return ScriptedEngine(tokenizer, script)
