"""`appo eval`: run the training agent loop (same engine, tools and prompts) on benchmark files and report
pass@1, unbiased pass@k, maj@k, EM/F1, math equivalence, an optional LLM judge, tool-call statistics and
response lengths.

Outputs in the output folder: `samples.jsonl` (one line per sample, append-only: an interrupted run
resumes where it stopped), `summary.json`, `summary.md` and `summary.png`. A `run.json` records the
settings that shape the samples; resuming with different ones is refused (use a new folder or --restart).

The library entry point `evaluate(model, tokenizer, prompts, cfg, ...)` is what the trainer calls for its
before/after-SFT/after-RL evaluations on held-out task rows; the CLI goes through the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from appo.config import Config, ConfigError, load_config
from appo.eval import benchmarks as bm
from appo.eval.aggregate import summarize
from appo.eval.judge import JudgeClient, JudgeError, decide
from appo.eval.report import markdown_table, write_report
from appo.eval.scoring import answer_key, score_sample
from appo.eval.store import SampleStore

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One benchmark (or held-out task split) ready to run."""

    name: str
    kind: str          # "math", "qa", or "reward" (correct iff the task's reward is full credit)
    prompts: list      # appo.data.Prompt
    dropped: int = 0   # questions left out because their prompt was too long


# ------------------------------------------------------------------------------------------ scoring


def _question(prompt) -> str:
    users = [m["content"] for m in prompt.messages if m.get("role") == "user"]
    return users[-1] if users else ""


def _record(es: EvalSet, prompt, sample: int, traj, tokenizer, reward_fn) -> dict:
    response = traj.response_text(tokenizer)
    scored = score_sample(response, prompt.ground_truth, "qa" if es.kind == "reward" else es.kind)
    if es.kind == "reward":
        reward = float(reward_fn(response, prompt))
        scored["scores"]["reward"] = reward
        scored["rule_equal"] = reward >= 1.0
    return {
        "benchmark": es.name, "index": prompt.index, "sample": sample,
        "question": _question(prompt), "gold": prompt.ground_truth, "response": response,
        "pred": scored["pred"], "answer_key": answer_key(scored["pred"]), "scores": scored["scores"],
        "rule_equal": scored["rule_equal"], "judge": None, "correct": scored["rule_equal"],
        "tool_log": [{"tool": t["tool"], "ok": bool(t["ok"]), "seconds": round(float(t["seconds"]), 4)}
                     for t in traj.tool_log],
        "finish_reason": traj.finish_reason, "response_tokens": len(traj.token_ids),
        "generated_tokens": int(sum(traj.generated)),
    }


def _apply_judge(judge: JudgeClient, records: list[dict]) -> list[dict]:
    verdicts = judge.judge_many([(r["question"], r["gold"], r["pred"]) for r in records])
    for r, v in zip(records, verdicts, strict=True):
        r["judge"] = v.as_dict()
        r["correct"] = decide(r["rule_equal"], v)
    return records


# ------------------------------------------------------------------------------------------ running


def _fingerprint(cfg: Config) -> dict:
    """The settings that shape the samples; a resumed run must match them."""
    e, r, t = cfg.eval, cfg.rollout, cfg.tools
    return {"model": cfg.model.path, "k": e.k, "temperature": e.temperature, "top_p": e.top_p,
            "top_k": r.top_k, "max_response_length": e.max_response_length or r.max_response_length,
            "seed": r.seed, "tools": list(t.enabled), "call_limit": t.call_limit, "on_limit": t.on_limit,
            "search_backend": t.search.backend if "search" in t.enabled else None,
            "system_prompt": cfg.data.system_prompt}


def _check_resume(out_dir: Path, cfg: Config) -> None:
    path = out_dir / "run.json"
    want = _fingerprint(cfg)
    if path.exists():
        have = json.loads(path.read_text())
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            raise ConfigError(f"{out_dir} holds samples made with different settings ({', '.join(diff)}: "
                              f"{[have.get(k) for k in diff]} there, {[want.get(k) for k in diff]} now); "
                              "use another output folder or pass --restart to discard them")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want, indent=2))


def _sample(engine, tools, rows: list[tuple[EvalSet, object, int]], cfg: Config, on_done=None) -> list:
    """Run the training tool loop for (set, prompt, sample index) rows with eval sampling settings;
    `on_done(traj)` is called as each sample finishes.

    Each sample's seed derives from (rollout.seed, set, question, sample), so a resumed run draws exactly
    what an uninterrupted one would have."""
    from appo.rollout.engine import derive_seed
    from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop

    settings = dataclasses.replace(
        RolloutLoopSettings.from_config(cfg.rollout, cfg.tools), temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p, max_response_length=cfg.eval.max_response_length or cfg.rollout.max_response_length)
    starts = [LoopStart.fresh(p.prompt_ids, group=i, seed=derive_seed(cfg.rollout.seed, "eval", es.name, p.index, s))
              for i, (es, p, s) in enumerate(rows)]
    return run_tool_loop(engine, tools, starts, settings, on_done=on_done)


def run_sets(engine, tools, sets: list[EvalSet], cfg: Config, out_dir: str | Path | None,
             judge: JudgeClient | None = None, reward_fn=None, progress: bool = True) -> dict[str, dict]:
    """Sample, score and judge every (question, sample) not yet in the store; return summaries by set."""
    tokenizer = engine.tokenizer
    store = SampleStore(Path(out_dir) / "samples.jsonl" if out_dir is not None else None)
    k = cfg.eval.k
    pending = [(es, p, s) for es in sets for p in es.prompts for s in range(k)
               if (es.name, p.index, s) not in store]
    chunk = cfg.eval.batch_size * k
    with tqdm(total=len(pending), desc="eval samples", unit="sample", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(pending), chunk):
            rows = pending[start:start + chunk]
            trajs = _sample(engine, tools, rows, cfg, on_done=lambda _traj: bar.update(1))
            records = [_record(es, p, s, t, tokenizer, reward_fn) for (es, p, s), t in zip(rows, trajs, strict=True)]
            if judge is not None:
                _apply_judge(judge, records)
            store.append(records)
    if judge is not None:  # samples finished by an earlier run without the judge
        unjudged = [dict(r) for r in store.records.values()
                    if r["judge"] is None and r["benchmark"] in {es.name for es in sets}]
        if unjudged:
            store.append(_apply_judge(judge, unjudged))
    summaries = {}
    for es in sets:
        wanted = {(p.index, s) for p in es.prompts for s in range(k)}
        records = [r for r in store.for_benchmark(es.name) if (r["index"], r["sample"]) in wanted]
        summaries[es.name] = summarize(records, k) | {"kind": es.kind, "dropped": es.dropped}
    return summaries


def evaluate(model, tokenizer, prompts: list, cfg: Config, *, name: str = "heldout", kind: str = "reward",
             output_dir: str | Path | None = None, engine=None, tools=None, progress: bool = True) -> dict:
    """Evaluate `model` on `prompts` with the training agent loop; returns the flat summary of the set.

    `kind` picks the correctness rule: "reward" (the configured reward function gives full credit; what
    built-in tasks use), "math" (math equivalence) or "qa" (exact match). Pass `engine`/`tools` to reuse
    the trainer's; otherwise they are built from `cfg` (and the tools closed afterwards).
    """
    from appo.rewards import get_reward_fn
    from appo.rollout.engine import make_engine
    from appo.tools import build_tools

    engine = engine or make_engine(cfg.rollout, model, tokenizer)
    own_tools = tools is None
    tools = tools or build_tools(cfg.tools)
    judge = JudgeClient(cfg.eval.judge) if cfg.eval.judge.enabled else None
    try:
        if output_dir is not None:
            _check_resume(Path(output_dir), cfg)
        summaries = run_sets(engine, tools, [EvalSet(name, kind, prompts)], cfg, output_dir, judge,
                             get_reward_fn(cfg.algorithm), progress)
    finally:
        if own_tools:
            tools.close()
    if output_dir is not None:
        write_report(summaries, output_dir, meta=_fingerprint(cfg))
    return summaries[name]


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="appo eval", description="Evaluate a model with the agent loop on benchmark files.",
        epilog="Example: appo eval tiny --model tiny --benchmarks gsm8k hotpotqa --max-samples 4 "
               "tools.search.backend=cache")
    p.add_argument("args", nargs="*", metavar="[PRESET|FILE] [key=value ...]",
                   help="Config preset (default quickstart) and dotted overrides, e.g. eval.k=5 rollout.seed=1.")
    p.add_argument("--model", help="Model directory or built-in name (sets model.path).")
    p.add_argument("--benchmarks", nargs="+", help="Benchmark names under --data-root or files (sets eval.benchmarks).")
    p.add_argument("--data-root", help="Folder of <name>/test.jsonl files (sets eval.data_root).")
    p.add_argument("--k", type=int, help="Samples per question (sets eval.k).")
    p.add_argument("--temperature", type=float, help="Sampling temperature; 0 is greedy (sets eval.temperature).")
    p.add_argument("--max-samples", type=int, help="First N questions per benchmark (sets eval.max_samples).")
    p.add_argument("--output-dir", help="Output folder (sets eval.output_dir).")
    p.add_argument("--judge", action="store_true", help="Enable the LLM judge (sets eval.judge.enabled=true).")
    p.add_argument("--restart", action="store_true", help="Discard earlier samples in the output folder.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = {"model.path": args.model, "eval.data_root": args.data_root, "eval.k": args.k,
             "eval.temperature": args.temperature, "eval.max_samples": args.max_samples,
             "eval.output_dir": args.output_dir, "eval.judge.enabled": True if args.judge else None,
             "eval.benchmarks": json.dumps(args.benchmarks) if args.benchmarks else None}
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def load_benchmarks(cfg: Config) -> list[bm.Benchmark]:
    root = bm.default_data_root(cfg.eval.data_root)
    return [bm.load_benchmark(spec, root, cfg.eval.max_samples) for spec in cfg.eval.benchmarks]


def build_sets(benchmarks: list[bm.Benchmark], cfg: Config, tokenizer) -> list[EvalSet]:
    """Prompts for each benchmark, built exactly as for training (system prompt, chat template, length)."""
    from appo.data.datasets import build_prompts

    sets = []
    for bench in benchmarks:
        prompts, report = build_prompts(bench.rows, tokenizer, cfg.data, source=str(bench.path))
        if report.dropped:
            log.warning("%s: %s (raise data.max_prompt_length to keep them)", bench.name, report)
        sets.append(EvalSet(bench.name, bench.kind, prompts, dropped=report.dropped))
    return sets


def main(argv: list[str] | None = None) -> int:
    from appo.config_cli import split_preset

    args = _parser().parse_intermixed_args(argv)
    if args.benchmarks:  # `--benchmarks a b key=value` : the dotted overrides are not benchmarks
        args.args += [b for b in args.benchmarks if "=" in b]
        args.benchmarks = [b for b in args.benchmarks if "=" not in b]
    logging.basicConfig(level=logging.WARNING, format="[appo] %(message)s")
    logging.getLogger("appo").setLevel(logging.INFO)  # our progress lines, not every library's
    preset, overrides = split_preset(args.args)
    try:
        cfg = load_config(preset or "quickstart", overrides + _overrides(args))
        if not cfg.eval.benchmarks:
            raise ConfigError("no benchmarks: pass --benchmarks NAME|FILE ... (or eval.benchmarks=[...]); "
                              f"available: {', '.join(bm.available(bm.default_data_root(cfg.eval.data_root))) or 'none'}")
        judge = JudgeClient(cfg.eval.judge) if cfg.eval.judge.enabled else None
        benchmarks = load_benchmarks(cfg)
    except (ConfigError, JudgeError, bm.BenchmarkError) as e:
        print(f"appo eval: {e}", file=sys.stderr)
        return 2
    out_dir = Path(cfg.eval.output_dir or Path(cfg.trainer.output_dir) / "eval")
    if args.restart:
        for name in ("samples.jsonl", "run.json"):
            (out_dir / name).unlink(missing_ok=True)
    try:
        _check_resume(out_dir, cfg)
    except ConfigError as e:
        print(f"appo eval: {e}", file=sys.stderr)
        return 2

    from appo.models import load_model, load_tokenizer, resolve_model_path
    from appo.rewards import get_reward_fn
    from appo.rollout.engine import make_engine
    from appo.tools import build_tools

    path = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    tokenizer = load_tokenizer(path)
    sets = build_sets(benchmarks, cfg, tokenizer)
    import torch

    device = cfg.trainer.device if cfg.trainer.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, cfg.model.dtype, cfg.model.cache_dir, device).eval()
    engine = make_engine(cfg.rollout, model, tokenizer)
    tools = build_tools(cfg.tools)
    try:
        summaries = run_sets(engine, tools, sets, cfg, out_dir, judge, get_reward_fn(cfg.algorithm),
                             progress=not args.no_progress)
    finally:
        tools.close()
    paths = write_report(summaries, out_dir, meta=_fingerprint(cfg))
    print(markdown_table(summaries), end="")
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']} and {out_dir / 'samples.jsonl'}")
    return 0
