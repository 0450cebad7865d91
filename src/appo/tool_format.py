"""How tool calls and their results appear in a response: the one definition that rollouts, SFT traces
and SFT encoding share, so that the model is trained on exactly the text it sees at run time."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

RESULT_TEMPLATE = " <result>\n{text}\n</result>"
# The protocol's own tags; every registered tool's name is a tag as well.
PROTOCOL_TAGS = ("think", "answer", "result")


@lru_cache(maxsize=64)
def _tag_pattern(names: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"<(/?)(" + "|".join(re.escape(n) for n in PROTOCOL_TAGS + names) + r")>")


def escape_tags(text: str, tool_names: Iterable[str] = ()) -> str:
    """Tool output with the protocol's tags (<result>, </answer>, <think>) and the tools' tags (<python>,
    <query>, ... as `tool_names` lists them) made inert: `<` and `>` of those tags become `&lt;` and `&gt;`,
    so a program cannot end its result early, open a fake answer, or fake a tool call in what the model
    reads next. All other text is left as it is."""
    return _tag_pattern(tuple(sorted(set(tool_names)))).sub(r"&lt;\1\2&gt;", text)


def result_token_ids(tokenizer, text: str, escape: bool = True, tool_names: Iterable[str] = ()) -> list[int]:
    """The tokens of a spliced tool result. Special-token strings inside tool output (say a program that
    prints "<|im_end|>") stay plain text: untrusted output must not inject an EOS or a chat-turn marker;
    protocol and tool tags are escaped (`escape_tags`) for the same reason. `escape=False` is for the loop's
    own messages (EMPTY_TEXT names the tags to use)."""
    text = escape_tags(text, tool_names) if escape else text
    return tokenizer.encode(RESULT_TEMPLATE.format(text=text), add_special_tokens=False, split_special_tokens=True)
