"""A whole tool-calling conversation as token ids, laid out exactly as the tool loop builds a rollout of it
(`tools.format=chat_template`), for cold-start SFT.

The loop's sequence is: the prompt (`fmt.prompt_ids` of the turns before the first assistant turn), then per
assistant turn the tokens the policy samples (the turn's text up to and including its EOS / end-of-turn token),
then, when the turn made calls, `fmt.result_ids` of its results (the template's rendering of the tool messages
and the next generation prompt; never trained). An assistant turn's text is what the template renders for it
after its generation prompt: the difference between rendering the conversation with and without it. So an SFT
example and a rollout that wrote the same turns are the same token ids, and only assistant tokens are trained.
"""

from __future__ import annotations

from typing import Any

from appo.formats import ParsedCall


def call(name: str, arguments: dict[str, Any]) -> dict:
    """One entry of an assistant message's `tool_calls`, in the shape chat templates read."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def call_name(entry: dict) -> str:
    return (entry.get("function") or entry).get("name", "")


def assistant_text(fmt, history: list[dict], message: dict) -> str:
    """What the policy writes for `message` after `history`: its rendering after the generation prompt,
    up to and including the turn's EOS."""
    before = fmt.render(history, True)
    after = fmt.render(history + [message], False)
    end = fmt._turn_end_in(after)
    if not after.startswith(before) or end is None or end <= len(before):
        raise ValueError(f"{fmt.template_name} does not render this assistant message after its generation "
                         f"prompt, ending with {fmt.turn_end!r}: {after[len(before):][:120]!r}")
    return after[len(before):end]


def encode_chat(fmt, messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, response ids, loss mask) of a conversation with tool calls: assistant messages
    (`tool_calls` for their calls), each call answered by one `tool` message in order, and an assistant
    message without calls last. The mask is 1 on the assistant turns' tokens, 0 on the results."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise ValueError("an SFT conversation needs at least one assistant turn")
    prompt = fmt.prompt_ids(messages[:first])
    response: list[int] = []
    mask: list[int] = []
    i = first
    while i < len(messages):
        message = messages[i]
        if message["role"] != "assistant":
            raise ValueError(f"message {i} is a '{message['role']}' message where the assistant's turn is due "
                             "(after the first assistant turn come only tool messages answering its calls)")
        ids = fmt.encode(assistant_text(fmt, messages[:i], message))
        response += ids
        mask += [1] * len(ids)
        calls = message.get("tool_calls") or []
        end = i + 1
        while end < len(messages) and messages[end]["role"] == "tool":
            end += 1
        results = messages[i + 1:end]
        if calls and len(results) != len(calls):
            raise ValueError(f"assistant message {i} makes {len(calls)} call(s) but {len(results)} tool "
                             "message(s) follow it; each call needs its result")
        if not calls and results:
            raise ValueError(f"message {i + 1} is a tool message but assistant message {i} made no call")
        if not calls and end < len(messages):
            raise ValueError(f"assistant message {i} makes no call, so the rollout ends there; message {end} "
                             "follows it")
        if calls:
            ids = fmt.result_ids([(ParsedCall(r.get("name") or call_name(c)), str(r["content"]), False)
                                  for c, r in zip(calls, results, strict=True)])
            response += ids
            mask += [0] * len(ids)
        i = end
    if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
        raise ValueError("an SFT conversation must end with an assistant message without calls (the answer)")
    return prompt, response, mask
