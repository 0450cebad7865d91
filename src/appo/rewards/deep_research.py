"""The reference training reward (`deep_research.compute_score` of the APPO/ARPO code), reproduced exactly.

    score = -1    the response breaks the tag format, or no boxed answer can be read from <answer>
          = F1    token F1 of the last boxed answer against the best gold alias (SQuAD normalisation,
                  yes/no/noanswer only match themselves), when F1 > 0
          + 0.1   on top of that when the response contains both "</search>" and "</python>"
          = 0     well formed but wrong

The format rule (`format_error`) checks the whole response text, `<result>` blocks included:
<think>/</think> counts equal and non-zero; exactly one <answer> and one </answer>; every <search> (and
every <python>) is followed by its closing tag, then <result>, then </result>, in that order; and the
answer span holds "\\boxed{" and "}". Reading the answer follows the reference quirks on purpose: a
"\\boxed " (with a space) anywhere in the answer wins over braces and runs to the next "$"; braces are
matched from the last "\\boxed"; a last "\\boxed" without a balanced brace group is a format failure.
The only departures are where the reference raises: non-string gold answers (e.g. JSON ints) are
compared as text.
"""

from __future__ import annotations

import re

from appo.rewards.qa import token_f1

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _tool_blocks_error(text: str, tag: str) -> str | None:
    """Every <tag> must be followed by </tag>, then <result>, then </result>, each after the previous."""
    pos = 0
    while (start := text.find(f"<{tag}>", pos)) != -1:
        result = text.find("<result>", start)
        close = text.find(f"</{tag}>", start)
        # A missing <result> (-1) makes the next search start at the last character, as in the reference.
        result_end = text.find("</result>", result)
        if -1 in (result, close, result_end):
            return f"{tag}/result tags are incomplete"
        if not start < close < result < result_end:
            return f"{tag}/result tags are nested in the wrong order"
        pos = result_end
    return None


def format_error(text: str) -> str | None:
    """Why `text` fails the reference format check, or None when it passes."""
    if text.count("<think>") != text.count("</think>"):
        return "<think> </think> not paired"
    if text.count("<think>") == 0:
        return "<think> or </think> not found"
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return "<answer> or </answer> not found"
    for tag in ("search", "python"):
        if (error := _tool_blocks_error(text, tag)) is not None:
            return error
    start, end = text.find("<answer>"), text.find("</answer>")
    if start > end:
        return "<answer> must be before </answer>"
    span = text[start:end]
    if "\\boxed{" not in span or "}" not in span:
        return "answer is missing \\boxed{} format"
    return None


def last_boxed(text: str) -> str | None:
    """The last "\\boxed{...}" (or "\\fbox{...}") group of `text`, wrapper included; None when absent.

    A "\\boxed " with a space anywhere takes precedence: the text after its last occurrence, cut at "$".
    """
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def unbox(boxed: str | None) -> str | None:
    """Strip the "\\boxed " prefix or the "\\boxed{...}" wrapper; None when `boxed` is neither."""
    if boxed is None:
        return None
    if "\\boxed " in boxed:
        return boxed[len("\\boxed ") :] if boxed.startswith("\\boxed ") else None
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{") : -1]
    return None


def extract_boxed_answer(response: str) -> str | None:
    """The reference's answer: the last boxed group inside the first <answer>...</answer> block."""
    match = _ANSWER.search(response.strip())
    if match is None:
        return None
    return unbox(last_boxed(match.group(1)))


def deep_research_score(response: str, ground_truth) -> float:
    """The reference reward of one decoded response (tool results included) against the gold answer(s)."""
    if format_error(response) is not None:
        return -1.0
    answer = extract_boxed_answer(response)
    if answer is None:
        return -1.0
    f1 = token_f1(answer, ground_truth)
    if f1 <= 0:
        return 0.0
    if "</search>" in response and "</python>" in response:
        return f1 + 0.1
    return f1
