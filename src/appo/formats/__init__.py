"""How tool calls and their results look to the model: one interface, two formats (`tools.format`).

- `tags` (`TagsFormat`): appo's own protocol. The system prompt lists the tools, a call is `<name>payload</name>`
  (the engine stops on the closing tag), a result is spliced in as ` <result>\\n...\\n</result>`.
- `chat_template` (`ChatTemplateFormat`): the model's own tool calling. The tool schemas go to
  `tokenizer.apply_chat_template(messages, tools=schemas, add_generation_prompt=True)`; the assistant turn ends at
  EOS / end-of-turn with one or several calls in the template's syntax (Hermes/Qwen `<tool_call>{json}</tool_call>`,
  Llama 3.1 JSON); what is appended is the template's rendering of the new tool message(s) plus the next
  generation prompt: the difference between rendering a conversation with and without them. Sampled tokens are
  never re-rendered, so a rollout stays token-in/token-out.

Every consumer (rollouts, APPO/ARPO branching, SFT traces, evaluation, the HTML view, `appo chat`/`serve`) goes
through the object `build_format` returns:

    fmt.prompt_ids(messages)            # the prompt's token ids (chat_template: with the tools' schemas)
    fmt.prompt_text(messages)           # the same as text
    fmt.stop_strings                    # engine stop strings that end a segment whose calls are due
    fmt.calls_due(turn_text, stop, eos) # does the current turn end with calls to run?
    fmt.parse_calls(turn_text, stop)    # -> [ParsedCall]: (tool, payload, arguments) or an error for the model
    fmt.result_ids(results)             # token ids appended after the turn's calls (loss mask 0)
    fmt.result_text(results)           # the same as text

`turn_text` is the text generated since the last appended results (special tokens kept); `results` is a list of
`(ParsedCall, text, own)` in the order of the calls, `own` marking the loop's own messages (limit notices,
errors), the only result text not escaped. Tool output can never inject a special token or a protocol tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appo.errors import UserError

FORMATS = ("tags", "chat_template")
TEMPLATE_DIR = Path(__file__).parent / "templates"
# The prefix-preserving templates appo ships, by the name `tools.chat_template` takes.
SHIPPED_TEMPLATES = {"chatml": "chatml.jinja", "qwen3": "qwen3.jinja", "llama3": "llama3.jinja"}


@dataclass(frozen=True)
class ParsedCall:
    """One call read from a turn. `error` is set when it cannot run (the text the model gets back instead);
    `kind` then says why, for the metrics: 'json' (malformed), 'unknown_tool', 'arguments', 'empty'."""
    tool: str                            # the tool's name ('' when it could not be read)
    payload: str = ""                    # what the tool gets as ToolCall.payload
    arguments: dict[str, Any] | None = None   # the JSON arguments (chat_template), as the model wrote them
    text: str = ""                       # the call as generated
    error: str | None = None
    kind: str | None = None
    meta: dict = field(default_factory=dict)


class ToolFormat(Protocol):
    name: str
    stop_strings: tuple[str, ...]

    def prompt_text(self, messages: list[dict]) -> str: ...

    def prompt_ids(self, messages: list[dict]) -> list[int]: ...

    def calls_due(self, turn_text: str, stop: str | None, eos: bool) -> bool: ...

    def parse_calls(self, turn_text: str, stop: str | None) -> list[ParsedCall]: ...

    def result_text(self, results: list[tuple[ParsedCall, str, bool]]) -> str: ...

    def result_ids(self, results: list[tuple[ParsedCall, str, bool]]) -> list[int]: ...


def template_source(name_or_path: str) -> str:
    """The Jinja text of a shipped template (by name) or of a file; one-line UserError otherwise."""
    if name_or_path in SHIPPED_TEMPLATES:
        return (TEMPLATE_DIR / SHIPPED_TEMPLATES[name_or_path]).read_text()
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"tools.chat_template={name_or_path}: cannot read the file ({e})") from None
    raise UserError(f"tools.chat_template={name_or_path!r}: not a template appo ships nor a file; choose one of: "
                    f"{', '.join(SHIPPED_TEMPLATES)}, a path to a Jinja file, or null (the tokenizer's own)")


def build_format(name: str, tokenizer, specs: list, chat_template: str | None = None) -> ToolFormat:
    """The format `name` (`tools.format`) for `tokenizer` and the run's tool specs (`ToolSpec`s: name,
    description, JSON schema). With 'chat_template', `chat_template` (a shipped name or a path; None keeps the
    tokenizer's own) is set on the tokenizer, so prompts, traces and checkpoints use that one template, and the
    start-up probe runs: a template that is not prefix-preserving stops here with one line."""
    if name == "tags":
        from appo.formats.tags import TagsFormat

        return TagsFormat(tokenizer, specs)
    if name == "chat_template":
        from appo.formats.chat_template import ChatTemplateFormat

        if chat_template is not None:
            tokenizer.chat_template = template_source(chat_template)
        return ChatTemplateFormat(tokenizer, specs, template_name=chat_template)
    raise UserError(f"tools.format={name!r} is not valid; choose one of: {', '.join(FORMATS)}")
