"""The end-of-run report: `report.md` with the evaluation table and PNG plots of the training curves."""

from __future__ import annotations

from pathlib import Path

from appo.train.tracking import read_metrics

PLOTS = {
    "reward": ("reward/mean", "mean reward"),
    "accuracy": ("reward/accuracy", "accuracy (full reward)"),
    "tool_calls": ("rollout/tool_calls_mean", "tool calls per response"),
    "response_length": ("rollout/response_length_mean", "response length (tokens)"),
}


def plot_curves(history: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, (key, label) in PLOTS.items():
        points = [(r["step"], r[key]) for r in history if r.get(key) is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def write_report(output_dir: str | Path, evals: dict[str, dict] | None = None,
                 notes: list[str] | None = None) -> Path:
    """Write output_dir/report.md from metrics.jsonl and the named evaluation summaries (metric -> value)."""
    out = Path(output_dir)
    history = read_metrics(out / "metrics.jsonl")
    plots = plot_curves(history, out)
    lines = ["# appo run report", ""]
    if evals:
        metrics = sorted({k for summary in evals.values() for k in summary})
        lines += ["## Evaluation", "", "| stage | " + " | ".join(metrics) + " |",
                  "|---" * (len(metrics) + 1) + "|"]
        for stage, summary in evals.items():
            lines.append(f"| {stage} | " + " | ".join(_fmt(summary.get(m)) for m in metrics) + " |")
        lines.append("")
    if history:
        first, last = history[0], history[-1]
        lines += ["## Training", "", f"{len(history)} RL steps logged.", "",
                  "| metric | first step | last step |", "|---|---|---|"]
        for key, label in PLOTS.values():
            lines.append(f"| {label} | {_fmt(first.get(key))} | {_fmt(last.get(key))} |")
        lines.append("")
        times = [k for k in last if k.startswith("time/")]
        if times:
            lines += ["Seconds per step (mean): " + ", ".join(
                f"{k[5:]} {sum(r.get(k) or 0 for r in history) / len(history):.2f}" for k in times), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
