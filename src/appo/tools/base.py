"""What every tool looks like to the rollout: a call in, the exact text the model will see out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolCall:
    tool: str                       # the tool's name, its trigger tag
    payload: str                    # the text between <tag> and </tag> of the current turn
    history: tuple[str, ...] = ()   # earlier successful payloads of this tool in the same trajectory
    reasoning: str = ""             # the response text up to and including this call (the browser reads it)
    env: Any = None                 # the trajectory's EnvSession, for an environment's tools


@dataclass
class ToolResult:
    text: str                       # what goes between <result>\n and \n</result>
    ok: bool                        # False on errors, timeouts and refusals (the text then says why)
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)   # "phases": {phase: seconds} where a tool times its steps


class Tool(Protocol):
    name: str

    def __call__(self, call: ToolCall) -> ToolResult: ...
