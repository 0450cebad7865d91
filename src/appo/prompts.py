"""The prompt record every layer shares (data builds it, rollouts sample from it, rewards and evaluation
grade against it), with the facts about its gold answers and sources that those layers agree on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# Sources whose answers are mathematical objects (lower-cased; a "a/b" source also matches by its last part).
MATH_SOURCES = frozenset({
    "gsm8k", "math", "math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench",
    "lighteval/math", "math_dapo", "numina_math", "appo/arithmetic",
})


@dataclass
class Prompt:
    messages: list[dict]  # chat messages up to the assistant turn
    prompt_ids: list[int]  # chat template with the generation prompt, tokenized
    ground_truth: str | list[str]  # one answer or a list of aliases
    data_source: str
    ability: str | None = None  # "math" / "qa" / None
    index: int = 0  # extra_info.index when the row has one, else its position
    extra: dict = field(default_factory=dict)


def as_gold_list(ground_truth: str | Iterable[str] | int | float) -> list[str]:
    """One gold answer or several aliases, as strings (numbers such as AIME's JSON ints become text)."""
    if isinstance(ground_truth, str):
        return [ground_truth]
    if isinstance(ground_truth, (int, float)):
        return [str(ground_truth)]
    return [g if isinstance(g, str) else str(g) for g in ground_truth]


def is_math(prompt: Prompt) -> bool:
    if prompt.ability == "math":
        return True
    source = (prompt.data_source or "").lower()
    return source in MATH_SOURCES or source.rsplit("/", 1)[-1] in MATH_SOURCES
