"""`appo rollout` end to end on the tiny preset: JSONL rows with aligned records, and the HTML tree."""

from __future__ import annotations

import json

import pytest

from appo.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["appo", "arpo"])
def test_rollout_cli_writes_groups_and_tree(tmp_path, monkeypatch, capsys, strategy):
    monkeypatch.setenv("APPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    rc = main(["rollout", "--config", "tiny", "--num-prompts", "2", "--out", str(out),
               f"algorithm.name={strategy}"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4  # tiny preset: n = 4 per prompt
    for r in rows:
        n = len(r["token_ids"])
        assert n == len(r["generated"]) == len(r["logprobs"]) == len(r["entropies"]) <= 24
        assert isinstance(r["reward"], float) and r["response_text"]
    branches = [r for r in rows if r["kind"] == "branch"]
    if strategy == "appo":
        assert len(branches) == 4 and all(r["split_pos"] is not None for r in branches)
    page = (out / "rollouts.html").read_text()
    assert page.count("<details class='group'") == 2 and "initial rollout 0" in page
    err = capsys.readouterr().err
    assert "rollout rows: 100%" in err and "8/8" in err   # the progress bar counts rows as they finish
    assert json.loads((out / "metrics.json").read_text())["rollout/init_rows"] >= 4
