"""Bad data files a user may pass: one DataError naming the file and line, and through the real `appo`
command one `appo <command>:` line with exit code 2, never a traceback."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appo.data import DataError, load_rows
from tests.unit.appo_cli import assert_user_error, run_appo

GOOD = json.dumps({"question": "What is 1 + 1?", "answer": "2"})


def test_invalid_utf8_in_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"question": "caf\xe9?", "answer": "x"}\n')
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "UTF-8" in str(err.value)


def test_invalid_utf8_in_a_json_array_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[{"question": "\xff", "answer": "x"}]')
    with pytest.raises(DataError, match="bad.json: not valid UTF-8"):
        load_rows(path)


def test_a_corrupt_parquet_file_names_the_file(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["q"] * 100, "answer": ["a"] * 100}), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="rows.parquet: not a readable parquet file"):
        load_rows(path)


def _eval(tmp_path, tiny_model_dir, bench, *extra):
    return run_appo("eval", "tiny", "--model", str(tiny_model_dir), "--benchmarks", str(bench),
                    "--output-dir", str(tmp_path / "out"), "--no-progress", "tools.enabled=[python]", *extra,
                    cwd=tmp_path, timeout=300)


def test_eval_of_an_empty_benchmark_file_is_an_error(tmp_path, tiny_model_dir):
    bench = tmp_path / "empty.jsonl"
    bench.write_text("\n")
    assert_user_error(_eval(tmp_path, tiny_model_dir, bench), "eval", str(bench), "no rows")
    assert not (tmp_path / "out" / "summary.json").exists()


def test_eval_of_a_benchmark_whose_rows_are_all_too_long_is_an_error(tmp_path, tiny_model_dir):
    bench = tmp_path / "long.jsonl"
    bench.write_text("\n".join([GOOD] * 3) + "\n")
    proc = _eval(tmp_path, tiny_model_dir, bench, "data.max_prompt_length=8")
    assert_user_error(proc, "eval", str(bench), "no row is left to evaluate", "too_long: 3")
    assert not (tmp_path / "out" / "summary.json").exists()


def test_eval_of_invalid_utf8_is_one_line(tmp_path, tiny_model_dir):
    bench = tmp_path / "latin1.jsonl"
    bench.write_bytes(GOOD.encode() + b"\n" + b'{"question": "caf\xe9?", "answer": "x"}\n')
    assert_user_error(_eval(tmp_path, tiny_model_dir, bench), "eval", str(bench), "line 2", "UTF-8")


def test_eval_row_error_is_printed_not_raised(tmp_path, tiny_model_dir):
    bench = tmp_path / "noanswer.jsonl"
    bench.write_text(GOOD + "\n" + json.dumps({"question": "Who?"}) + "\n")
    assert_user_error(_eval(tmp_path, tiny_model_dir, bench), "eval", str(bench), "row 1", "ground truth")


def _train(tmp_path, tiny_model_dir, *extra):
    return run_appo("train", "--config", "tiny", "--no-progress", f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={tmp_path / 'run'}", "data.task=null", "sft.enabled=false",
                    "tools.enabled=[python]", *extra, cwd=tmp_path, timeout=300)


def test_train_on_a_file_with_a_bad_row_exits_2_with_the_message(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(GOOD + "\n" + json.dumps({"question": "", "answer": "1"}) + "\n")
    proc = _train(tmp_path, tiny_model_dir, f"data.train_files=[{data}]")
    assert_user_error(proc, "train", str(data), "row 1", "empty prompt")


def test_train_on_an_empty_file_is_an_error(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    proc = _train(tmp_path, tiny_model_dir, f"data.train_files=[{data}]")
    assert_user_error(proc, "train", str(data), "no usable prompts")
