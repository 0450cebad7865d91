"""Loading rows in every supported form, building prompts, and the errors for malformed data."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appo.config import load_config
from appo.data import REFERENCE_SYSTEM_PROMPT, DataError, build_prompts, load_prompts, load_rows
from appo.data.templates import QUICKSTART_SYSTEM_PROMPT

BROKEN_SYSTEM = REFERENCE_SYSTEM_PROMPT.replace("\\b", "\x08")


def data_cfg(*overrides):
    # The tiny tokenizer's small vocabulary makes the reference system prompt ~1k tokens long.
    return load_config(None, [f"data.{o}" for o in ("max_prompt_length=4096",) + overrides]).data


def ref_row(question="Who wrote it?", gold="Ann", **extra):
    return {
        "data_source": "DR_grpo_mix",
        "ability": "qa",
        "prompt": [{"role": "system", "content": BROKEN_SYSTEM}, {"role": "user", "content": question}],
        "reward_model": {"ground_truth": gold, "style": "rule"},
        "extra_info": {"index": 41, "split": "train", "question": question},
        "metadata": None,
        **extra,
    }


def test_reference_rows_are_templated_and_repaired(tiny_tokenizer):
    prompts, report = build_prompts([ref_row()], tiny_tokenizer, data_cfg())
    p = prompts[0]
    assert (p.data_source, p.ability, p.index, p.ground_truth) == ("DR_grpo_mix", "qa", 41, "Ann")
    assert p.messages[0]["content"] == REFERENCE_SYSTEM_PROMPT and "\x08" not in p.messages[0]["content"]
    assert p.extra == {"split": "train", "question": "Who wrote it?"}
    text = tiny_tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
    assert p.prompt_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(p.prompt_ids).endswith("<|im_start|>assistant\n")
    assert (report.total, report.kept, report.dropped) == (1, 1, 0)


def test_backspace_kept_when_repair_is_off(tiny_tokenizer):
    prompts, _ = build_prompts([ref_row()], tiny_tokenizer, data_cfg("fix_backspace=false"))
    assert prompts[0].messages[0]["content"] == BROKEN_SYSTEM


@pytest.mark.parametrize(
    "value,expected", [("quickstart", QUICKSTART_SYSTEM_PROMPT), ("Be brief.", "Be brief."), ("none", None)]
)
def test_system_prompt_override(tiny_tokenizer, value, expected):
    prompts, _ = build_prompts([ref_row()], tiny_tokenizer, data_cfg(f"system_prompt='{value}'"))
    roles = [m["role"] for m in prompts[0].messages]
    if expected is None:
        assert roles == ["user"]
    else:
        assert roles == ["system", "user"] and prompts[0].messages[0]["content"] == expected


def test_benchmark_rows_get_the_evaluation_prompt(tmp_path, tiny_tokenizer):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    rows = [
        {"question": "How many?", "answer": "So 1,000 + 5 = 1,005.\n#### 1,005", "idx": 3},
        {"question": "And now?", "answer": "The total is\n#### -7"},
    ]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    prompts, report = load_prompts(folder / "test.jsonl", tiny_tokenizer, data_cfg())
    assert [p.ground_truth for p in prompts] == ["1005", "-7"]
    assert {p.data_source for p in prompts} == {"gsm8k"} and {p.ability for p in prompts} == {"math"}
    assert prompts[0].messages == [
        {"role": "system", "content": REFERENCE_SYSTEM_PROMPT},
        {"role": "user", "content": "How many?"},
    ]
    assert prompts[0].extra == {"idx": 3} and prompts[1].index == 1


def test_alias_lists_and_qa_ability(tmp_path, tiny_tokenizer):
    path = tmp_path / "bamboogle.jsonl"
    path.write_text(json.dumps({"Question": "Who?", "answer": ["A B", "AB"]}) + "\n")
    (p,), _ = load_prompts(path, tiny_tokenizer, data_cfg())
    assert p.ground_truth == ["A B", "AB"] and p.data_source == "bamboogle" and p.ability == "qa"


def test_overlong_prompts_are_dropped_and_reported(tiny_tokenizer):
    rows = [
        ref_row("short?"),
        ref_row("long " * 1400),
        ref_row("ok?"),
        ref_row("long " * 1300),
        ref_row(gold=" "),
    ]
    prompts, report = build_prompts(rows, tiny_tokenizer, data_cfg("max_prompt_length=2000"))
    assert [p.messages[1]["content"] for p in prompts] == ["short?", "ok?"]
    assert report.counts == {"too_long": 2, "empty_ground_truth": 1}
    assert report.examples["too_long"] == [1, 3] and report.kept == 2 and report.total == 5
    assert "dropped 3" in str(report) and "too_long: 2 (first rows: 1, 3)" in str(report)


def test_overlong_prompt_raises_when_filtering_is_off(tiny_tokenizer):
    with pytest.raises(DataError, match=r"f.parquet row 1: prompt has \d+ tokens.*filter_overlong_prompts"):
        build_prompts(
            [ref_row(), ref_row("long " * 1400)],
            tiny_tokenizer,
            data_cfg("max_prompt_length=2000", "filter_overlong_prompts=false"),
            source="f.parquet",
        )


@pytest.mark.parametrize(
    "row,message",
    [
        (ref_row(gold=None), "missing ground truth"),
        ({**ref_row(), "reward_model": {"style": "rule"}}, "missing ground truth"),
        (ref_row(gold={"a": 1}), "must be a string or a list"),
        (ref_row(gold=["a", None]), "list must hold strings"),
        ({**ref_row(), "prompt": [{"role": "system", "content": "s"}]}, "empty prompt"),
        ({**ref_row(), "prompt": [{"role": "user", "content": 3}]}, "bad message"),
        ({"question": "", "answer": "1"}, "empty prompt"),
        ({"text": "no question key", "answer": "1"}, "empty prompt"),
        ("just a string", "expected a mapping"),
    ],
)
def test_malformed_rows_name_file_and_row(tiny_tokenizer, row, message):
    with pytest.raises(DataError, match=f"data.jsonl row 1: .*{message}"):
        build_prompts([ref_row(), row], tiny_tokenizer, data_cfg(), source="data.jsonl")


def test_load_rows_formats(tmp_path):
    rows = [ref_row(), ref_row("second?")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert load_rows(tmp_path / "a.parquet")[1]["prompt"][1]["content"] == "second?"
    (tmp_path / "b.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    assert load_rows(tmp_path / "b.json") == [{"question": "q", "answer": "a"}]
    (tmp_path / "c.json").write_text('{"question": "q1", "answer": "a"}\n{"question": "q2", "answer": "b"}\n')
    assert len(load_rows(tmp_path / "c.json")) == 2
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"question": "q", "answer": ["a"]}\n')
    assert load_rows(folder) == [{"question": "q", "answer": ["a"]}]


def test_load_rows_saved_hf_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "q", "answer": "a"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(tmp_path / "ds") == [{"question": "q", "answer": "a"}]


def test_load_rows_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rows(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported data format '.csv'.*parquet"):
        load_rows(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl: line 2: not valid JSON"):
        load_rows(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset 'no-such/dataset-xyz'"):
        load_rows("hf:no-such/dataset-xyz:test")
