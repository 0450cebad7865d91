"""JSON nested deeper than the parser recurses, or holding an integer of more than 4,300 digits, in every
file a user or a trained policy may have written: one line naming the file (exit 2 through `appo`), or a
skipped line where the file is a store of samples; never a RecursionError / ValueError traceback."""

from __future__ import annotations

import json

import pytest

from appo.errors import UserError
from appo.json_input import parse_json
from tests.unit.appo_cli import assert_user_error, run_appo

DEEP = "[" * 100_000 + "]" * 100_000
BIG_INT = "9" * 5000


def _row(value: str) -> str:
    return '{"question": "What is 1 + 1?", "answer": ' + value + ', "text": "x"}'


@pytest.mark.parametrize("text, problem", [(DEEP, "nested too deeply"), (_row(BIG_INT), "4300 digits"),
                                           (b'{"a": "\xff"}', "UTF-8"), ("{", "not valid JSON")])
def test_parse_json_names_where_and_the_problem(text, problem):
    with pytest.raises(UserError) as err:
        parse_json(text, "f.json: line 3")
    assert str(err.value).startswith("f.json: line 3: ") and problem in str(err.value)


@pytest.mark.parametrize("value, problem", [(DEEP, "nested too deeply"), (BIG_INT, "4300 digits")])
def test_index_build_of_a_hostile_corpus_is_one_line(tmp_path, value, problem):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "fine"}) + "\n" + _row(value) + "\n")
    proc = run_appo("index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), cwd=tmp_path)
    assert_user_error(proc, "index", f"{corpus}:2: ", problem)


@pytest.mark.parametrize("name", ["bench.jsonl", "bench.json"])
@pytest.mark.parametrize("value, problem", [(DEEP, "nested too deeply"), (BIG_INT, "4300 digits")])
def test_benchmark_rows_that_are_hostile_json_are_one_error(tmp_path, name, value, problem):
    from appo.eval.benchmarks import load_benchmark

    bench = tmp_path / name
    bench.write_text(f"[{_row(value)}]" if name.endswith(".json") else _row("1") + "\n" + _row(value) + "\n")
    with pytest.raises(UserError) as err:
        load_benchmark(str(bench), None)
    assert str(bench) in str(err.value) and problem in str(err.value)


def test_a_hostile_line_in_samples_jsonl_is_skipped_and_the_rest_kept(tmp_path):
    from appo.eval.store import SampleStore

    path = tmp_path / "samples.jsonl"
    good = {"benchmark": "b", "index": 0, "sample": 0, "answer": "2"}
    path.write_text(json.dumps(good) + "\n" + DEEP + "\n" + '{"benchmark": "b", "index": ' + BIG_INT + "}\n")
    store = SampleStore(path)
    assert store.records == {("b", 0, 0): good}
    assert path.read_text().startswith(json.dumps(good))  # nothing lost


@pytest.mark.parametrize("content", [DEEP, '{"k": ' + BIG_INT + "}", "[1, 2]", "\xff"])
def test_a_hostile_run_json_when_resuming_an_evaluation_is_one_error(tmp_path, content):
    from appo.config import load_config
    from appo.eval.evaluate import check_resume

    (tmp_path / "run.json").write_text(content, encoding="latin-1")
    with pytest.raises(UserError) as err:
        check_resume(tmp_path, load_config("tiny"))
    assert str(tmp_path / "run.json") in str(err.value)
    assert (tmp_path / "run.json").read_text(encoding="latin-1") == content  # left for the user to look at


@pytest.mark.parametrize("content", [DEEP, '{"evals": ' + BIG_INT + "}", "[]", '{"evals": {}}'])
def test_train_resume_with_a_hostile_pipeline_json_is_one_line(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.json").write_text(content)
    proc = run_appo("train", "--config", "tiny", "--resume", "--no-progress", f"trainer.output_dir={run}",
                    cwd=tmp_path, timeout=300)
    assert_user_error(proc, "train", str(run / "pipeline.json"))
    assert (run / "pipeline.json").read_text() == content


def _config_show(tmp_path, *args):
    return run_appo("config", "show", *args, cwd=tmp_path)


@pytest.mark.parametrize("body, problem", [
    ("trainer:\n  output_dir: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deeply"),
    ("x: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", "nested too deeply"),
    ("trainer:\n  total_steps: " + BIG_INT + "\n", "4300 digits"),
])
def test_a_hostile_config_file_is_one_line(tmp_path, body, problem):
    path = tmp_path / "cfg.yaml"
    path.write_text("defaults: tiny\n" + body)
    assert_user_error(_config_show(tmp_path, str(path)), "config", str(path), problem)


@pytest.mark.parametrize("value, problem", [("[" * 20_000 + "]" * 20_000, "nested too deeply"),
                                            (BIG_INT, "4300 digits")])
def test_a_hostile_override_is_one_line(tmp_path, value, problem):
    assert_user_error(_config_show(tmp_path, "tiny", f"trainer.seed={value}"), "config", "trainer.seed", problem)
