"""study_power's plan: seeds from the run-to-run spread, the cost, and what a capped budget resolves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_run(out: Path, arm: str, seed: int, right: set[int], questions: int = 100, minutes: float = 30.0):
    final = {"greedy/questions": questions, "greedy/pass@1": len(right) / questions,
             "greedy/correct": {str(q): int(q in right) for q in range(questions)}}
    run = {"arm": arm, "seed": seed, "finished": True, "final": final, "steps": [{}] * 10,
           "tokens_per_step": 5000.0, "wall_seconds": minutes * 60, "train_seconds": minutes * 40}
    (out / arm).mkdir(parents=True, exist_ok=True)
    (out / arm / f"seed{seed}.json").write_text(json.dumps(run))


def test_seeds_come_from_the_pooled_within_arm_spread(power, tmp_path):
    # grpo seeds at 30% and 40%, appo at 50% and 60%: each arm's sd is 7.07 points (squared deviations 25 + 25
    # over one degree of freedom), so 2 * (2 * 7.07 / 5)^2 = 16 seeds per arm.
    write_run(tmp_path, "grpo", 1, set(range(30)))
    write_run(tmp_path, "grpo", 2, set(range(40)))
    write_run(tmp_path, "appo", 1, set(range(50)))
    write_run(tmp_path, "appo", 2, set(range(60)))
    runs = power.load(tmp_path)
    sd, how = power.run_sd(runs)
    assert sd == pytest.approx(0.0707, abs=1e-4) and "pooled within arms (2 degrees" in how
    text = power.plan(runs, 0.05, 2.0, arms=3, min_seeds=5, max_hours=100)
    assert "-> 16 (at least 5)" in text
    assert "16 seeds x 3 arms x 30 min per run (median of 4 runs) = 24.0 hours" in text
    assert "disagree on" in text  # the per-question discordance is reported


def test_one_seed_per_arm_gives_an_upper_bound_and_a_capped_budget_says_what_it_resolves(power, tmp_path):
    for arm, right in (("grpo", 20), ("arpo", 25), ("appo", 30)):
        write_run(tmp_path, arm, 1, set(range(right)), minutes=60)
    runs = power.load(tmp_path)
    sd, how = power.run_sd(runs)
    assert sd == pytest.approx(0.05) and "upper bound" in how
    text = power.plan(runs, 0.05, 2.0, arms=3, min_seeds=5, max_hours=8)
    assert "-> 8 (at least 5)" in text and "= 24.0 hours" in text
    # 8 hours of 60-minute runs over 3 arms: 2 seeds each, resolving 2 * 5 * sqrt(2 / 2) = 10 points
    assert "2 seeds per arm fit, and resolve a difference of 10.0 points" in text


def test_a_spread_below_what_the_per_question_flips_make_is_replaced_by_them(power, tmp_path):
    # Both runs get 50 right but not the same 50: the arms' spread is 0, yet the runs disagree on every
    # question, which alone makes a run-to-run sd of sqrt(1 / 2 / 100) = 7.07 points -> 16 seeds.
    write_run(tmp_path, "grpo", 1, set(range(50)))
    write_run(tmp_path, "appo", 1, set(range(50, 100)))
    text = power.plan(power.load(tmp_path), 0.05, 2.0, arms=2, min_seeds=5, max_hours=100)
    assert "sd of final greedy pass@1: 0.0 points" in text and "disagree on 100.0%" in text
    assert "The plan uses the larger, 7.1 points." in text and "-> 16 (at least 5)" in text


def test_without_runs_it_stops_with_one_line(power, tmp_path, capsys):
    assert power.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"study_power: no finished runs under {tmp_path}"


def test_the_cost_is_the_median_run_so_one_run_that_shared_the_machine_does_not_set_it(power, tmp_path):
    write_run(tmp_path, "grpo", 1, set(range(20)), minutes=30)
    write_run(tmp_path, "arpo", 1, set(range(25)), minutes=30)
    write_run(tmp_path, "appo", 1, set(range(30)), minutes=90)  # ran beside a test suite
    text = power.plan(power.load(tmp_path), 0.05, 2.0, arms=3, min_seeds=5, max_hours=100)
    assert "x 30 min per run (median of 3 runs)" in text
