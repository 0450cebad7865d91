from __future__ import annotations

import json

from appo.eval.store import SampleStore


def _rec(b, i, s, **kw):
    return {"benchmark": b, "index": i, "sample": s, **kw}


def test_store_roundtrip_and_last_record_wins(tmp_path):
    path = tmp_path / "samples.jsonl"
    store = SampleStore(path)
    store.append([_rec("gsm8k", 0, 0, v=1), _rec("gsm8k", 0, 1, v=2)])
    store.append([_rec("gsm8k", 0, 0, v=3)])
    again = SampleStore(path)
    assert len(again) == 2 and ("gsm8k", 0, 1) in again and ("gsm8k", 1, 0) not in again
    assert again.records[("gsm8k", 0, 0)]["v"] == 3
    assert [r["sample"] for r in again.for_benchmark("gsm8k")] == [0, 1]
    assert again.for_benchmark("hotpotqa") == []


def test_store_drops_torn_last_line_and_appends_cleanly(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = json.dumps(_rec("b", 0, 0, v=1)) + "\n"
    path.write_text(good + '{"benchmark": "b", "index": 1, "sam')
    store = SampleStore(path)
    assert list(store.records) == [("b", 0, 0)]
    assert path.read_text() == good
    store.append([_rec("b", 1, 0, v=2)])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1]


def test_store_skips_corrupt_middle_lines(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(_rec("b", 0, 0)) + "\nnot json\n" + json.dumps(_rec("b", 2, 0)) + "\n")
    assert sorted(SampleStore(path).records) == [("b", 0, 0), ("b", 2, 0)]
