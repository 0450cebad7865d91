"""The run report: the headline column first, rates as percentages, acc explained, titled plots, and a
link to the rollout view of every dumped step."""

from __future__ import annotations

import json

from appo.rollout.trajectory import Trajectory
from appo.train.report import write_report


def test_report_orders_columns_formats_rates_and_links_step_views(tmp_path, tiny_tokenizer):
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward/mean": 0.5 * s, "reward/accuracy": 0.25 * s}) + "\n" for s in (1, 2)))
    (tmp_path / "rollouts").mkdir()
    for step in (1, 2, 10):
        t = Trajectory(prompt_ids=[1, 2], reward=1.0, finish_reason="eos")
        t.append([5, 6, 7], generated=1, logprobs=[-0.1] * 3, entropies=[0.5] * 3)
        record = t.to_dict(tiny_tokenizer) | {"group": 0, "advantages": [0.5, 0.5, 0.5]}
        (tmp_path / "rollouts" / f"step_{step}.jsonl").write_text(json.dumps(record) + "\n")
    evals = {"after RL": {"questions": 200, "truncated_rate": 0.1, "acc": 0.8, "pass@1": 0.755, "reward": 0.9}}
    report = write_report(tmp_path, evals, tokenizer=tiny_tokenizer, status="finished").read_text()
    assert "| stage | pass@1 (%) | acc (%) | reward | questions | truncated_rate (%) |" in report
    assert "| after RL | 75.5 | 80.0 | 0.9 | 200 | 10.0 |" in report
    assert "acc: the gold answer appears inside the extracted answer" in report
    assert "| accuracy (full reward, %) | 25.0 | 50.0 |" in report and "Status: finished" in report
    assert "[step 1](rollouts/step_1.html) · [step 2](rollouts/step_2.html) · [step 10](rollouts/step_10.html)" in report
    assert "advantage +0.500" in (tmp_path / "rollouts" / "step_2.html").read_text()
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


def test_report_without_a_tokenizer_links_only_views_that_exist(tmp_path):
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "step_1.jsonl").write_text("{}\n")
    report = write_report(tmp_path, {}).read_text()
    assert "## Rollouts" not in report and not (tmp_path / "rollouts" / "step_1.html").exists()


def test_the_plots_step_axis_has_whole_steps_only(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from appo.train.report import plot_curves

    ticks, save = [], Figure.savefig

    def record(fig, *args, **kwargs):
        fig.canvas.draw()
        ticks.append([float(t) for ax in fig.axes for t in ax.get_xticks()
                      if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    history = [{"step": s, "reward/mean": 0.1 * s, "rollout/tool_calls_mean": 1.0} for s in (1, 2, 3)]
    assert len(plot_curves(history, tmp_path)) == 2
    assert ticks and all(t and all(x == int(x) for x in t) for t in ticks), ticks
