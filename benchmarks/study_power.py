"""How many seeds the algorithm study needs, from a pilot's runs (issue 28's "power first").

    python benchmarks/study_power.py --out docs/results/study/runs [--delta 5] [--z 2] [--max-hours 8]

Reads the finished runs `benchmarks/compare_algorithms.py` wrote under --out (<arm>/seed<k>.json) and prints
the plan: seeds per arm so that a difference of --delta points in final greedy pass@1 between two arms is
--z standard errors, and the machine time that costs at the pilot's median wall time per run.

The model: a run's final greedy pass@1 is its arm's mean plus run-to-run noise of variance s^2 (the
questions are the same for every run, so question difficulty is not part of it; what varies is which
questions a seed's training happens to flip). With S seeds per arm, the standard error of the difference of
two arm means is s * sqrt(2 / S). s is estimated from the seeds of one arm where an arm has two or more
(pooled within arms); from one seed per arm it is the spread of the arms' results, an upper bound (it also
holds whatever the arms truly differ by, in expectation; from a few runs it is noisy itself).

Also printed, from the per-question results (`greedy/correct`): for every pair of runs, how many questions
one got right and the other wrong. If the runs differed only by independent per-question flips, s^2 would be
about half the discordant fraction / questions; a much larger s means the seeds shift many questions together,
and an s below it (a spread from two or three runs can come out that low) is replaced by it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark scripts are files, not a package
from compare_algorithms import pooled_sd  # noqa: E402


def load(out: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*/seed*.json")):
        run = json.loads(path.read_text())
        if run.get("finished") and "greedy/pass@1" in run.get("final", {}):
            runs.setdefault(run["arm"], []).append(run)
    return runs


def run_sd(runs: dict[str, list[dict]]) -> tuple[float, str]:
    """The run-to-run standard deviation of final greedy pass@1, and how it was estimated."""
    sd, dof = pooled_sd(runs, "greedy/pass@1")
    if dof:
        return sd, f"pooled within arms ({dof} degrees of freedom)"
    firsts = [items[0]["final"]["greedy/pass@1"] for items in runs.values()]
    if len(firsts) < 2:
        raise SystemExit("study_power: need two finished runs (two arms, or two seeds of one arm)")
    mean = sum(firsts) / len(firsts)
    sd = math.sqrt(sum((y - mean) ** 2 for y in firsts) / (len(firsts) - 1))
    return sd, (f"spread of {len(firsts)} arms' single runs (an upper bound in expectation: it includes true arm "
                "differences)")


def discordance(a: dict, b: dict) -> tuple[int, int]:
    """(questions where exactly one of the two runs is right, questions both answered)."""
    ca, cb = a["final"].get("greedy/correct"), b["final"].get("greedy/correct")
    if not ca or not cb:
        return 0, 0
    common = ca.keys() & cb.keys()
    return sum((ca[q] > 0) != (cb[q] > 0) for q in common), len(common)


def plan(runs: dict[str, list[dict]], delta: float, z: float, arms: int, min_seeds: int,
         max_hours: float) -> str:
    sd, how = run_sd(runs)
    questions = sorted({r["final"]["greedy/questions"] for items in runs.values() for r in items})
    lines = ["Inputs (finished runs, final greedy pass@1 on "
             f"{'/'.join(map(str, questions))} held-out questions):"]
    for arm, items in sorted(runs.items()):
        for r in items:
            lines.append(f"  {arm:<14} seed {r['seed']}: {r['final']['greedy/pass@1'] * 100:5.1f}%, "
                         f"{len(r['steps'])} steps, {r['tokens_per_step']:.0f} sampled tokens/step, "
                         f"wall {r['wall_seconds'] / 60:.1f} min (RL {r['train_seconds'] / 60:.1f})")
    everything = [r for items in runs.values() for r in items]
    pairs = [discordance(a, b) for a, b in itertools.combinations(everything, 2)]
    pairs = [(d, n) for d, n in pairs if n]
    lines.append(f"Run-to-run sd of final greedy pass@1: {sd * 100:.1f} points, {how}.")
    if pairs:
        rate = sum(d for d, _ in pairs) / sum(n for _, n in pairs)
        flips = math.sqrt(rate / 2 / questions[-1])
        lines.append(f"Per question: two runs disagree on {rate * 100:.1f}% of the questions on average "
                     f"({len(pairs)} pairs); independent flips alone give a run-to-run sd of {flips * 100:.1f} points.")
        if flips > sd:  # a spread from a few runs can come out below what the flips alone make
            sd = flips
            lines.append(f"The plan uses the larger, {sd * 100:.1f} points.")
    need = max(min_seeds, math.ceil(2 * (z * sd / delta) ** 2)) if sd > 0 else min_seeds
    minutes = statistics.median(r["wall_seconds"] for r in everything) / 60  # a run beside other work is slower
    hours = need * arms * minutes / 60
    lines.append(f"Seeds per arm for {delta * 100:.0f} points = {z:g} SE: 2 * ({z:g} * {sd * 100:.1f} / "
                 f"{delta * 100:.0f})^2 = {2 * (z * sd / delta) ** 2:.1f} -> {need} (at least {min_seeds}).")
    lines.append(f"Cost: {need} seeds x {arms} arms x {minutes:.0f} min per run (median of {len(everything)} runs) = {hours:.1f} hours of this machine.")
    if hours > max_hours:
        fit = max(2, int(max_hours * 60 / minutes / arms))
        resolved = z * sd * math.sqrt(2 / fit)
        lines.append(f"Over the {max_hours:g}-hour budget: {fit} seeds per arm fit, and resolve a difference of "
                     f"{resolved * 100:.1f} points at {z:g} SE.")
    else:
        lines.append(f"Within the {max_hours:g}-hour budget; with {need} seeds the design resolves "
                     f"{z * sd * math.sqrt(2 / need) * 100:.1f} points at {z:g} SE.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="The compare_algorithms.py --out directory of the pilot.")
    p.add_argument("--delta", type=float, default=5.0, help="The difference to detect, in points of pass@1.")
    p.add_argument("--z", type=float, default=2.0, help="Standard errors the difference must span.")
    p.add_argument("--arms", type=int, default=4, help="Arms the plan runs (main arms plus ablations).")
    p.add_argument("--min-seeds", type=int, default=5, help="Seeds per arm at the least.")
    p.add_argument("--max-hours", type=float, default=8.0, help="The machine-time budget.")
    args = p.parse_args(argv)
    runs = load(Path(args.out))
    if not runs:
        print(f"study_power: no finished runs under {args.out}", file=sys.stderr)
        return 2
    print(plan(runs, args.delta / 100, args.z, args.arms, args.min_seeds, args.max_hours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
