"""All reference RL parquet files and benchmark JSONL files load; row counts and drop reasons reported."""

import os
from pathlib import Path

import pytest

from appo.config import load_config
from appo.data import REFERENCE_SYSTEM_PROMPT, load_prompts

PARQUET = {"train_10k": 10000, "valid": 180, "hard_search_1k": 1071}
BENCHMARKS = {
    "math500": 500,
    "gsm8k": 1319,
    "hotpotqa": 200,
    "2wiki": 200,
    "musique": 200,
    "bamboogle": 125,
    "simpleqa": 500,
    "webwalker": 200,
}
SMOLLM2 = Path(os.path.expanduser("~/.cache/appo/smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def tokenizer(request):
    """SmolLM2's real tokenizer when it has been converted, else the tiny test tokenizer."""
    if (SMOLLM2 / "tokenizer.json").exists():
        from appo.models import load_tokenizer

        return load_tokenizer(str(SMOLLM2))
    return request.getfixturevalue("tiny_tokenizer")


@pytest.mark.slow
def test_all_reference_and_benchmark_files(shared_data, tokenizer, capsys):
    cfg = load_config(None, ["data.max_prompt_length=1024"]).data
    files = {name: shared_data / "reference_rl" / f"{name}.parquet" for name in PARQUET}
    files |= {name: shared_data / "benchmarks" / name / "test.jsonl" for name in BENCHMARKS}
    expected = PARQUET | BENCHMARKS
    lines = []
    for name, path in files.items():
        prompts, report = load_prompts(path, tokenizer, cfg)
        assert report.total == expected[name] and report.kept == len(prompts) == report.total - report.dropped
        assert all(len(p.prompt_ids) <= 1024 for p in prompts)
        assert all(p.messages[0]["content"] == REFERENCE_SYSTEM_PROMPT for p in prompts)
        lines.append(f"{name:15s} {report}")
    # The one blank gold answer of the reference training set (row 5274, ground truth " ") is dropped.
    train = next(line for line in lines if line.startswith("train_10k"))
    assert "empty_ground_truth: 1 (first rows: 5274)" in train
    with capsys.disabled():
        print("\n" + "\n".join(lines))
