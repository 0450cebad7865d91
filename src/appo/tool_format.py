"""How tool calls and their results appear in a response: the one definition that rollouts, SFT traces
and SFT encoding share, so that the model is trained on exactly the text it sees at run time."""

from __future__ import annotations

RESULT_TEMPLATE = " <result>\n{text}\n</result>"


def result_token_ids(tokenizer, text: str) -> list[int]:
    """The tokens of a spliced tool result. Special-token strings inside tool output (say a program that
    prints "<|im_end|>") stay plain text: untrusted output must not inject an EOS or a chat-turn marker."""
    return tokenizer.encode(RESULT_TEMPLATE.format(text=text), add_special_tokens=False,
                            split_special_tokens=True)
