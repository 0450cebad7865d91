"""Training and benchmark data as `Prompt`s: reading files, chat templating, token ids, length filtering.

Two row layouts are read, whatever the file format:
- the reference (verl) schema: `prompt` = chat messages, `reward_model.ground_truth`, `data_source`,
  `ability`, `extra_info` (the APPO/ARPO parquet files, unchanged);
- benchmark rows `{question, answer}` (also `Question`/`problem`, answer a string or a list of aliases).
  They get the reference evaluation system prompt, their `data_source` is the benchmark's folder name
  (`benchmarks/hotpotqa/test.jsonl` -> "hotpotqa"), and GSM8K rationales are cut to the number after
  "####", as the reference evaluation loader does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from appo.data.templates import REFERENCE_SYSTEM_PROMPT, fix_backspace, resolve_system_prompt
from appo.errors import UserError
from appo.json_input import parse_json
from appo.prompts import MATH_SOURCES, Prompt, as_gold_list

_QUESTION_KEYS = ("question", "Question", "problem")
_ANSWER_KEYS = ("answer", "Answer", "final_answer")
_SCHEMA_KEYS = {"prompt", "reward_model", "data_source", "ability", "extra_info", "metadata"}
_GSM8K_FINAL = re.compile(r"#### (\-?[0-9\.\,]+)")
_GENERIC_FILE_NAMES = {"test", "train", "valid", "validation", "dev", "data"}
_TOKENIZE_CHUNK = 1024


class DataError(UserError):
    """A malformed file or row; the message names the file and the row index."""


@dataclass
class DropReport:
    """How many rows were kept, and how many were dropped for each reason (with the first few indices)."""

    total: int = 0
    kept: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    max_examples: int = 5

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    def drop(self, reason: str, index: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(index)

    def __str__(self) -> str:
        text = f"kept {self.kept}/{self.total} rows"
        if not self.counts:
            return text
        parts = [
            f"{reason}: {n} (first rows: {', '.join(map(str, self.examples[reason]))})"
            for reason, n in sorted(self.counts.items())
        ]
        return f"{text}; dropped {self.dropped}: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------------- files


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open("rb") as f:  # bytes, so a bad encoding is reported with its line
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {line_no} is not valid UTF-8 (byte {e.start}: "
                                f"{raw[e.start:e.start + 1]!r})") from None
            if not line.strip():
                continue
            rows.append(parse_json(line, f"{path}: line {line_no}", DataError))
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None
    if text.lstrip().startswith("["):
        return parse_json(text, str(path), DataError)
    return _read_jsonl(path)  # JSON lines under a .json name (e.g. HLE's top.json)


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


def _read_hf(name: str, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(
            f"cannot load Hugging Face dataset '{name}' split '{split}' (offline: it must be in the "
            f"local cache or be a local path): {e}"
        ) from e
    return [dict(r) for r in ds]


def _read_dir(path: Path) -> list[dict]:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return [dict(r) for r in ds]
    files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet", ".json"))
    if len(files) == 1:
        return load_rows(files[0])
    return _read_hf(str(path), "train")


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a parquet/jsonl/json file, a saved or local Hugging Face dataset, or `hf:<name>[:split]`."""
    text = str(path)
    if text.startswith("hf:"):
        name, _, split = text[3:].partition(":")
        return _read_hf(name, split or "train")
    p = Path(text).expanduser()
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        return _read_dir(p)
    if p.suffix == ".parquet":
        return _read_parquet(p)
    if p.suffix == ".jsonl":
        return _read_jsonl(p)
    if p.suffix == ".json":
        return _read_json(p)
    raise DataError(
        f"{p}: unsupported data format '{p.suffix}'; use .parquet, .jsonl, .json, a dataset "
        f"directory or hf:<name>[:split]"
    )


# ------------------------------------------------------------------------------------------------ rows


def source_name(path: str | Path) -> str:
    """A benchmark file's data source: its folder for generic names (`hotpotqa/test.jsonl`), else its stem."""
    text = str(path)
    if text.startswith("hf:"):
        return text[3:].partition(":")[0]
    p = Path(text)
    return p.parent.name if p.stem in _GENERIC_FILE_NAMES and p.parent.name else p.stem


def _ground_truth(value: Any, where: str) -> str | list[str]:
    if value is None:
        raise DataError(f"{where}: missing ground truth")
    if isinstance(value, bool):
        raise DataError(f"{where}: ground truth must be a string or a list of strings, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        aliases = [str(v) for v in value if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        if len(aliases) != len(value):
            raise DataError(f"{where}: ground truth list must hold strings, got {value!r}")
        return aliases
    raise DataError(
        f"{where}: ground truth must be a string or a list of strings, got {type(value).__name__}"
    )


def _messages(value: Any, where: str) -> list[dict]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: the prompt must be a non-empty list of {{role, content}} messages")
    out = []
    for m in value:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(f"{where}: bad message {m!r}; each needs string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise DataError(f"{where}: empty prompt (no user message with text)")
    return out


def _first(row: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in row:
            return k, row[k]
    return None, None


def _parse_row(row: Any, position: int, source: str | None, data_cfg, default_system: str | None) -> dict:
    """One row in either layout -> messages (system prompt as in the data), gold, source, ability, extra.

    The columns `data_cfg` names (prompt_key, answer_key, system_prompt_key) are read first; a plain row
    without a system prompt of its own gets `default_system`. Every column not consumed here is kept in
    `extra`, for the rewards and the environment."""
    where = f"{source or '<rows>'} row {position}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a mapping, got {type(row).__name__}")
    prompt_key, answer_key = data_cfg.prompt_key, getattr(data_cfg, "answer_key", None)
    system_key = getattr(data_cfg, "system_prompt_key", None)
    if answer_key is not None and answer_key not in row:
        raise DataError(f"{where}: no column '{answer_key}' (data.answer_key); its columns: "
                        f"{', '.join(map(str, row))}")
    extra_info = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    own_system = row.get(system_key) if system_key is not None else None
    own_system = own_system if isinstance(own_system, str) and own_system.strip() else None
    if isinstance(row.get(prompt_key), (list, tuple)):
        messages = _messages(row[prompt_key], where)
        reward_model = row.get("reward_model")
        if answer_key is not None:
            gold = row[answer_key]
        else:
            gold = reward_model.get("ground_truth") if isinstance(reward_model, dict) else row.get("answer")
        data_source = row.get("data_source") or (source_name(source) if source else "unknown")
        ability = row.get("ability")
        extra = {k: v for k, v in extra_info.items() if k != "index"}
        extra.update({k: v for k, v in row.items() if k not in (prompt_key, answer_key, system_key)
                      and k not in _SCHEMA_KEYS and k not in extra})
    else:
        q_key, question = (prompt_key, row[prompt_key]) if prompt_key in row else _first(row, _QUESTION_KEYS)
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                f"{where}: empty prompt (expected a non-empty string under one of "
                f"{', '.join(dict.fromkeys((prompt_key,) + _QUESTION_KEYS))}; set data.prompt_key=<column>; "
                f"its columns: {', '.join(map(str, row))})"
            )
        a_key, gold = (answer_key, row[answer_key]) if answer_key is not None else _first(row, _ANSWER_KEYS)
        if a_key is None:
            raise DataError(f"{where}: missing ground truth: no answer column (looked for {', '.join(_ANSWER_KEYS)}); set "
                            f"data.answer_key=<column>; its columns: {', '.join(map(str, row))}")
        if isinstance(gold, str) and (m := _GSM8K_FINAL.search(gold)):
            gold = m.group(1).replace(",", "")
        system = default_system if own_system is None else own_system
        messages = ([] if system is None else [{"role": "system", "content": system}]) + [
            {"role": "user", "content": question}]
        own_system = None
        data_source = row.get("data_source") or (source_name(source) if source else "unknown")
        ability = row.get("ability") or ("math" if data_source.lower() in MATH_SOURCES else "qa")
        extra = {k: v for k, v in row.items() if k not in (q_key, a_key, system_key) and k not in _SCHEMA_KEYS}
    if own_system is not None:  # a chat row's own column wins over the system turn of its messages
        messages = [{"role": "system", "content": own_system}] + [m for m in messages if m["role"] != "system"]
    index = extra_info.get("index")
    return {
        "messages": messages,
        "ground_truth": _ground_truth(gold, where),
        "data_source": str(data_source),
        "ability": ability if isinstance(ability, str) else None,
        "index": index if isinstance(index, int) and not isinstance(index, bool) else position,
        "extra": extra,
    }


def _apply_system_prompt(messages: list[dict], data_cfg) -> list[dict]:
    if data_cfg.system_prompt is not None:
        system = resolve_system_prompt(data_cfg.system_prompt)
        rest = [m for m in messages if m["role"] != "system"]
        return rest if system is None else [{"role": "system", "content": system}] + rest
    if data_cfg.fix_backspace:
        return [
            dict(m, content=fix_backspace(m["content"])) if m["role"] == "system" else m for m in messages
        ]
    return messages


def _tokenize(texts: list[str], tokenizer) -> list[list[int]]:
    ids: list[list[int]] = []
    chunks = range(0, len(texts), _TOKENIZE_CHUNK)
    for start in tqdm(chunks, desc="tokenizing prompts", unit="chunk", disable=len(chunks) < 4, leave=False):
        ids += tokenizer(texts[start : start + _TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"]
    return ids


def build_prompts(
    rows: list[dict], tokenizer, data_cfg, source: str | None = None,
    default_system: str | None = REFERENCE_SYSTEM_PROMPT, tool_format=None,
) -> tuple[list[Prompt], DropReport]:
    """Template and tokenize `rows`, dropping (or rejecting) prompts longer than `data_cfg.max_prompt_length`.

    `source` (the file the rows came from) names the file in errors and is the default data source;
    `default_system` is the system prompt of plain rows that bring none (benchmarks: the reference's);
    `tool_format` (appo.formats) renders the prompt with the tools' schemas (tools.format=chat_template).
    """
    report = DropReport(total=len(rows))
    parsed = []
    for position, row in enumerate(rows):
        p = _parse_row(row, position, source, data_cfg, default_system)
        # A blank gold answer (train_10k has one) can never be matched: skip the row, but say so.
        if not any(g.strip() for g in as_gold_list(p["ground_truth"])):
            report.drop("empty_ground_truth", position)
            continue
        p["messages"] = _apply_system_prompt(p["messages"], data_cfg)
        parsed.append((position, p))
    texts = [
        tool_format.prompt_text(p["messages"]) if tool_format is not None
        else tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False)
        for _, p in parsed
    ]
    prompts = []
    for (position, p), ids in zip(parsed, _tokenize(texts, tokenizer), strict=True):
        if len(ids) > data_cfg.max_prompt_length:
            if not data_cfg.filter_overlong_prompts:
                raise DataError(
                    f"{source or '<rows>'} row {position}: prompt has {len(ids)} tokens, more than "
                    f"data.max_prompt_length={data_cfg.max_prompt_length} (set "
                    f"data.filter_overlong_prompts=true to drop such rows)"
                )
            report.drop("too_long", position)
            continue
        prompts.append(Prompt(prompt_ids=list(ids), **p))
    report.kept = len(prompts)
    return prompts, report


def load_prompts(path: str | Path, tokenizer, data_cfg, default_system: str | None = REFERENCE_SYSTEM_PROMPT,
                 tool_format=None) -> tuple[list[Prompt], DropReport]:
    """`load_rows` + `build_prompts` for one file, with the file named in errors and as the default source."""
    return build_prompts(load_rows(path), tokenizer, data_cfg, source=str(path), default_system=default_system,
                         tool_format=tool_format)
