"""The `study` task: answers recompute from the corpus, distractors sit next to every fact, held-out
writers are disjoint from training and stable, generation is deterministic, canonical queries retrieve
their facts from the real BM25 index."""

from __future__ import annotations

import re

import pytest

from appo.config import SearchToolConfig
from appo.data import build_task
from appo.data.study_task import QUESTION_KINDS, check_study_question
from appo.tools.search import format_results
from appo.tools.search_backends import LocalBM25Backend, build_index


@pytest.fixture(scope="module")
def task():
    return build_task("study", num_train=120, num_val=60, seed=3)


@pytest.fixture(scope="module")
def docs(task):
    return {d["title"]: d["text"] for d in task.corpus}


def _doc_years(docs, title):
    return [int(y) for y in re.findall(r"\b\d{3,4}\b", docs[title])]


def _founded(docs, town):
    return int(re.search(rf"{re.escape(town)} was founded in (\d+)\.", docs[town]).group(1))


def _published(docs, book):
    return int(re.search(r"first published in (\d+)\.", docs[book]).group(1))


def _born(docs, writer):
    match = re.search(rf"{re.escape(writer)} was born in (.+?) in (\d+)\.", docs[writer])
    return match.group(1), int(match.group(2))


def recompute(question: str, docs: dict[str, str]) -> int:
    """The answer from the corpus text alone, parsing the question like a reader would."""
    if m := re.fullmatch(r"How many years after the founding of the city where (.+) was born was (.+) first "
                         r"published\?", question):
        town, _ = _born(docs, m.group(1))
        return _published(docs, m.group(2)) - _founded(docs, town)
    if m := re.fullmatch(r"How old was (.+) when (.+) was first published\?", question):
        return _published(docs, m.group(2)) - _born(docs, m.group(1))[1]
    m = re.fullmatch(r"How many years after (.+) was (.+) first published\?", question)
    return _published(docs, m.group(2)) - _published(docs, m.group(1))


def test_every_answer_recomputes_from_the_corpus_text(task, docs):
    for row in task.train + task.val:
        assert recompute(row["extra_info"]["question"], docs) == int(row["reward_model"]["ground_truth"])
        assert check_study_question({"plan": row["extra_info"]["plan"],
                                     "answer": row["reward_model"]["ground_truth"]}, docs)


def test_a_wrong_answer_fails_the_check(task, docs):
    row = task.val[0]
    assert not check_study_question({"plan": row["extra_info"]["plan"],
                                     "answer": int(row["reward_model"]["ground_truth"]) + 1}, docs)


def test_rows_are_integer_math_rows_of_every_kind(task):
    assert {r["extra_info"]["kind"] for r in task.val} == set(QUESTION_KINDS)
    for row in task.val:
        assert row["data_source"] == "appo/study" and row["ability"] == "math"
        assert int(row["reward_model"]["ground_truth"]) > 0
        searches = [s for s in row["extra_info"]["plan"] if s["tool"] == "search"]
        assert len(searches) == (3 if row["extra_info"]["kind"] == "founding" else 2)
        assert row["extra_info"]["plan"][-1]["tool"] == "python"


def test_distractors_sit_next_to_every_fact(task, docs):
    for row in task.val:
        for step in row["extra_info"]["plan"]:
            if "near" not in step:
                continue
            near = step["near"]
            assert any(near["fact"] in text for text in docs.values())
            assert near["value"] != step["value"]
    for row in task.val:
        q = row["extra_info"]["question"]
        if m := re.search(r"old was (.+) when", q):
            writer = m.group(1)
            first, last = writer.split(" ")
            namesakes = [t for t in docs if t.endswith(f" {last}") and t != writer
                         and t.split(" ")[0][:2] == first[:2] and "was born in" in docs[t]]
            assert namesakes, f"no namesake of {writer}"
            assert f"{writer} Prize" in docs
        for book in re.findall(r"(The [A-Z][a-z]+ [A-Z][a-z]+(?: of [A-Z][a-z]+)?) (?:first|was)", q):
            assert f"{book} (second edition)" in docs


def test_held_out_writers_and_books_are_disjoint_from_training(task):
    def names(rows):
        out = set()
        for r in rows:
            for s in r["extra_info"]["plan"]:
                if s["tool"] == "search":
                    out.add(s["payload"].rsplit(" ", 2 if s["payload"].endswith("first published") else 1)[0])
        return out

    train, val = names(task.train), names(task.val)
    towns = {s["payload"].rsplit(" ", 1)[0] for r in task.train + task.val for s in r["extra_info"]["plan"]
             if s["payload"].endswith(" founded")}
    assert not (train & val) - towns  # towns are shared places; writers and books are not
    assert not {r["extra_info"]["question"] for r in task.train} & {r["extra_info"]["question"] for r in task.val}


def test_held_out_set_depends_on_its_own_seed_only(task):
    assert build_task("study", num_train=40, num_val=60, seed=3).val == task.val
    assert build_task("study", num_train=120, num_val=60, seed=4).val != task.val


def test_deterministic(task):
    again = build_task("study", num_train=120, num_val=60, seed=3)
    assert again.train == task.train and again.corpus == task.corpus


def test_canonical_queries_retrieve_their_facts_and_near_misses_theirs(task, tmp_path):
    """With the preset's 2 results of 160 characters, the plan's queries find what the plan reads."""
    index = build_index(task.corpus, tmp_path / "index")
    backend = LocalBM25Backend(SearchToolConfig(index_dir=str(index)))
    for row in task.val:
        for step in row["extra_info"]["plan"]:
            if step["tool"] != "search":
                continue
            found = format_results(backend.search(step["payload"], 2, 5.0), 2, 160)
            assert step["fact"] in found, (step["payload"], found)
            if "near" in step:
                found = format_results(backend.search(step["near"]["payload"], 2, 5.0), 2, 160)
                assert step["near"]["fact"] in found, (step["near"]["payload"], found)


def test_unknown_task_names_study(tmp_path):
    with pytest.raises(ValueError, match="study"):
        build_task("studdy", 4, 4)
