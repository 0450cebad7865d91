"""What rewards and evaluation read of a trajectory: with tools.format=chat_template, the final assistant turn."""

from __future__ import annotations

import pytest

from appo.data import Prompt
from appo.formats import ParsedCall, build_format
from appo.rewards.registry import quickstart_reward
from appo.rollout.trajectory import Trajectory
from appo.tools.registry import BUILTIN_TOOLS

CALL = '<think>Guess first.</think><answer>\\boxed{5}</answer>\n<tool_call>\n{"name": "python", "arguments": ' \
       '{"code": "print(6)"}}\n</tool_call><|im_end|>'


def _chat_trajectory(fmt, final: str) -> Trajectory:
    tok = fmt.tokenizer
    traj = Trajectory(prompt_ids=fmt.prompt_ids([{"role": "user", "content": "What is 2 * 3?"}]),
                      tool_format="chat_template")
    traj.append(tok.encode(CALL, add_special_tokens=False), generated=1)
    start = len(traj)
    traj.append(fmt.result_ids([(ParsedCall("python", "print(6)"), "\\boxed{9}", False)]), generated=0)
    traj.tool_log.append({"tool": "python", "payload": "print(6)", "ok": True, "seconds": 0.0, "start": start,
                          "end": len(traj)})
    traj.append(tok.encode(final, add_special_tokens=False), generated=1)
    return traj


@pytest.mark.parametrize("final, reward", [("<think>It printed 6.</think><answer>\\boxed{6}</answer><|im_end|>", 1.0),
                                           ("It printed something.<|im_end|>", 0.0)])
def test_the_answer_is_read_from_the_final_assistant_turn_only(chat_tokenizer, final, reward):
    fmt = build_format("chat_template", chat_tokenizer("chatml"), [BUILTIN_TOOLS["python"].spec])
    traj = _chat_trajectory(fmt, final)
    prompt = Prompt([{"role": "user", "content": "What is 2 * 3?"}], traj.prompt_ids, "6", data_source="appo/arithmetic",
                    ability="math")
    text = traj.reward_text(fmt.tokenizer)
    assert text == fmt.tokenizer.decode(fmt.tokenizer.encode(final, add_special_tokens=False), skip_special_tokens=True)
    assert quickstart_reward(text, prompt) == reward   # neither the calling turn's 5 nor the tool's 9 counts
    assert "\\boxed{9}" in traj.reward_text(fmt.tokenizer, "full")  # the reference's choice stays available
    tags = Trajectory(**{**vars(traj), "tool_format": "tags"})
    assert "\\boxed{5}" in tags.reward_text(fmt.tokenizer)  # the tag format keeps the reference's reading
    branch = traj.prefix(len(traj) - 2)
    assert branch.tool_format == "chat_template"
