"""The chat template's own tool calling as a ToolFormat, token-exact.

The prompt is `apply_chat_template(messages, tools=schemas, add_generation_prompt=True)`. The model's turn ends at
EOS / end-of-turn; the calls in it are read in the template's syntax, found by rendering a call and reading it
back: Hermes/Qwen (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, several per turn) or Llama 3.1
(the whole turn is `{"name": ..., "parameters": {...}}`, several separated by ';'). Each call becomes a tool
name and the payload the tool takes, or an error the model gets back as its result (malformed JSON, an unknown
tool, arguments that do not fit the schema).

What is appended after the turn is the template's own rendering of the new tool messages and the next
generation prompt: a conversation is rendered without and with them, and the difference from the end of the
assistant turn (its EOS, the token the model stopped on) is taken. The sampled tokens are never rendered
again. This is only exact when the template is prefix-preserving (a message renders the same whatever follows
it), which `probe` checks at start-up on a conversation shaped like the loop's.
"""

from __future__ import annotations

import json
import re
from typing import Any

from appo.errors import UserError
from appo.formats import SHIPPED_TEMPLATES, ParsedCall

_HERMES_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.S)
# Framing tags of the families' turns, made inert in tool output like the tags format's protocol tags.
_FRAMING = re.compile(r"<(/?)(tool_call|tool_response|think)>")
_JSON_TYPES = {"string": str, "boolean": bool, "array": list, "object": dict}
CALL_SHAPES = {"hermes": '<tool_call>\n{"name": "<tool>", "arguments": {...}}\n</tool_call>',
               "llama3": '{"name": "<tool>", "parameters": {...}}'}


class ChatTemplateFormat:
    name = "chat_template"
    stop_strings: tuple[str, ...] = ()  # a turn ends at EOS / end-of-turn, where all its calls are known

    def __init__(self, tokenizer, specs: list, template_name: str | None = None):
        self.tokenizer = tokenizer
        self.specs = {s.name: s for s in specs}
        self.schemas = [{"type": "function", "function": s.schema()} for s in specs]
        self.template_name = template_name or f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"
        self.turn_end = tokenizer.eos_token
        specials = set(getattr(tokenizer, "all_special_tokens", ()))
        specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        self._specials = sorted((s for s in specials if s), key=len, reverse=True)
        self.syntax = "hermes"
        self._base: str | None = None
        probe(self)

    # ------------------------------------------------------------------------------------------ prompts

    def render(self, messages: list[dict], generation_prompt: bool, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.schemas or None, tokenize=False,
                                                  add_generation_prompt=generation_prompt, **kwargs)

    def prompt_text(self, messages: list[dict]) -> str:
        return self.render(messages, True)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.prompt_text(messages))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -------------------------------------------------------------------------------------------- calls

    def calls_due(self, turn_text: str, stop: str | None, eos: bool) -> bool:
        return eos and bool(self.parse_calls(turn_text))

    def parse_calls(self, turn_text: str, stop: str | None = None) -> list[ParsedCall]:
        """The calls of a turn, in order; a call the model only thinks about (inside <think>) is not one."""
        body = self._strip_end(turn_text)
        if "</think>" in body:
            body = body.rsplit("</think>", 1)[1]
        elif "<think>" in body:
            body = body.split("<think>", 1)[0]
        return self._parse_llama(body) if self.syntax == "llama3" else self._parse_hermes(body)

    def _strip_end(self, text: str) -> str:
        """The turn without the special tokens it ends on (EOS, end-of-turn)."""
        changed = True
        while changed:
            changed = False
            text = text.rstrip()
            for s in self._specials:
                if text.endswith(s):
                    text, changed = text[:-len(s)], True
        return text

    def _parse_hermes(self, body: str) -> list[ParsedCall]:
        calls = []
        for m in _HERMES_CALL.finditer(body):
            if not m.group(2):
                calls.append(self._error("", m.group(0), "json", "the call has no closing </tool_call>"))
                continue
            calls.append(self._decode(m.group(1), m.group(0)))
        return calls

    def _parse_llama(self, body: str) -> list[ParsedCall]:
        body = body.strip().removeprefix("<|python_tag|>").lstrip()
        if not body.startswith("{"):
            return []  # an answer, not a call
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except json.JSONDecodeError as e:
                calls.append(self._error("", body[pos:], "json", f"not valid JSON ({e.msg})"))
                break
            calls.append(self._check(obj, body[pos:end]))
            pos = end
            rest = body[pos:].lstrip().lstrip(";").lstrip()
            if not rest.startswith("{"):
                break  # text after the calls is not a call
            pos = len(body) - len(rest)
        return calls

    def _decode(self, raw: str, text: str) -> ParsedCall:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            return self._error("", text, "json", f"not valid JSON ({e.msg})")
        return self._check(obj, text)

    def _check(self, obj: Any, text: str) -> ParsedCall:
        """A decoded call against the tools' schemas."""
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return self._error("", text, "json", "a call is a JSON object with a \"name\" and its arguments")
        name = obj["name"]
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                pass
        spec = self.specs.get(name)
        if spec is None:
            return ParsedCall(name, text=text, kind="unknown_tool",
                              error=f"Error: unknown tool '{name}'; available tools: {', '.join(self.specs) or 'none'}")
        if not isinstance(args, dict):
            return self._error(name, text, "arguments", f"the arguments of {name} must be a JSON object")
        problem = _argument_problem(spec, args)
        if problem is not None:
            return self._error(name, text, "arguments", f"{name}: {problem}")
        return ParsedCall(name, _payload(spec, args), arguments=args, text=text)

    def _error(self, tool: str, text: str, kind: str, what: str) -> ParsedCall:
        return ParsedCall(tool, text=text, kind=kind,
                          error=f"Error: {what}; call a tool as {CALL_SHAPES[self.syntax]}")

    # ------------------------------------------------------------------------------------------ results

    def result_text(self, results: list[tuple[ParsedCall, str, bool]]) -> str:
        """The template's rendering of the results as tool messages plus the next generation prompt, from
        just after the end of the assistant turn that made the calls."""
        base = _probe_conversation(self)[1:3]
        tools = [{"role": "tool", "name": call.tool or "error", "content": text if own else self.defuse(text)}
                 for call, text, own in results]
        if self._base is None:  # the conversation up to the end of the assistant turn, the same for every call
            before = self.render(base, False)
            cut = self._turn_end_in(before)
            self._base = before[:cut] if cut is not None else None
        after = self.render(base + tools, True)
        if self._base is None or not after.startswith(self._base):
            raise RuntimeError(f"{self.template_name} did not render tool messages after an assistant turn as "
                               "an extension of it (the start-up probe should have refused it)")
        return after[len(self._base):]

    def result_ids(self, results: list[tuple[ParsedCall, str, bool]]) -> list[int]:
        return self.encode(self.result_text(results))

    def defuse(self, text: str) -> str:
        """Tool output that cannot end or open a turn: special-token strings get a zero-width space after
        their first character (they stay readable text, never a token the template uses), framing tags
        (<tool_call>, <tool_response>, <think>) become &lt;...&gt;."""
        for s in self._specials:
            if s in text:
                text = text.replace(s, s[0] + "\u200b" + s[1:])
        return _FRAMING.sub(r"&lt;\1\2&gt;", text)

    def _turn_end_in(self, rendered: str) -> int | None:
        at = rendered.rfind(self.turn_end) if self.turn_end else -1
        return None if at < 0 else at + len(self.turn_end)


def _argument_problem(spec, args: dict) -> str | None:
    params = {p.name: p for p in getattr(spec, "params", ())}
    unknown = [k for k in args if k not in params]
    missing = [p.name for p in params.values() if p.required and p.name not in args]
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)} (it takes: {', '.join(params) or 'none'})"
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    for k, v in args.items():
        if not _fits(v, params[k].type):
            return f"argument '{k}' must be {params[k].type}, got {json.dumps(v)}"
    return None


def _fits(value: Any, json_type: str) -> bool:
    if isinstance(value, bool):
        return json_type == "boolean"
    if json_type in ("number", "integer"):
        return isinstance(value, int) or (json_type == "number" and isinstance(value, float))
    want = _JSON_TYPES.get(json_type)
    return want is None or isinstance(value, want)


def _payload(spec, args: dict) -> str:
    """What the tool takes as ToolCall.payload: the text of a one-string-argument tool (python's code, search's
    query), else the arguments as a JSON object (as `ToolSpec.parse` reads them)."""
    params = getattr(spec, "params", ())
    if len(params) == 1 and params[0].type == "string" and params[0].name in args:
        return args[params[0].name]
    return json.dumps(args, ensure_ascii=False)


# ---------------------------------------------------------------------------------------- start-up probe


def _example_value(json_type: str) -> Any:
    return {"string": "17 * 23 - 5", "integer": 3, "number": 1.5, "boolean": True, "array": [1],
            "object": {"k": 1}}.get(json_type, "x")


def _probe_conversation(fmt: ChatTemplateFormat) -> list[dict]:
    """System, user, an assistant turn that thinks and calls the first tool, its result, a final answer:
    the shape of every conversation the tool loop builds."""
    spec = next(iter(fmt.specs.values()), None)
    name = spec.name if spec is not None else "python"
    args = {p.name: _example_value(p.type) for p in getattr(spec, "params", ()) if p.required}
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 17 * 23 - 5?"},
        {"role": "assistant", "content": "<think>\nI will compute it.\n</think>\n\n",
         "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "name": name, "content": "386"},
        {"role": "assistant", "content": "<think>\nThe tool says 386.\n</think>\n\nThe answer is \\boxed{386}."},
    ]


def _shown(schema: dict, rendered: str) -> bool:
    """Whether a rendering shows a tool: its name and the start of its description (as text or as JSON)."""
    head = schema["description"][:40]
    return schema["name"] in rendered and (head in rendered or json.dumps(head, ensure_ascii=False)[1:-1] in rendered)


def shipped_fix(template: str) -> str:
    """The name of the prefix-preserving template appo ships for the family `template` belongs to."""
    if "<|eot_id|>" in template or "ipython" in template:
        return "llama3"
    if "think>" in template or "reasoning_content" in template or "enable_thinking" in template:
        return "qwen3"
    return "chatml"


def probe(fmt: ChatTemplateFormat) -> None:
    """Refuse a template the loop cannot use token-exactly, with one line naming it and the fix: it must
    render the tools' schemas, start each assistant turn with its generation prompt, end it with EOS, write a
    call in a syntax appo reads back, and leave every earlier turn as it was when a tool message or the next
    assistant turn is added (QwQ's and DeepSeek-R1's templates drop the <think> block of every earlier assistant
    turn; Qwen3's drops those before the last user message only, which a one-question rollout never has)."""
    template = fmt.tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default") or ""
    fix = shipped_fix(template or "")
    where = fmt.template_name

    def refuse(what: str) -> UserError:
        advice = (f"use the prefix-preserving variant appo ships: tools.chat_template={fix}"
                  if fmt.template_name not in SHIPPED_TEMPLATES else "pick another tools.chat_template")
        return UserError(f"tools.format=chat_template: {where} {what}; {advice} (docs/tool-formats.md)")

    if not template:
        raise refuse("is missing (the tokenizer has no chat template)")
    conv = _probe_conversation(fmt)
    try:
        p0 = fmt.render(conv[:2], True)
        p1 = fmt.render(conv[:3], False)
        p2 = fmt.render(conv[:4], True)
        p3 = fmt.render(conv, False)
    except Exception as e:  # a template's own raise_exception, a Jinja error
        raise refuse(f"cannot render a conversation with a tool call ({type(e).__name__}: {e})") from None
    if fmt.schemas and not all(_shown(s["function"], p0) for s in fmt.schemas):
        raise refuse("does not show the tools' schemas (apply_chat_template(tools=...) ignores them)")
    if not p1.startswith(p0):
        raise refuse("does not start an assistant turn with its own generation prompt")
    cut1 = fmt._turn_end_in(p1)
    if cut1 is None or cut1 <= len(p0):
        raise refuse(f"does not end an assistant turn with the EOS token {fmt.turn_end!r}")
    turn = p1[len(p0):cut1]
    if fmt.specs:
        name = conv[2]["tool_calls"][0]["function"]["name"]
        for syntax in ("hermes", "llama3"):
            fmt.syntax = syntax
            calls = fmt.parse_calls(turn)
            if len(calls) == 1 and calls[0].tool == name and calls[0].error is None:
                break
        else:
            raise refuse(f"writes a tool call as {turn!r}, in no syntax appo reads (Hermes/Qwen <tool_call> "
                         "JSON, Llama 3.1 JSON)")
    if not p2.startswith(p1[:cut1]):
        raise refuse("renders an assistant turn that made a call differently once its tool message follows, "
                     "so it is not prefix-preserving")
    if not p3.startswith(p2):
        raise refuse("changes earlier turns when the next assistant turn is added (it drops earlier <think> "
                     "blocks or rewrites whitespace), so it is not prefix-preserving")
    if fmt.encode(p2) != fmt.encode(p1[:cut1]) + fmt.encode(p2[cut1:]):
        raise refuse("is tokenized differently when the tool message is appended than inside the whole conversation")
    if fmt.encode(p3) != fmt.encode(p2) + fmt.encode(p3[len(p2):]):
        raise refuse("ends its generation prompt with text the tokenizer merges with the start of the answer, so "
                     "the prompt's tokens are not those of the whole conversation")
