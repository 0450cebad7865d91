"""One assistant reply of a conversation, produced by the training tool loop (same engine, tools, call
parsing and result splicing as rollouts and evaluation), with its trace of tool calls and results, a
deadline, and live events for a terminal.

The loop itself is untouched: the deadline is enforced by an engine wrapper that refuses to start another
decode step (session engines), stream step or generation call once it has passed, and the trace comes from
a tool-runner wrapper that sees every call the loop runs and its result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, ToolLoop
from appo.tools.base import ToolCall, ToolResult


class DeadlineExceeded(Exception):
    """The reply's deadline passed; the loop stops where it is."""


class PromptTooLong(ValueError):
    pass


class _Deadline:
    def __init__(self, at: float | None):
        self.at = at

    def check(self) -> None:
        if self.at is not None and time.monotonic() >= self.at:
            raise DeadlineExceeded


class _CheckedSteps:
    """A decode session or stream whose every `step` first checks the deadline."""

    def __init__(self, inner, deadline: _Deadline):
        self._inner, self._deadline = inner, deadline

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    def step(self, *args, **kwargs):
        self._deadline.check()
        return self._inner.step(*args, **kwargs)


class DeadlineEngine:
    """`engine` that raises DeadlineExceeded instead of generating once the deadline has passed."""

    def __init__(self, engine, deadline: _Deadline):
        self._engine, self._deadline = engine, deadline

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests):
        self._deadline.check()
        return self._engine.generate(requests)

    def open_session(self):
        return _CheckedSteps(self._engine.open_session(), self._deadline)

    def open_stream(self):
        return _CheckedSteps(self._engine.open_stream(), self._deadline)


@dataclass
class ToolEvent:
    kind: str                      # "call" (before it runs) or "result"
    tool: str
    payload: str
    result: ToolResult | None = None


class TracedTools:
    """The tool runner as the loop sees it, reporting each call before it runs and its result when done.
    `ran` lists the calls in the order they were started (the order of the loop's `tool_log`), each with its
    result once it has one; calls of one turn may finish in any order."""

    def __init__(self, tools, on_event: Callable[[ToolEvent], None] | None = None):
        self._tools, self._on_event = tools, on_event
        self.ran: list[list] = []    # [ToolCall, ToolResult | None]

    def __getattr__(self, name):
        return getattr(self._tools, name)

    def _called(self, call: ToolCall) -> list:
        entry = [call, None]
        self.ran.append(entry)
        if self._on_event is not None:
            self._on_event(ToolEvent("call", call.tool, call.payload))
        return entry

    def _done(self, entry: list, result: ToolResult) -> None:
        entry[1] = result
        if self._on_event is not None:
            self._on_event(ToolEvent("result", entry[0].tool, entry[0].payload, result))

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        entries = [self._called(call) for call in calls]
        results = self._tools.run(calls)
        for entry, result in zip(entries, results):
            self._done(entry, result)
        return results

    def submit(self, call: ToolCall) -> Future:
        submit = getattr(self._tools, "submit", None)
        if submit is None:
            done: Future = Future()
            done.set_result(self.run([call])[0])
            return done
        entry = self._called(call)
        outer: Future = Future()

        def relay(inner: Future) -> None:  # recorded before the loop can see the result
            try:
                result = inner.result()
            except BaseException as e:  # noqa: BLE001 - handed on to whoever waits
                outer.set_exception(e)
                return
            self._done(entry, result)
            outer.set_result(result)

        submit(call).add_done_callback(relay)
        return outer


@dataclass
class Reply:
    content: str                   # what the model wrote after its last tool result (special tokens removed)
    finish_reason: str             # the loop's: eos, answer, length, call_limit; or deadline
    trace: list[dict] = field(default_factory=list)
    response: str = ""             # the whole response as the model saw it, tool results included
    prompt_tokens: int = 0
    completion_tokens: int = 0     # generated tokens (tool results not counted)
    tool_calls: int = 0
    seconds: float = 0.0


@dataclass
class Agent:
    """The served policy: an engine, the tool runner and the loop settings of the config, and the system
    prompt conversations that bring none are given."""

    engine: object
    tools: object
    settings: RolloutLoopSettings
    system_prompt: str | None = None
    max_prompt_tokens: int | None = None
    fmt: object = None   # the tool format (appo.formats.build_format): how prompts show the tools; None: tags


    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered by the model's chat template, ready for the assistant's reply."""
        if self.system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}] + list(messages)
        if self.fmt is not None:
            ids = self.fmt.prompt_ids(messages)
        else:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"the conversation has {len(ids)} tokens, more than the {self.max_prompt_tokens} "
                                "this server takes (data.max_prompt_length)")
        return ids

    def reply(self, messages: list[dict], *, temperature: float | None = None, top_p: float | None = None,
              max_tokens: int | None = None, max_tool_calls: int | None = None, seed: int | None = None,
              deadline: float | None = None, on_event: Callable[[ToolEvent], None] | None = None) -> Reply:
        """Run the tool loop for the next assistant turn of `messages`. `deadline`: a time.monotonic() value;
        the others lower (never raise) the configured settings."""
        t0 = time.monotonic()
        ids = self.prompt_ids(messages)
        s = self.settings
        settings = dataclasses.replace(
            s, temperature=s.temperature if temperature is None else temperature,
            top_p=s.top_p if top_p is None else top_p,
            max_response_length=min(s.max_response_length, max_tokens or s.max_response_length),
            call_limit=min(s.call_limit, s.call_limit if max_tool_calls is None else max_tool_calls))
        tools = TracedTools(self.tools, on_event)
        loop = ToolLoop(DeadlineEngine(self.engine, _Deadline(deadline)), tools, settings)
        row = loop.add(LoopStart.fresh(ids, seed=seed))
        try:
            loop.run()
        except DeadlineExceeded:
            row.traj.finish_reason = "deadline"
        return self._reply(row.traj, ids, tools.ran, time.monotonic() - t0)

    def _reply(self, traj, prompt_ids: list[int], ran: list, seconds: float) -> Reply:
        tok = self.tokenizer
        trace, executed = [], iter(ran)
        pending = next(executed, None)
        for entry in traj.tool_log:
            shown = tok.decode(traj.token_ids[entry["start"]:entry["end"]], skip_special_tokens=False)
            item = {"tool": entry["tool"], "input": entry["payload"], "ok": bool(entry["ok"]),
                    "seconds": round(float(entry["seconds"]), 4), "shown": shown}
            if pending is not None and pending[1] is not None and \
                    (pending[0].tool, pending[0].payload) == (entry["tool"], entry["payload"]):
                item["output"], item["executed"] = pending[1].text, True
                pending = next(executed, None)
            else:  # the loop's own message (an empty call, a call over the budget): never executed
                item["output"], item["executed"] = shown, False
            trace.append(item)
        turn_start = max((e["end"] for e in traj.tool_log), default=0)
        return Reply(content=tok.decode(traj.token_ids[turn_start:], skip_special_tokens=True).strip(),
                     finish_reason=traj.finish_reason or "length", trace=trace,
                     response=tok.decode(traj.token_ids, skip_special_tokens=False),
                     prompt_tokens=len(prompt_ids), completion_tokens=int(sum(traj.generated)),
                     tool_calls=traj.tool_calls, seconds=round(seconds, 3))
