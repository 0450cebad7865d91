"""How tool calls and their results appear in a response: the one definition that rollouts, SFT traces
and SFT encoding share, so that the model is trained on exactly the text it sees at run time."""

from __future__ import annotations

import re

RESULT_TEMPLATE = " <result>\n{text}\n</result>"
# Tags of the agent protocol: inside tool output they are shown escaped ("&lt;/result&gt;"), so a program
# cannot end its result early, open a fake answer, or fake a tool call in what the model reads next.
_PROTOCOL_TAG = re.compile(r"<(/?)(answer|result|think|python|search)>")


def escape_tags(text: str) -> str:
    """Tool output with the protocol's tags (<result>, </answer>, <python>, ...) made inert: `<` and `>`
    of those tags become `&lt;` and `&gt;`; all other text is left as it is."""
    return _PROTOCOL_TAG.sub(r"&lt;\1\2&gt;", text)


def result_token_ids(tokenizer, text: str, escape: bool = True) -> list[int]:
    """The tokens of a spliced tool result. Special-token strings inside tool output (say a program that
    prints "<|im_end|>") stay plain text: untrusted output must not inject an EOS or a chat-turn marker;
    protocol tags are escaped (`escape_tags`) for the same reason. `escape=False` is for the loop's own
    messages (EMPTY_TEXT names the tags to use)."""
    text = escape_tags(text) if escape else text
    return tokenizer.encode(RESULT_TEMPLATE.format(text=text), add_special_tokens=False, split_special_tokens=True)
