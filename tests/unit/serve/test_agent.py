"""The agent's deadline on the real HF engine (decode sessions): checked before each decode step."""

from __future__ import annotations

import time

from appo.rollout.tool_loop import RolloutLoopSettings
from appo.serve.agent import Agent


def test_a_passed_deadline_stops_the_hf_engine_before_its_next_decode_step(engine, python_tools):
    assert engine.supports_sessions  # the path `appo serve` takes with the HF engine
    agent = Agent(engine, python_tools, RolloutLoopSettings(max_response_length=64, temperature=0.0))
    messages = [{"role": "user", "content": "Calculate 12 + 7."}]
    free = agent.reply(messages)
    assert free.finish_reason != "deadline" and free.completion_tokens > 0
    late = agent.reply(messages, deadline=time.monotonic())
    assert late.finish_reason == "deadline" and late.completion_tokens == 0 and late.trace == []
