"""Write the evaluation summary as JSON, a markdown table and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

# Columns of the markdown table, in order, when any benchmark has them.
_HEADLINE = ("pass@1", "pass@k", "maj@k", "em", "f1", "math_equal", "llm_equal", "judge_unparseable",
             "judge_errors", "tool_calls_per_sample", "tool_error_rate", "generated_tokens_mean", "truncated_rate")
_PERCENT = {"pass@1", "pass@k", "maj@k", "em", "f1", "acc", "math_equal", "llm_equal", "tool_error_rate",
            "truncated_rate"}


def _headline(summary: dict) -> dict:
    """Rename the benchmark's largest pass@k / maj@k to generic columns so benchmarks line up."""
    k = summary.get("k", 1)
    row = dict(summary)
    if k > 1:
        row["pass@k"] = summary.get(f"pass@{k}")
        row["maj@k"] = summary.get(f"maj@{k}")
    return row


def _cell(name: str, value) -> str:
    if value is None:
        return "–"
    if name in _PERCENT:
        return f"{100 * value:.1f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(summaries: dict[str, dict]) -> str:
    rows = {name: _headline(s) for name, s in summaries.items()}
    cols = [c for c in _HEADLINE if any(r.get(c) is not None for r in rows.values())]
    lines = ["| benchmark | questions | k | " + " | ".join(cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    for name, r in rows.items():
        cells = [_cell(c, r.get(c)) for c in cols]
        lines.append(f"| {name} | {r.get('questions', 0)} | {r.get('k', '–')} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Accuracy columns are percentages. pass@k is unbiased (1 - C(n-c,k)/C(n,k)), maj@k is majority "
                 "vote over the k extracted answers; 'k' is the samples per question.")
    return "\n".join(lines) + "\n"


def plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    series = [("pass@1", "pass@1"), ("pass@k", "pass@k"), ("maj@k", "maj@k")]
    rows = [_headline(summaries[n]) for n in names]
    series = [(label, key) for label, key in series if any(r.get(key) is not None for r in rows)]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 1), 3.6))
    for i, (label, key) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * (r.get(key) or 0.0) for r in rows], width, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    ax.set_title("appo eval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summaries: dict[str, dict], out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """summary.json (every metric), summary.md (headline table) and summary.png; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "summary.json", "md": out / "summary.md", "png": out / "summary.png"}
    paths["json"].write_text(json.dumps({"meta": meta or {}, "benchmarks": summaries}, indent=2, ensure_ascii=False))
    paths["md"].write_text(markdown_table(summaries))
    plot(summaries, paths["png"])
    return paths
