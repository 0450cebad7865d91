"""appo's tag protocol as a ToolFormat: `<name>payload</name>` calls, ` <result>\\n...\\n</result>` results, the
system prompt (`data.system_prompt`) telling the model the tags. One call per segment: the engine stops on the
tool's closing tag."""

from __future__ import annotations

from appo.formats import ParsedCall
from appo.tool_format import result_token_ids

EMPTY_TEXT = "Error: empty <{tool}> call; put the input between <{tool}> and </{tool}>."


class TagsFormat:
    name = "tags"

    def __init__(self, tokenizer, specs: list):
        self.tokenizer = tokenizer
        self.specs = {s.name: s for s in specs}
        self.tool_names = tuple(self.specs)
        self.stop_strings = tuple(f"</{name}>" for name in self.tool_names)

    def prompt_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"]

    def calls_due(self, turn_text: str, stop: str | None, eos: bool) -> bool:
        """A segment that stopped on a closing tag; a continued prefix (stop None) that holds one."""
        if stop is not None:
            return stop in self.stop_strings
        return not eos and any(s in turn_text for s in self.stop_strings)

    def parse_calls(self, turn_text: str, stop: str | None = None) -> list[ParsedCall]:
        """The call that `stop` (else the first closing tag found in the turn) closes: the text since its
        opening tag in the current turn. An empty payload, or a closing tag with no opening tag, is an error
        for a tool that needs input (the reference ended the row silently)."""
        stop = stop or next((s for s in self.stop_strings if s in turn_text), None)
        if stop is None:
            return []
        tool = stop[2:-1]
        end = turn_text.find(stop)
        opening = turn_text.rfind(f"<{tool}>", 0, end)
        payload = turn_text[opening + len(tool) + 2:end].strip() if opening >= 0 else ""
        text = turn_text[max(opening, 0):end + len(stop)]
        spec = self.specs.get(tool)
        needs_input = spec is None or getattr(spec, "needs_input", True)
        if not payload and (opening < 0 or needs_input):
            return [ParsedCall(tool, payload, text=text, error=EMPTY_TEXT.format(tool=tool), kind="empty")]
        return [ParsedCall(tool, payload, text=text)]

    def result_text(self, results: list[tuple[ParsedCall, str, bool]]) -> str:
        return self.tokenizer.decode(self.result_ids(results), skip_special_tokens=False)

    def result_ids(self, results: list[tuple[ParsedCall, str, bool]]) -> list[int]:
        ids: list[int] = []
        for _, text, own in results:
            ids += result_token_ids(self.tokenizer, text, escape=not own, tool_names=self.tool_names)
        return ids
