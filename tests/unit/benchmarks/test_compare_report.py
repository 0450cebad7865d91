"""compare_algorithms' bookkeeping: rows per arm, mean ± standard error, the table and the skip rule."""

from __future__ import annotations

import json
import math

import pytest


def test_rows_per_arm_and_ablations_share_appos(compare):
    args = compare.parse_args(["--rows", "grpo=8,appo=10:4", "--arms", "grpo,appo", "--ablations",
                               "--seeds", "1,2,3", "--ablation-seeds", "7", "data.batch_size=2"])
    assert compare.row_overrides("grpo", args.row_spec) == ["rollout.n=8"]
    assert compare.row_overrides("appo-fv_none", args.row_spec) == ["rollout.n=10", "rollout.initial_rollouts=4"]
    assert compare.row_overrides("arpo", args.row_spec) == ["rollout.n=6", "rollout.initial_rollouts=2"]
    assert args.overrides == ["data.batch_size=2"]
    # seed by seed, so a study cut short still has every arm at the seeds it reached
    assert args.run_list[:6] == [("grpo", 1), ("appo", 1), ("grpo", 2), ("appo", 2), ("grpo", 3), ("appo", 3)]
    assert args.run_list[6:] == [("appo-fv_none", 7), ("appo-future_kl", 7), ("appo-keep_branches", 7),
                                 ("appo-2updates", 7), ("appo-2updates-future_kl", 7)]


@pytest.mark.parametrize("bad", [["--rows", "ppo=4"], ["--rows", "grpo=x"], ["--arms", "grpo,dpo"],
                                 ["--seeds", "1,a"]])
def test_bad_arguments_stop_with_a_message(compare, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(bad)
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_mean_and_standard_error(compare):
    mean, se = compare.mean_se([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and se == pytest.approx(math.sqrt(0.04 / 3))
    assert math.isnan(compare.mean_se([0.5])[1])


def _run(arm, seed, acc, tokens):
    return {"arm": arm, "seed": seed, "finished": True, "final": {"questions": 300, "greedy/pass@1": acc},
            "evals": [{"step": 0, "tokens": 0, "greedy/pass@1": 0.1}, {"step": 2, "tokens": tokens,
                                                                       "greedy/pass@1": acc}],
            "tokens_per_step": tokens / 2, "rows_per_step": 16, "update_rows_per_step": 8, "train_seconds": 60,
            "wall_seconds": 90}


def test_summary_table_and_plot_over_finished_runs_only(compare, tmp_path):
    for seed, acc in ((1, 0.2), (2, 0.3), (3, 0.4)):
        path = tmp_path / "grpo" / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_run("grpo", seed, acc, 1000)))
    (tmp_path / "appo").mkdir()
    (tmp_path / "appo" / "seed1.json").write_text(json.dumps({**_run("appo", 1, 0.9, 1000), "finished": False}))
    summary = compare.summarize(tmp_path)
    assert set(summary["arms"]) == {"grpo"}
    mean, se = summary["arms"]["grpo"]["greedy/pass@1"]
    assert mean == pytest.approx(0.3) and se == pytest.approx(math.sqrt(0.01 / 3))
    table = (tmp_path / "summary.md").read_text()
    assert "| grpo | 3 | 30.0 ± 5.8 | 500 ± 0 |" in table
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 0
