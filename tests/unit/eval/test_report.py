from __future__ import annotations

import json

from appo.eval.report import markdown_table, settings_markdown, write_report


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
    assert cols[:4] == ["benchmark", "pass@1 (%)", "pass@4 (%)", "maj@4 (%)"]     # the headline first
    assert cols[-2:] == ["questions", "k"] and "tool_calls_per_sample" in cols
    gsm_cells = [c.strip() for c in gsm.strip("|").split("|")]
    assert gsm_cells[:4] == ["gsm8k", "25.0", "50.0", "33.3"] and gsm_cells[-2:] == ["3", "4"]
    hp = dict(zip(cols, [c.strip() for c in hotpot.strip("|").split("|")], strict=True))
    assert hp["f1 (%)"] == "12.5" and hp["math_equal (%)"] == "–" and hp["tool_calls_per_sample"] == "0.00"
    assert rule.count("|") == header.count("|")
    assert "pass@1: share of samples graded correct" in text


def test_mixed_k_keeps_generic_headers_and_acc_is_explained():
    s = _summaries()
    s["hotpotqa"] = dict(s["hotpotqa"], k=2, acc=0.5)
    text = markdown_table(s)
    cols = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert cols[:5] == ["benchmark", "pass@1 (%)", "pass@k (%)", "maj@k (%)", "acc (%)"]
    assert "acc: the gold answer appears inside the extracted answer" in text


def test_settings_list_every_knob():
    meta = {"protocol": "reference", "k": 5, "max_samples": None, "temperature": 0.6, "top_p": 0.95,
            "repetition_penalty": 1.1, "max_tokens_per_call": 4096, "tool_call_limits": {"python": 5, "search": 10},
            "tools": ["python", "search"], "judge": None}
    text = settings_markdown(meta)
    for line in ("| protocol | reference |", "| independent runs (samples) per question | 5 |",
                 "| questions per benchmark | the whole file |", "| temperature | 0.6 |", "| top_p | 0.95 |",
                 "| repetition penalty | 1.1 |", "| tokens per generation call | 4096 |",
                 "| per-tool call budgets | python 5, search 10 |", "| LLM judge | off |"):
        assert line in text


def test_write_report_writes_json_md_png(tmp_path):
    paths = write_report(_summaries(), tmp_path / "out", meta={"model": "tiny"})
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["model"] == "tiny" and data["benchmarks"]["gsm8k"]["maj@4"] == 1 / 3
    md = paths["md"].read_text()
    assert md.startswith("| benchmark |") and "| model | tiny |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
