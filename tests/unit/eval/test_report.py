from __future__ import annotations

import json

from appo.eval.report import markdown_table, write_report


def _summaries():
    return {
        "gsm8k": {"questions": 3, "samples": 12, "k": 4, "pass@1": 0.25, "pass@2": 0.4, "pass@4": 0.5,
                  "maj@4": 1 / 3, "em": 0.25, "math_equal": 0.25, "tool_calls_per_sample": 1.5},
        "hotpotqa": {"questions": 2, "samples": 8, "k": 4, "pass@1": 0.0, "pass@2": 0.0, "pass@4": 0.0,
                     "maj@4": 0.0, "em": 0.0, "f1": 0.125, "tool_calls_per_sample": 0.0},
    }


def test_markdown_table_lines_up_benchmarks():
    text = markdown_table(_summaries())
    header, rule, gsm, hotpot = text.splitlines()[:4]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:6] == ["benchmark", "questions", "k", "pass@1", "pass@k", "maj@k"]
    gsm_cells = [c.strip() for c in gsm.strip("|").split("|")]
    assert gsm_cells[:6] == ["gsm8k", "3", "4", "25.0", "50.0", "33.3"]
    hp = dict(zip(cols, [c.strip() for c in hotpot.strip("|").split("|")], strict=True))
    assert hp["f1"] == "12.5" and hp["math_equal"] == "–"
    assert rule.count("|") == header.count("|")


def test_write_report_writes_json_md_png(tmp_path):
    paths = write_report(_summaries(), tmp_path / "out", meta={"model": "tiny"})
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["model"] == "tiny" and data["benchmarks"]["gsm8k"]["maj@4"] == 1 / 3
    assert paths["md"].read_text().startswith("| benchmark |")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
