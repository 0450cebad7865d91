"""Does APPO help? GRPO, ARPO and APPO side by side on the `study` task, from one SFT checkpoint.

    python benchmarks/compare_algorithms.py --seeds 1,2,3 --steps 2 --eval-every 0 --final-questions 40 \
        --sampled-k 4 --sampled-questions 10 --ablations --ablation-seeds 1

What is held equal across arms: the SFT checkpoint (trained once, reused), the training prompts of every
step (data.seed is not varied), the learning rate, clip, loss and update shape (one optimizer step per RL
step over the rows each algorithm keeps; the `appo-2updates` ablations take two), and the held-out
questions. Seeds vary the sampling (rollout.seed) and the step's torch seed (trainer.seed).

Sampled tokens per step: GRPO samples n whole rows per prompt; APPO samples m whole rows and n - m branch
continuations from a point inside them, ARPO m rows and copies that continue after a tool round; a
continuation is shorter than a whole row, so APPO/ARPO get more rows for the same tokens. `--rows`
sets each arm's n[:m] (defaults below) so that the measured tokens per step come close; every run
records the rows and sampled tokens (rollout/generated_tokens: tokens the policy sampled, tool results
excluded) of each of its steps, and the plot puts accuracy against cumulative sampled tokens, so the arms
are compared at equal cost even where the per-step budgets differ a little.

Evaluations: after SFT (shared by all runs), every --eval-every steps on the first --eval-subset held-out
questions, and after the last step on the first --final-questions (default: all); greedy pass@1 and, with
--sampled-k (4), sampled pass@1 and pass@4 at temperature 1 (appo.eval.evaluate.evaluate, the training agent
loop).

Outputs: <out>/<arm>/seed<k>.json per finished run (a finished run is skipped when the script runs again;
an interrupted one restarts from its first step), <out>/sft.json, <out>/summary.json, <out>/summary.md
(the table, and each arm's difference to the others with its standard error) and
<out>/accuracy_vs_tokens.png (mean +- standard error over seeds per arm). Checkpoints, search index and
evaluation samples go under --work.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

ARMS = {
    "grpo": ["algorithm.name=grpo"],
    "arpo": ["algorithm.name=arpo"],
    "appo": ["algorithm.name=appo"],
    # the other baselines of the algorithms menu, with GRPO's whole rows (DAPO's dynamic sampling draws more
    # prompts when groups are constant: its extra sampled tokens are counted, so the curves show the cost)
    "dapo": ["algorithm.name=dapo"],
    "gspo": ["algorithm.name=gspo"],
    "appo-fv_none": ["algorithm.name=appo", "rollout.appo.fv_source=none"],
    "appo-future_kl": ["algorithm.name=appo", "actor.loss_mode=future_kl"],
    "appo-keep_branches": ["algorithm.name=appo", "algorithm.drop_branch_rows=false"],
    # With one optimizer step per RL step the ratio is 1 throughout the update, so future_kl's weight f is 1
    # and its gradient is twice vanilla's: the same step under Adam. Two steps (two mini-batches of the study's 8
    # update rows per step) let it act.
    "appo-2updates": ["algorithm.name=appo", "actor.mini_batch_size=4"],
    "appo-2updates-future_kl": ["algorithm.name=appo", "actor.mini_batch_size=4", "actor.loss_mode=future_kl"],
}
MAIN_ARMS = ("grpo", "arpo", "appo")
BASELINES = ("dapo", "gspo")
ABLATIONS = ("appo-fv_none", "appo-future_kl", "appo-keep_branches", "appo-2updates", "appo-2updates-future_kl")
# n[:m] per algorithm: grpo's 4 whole rows vs 2 whole rows + 4 shorter continuations.
DEFAULT_ROWS = {"grpo": "4", "arpo": "6:2", "appo": "6:2", "dapo": "4", "gspo": "4"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="study", help="Preset or YAML file (default: study).")
    p.add_argument("--arms", default=",".join(MAIN_ARMS), help=f"Comma-separated arms to run, of: "
                   f"{', '.join(ARMS)} (default: the three algorithms).")
    p.add_argument("--ablations", action="store_true", help="Also run the APPO ablations (on --ablation-seeds).")
    p.add_argument("--seeds", default="1,2,3", help="Comma-separated seeds of every main arm.")
    p.add_argument("--ablation-seeds", default=None, help="Comma-separated seeds of the ablations "
                   "(default: --seeds).")
    p.add_argument("--steps", type=int, default=6, help="RL steps per run.")
    p.add_argument("--eval-every", type=int, default=3, help="Evaluate on the subset every N steps (0: never).")
    p.add_argument("--eval-subset", type=int, default=60, help="Held-out questions of the intermediate evals.")
    p.add_argument("--sampled-k", type=int, default=4, help="Samples per question for sampled pass@k (0: greedy "
                   "only).")
    p.add_argument("--sampled-questions", type=int, default=None, help="Sample only the first N questions of "
                   "each evaluation for pass@k (default: all; greedy pass@1 always uses all).")
    p.add_argument("--final-questions", type=int, default=None, help="Held-out questions of the SFT and "
                   "final evaluations (default: all; 0 skips the final one, for timing runs).")
    p.add_argument("--greedy-between", action="store_true", help="Evaluations between the first and the last "
                   "step are greedy only (sampling stays in the SFT and final evaluations): the curve's middle "
                   "points cost a fraction of a sampled evaluation.")
    p.add_argument("--no-sft-eval", action="store_true", help="Do not evaluate the SFT checkpoint (timing runs; "
                   "an evaluation made before is still used).")
    p.add_argument("--sft-only", action="store_true", help="Train and evaluate the SFT checkpoint, then stop.")
    p.add_argument("--rows", default="", metavar="ALGO=N[:M],...",
                   help="Rows per prompt by algorithm, e.g. grpo=4,appo=6:2 (defaults: "
                        f"{','.join(f'{k}={v}' for k, v in DEFAULT_ROWS.items())}); an ablation uses appo's.")
    p.add_argument("--out", default="docs/results/compare", help="Where the JSON results, table and plot go.")
    p.add_argument("--work", default="runs/compare", help="SFT checkpoint, index and evaluation samples.")
    p.add_argument("--report-only", action="store_true", help="Only redraw the table and plot from --out.")
    p.add_argument("overrides", nargs="*", help="Dotted config overrides for every run (e.g. data.batch_size=2).")
    args = p.parse_args(argv)
    rows = dict(DEFAULT_ROWS)
    for spec in filter(None, args.rows.split(",")):
        algo, _, value = spec.partition("=")
        if algo not in DEFAULT_ROWS or not all(part.isdigit() for part in value.split(":")):
            p.error(f"--rows {spec!r}: expected ALGO=N or ALGO=N:M with ALGO one of {', '.join(DEFAULT_ROWS)}")
        rows[algo] = value
    args.row_spec = rows
    args.arms = [a for a in args.arms.split(",") if a]
    if unknown := [a for a in args.arms if a not in ARMS]:
        p.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x]
        args.ablation_seeds = [int(x) for x in args.ablation_seeds.split(",") if x] if args.ablation_seeds else None
    except ValueError:
        p.error("--seeds / --ablation-seeds: comma-separated integers, e.g. 1,2,3")
    # seed by seed, so a study cut short still has every arm at the seeds it reached
    args.run_list = [(arm, seed) for seed in args.seeds for arm in args.arms]
    if args.ablations:
        args.run_list += [(arm, seed) for arm in ABLATIONS if arm not in args.arms
                          for seed in (args.ablation_seeds or args.seeds)]
    return args


def _algo(arm: str) -> str:
    return arm.split("-", 1)[0]


def row_overrides(arm: str, spec: dict[str, str]) -> list[str]:
    n, _, m = spec[_algo(arm)].partition(":")
    return [f"rollout.n={n}"] + ([f"rollout.initial_rollouts={m}"] if m else [])


def code_revision() -> str:
    """The commit this checkout's code is at ('+changes' when src/ differs from it), kept in every run so
    that wall times compare only between runs of the same code."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class Study:
    """The shared pieces (config, task, index, prompts, SFT checkpoint) and one method per run."""

    def __init__(self, args: argparse.Namespace):
        from appo.commands.common import with_task_index
        from appo.config import load_config
        from appo.data.prompt_sets import load_prompt_sets, prepare_task
        from appo.models import load_tokenizer

        self.args, self.out, self.work = args, Path(args.out), Path(args.work)
        self.code = code_revision()  # at start-up: the code this process imports, wherever the checkout moves later
        base = load_config(args.config, [*args.overrides, f"trainer.output_dir={self.work / 'shared'}"])
        self.task = prepare_task(base)
        self.base = with_task_index(base, self.task)
        self.tokenizer = load_tokenizer(base.model.path, base.model.cache_dir)
        self.train, self.val = load_prompt_sets(self.base, self.tokenizer, self.task)
        self.subset = self.val[: args.eval_subset]

    def config(self, extra: list[str]):
        from appo.config import load_config

        cfg = load_config(self.args.config, [*self.args.overrides, *extra])
        cfg.tools.search.index_dir = self.base.tools.search.index_dir
        return cfg

    # --------------------------------------------------------------------------------------- SFT

    def sft(self) -> tuple[str, dict]:
        """The SFT checkpoint (trained on the first call, reused after) and its held-out evaluation."""
        from appo.models import load_model
        from appo.train.sft import train_sft

        path, marker = self.work / "sft", self.work / "sft" / "done.json"
        if not marker.exists():
            cfg, t0 = self.base, time.time()
            model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.cache_dir)
            train_sft(cfg, path, model, self.tokenizer, progress=False, task_rows=self.task.train)
            _write_json(marker, {"seconds": round(time.time() - t0, 1)})
        cached = path / "eval.json"  # one SFT evaluation, whichever --out the results go to
        if self.args.no_sft_eval and not cached.exists():
            return str(path), {}
        if cached.exists():
            result = json.loads(cached.read_text())
            samples = self.work / "eval" / "sft" / "full" / "greedy" / "samples.jsonl"
            if "greedy/correct" not in result["full"] and samples.exists():  # evaluated before it was kept
                result["full"]["greedy/correct"] = correct_per_question(samples)
                _write_json(cached, result)
            if self.args.sampled_k and "sampled/pass@1" not in result["full"]:  # an SFT try evaluated greedy only
                cfg = self.config([f"model.path={path}"])
                final = self.val[: self.args.final_questions] if self.args.final_questions else self.val
                result["full"].update(self.evaluate(load_model(str(path), cfg.model.dtype), cfg, final,
                                                    self.work / "eval" / "sft" / "full", greedy=False))
                result["subset"] = self._subset_of(self.work / "eval" / "sft" / "full", {p.index for p in self.subset})
                _write_json(cached, result)
            _write_json(self.out / "sft.json", result)
            return str(path), result
        cfg = self.config([f"model.path={path}"])
        model = load_model(str(path), cfg.model.dtype)
        t0 = time.time()
        full_dir = self.work / "eval" / "sft" / "full"
        # the same questions as every run's final evaluation, so step 0 and the last step compare alike
        final = self.val[: self.args.final_questions] if self.args.final_questions else self.val
        result = {"sft_seconds": json.loads(marker.read_text())["seconds"],
                  "full": self.evaluate(model, cfg, final, full_dir)}
        result["subset"] = self._subset_of(full_dir, {p.index for p in self.subset})
        result["eval_seconds"] = round(time.time() - t0, 1)
        _write_json(cached, result)
        _write_json(self.out / "sft.json", result)
        return str(path), result

    def evaluate(self, model, cfg, prompts: list, out_dir: Path, engine=None, tools=None,
                 sampled: bool = True, greedy: bool = True) -> dict:
        """Greedy pass@1 and (with --sampled-k, unless `sampled` is false) sampled pass@1 / pass@k of `prompts`."""
        from appo.eval.evaluate import evaluate

        sampled_k = self.args.sampled_k if sampled else 0
        modes = ([("greedy", 0.0, 1)] if greedy else []) + ([("sampled", 1.0, sampled_k)] if sampled_k else [])
        result = {"questions": len(prompts)}
        for mode, temperature, k in modes:
            c = copy.deepcopy(cfg)
            c.eval.temperature, c.eval.k = temperature, k
            asked = prompts[: self.args.sampled_questions] if mode == "sampled" else prompts
            result[f"{mode}/questions"] = len(asked)
            summary = evaluate(model, self.tokenizer, asked, c, name=mode, output_dir=out_dir / mode,
                               engine=engine, tools=tools, progress=False)
            result[f"{mode}/pass@1"] = summary["pass@1"]
            if k > 1:
                result[f"{mode}/pass@{k}"] = summary[f"pass@{k}"]
            for key in ("tool_use_rate", "tool_calls_per_sample", "response_tokens_mean"):
                if key in summary:
                    result[f"{mode}/{key}"] = summary[key]
            # per question, for paired analysis across arms and for the power calculation (study_power.py)
            result[f"{mode}/correct"] = correct_per_question(out_dir / mode / "samples.jsonl")
        return result

    # --------------------------------------------------------------------------------------- runs

    def run(self, arm: str, seed: int, sft_path: str, sft_result: dict) -> dict:
        import torch

        from appo.models import load_model
        from appo.train.trainer import Trainer

        run_dir = self.work / arm / f"seed{seed}"
        if run_dir.exists():  # an interrupted run starts again from its first step
            shutil.rmtree(run_dir)
        extra = [*ARMS[arm], *row_overrides(arm, self.args.row_spec), f"model.path={sft_path}",
                 f"trainer.seed={seed}", f"rollout.seed={seed}", f"trainer.total_steps={self.args.steps}",
                 f"trainer.output_dir={run_dir}", "trainer.dump_rollouts=false", "trainer.test_freq=0"]
        cfg = self.config(extra)
        torch.manual_seed(seed)
        model = load_model(sft_path, cfg.model.dtype)
        trainer = Trainer(cfg, model, self.tokenizer, self.train, self.val, start_path=sft_path, progress=False)
        evals = [{"step": 0, "tokens": 0, **sft_result["subset"]}] if sft_result else []
        steps, tokens, t0 = [], 0, time.time()
        try:
            for step in range(1, self.args.steps + 1):
                m = trainer.rl_step(step)
                trainer.step = step
                tokens += int(m["rollout/generated_tokens"])
                steps.append({"step": step, "tokens": int(m["rollout/generated_tokens"]), "cum_tokens": tokens,
                              "rows": int(m.get("rollout/init_rows", 0) + m.get("rollout/branch_rows", 0)),
                              "init_rows": int(m.get("rollout/init_rows", 0)),
                              "branch_rows": int(m.get("rollout/branch_rows", 0)),
                              "update_rows": int(m["rollout/update_rows"]), "reward_mean": m["reward/mean"],
                              "seconds": round(m["time/step"], 1),
                              # how far the update moved the policy (ppo_kl, clip fractions, future_kl's weight)
                              "update": {k: round(float(v), 6) for k, v in m.items() if k.startswith("actor/")}})
                shown = {k: v for k, v in steps[-1].items() if k != "update"}
                print(f"[compare] {arm} seed {seed} step {step}: {shown}", flush=True)
                if self.args.eval_every and step % self.args.eval_every == 0 and step < self.args.steps:
                    evals.append({"step": step, "tokens": tokens, **self.evaluate(
                        trainer.learner.model, cfg, self.subset, run_dir / "eval" / f"step_{step}",
                        trainer.engine, trainer.tools, sampled=not self.args.greedy_between)})
            train_seconds = time.time() - t0
            final = {}
            if self.args.final_questions != 0:
                final = self.evaluate(trainer.learner.model, cfg, self.val[: self.args.final_questions],
                                      run_dir / "eval" / "final", trainer.engine, trainer.tools)
                # the last point of the curve: the final evaluation restricted to the subset
                evals.append({"step": self.args.steps, "tokens": tokens,
                              **self._subset_of(run_dir / "eval" / "final", {p.index for p in self.subset})})
        finally:
            trainer.close()
        return {"arm": arm, "seed": seed, "code": self.code, "overrides": extra, "steps": steps, "evals": evals,
                "final": final,
                "tokens_per_step": tokens / len(steps), "rows_per_step": sum(s["rows"] for s in steps) / len(steps),
                "update_rows_per_step": sum(s["update_rows"] for s in steps) / len(steps),
                "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.time() - t0, 1),
                "finished": True}

    def _subset_of(self, eval_dir: Path, ids: set[int]) -> dict:
        """pass@1 (and pass@k) of the subset questions, from a whole-set evaluation's samples."""
        from appo.core.metrics import pass_at_k

        result = {"questions": len(ids)}
        for mode in ("greedy", "sampled"):
            path = eval_dir / mode / "samples.jsonl"
            if not path.exists():
                continue
            by_q = {q: c for q, c in _answers(path).items() if q in ids}
            if not by_q:
                continue
            result[f"{mode}/pass@1"] = sum(sum(c) / len(c) for c in by_q.values()) / len(by_q)
            k = max(len(c) for c in by_q.values())
            if k > 1:
                result[f"{mode}/pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in by_q.values()) / len(by_q)
        return result


def _shown(result: dict) -> dict:
    """An evaluation's numbers without the per-question lists, for the log."""
    return {k: v for k, v in result.items() if not k.endswith("/correct")}


def _answers(samples: Path) -> dict[int, list[bool]]:
    """{question index: whether each of its samples was right} from an evaluation's samples.jsonl."""
    by_q: dict[int, list[bool]] = {}
    for line in samples.read_text().splitlines():
        r = json.loads(line)
        by_q.setdefault(r["index"], []).append(bool(r["correct"]))
    return by_q


def correct_per_question(samples: Path) -> dict[str, int]:
    """{question index: samples answered correctly}, as a run's JSON keeps it."""
    return {str(q): sum(c) for q, c in _answers(samples).items()}


# ------------------------------------------------------------------------------------------- report


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def load_runs(out: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*/seed*.json")):
        run = json.loads(path.read_text())
        if run.get("finished"):
            runs.setdefault(run["arm"], []).append(run)
    return runs


# the comparisons the study reads: the main arms pairwise, APPO against DAPO, GSPO and its one ablation
PAIRS = (("appo", "grpo"), ("appo", "arpo"), ("arpo", "grpo"), ("appo", "dapo"), ("appo", "gspo"),
         ("appo", "appo-fv_none"))
DIFF_METRICS = ("greedy/pass@1", "sampled/pass@1", "sampled/pass@4")


MIN_SEEDS_TO_CLAIM = 3  # with fewer, a standard error is itself too noisy to claim a difference by


def pooled_sd(runs: dict[str, list[dict]], metric: str) -> tuple[float, int]:
    """The run-to-run standard deviation of a final metric pooled within arms, and its degrees of freedom."""
    ss, dof = 0.0, 0
    for items in runs.values():
        ys = [r["final"][metric] for r in items if metric in r["final"]]
        if len(ys) > 1:
            mean = sum(ys) / len(ys)
            ss += sum((y - mean) ** 2 for y in ys)
            dof += len(ys) - 1
    return (math.sqrt(ss / dof) if dof else float("nan")), dof


def differences(runs: dict[str, list[dict]], z: float = 2.0) -> list[dict]:
    """Arm a minus arm b for every PAIRS pair and final metric with two or more seeds on each side.

    The runs of two arms are independent (a seed fixes the sampling, which diverges after the first
    update) and every run is evaluated on the same questions, so question difficulty is not part of the
    noise; what is, is the run-to-run spread. Its standard deviation s is pooled within all arms (every arm's
    seeds spread alike in expectation, and a few seeds of one arm say little about it alone), and the
    standard error of the difference is s * sqrt(1/n_a + 1/n_b). A difference is claimed above z of those
    and only with MIN_SEEDS_TO_CLAIM seeds on each side. The difference paired by seed is printed beside it:
    where the seeds make the arms' runs move together it is the tighter one, where they do not it is no better.
    """
    rows = []
    for metric in DIFF_METRICS:
        sd, dof = pooled_sd(runs, metric)
        for a, b in PAIRS:
            if a not in runs or b not in runs:
                continue
            ya = {r["seed"]: r["final"][metric] for r in runs[a] if metric in r["final"]}
            yb = {r["seed"]: r["final"][metric] for r in runs[b] if metric in r["final"]}
            if len(ya) < 2 or len(yb) < 2:
                continue
            diff = sum(ya.values()) / len(ya) - sum(yb.values()) / len(yb)
            se = sd * math.sqrt(1 / len(ya) + 1 / len(yb))
            common = sorted(ya.keys() & yb.keys())
            paired = mean_se([ya[s] - yb[s] for s in common]) if len(common) >= 2 else None
            if min(len(ya), len(yb)) < MIN_SEEDS_TO_CLAIM:
                verdict = f"too few seeds to claim (at least {MIN_SEEDS_TO_CLAIM} each)"
            elif se > 0 and abs(diff) > z * se:
                verdict = f"{a if diff > 0 else b} higher"
            else:
                verdict = f"not resolved (this design resolves {z * se * 100:.1f} points)"
            rows.append({"a": a, "b": b, "metric": metric, "seeds": [len(ya), len(yb)], "diff": diff, "se": se,
                         "sd": sd, "sd_dof": dof, "paired": list(paired) if paired else None,
                         "paired_seeds": len(common), "verdict": verdict})
    return rows


def summarize(out: Path) -> dict:
    runs = load_runs(out)
    sft = json.loads((out / "sft.json").read_text()) if (out / "sft.json").exists() else None
    table = {}
    for arm, items in runs.items():
        row = {"seeds": sorted(r["seed"] for r in items)}
        row["final_questions"] = sorted({r["final"].get("questions", 0) for r in items})
        row["sampled_questions"] = sorted({r["final"]["sampled/questions"] for r in items
                                           if "sampled/questions" in r["final"]})
        for key in sorted({k for r in items for k in r["final"] if "pass@" in k}):
            row[key] = mean_se([r["final"][key] for r in items if key in r["final"]])
        for key in ("tokens_per_step", "rows_per_step", "update_rows_per_step", "train_seconds", "wall_seconds"):
            row[key] = mean_se([r[key] for r in items])
        # a run that shared the machine is slower: the median and the range, not a mean, describe the cost
        times = sorted(r["train_seconds"] for r in items)
        row["train_seconds_median_range"] = [statistics.median(times), times[0], times[-1]]
        table[arm] = row
    summary = {"sft": sft, "arms": table, "differences": differences(runs)}
    _write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown_table(summary))
    if runs:
        plot(runs, sft, out / "accuracy_vs_tokens.png")
    return summary


def _fmt(ms: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, se = ms
    return f"{mean * scale:.{digits}f}" + ("" if math.isnan(se) else f" ± {se * scale:.{digits}f}")


def markdown_table(summary: dict) -> str:
    lines = []
    sft = summary["sft"]
    if sft:
        f = sft["full"]
        lines.append(f"After SFT ({f['questions']} held-out questions): greedy pass@1 "
                     f"{f['greedy/pass@1'] * 100:.1f}%" + "".join(
                         f", {k} {v * 100:.1f}%" for k, v in f.items() if k.startswith("sampled/pass@"))
                     + (f", tool use {f['greedy/tool_use_rate'] * 100:.0f}%" if "greedy/tool_use_rate" in f else "")
                     + ".\n")
    keys = sorted({k for row in summary["arms"].values() for k in row if "pass@" in k})
    lines.append("| arm | seeds | " + "".join(f"{k} (%) | " for k in keys)
                 + "sampled tokens / step | rows / step | update rows / step | RL wall time / run (s), median [range] |")
    lines.append("|---" * (len(keys) + 6) + "|")
    order = [a for a in (*MAIN_ARMS, *BASELINES, *ABLATIONS) if a in summary["arms"]]
    for arm in order:
        row = summary["arms"][arm]
        cells = [_fmt(row[k]) if k in row else "-" for k in keys]
        lines.append(f"| {arm} | {len(row['seeds'])} | " + "".join(f"{c} | " for c in cells)
                     + f"{_fmt(row['tokens_per_step'], 1, 0)} | {_fmt(row['rows_per_step'], 1, 1)}"
                     f" | {_fmt(row['update_rows_per_step'], 1, 1)} | {_wall(row)} |")
    greedy = sorted({q for row in summary["arms"].values() for q in row["final_questions"]})
    sampled = sorted({q for row in summary["arms"].values() for q in row.get("sampled_questions", [])})
    if greedy:
        lines.append(f"\nmean ± standard error over seeds; final evaluation on the first "
                     f"{'/'.join(map(str, greedy))} held-out questions"
                     + (f" (sampled pass@k on the first {'/'.join(map(str, sampled))})" if sampled else "") + ".\n")
    if summary.get("differences"):
        lines.append("| comparison | metric | difference (points) | SE | difference / SE | paired by seed | verdict |")
        lines.append("|---" * 7 + "|")
        for d in summary["differences"]:
            paired = (f"{_fmt(tuple(d['paired']))} ({d['paired_seeds']} seeds)" if d["paired"] else "-")
            ratio = d["diff"] / d["se"] if d["se"] > 0 else float("nan")
            lines.append(f"| {d['a']} - {d['b']} ({d['seeds'][0]} vs {d['seeds'][1]} seeds) | {d['metric']} | "
                         f"{d['diff'] * 100:+.1f} | {d['se'] * 100:.1f} | {ratio:+.1f} | {paired} | {d['verdict']} |")
        sds = {d["metric"]: (d["sd"], d["sd_dof"]) for d in summary["differences"]}
        lines.append("\nSE = s * sqrt(1/n_a + 1/n_b), s the run-to-run sd pooled within arms ("
                     + "; ".join(f"{m}: {sd * 100:.1f} points, {dof} degrees of freedom" for m, (sd, dof) in sds.items())
                     + f"). A difference is claimed only where it exceeds 2 SE, with at least {MIN_SEEDS_TO_CLAIM} "
                     "seeds on each side.\n")
    return "\n".join(lines)


def _wall(row: dict) -> str:
    spread = row.get("train_seconds_median_range")
    if not spread:
        return _fmt(row["train_seconds"], 1, 0)
    median, low, high = spread
    return f"{median:.0f}" + ("" if low == high else f" [{low:.0f}-{high:.0f}]")


def plot(runs: dict[str, list[dict]], sft: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("greedy/pass@1", "sampled/pass@4") if any(m in e for rs in runs.values()
                                                                      for r in rs for e in r["evals"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for arm, items in runs.items():
            points = sorted({e["step"] for e in items[0]["evals"]})
            xs, ys, es = [], [], []
            for step in points:
                at = [e for r in items for e in r["evals"] if e["step"] == step and metric in e]
                if len(at) != len(items):
                    continue
                xs.append(sum(e["tokens"] for e in at) / len(at))
                mean, se = mean_se([e[metric] for e in at])
                ys.append(mean * 100)
                es.append(0.0 if math.isnan(se) else se * 100)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{arm} (n={len(items)})")
        ax.set_xlabel("cumulative sampled tokens")
        ax.set_ylabel(f"{metric} on the held-out subset (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("accuracy vs sampled tokens, mean ± SE over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    if args.report_only:
        print(markdown_table(summarize(out)))
        return 0
    from appo.commands.common import setup_logging
    from appo.config import ConfigError

    setup_logging()
    try:
        study = Study(args)
    except (ConfigError, ValueError) as e:
        print(f"compare_algorithms: {e}", file=sys.stderr)
        return 2
    sft_path, sft_result = study.sft()
    print(f"[compare] SFT held-out: {_shown(sft_result['full']) if sft_result else 'not evaluated'}", flush=True)
    if args.sft_only:
        return 0
    for arm, seed in args.run_list:
        path = out / arm / f"seed{seed}.json"
        if path.exists() and json.loads(path.read_text()).get("finished"):
            print(f"[compare] {arm} seed {seed}: finished before, skipped", flush=True)
            continue
        result = study.run(arm, seed, sft_path, sft_result)
        _write_json(path, result)
        print(f"[compare] {arm} seed {seed}: final {_shown(result['final'])}, {result['tokens_per_step']:.0f} tokens/step, "
              f"{result['wall_seconds']:.0f}s", flush=True)
        summarize(out)
    print(markdown_table(summarize(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
