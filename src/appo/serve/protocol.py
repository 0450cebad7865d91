"""The OpenAI chat-completions wire format as `appo serve` speaks it: reading a request (every problem is
a RequestError carrying the HTTP status and the OpenAI error shape), and writing a completion whose extra
`appo` field holds the trace of tool calls and results."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
# Chat finish reasons: the loop's own (eos, answer) end a reply normally; every limit is "length".
STOPPED = ("eos", "answer")


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(str(self), self.kind, self.code, self.param)


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    max_tool_calls: int | None = None   # appo.max_tool_calls: lower than the server's budget
    deadline: float | None = None       # appo.deadline: seconds, lower than the server's


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param)


def _number(body: dict, key: str, low: float, high: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise _bad(f"'{key}' must be {kind} from {low:g} to {high:g}, got {json.dumps(value)}", key)
    return value


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat_request(raw: bytes, max_tool_calls: int, deadline: float) -> ChatRequest:
    """A chat-completions request body, checked; `max_tool_calls` and `deadline` are the server's bounds,
    which the request's `appo` field may only lower."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content}", "messages")
    if body.get("stream"):
        raise _bad("'stream' is not supported: the reply comes once the tool loop has finished", "stream")
    if body.get("n") not in (None, 1):
        raise _bad("'n' must be 1", "n")
    for key in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(key) not in (None, [], "none"):
            raise _bad(f"'{key}' is not supported: this server runs its own tools (its config's tools.enabled) "
                       "server-side and returns their trace in the 'appo' field", key)
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}",
                       f"messages[{i}].role")
        parsed.append({"role": m["role"], "content": _content(m, i)})
    if parsed[-1]["role"] != "user":
        raise _bad("the last message must be the user's", "messages")
    extra = body.get("appo") or {}
    if not isinstance(extra, dict):
        raise _bad("'appo' must be an object: {max_tool_calls, deadline}", "appo")
    unknown = sorted(set(extra) - {"max_tool_calls", "deadline"})
    if unknown:
        raise _bad(f"appo.{unknown[0]} is not a setting; valid: max_tool_calls, deadline", "appo")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return ChatRequest(
        messages=parsed,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0.0001, 1),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 1, 1 << 30, integer=True),
        seed=_number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True),
        max_tool_calls=_number({"appo.max_tool_calls": extra.get("max_tool_calls")}, "appo.max_tool_calls",
                               0, max_tool_calls, integer=True),
        deadline=_number({"appo.deadline": extra.get("deadline")}, "appo.deadline", 0.001, deadline))


def completion(reply, model: str, engine: str, tool_format: str) -> dict:
    """The chat.completion object of a finished reply; `appo` carries what the OpenAI shape has no room for."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                     "finish_reason": "stop" if reply.finish_reason in STOPPED else "length", "logprobs": None}],
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                  "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        "appo": {"trace": reply.trace, "finish_reason": reply.finish_reason, "tool_calls": reply.tool_calls,
                 "response": reply.response, "seconds": reply.seconds, "engine": engine,
                 "tool_format": tool_format},
    }
