"""Built-in tasks: deterministic, answers verified, held-out rows disjoint from training rows."""

import subprocess

import pytest

from appo.config import load_config
from appo.data import build_task, task_from_config
from appo.data.tasks import _build_world, check_question, evaluate_expression


@pytest.fixture(scope="module")
def quick():
    return build_task("quickstart", num_train=60, num_val=20, seed=3, multihop_fraction=0.25)


def questions(rows):
    return [r["extra_info"]["question"] for r in rows]


def test_deterministic_by_seed(quick):
    again = build_task("quickstart", num_train=60, num_val=20, seed=3, multihop_fraction=0.25)
    assert again.train == quick.train and again.val == quick.val and again.corpus == quick.corpus
    other = build_task("quickstart", num_train=60, num_val=20, seed=4, multihop_fraction=0.25)
    assert questions(other.train) != questions(quick.train)


def test_sizes_mix_and_no_overlap(quick):
    assert len(quick.train) == 60 and len(quick.val) == 20
    assert sum(r["data_source"] == "appo/multihop" for r in quick.train) == 15
    assert sum(r["data_source"] == "appo/multihop" for r in quick.val) == 5
    assert len(set(questions(quick.train))) == 60
    assert not set(questions(quick.train)) & set(questions(quick.val))
    assert [r["extra_info"]["index"] for r in quick.train] == list(range(60))


def test_held_out_set_does_not_depend_on_train_size():
    small = build_task("arithmetic", num_train=10, num_val=15, seed=5)
    large = build_task("arithmetic", num_train=40, num_val=15, seed=5)
    assert small.val == large.val
    assert not set(questions(large.train)) & set(questions(large.val))


def test_arithmetic_answers_match_the_real_interpreter(quick):
    rows = [r for r in quick.train if r["data_source"] == "appo/arithmetic"][:8]
    exprs = [r["extra_info"]["expression"] for r in rows]
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", "\n".join(f"print({e})" for e in exprs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for row, expr, printed in zip(rows, exprs, out, strict=True):
        assert str(evaluate_expression(expr)) == printed
        assert float(printed) == float(row["reward_model"]["ground_truth"])
        assert row["extra_info"]["plan"][0]["payload"] == f"print({expr})"


def test_evaluate_expression_rejects_code():
    assert evaluate_expression("-( 3 - 5 ) * 2 / 4") == 1.0
    with pytest.raises(ValueError, match="not a plain arithmetic"):
        evaluate_expression("__import__('os').getcwd()")


def test_multihop_questions_are_grounded_in_the_corpus(quick):
    docs = {d["title"]: d["text"] for d in quick.corpus}
    assert len(docs) == len(quick.corpus)  # titles are unique
    rows = [r for r in quick.train + quick.val if r["data_source"] == "appo/multihop"]
    for r in rows:
        q = {"plan": r["extra_info"]["plan"], "answer": r["reward_model"]["ground_truth"]}
        assert check_question(q, docs)
        assert len(q["plan"]) == 2 and all(s["tool"] == "search" for s in q["plan"])


def test_world_facts_are_consistent():
    world = _build_world(seed=0, n_writers=50)
    assert all(check_question(q, world.docs) for q in world.questions)
    # each question has one answer: the same question text never maps to two answers
    answers = {}
    for q in world.questions:
        assert answers.setdefault(q["question"], q["answer"]) == q["answer"]


def test_task_from_config_and_errors():
    cfg = load_config(None, ["data.task=multihop", "data.num_train=5", "data.num_val=3"]).data
    data = task_from_config(cfg)
    assert len(data.train) == 5 and len(data.val) == 3 and data.corpus
    with pytest.raises(ValueError, match="unknown built-in task 'chess'; choose one of: quickstart"):
        build_task("chess", 1, 1)


def test_write_corpus(tmp_path, quick):
    import json

    path = quick.write_corpus(tmp_path / "corpus" / "docs.jsonl")
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert docs == quick.corpus and set(docs[0]) == {"id", "title", "text"}


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_pure_mixes_generate_only_one_kind(fraction):
    task = build_task("quickstart", 12, 4, seed=3, multihop_fraction=fraction)
    kinds = {row["data_source"] for row in task.train + task.val}
    assert len(task.train) == 12 and len(task.val) == 4
    assert kinds == ({"appo/multihop"} if fraction == 1.0 else {"appo/arithmetic"})
