"""`appo chat`: talk to a trained agent in the terminal. Each message runs the agent loop with its tools
(sandboxed python, the configured search); calls and results are shown as they happen, then the answer.
The next message continues the conversation; /reset starts a new one, /exit (or Ctrl-D) ends.

    appo chat --model runs/quickstart/final
"""

from __future__ import annotations

import argparse
import sys

from appo.commands.common import setup_logging
from appo.commands.serve import add_agent_args, agent_config

RESULT_LINES = 12  # longer tool output is cut in the terminal (the model reads all of it)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appo chat", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_agent_args(p)
    return p


def _indent(text: str, prefix: str) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    if len(lines) > RESULT_LINES:
        lines = lines[:RESULT_LINES] + [f"... ({len(lines) - RESULT_LINES} more lines)"]
    return "\n".join(prefix + line for line in lines)


def _show(event) -> None:
    if event.kind == "call":
        print(f"  [{event.tool}] call:\n{_indent(event.payload, '    ')}", flush=True)
    else:
        status = "result" if event.result.ok else "error"
        print(f"  [{event.tool}] {status} ({event.result.seconds:.1f} s):\n{_indent(event.result.text, '    ')}",
              flush=True)


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    setup_logging()
    cfg = agent_config(args, "appo chat")
    from appo.serve.setup import engine_choice, load_served

    engine_choice(cfg)
    served = load_served(cfg)
    interactive = sys.stdin.isatty()
    print(f"appo chat: {served.model_name} ({served.engine_name} engine, tools: "
          f"{', '.join(served.agent.tools.names) or 'none'}); /reset starts over, /exit ends", flush=True)
    messages: list[dict] = []
    try:
        while True:
            try:
                line = input("you> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                messages = []
                print("(new conversation)", flush=True)
                continue
            if not interactive:
                print(f"you> {text}", flush=True)
            messages.append({"role": "user", "content": text})
            try:
                reply = served.agent.reply(messages, on_event=_show)
            except KeyboardInterrupt:
                messages.pop()
                print("\n(interrupted; the message is dropped)", flush=True)
                continue
            except ValueError as e:  # the conversation no longer fits the prompt budget
                messages.pop()
                print(f"(not sent: {e}; /reset starts over)", flush=True)
                continue
            messages.append({"role": "assistant", "content": reply.content})
            note = "" if reply.finish_reason in ("eos", "answer") else f"  (stopped: {reply.finish_reason})"
            print(f"assistant> {reply.content}{note}", flush=True)
    finally:
        served.close()
    return 0
