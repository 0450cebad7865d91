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


def _write(tmp_path, arm, seed, **final):
    path = tmp_path / arm / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    run = _run(arm, seed, final.pop("greedy/pass@1"), 1000)
    run["final"].update(final)
    run["train_seconds"] = 60 * seed
    path.write_text(json.dumps(run))


def test_differences_claim_only_above_two_standard_errors(compare, tmp_path):
    # appo 0.80/0.84/0.88, grpo 0.60/0.62/0.64: +22 points; pooled sd sqrt((0.0032 + 0.0008) / 4)
    for seed, (a, g) in enumerate(((0.80, 0.60), (0.84, 0.62), (0.88, 0.64)), start=1):
        _write(tmp_path, "appo", seed, **{"greedy/pass@1": a, "sampled/pass@1": 0.5})
        _write(tmp_path, "grpo", seed, **{"greedy/pass@1": g, "sampled/pass@1": 0.5 + 0.1 * (seed - 2)})
    _write(tmp_path, "arpo", 1, **{"greedy/pass@1": 0.9})  # one seed: no comparison
    for seed, acc in ((1, 0.70), (2, 0.90)):  # two seeds: a difference, but no claim
        _write(tmp_path, "appo-fv_none", seed, **{"greedy/pass@1": acc})
    summary = compare.summarize(tmp_path)
    rows = {(d["a"], d["b"], d["metric"]): d for d in summary["differences"]}
    assert set(rows) == {("appo", "grpo", "greedy/pass@1"), ("appo", "grpo", "sampled/pass@1"),
                         ("appo", "appo-fv_none", "greedy/pass@1")}
    greedy = rows[("appo", "grpo", "greedy/pass@1")]
    sd = math.sqrt((0.0032 + 0.0008 + 0.02) / 5)  # appo, grpo and appo-fv_none's spreads, 2 + 2 + 1 dof
    assert greedy["sd"] == pytest.approx(sd) and greedy["sd_dof"] == 5
    assert greedy["diff"] == pytest.approx(0.22) and greedy["se"] == pytest.approx(sd * math.sqrt(2 / 3))
    assert greedy["verdict"] == "appo higher"
    # paired by seed: the differences 0.20/0.22/0.24
    assert greedy["paired"] == pytest.approx(list(compare.mean_se([0.20, 0.22, 0.24])))
    sampled = rows[("appo", "grpo", "sampled/pass@1")]  # sd sqrt(0.02 / 4): resolves 2 * 0.0707 * 0.816
    assert sampled["diff"] == pytest.approx(0.0, abs=1e-12)
    assert sampled["verdict"].startswith("not resolved (this design resolves 11.5 points")
    ablation = rows[("appo", "appo-fv_none", "greedy/pass@1")]
    assert ablation["diff"] == pytest.approx(0.04) and ablation["verdict"].startswith("too few seeds")
    table = (tmp_path / "summary.md").read_text()
    assert "| appo - grpo (3 vs 3 seeds) | greedy/pass@1 | +22.0 | 5.7 | +3.9 |" in table
    assert "greedy/pass@1: 6.9 points, 5 degrees of freedom" in table
    # the wall time is the median and the range: seed k took 60k seconds
    assert "| 120 [60-180] |" in table and "| arpo | 1 |" in table


def test_dapo_and_gspo_are_arms_with_whole_rows(compare):
    args = compare.parse_args(["--arms", "appo,dapo,gspo", "--rows", "dapo=5,gspo=5,appo=6:3", "--seeds", "1"])
    assert args.run_list == [("appo", 1), ("dapo", 1), ("gspo", 1)]
    assert compare.ARMS["dapo"] == ["algorithm.name=dapo"] and compare.ARMS["gspo"] == ["algorithm.name=gspo"]
    assert compare.row_overrides("dapo", args.row_spec) == ["rollout.n=5"]
    assert compare.row_overrides("gspo", args.row_spec) == ["rollout.n=5"]
    assert compare.row_overrides("appo", args.row_spec) == ["rollout.n=6", "rollout.initial_rollouts=3"]
