"""A scripted policy for `appo serve` / `appo chat` tests, loaded in the server process as the plug-in engine
`serve.engine=tests.unit.serve.scripted_engine:build`. What it writes depends on the last question; an answer
that quotes a tool result can only be right if the call really ran. It calls tools in the format its prompt
shows: appo's tags, or (when the chat template lists the tools) the template's `<tool_call>` JSON."""

from __future__ import annotations

import json
import re

from tests.unit.rollout.conftest import ScriptedEngine

USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)
RESULT = re.compile(r"<result>\n(.*?)\n</result>|<tool_response>\n(.*?)\n</tool_response>", re.S)
BOXED = re.compile(r"\\boxed\{([^}]*)\}")
END = "<|im_end|>"


def _call(prompt: str, code: str) -> str:
    if "<tool_call>" in prompt:  # the chat template's own tool calling, shown in its system turn
        return f'<tool_call>\n{json.dumps({"name": "python", "arguments": {"code": code}})}\n</tool_call>{END}'
    return f"<think>Let me run it.</think><python>{code}</python>"


def script(prompt: str, request) -> str:
    questions = [m for m in USER.finditer(prompt) if not m.group(1).startswith("<tool_response>")]
    question = questions[-1].group(1) if questions else ""
    reply = prompt[questions[-1].end():] if questions else prompt  # this reply so far, tool results included
    results = [a or b for a, b in RESULT.findall(reply)]
    if question.startswith("Calculate 17 * 23 - 5"):
        if not results:
            return _call(prompt, "print(17 * 23 - 5)")
        return f"<answer>\\boxed{{{results[-1].strip()}}}</answer>{END}"
    if question.startswith("Call python forever"):
        return _call(prompt, "print(len(str(2 ** 64)))")
    if question.startswith("Sleep"):
        return _call(prompt, "import time; time.sleep(2); print('slept')")
    if question.startswith("What did you get"):  # multi-turn: the earlier answer must be in the prompt
        earlier = BOXED.findall(prompt)
        return f"<answer>Earlier I got \\boxed{{{earlier[-1] if earlier else 'nothing'}}}</answer>{END}"
    return f"<answer>\\boxed{{0}}</answer>{END}"


def build(tokenizer, cfg):
    return ScriptedEngine(tokenizer, script)
