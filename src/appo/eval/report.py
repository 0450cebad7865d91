"""Write the evaluation summary as JSON, a markdown table (with every setting used) and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

# Columns of the markdown table, in order, when any benchmark has them: the headline accuracy first.
_HEADLINE = ("pass@1", "pass@k", "maj@k", "acc", "em", "f1", "math_equal", "llm_equal", "judge_unparseable",
             "judge_errors", "tool_use_rate", "tool_calls_per_sample", "tool_error_rate", "bad_calls_per_sample",
             "generated_tokens_mean", "truncated_rate")
_PERCENT = {"pass@1", "pass@k", "maj@k", "em", "f1", "acc", "math_equal", "llm_equal", "tool_use_rate",
            "tool_error_rate", "truncated_rate"}
_EXPLAIN = {
    "pass@1": "share of samples graded correct, averaged over questions (with k runs per question: the mean "
              "over the runs); the headline number",
    "pass@k": "unbiased pass@k, 1 - C(n-c,k)/C(n,k): a question counts when any of its k samples is correct",
    "maj@k": "the most frequent extracted answer among the k samples is correct",
    "acc": "the gold answer appears inside the extracted answer (the reference's lenient substring metric; "
           "it can exceed pass@1)",
    "em": "exact match after normalisation", "f1": "token-overlap F1 (the papers' QA metric)",
    "math_equal": "math equivalence of answer and gold", "llm_equal": "correct by the LLM judge (or rules)",
    "tool_use_rate": "share of samples that called a tool", "tool_error_rate": "share of tool calls that failed",
    "truncated_rate": "share of samples that hit the token budget",
    "bad_calls_per_sample": "calls that could not run as written (tools.format=chat_template: malformed JSON, an "
                            "unknown tool, arguments that do not fit the schema), per sample",
}
# The settings section of summary.md: (meta key, label), in reading order.
_SETTINGS = (("protocol", "protocol"), ("model", "model"), ("engine", "engine"),
             ("system_prompt_source", "system prompt"), ("k", "independent runs (samples) per question"),
             ("max_samples", "questions per benchmark"), ("temperature", "temperature"), ("top_p", "top_p"),
             ("top_k", "top_k"), ("repetition_penalty", "repetition penalty"),
             ("max_tokens_per_call", "tokens per generation call"),
             ("max_response_length", "response budget (tokens, tool results included)"),
             ("max_prompt_length", "prompt budget (tokens)"), ("tools", "tools"), ("tool_format", "tool format"),
             ("tool_call_limits", "per-tool call budgets"), ("call_limit", "tool calls per response (all tools)"),
             ("on_limit", "over a budget"), ("search_backend", "search backend"), ("judge", "LLM judge"),
             ("seed", "seed"))


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


def _label(name: str, ks: set) -> str:
    """The column header: pass@k / maj@k with the run's k when all benchmarks share it; (%) on rates."""
    shown = f"{name[:-1]}{next(iter(ks))}" if name in ("pass@k", "maj@k") and len(ks) == 1 else name
    return f"{shown} (%)" if name in _PERCENT else shown


def markdown_table(summaries: dict[str, dict]) -> str:
    rows = {name: _headline(s) for name, s in summaries.items()}
    cols = [c for c in _HEADLINE if any(r.get(c) is not None for r in rows.values())]
    ks = {r.get("k") for r in rows.values()}
    lines = ["| benchmark | " + " | ".join(_label(c, ks) for c in cols) + " | questions | k |",
             "|---|" + "---:|" * len(cols) + "---:|---:|"]
    for name, r in rows.items():
        cells = [_cell(c, r.get(c)) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('questions', 0)} | {r.get('k', '–')} |")
    lines.append("")
    lines.append("Columns marked (%) are percentages. 'k' is the samples per question. "
                 + "; ".join(f"{c}: {_EXPLAIN[c]}" for c in cols if c in _EXPLAIN) + ".")
    return "\n".join(lines) + "\n"


def settings_markdown(meta: dict) -> str:
    """Every setting that shaped the samples, so a number can be set beside a paper's row honestly."""
    lines = ["## Settings", "", "| setting | value |", "|---|---|"]
    for key, label in _SETTINGS:
        if key not in meta:
            continue
        value = meta[key]
        if key == "max_samples":
            value = "the whole file" if value is None else f"the first {value}"
        elif key == "protocol" and value is None:
            value = "none (the config's values)"
        elif key == "max_tokens_per_call" and value is None:
            value = "no cap below the response budget"
        elif key == "tool_call_limits":
            value = ", ".join(f"{t} {n}" for t, n in value.items()) or "none (only the total)"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        elif value is None:
            value = "off"
        lines.append(f"| {label} | {str(value).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def plot(summaries: dict[str, dict], path: Path, meta: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    rows = [_headline(summaries[n]) for n in names]
    ks = {r.get("k") for r in rows}
    series = [(_label(key, ks).replace(" (%)", ""), key) for key in ("pass@1", "pass@k", "maj@k")
              if any(r.get(key) is not None for r in rows)]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 * len(names) + 1.5), 3.8))
    for i, (label, key) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, [100 * (r.get(key) or 0.0) for r in rows], width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right")
    meta = meta or {}
    model = Path(str(meta.get("model", ""))).name or "model"
    knobs = ", ".join(f"{k}={meta[key]}" for key, k in (("temperature", "T"), ("k", "k")) if key in meta)
    protocol = f", protocol {meta['protocol']}" if meta.get("protocol") else ""
    ax.set_title(f"appo eval: {model}" + (f" ({knobs}{protocol})" if knobs else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summaries: dict[str, dict], out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """summary.json (every metric), summary.md (headline table and settings) and summary.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "summary.json", "md": out / "summary.md", "png": out / "summary.png"}
    paths["json"].write_text(json.dumps({"meta": meta or {}, "benchmarks": summaries}, indent=2, ensure_ascii=False))
    paths["md"].write_text(markdown_table(summaries) + ("\n" + settings_markdown(meta) if meta else ""))
    plot(summaries, paths["png"], meta)
    return paths
