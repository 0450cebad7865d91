"""The run report: `report.md` with the evaluation table, the training curves (PNG) and a link to the
rollout view of every dumped step. `appo train` rewrites it after each stage and when it stops, so a run
that is interrupted still leaves a report of what it did."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from appo.train.tracking import read_metrics

log = logging.getLogger(__name__)

# name -> (metric, label, plot title)
PLOTS = {
    "reward": ("reward/mean", "mean reward", "Mean reward of each step's rollouts"),
    "accuracy": ("reward/accuracy", "accuracy (full reward, %)", "Rollouts with full reward (%)"),
    "tool_calls": ("rollout/tool_calls_mean", "tool calls per response", "Tool calls per response"),
    "response_length": ("rollout/response_length_mean", "response length (tokens)", "Response length (tokens)"),
}
# Metrics shown as percentages (their values are fractions).
PERCENT = {"pass@1", "acc", "f1", "em", "math_equal", "llm_equal", "tool_use_rate", "truncated_rate",
           "tool_error_rate", "reward/accuracy"}
# Evaluation columns in reading order: the headline first; others follow alphabetically.
EVAL_ORDER = ("pass@1", "acc", "reward", "f1", "questions", "tool_use_rate", "tool_calls_per_sample",
              "response_tokens_mean", "truncated_rate")
EVAL_NOTES = {
    "pass@1": "share of held-out samples graded correct (the task's reward gives full credit); the headline",
    "acc": "the gold answer appears inside the extracted answer (lenient substring match, so it can exceed "
           "pass@1)",
    "reward": "mean reward of the samples",
    "tool_use_rate": "share of samples that called a tool",
    "truncated_rate": "share of samples that hit the token budget",
}


def plot_curves(history: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for name, (key, label, title) in PLOTS.items():
        scale = 100 if key in PERCENT else 1
        points = [(r["step"], r[key] * scale) for r in history if r.get(key) is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 1.25, 1.5, ... ticks
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def rollout_views(out_dir: Path, tokenizer, folder: Path | None = None) -> list[Path]:
    """`rollouts/step_N.html` for every dumped `step_N.jsonl` (rendered once; a newer dump re-renders);
    `folder`: where the dumps are when not under out_dir (trainer.rollout_data_dir)."""
    from appo.rollout.html import render_dump

    folder = folder or out_dir / "rollouts"
    dumps = sorted(folder.glob("step_*.jsonl"), key=lambda p: int(p.stem.split("_")[1])) if folder.is_dir() else []
    views = []
    for dump in dumps:
        page = dump.with_suffix(".html")
        if tokenizer is not None and (not page.exists() or page.stat().st_mtime < dump.stat().st_mtime):
            try:
                page.write_text(render_dump(dump, tokenizer, f"appo rollouts · RL step {dump.stem[5:]}"),
                                encoding="utf-8")
            except (ValueError, KeyError) as e:  # a torn dump of a killed run must not cost the report
                log.warning("%s: cannot render (%s)", dump, e)
                continue
        if page.exists():
            views.append(page)
    return views


def write_report(output_dir: str | Path, evals: dict[str, dict] | None = None,
                 notes: list[str] | None = None, tokenizer=None, status: str | None = None,
                 rollouts_dir: str | Path | None = None) -> Path:
    """Write output_dir/report.md from metrics.jsonl, the named evaluation summaries (metric -> value) and
    the rollout dumps (rendered to HTML when a tokenizer is given). `status` says how far the run got."""
    out = Path(output_dir)
    history = read_metrics(out / "metrics.jsonl")
    plots = plot_curves(history, out)
    lines = ["# appo run report", ""]
    if status:
        lines += [f"Status: {status}", ""]
    if evals:
        present = {k for summary in evals.values() for k in summary}
        metrics = [m for m in EVAL_ORDER if m in present] + sorted(present - set(EVAL_ORDER))
        lines += ["## Evaluation", "", "| stage | " + " | ".join(_header(m) for m in metrics) + " |",
                  "|---" + "|---:" * len(metrics) + "|"]
        for stage, summary in evals.items():
            lines.append(f"| {stage} | " + " | ".join(_fmt(summary.get(m), m) for m in metrics) + " |")
        lines += ["", "Columns marked (%) are percentages. " + "; ".join(
            f"{m}: {EVAL_NOTES[m]}" for m in metrics if m in EVAL_NOTES) + ".", ""]
    if history:
        first, last = history[0], history[-1]
        lines += ["## Training", "", f"{len(history)} RL steps logged.", "",
                  "| metric | first step | last step |", "|---|---:|---:|"]
        for key, label, _ in PLOTS.values():
            lines.append(f"| {label} | {_fmt(first.get(key), key)} | {_fmt(last.get(key), key)} |")
        lines.append("")
        times = [k for k in last if k.startswith("time/")]
        if times:
            lines += ["Seconds per step (mean): " + ", ".join(
                f"{k[5:]} {sum(r.get(k) or 0 for r in history) / len(history):.2f}" for k in times), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    views = rollout_views(out, tokenizer, Path(rollouts_dir) if rollouts_dir else None)
    if views:
        lines += ["", "## Rollouts", "",
                  "One page per dumped RL step: rollout trees with branch points and scores, tool results, and "
                  "tokens shaded by entropy or by the advantage they were trained with.", "",
                  " · ".join(f"[step {p.stem[5:]}]({Path(os.path.relpath(p, out)).as_posix()})" for p in views)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # a kill while writing leaves the previous report, never a torn one
    return path


def _header(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT else metric


def _fmt(v, metric: str = "") -> str:
    if v is None:
        return "-"
    if metric in PERCENT and isinstance(v, (int, float)):
        return f"{100 * v:.1f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
