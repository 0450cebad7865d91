"""Evaluation: run the training agent loop (same engine, tools and prompts) on benchmark files and report
pass@1, unbiased pass@k, maj@k, EM/F1, math equivalence, an optional LLM judge, tool-call statistics and
response lengths.

Outputs in the output folder: `samples.jsonl` (one line per sample, append-only: an interrupted run
resumes where it stopped), `summary.json`, `summary.md` and `summary.png`. A `run.json` records the
settings that shape the samples; resuming with different ones is refused (use a new folder or --restart).

The library entry point `evaluate(model, tokenizer, prompts, cfg, ...)` is what the trainer calls for its
before/after-SFT/after-RL evaluations on held-out task rows; `appo eval` (appo.commands.eval) goes through
the same code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from appo.config import Config, ConfigError
from appo.data.datasets import build_prompts
from appo.data.prompt_sets import default_system_prompt
from appo.data.templates import PROMPT_FILE, SYSTEM_PROMPTS, read_prompt_format
from appo.eval import benchmarks as bm
from appo.eval.aggregate import summarize
from appo.eval.judge import JudgeClient, decide
from appo.eval.report import write_report
from appo.eval.scoring import answer_key, score_sample
from appo.eval.store import SampleStore
from appo.json_input import read_json_object
from appo.rewards import get_reward_fn
from appo.rollout.engines import make_engine
from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop, tool_call_limits
from appo.seeding import derive_seed
from appo.tools import build_tools
from appo.tools.registry import prompt_format

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


def _record(es: EvalSet, prompt, sample: int, traj, tokenizer, reward_fn, text: str = "generated") -> dict:
    """One sample's record: `response` is the whole text (tool output included, for reading); the scores
    come from `traj.reward_text(tokenizer, text)` (algorithm.reward_text)."""
    response = traj.response_text(tokenizer)
    scored_text = traj.reward_text(tokenizer, text)
    scored = score_sample(scored_text, prompt.ground_truth, "qa" if es.kind == "reward" else es.kind)
    if es.kind == "reward":
        reward = float(reward_fn(scored_text, prompt))
        scored["scores"]["reward"] = reward
        scored["rule_equal"] = reward >= 1.0
    return {
        "benchmark": es.name, "index": prompt.index, "sample": sample,
        "question": _question(prompt), "gold": prompt.ground_truth, "response": response,
        "pred": scored["pred"], "answer_key": answer_key(scored["pred"]), "scores": scored["scores"],
        "rule_equal": scored["rule_equal"], "judge": None, "correct": scored["rule_equal"],
        "tool_log": [{"tool": t["tool"], "ok": bool(t["ok"]), "seconds": round(float(t["seconds"]), 4),
                      **({"phases": t["phases"]} if t.get("phases") else {}),
                      **({"kind": t["kind"]} if t.get("kind") else {})} for t in traj.tool_log],
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


# The reference harness's settings (shared/reference/evaluation.md §1.2) as dotted overrides; the user's
# own overrides and flags come after them and win. The reference has no total tool-call cap (its budgets
# are per tool) and answers a call over budget with a message, hence tools.call_limit=15 and 'result'.
PROTOCOLS: dict[str, dict[str, object]] = {
    "reference": {"eval.temperature": 0.6, "eval.top_p": 0.95, "rollout.repetition_penalty": 1.1,
                  "rollout.max_tokens_per_call": 4096, "eval.k": 5, "eval.max_samples": None,
                  "tools.python.call_limit": 5, "tools.search.call_limit": 10, "tools.call_limit": 15,
                  "tools.on_limit": "result"},
}


def protocol_overrides(name: str | None) -> list[str]:
    if name is None:
        return []
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol {name!r} is not known; choose one of: {', '.join(PROTOCOLS)}")
    return [f"{key}={json.dumps(value)}" for key, value in PROTOCOLS[name].items()]


def fingerprint(cfg: Config, protocol: str | None = None) -> dict:
    """Every setting that shapes the samples (the summary lists them); a resumed run must match them."""
    e, r, t = cfg.eval, cfg.rollout, cfg.tools
    return {"protocol": protocol, "model": cfg.model.path, "engine": r.engine, "k": e.k,
            "temperature": e.temperature, "top_p": e.top_p, "top_k": r.top_k,
            "repetition_penalty": r.repetition_penalty, "max_tokens_per_call": r.max_tokens_per_call,
            "max_response_length": e.max_response_length or r.max_response_length,
            "max_prompt_length": cfg.data.max_prompt_length, "max_samples": e.max_samples,
            "seed": r.seed, "tools": list(t.enabled), "call_limit": t.call_limit,
            "tool_call_limits": tool_call_limits(t), "on_limit": t.on_limit,
            "search_backend": t.search.backend if "search" in t.enabled else None,
            "judge": e.judge.model if e.judge.enabled else None, "system_prompt": cfg.data.system_prompt,
            "reward_text": cfg.algorithm.reward_text,
            # only when not the default, so folders written before the key existed still resume
            **({"tool_format": t.format, "chat_template": t.chat_template} if t.format != "tags" else {})}


def check_resume(out_dir: Path, cfg: Config, protocol: str | None = None) -> None:
    path = out_dir / "run.json"
    want = fingerprint(cfg, protocol)
    if path.exists():
        have = read_json_object(path, ConfigError)
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
    settings = dataclasses.replace(
        RolloutLoopSettings.from_config(cfg.rollout, cfg.tools), temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p, max_response_length=cfg.eval.max_response_length or cfg.rollout.max_response_length)
    starts = [LoopStart.fresh(p.prompt_ids, group=i, seed=derive_seed(cfg.rollout.seed, "eval", es.name, p.index, s),
                              row=p)
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
            records = [_record(es, p, s, t, tokenizer, reward_fn, cfg.algorithm.reward_text)
                       for (es, p, s), t in zip(rows, trajs, strict=True)]
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
             output_dir: str | Path | None = None, engine=None, tools=None, rewards=None,
             progress: bool = True) -> dict:
    """Evaluate `model` on `prompts` with the training agent loop; returns the flat summary of the set.

    `kind` picks the correctness rule: "reward" (the configured reward function gives full credit; what
    built-in tasks use), "math" (math equivalence) or "qa" (exact match). Pass `engine`/`tools` to reuse
    the trainer's; otherwise they are built from `cfg` (and the tools closed afterwards); likewise
    `rewards` (a RewardSet) for the "reward" rule.
    """
    engine = engine or make_engine(cfg.rollout, model, tokenizer)
    own_tools = tools is None
    tools = tools or build_tools(cfg.tools)
    judge = JudgeClient(cfg.eval.judge) if cfg.eval.judge.enabled else None
    try:
        if output_dir is not None:
            check_resume(Path(output_dir), cfg)
        summaries = run_sets(engine, tools, [EvalSet(name, kind, prompts)], cfg, output_dir, judge,
                             rewards if rewards is not None else get_reward_fn(cfg.algorithm), progress)
    finally:
        if own_tools:
            tools.close()
    if output_dir is not None:
        write_report(summaries, output_dir, meta=fingerprint(cfg))
    return summaries[name]


def load_benchmarks(cfg: Config) -> list[bm.Benchmark]:
    root = bm.default_data_root(cfg.eval.data_root)
    return [bm.load_benchmark(spec, root, cfg.eval.max_samples) for spec in cfg.eval.benchmarks]


def build_sets(benchmarks: list[bm.Benchmark], cfg: Config, tokenizer) -> list[EvalSet]:
    """Prompts for each benchmark, built exactly as for training (system prompt, chat template with the tools'
    schemas in tools.format=chat_template, length)."""
    sets = []
    fmt = prompt_format(cfg.tools, tokenizer)
    # Rows without a system prompt get the reference's, which teaches the tags; the chat template's own format
    # gets one that names the tools and leaves calling them to the template.
    system = {"default_system": default_system_prompt(cfg)} if fmt is not None else {}
    for bench in benchmarks:
        prompts, report = build_prompts(bench.rows, tokenizer, cfg.data, source=str(bench.path), tool_format=fmt,
                                        **system)
        if not prompts:  # a 0-question report would look like a result
            raise bm.BenchmarkError(f"{bench.path}: no row is left to evaluate ({report}); raise "
                                    f"data.max_prompt_length (now {cfg.data.max_prompt_length}) or use a shorter "
                                    "system prompt (data.system_prompt=quickstart)")
        if report.dropped:
            log.warning("%s: %s (raise data.max_prompt_length to keep them)", bench.name, report)
        sets.append(EvalSet(bench.name, bench.kind, prompts, dropped=report.dropped))
    return sets


def adopt_prompt_format(cfg: Config, model_path: str | Path) -> str:
    """Prompt benchmark rows the way the checkpoint was trained unless `data.system_prompt` says otherwise:
    the system prompt in its `appo_prompt.json` (written by `appo train` / `appo sft`). A checkpoint trained
    with `tools.format=chat_template` is run in that format (the template saved with its tokenizer) when the
    configuration left the default `tags`. Returns a line saying which prompt (and format) is used."""
    try:
        saved = read_prompt_format(model_path)
    except ValueError as e:
        if cfg.data.system_prompt is not None:
            saved = None
        else:
            raise ConfigError(f"{e}; fix or delete it, or set data.system_prompt") from None
    note = ""
    if saved is not None and saved.get("tool_format") == "chat_template" and cfg.tools.format == "tags":
        cfg.tools.format = "chat_template"
        note = "; tools.format=chat_template (the checkpoint's own)"
    if cfg.data.system_prompt is not None:
        named = cfg.data.system_prompt in SYSTEM_PROMPTS
        return f"data.system_prompt={cfg.data.system_prompt if named else '<custom text>'} (as configured){note}"
    if saved is None:
        return "the benchmark files' own (the reference system prompt for question/answer rows)"
    cfg.data.system_prompt = saved["system_prompt"] if saved["system_prompt"] is not None else "none"
    return (f"the checkpoint's training prompt ({Path(model_path) / PROMPT_FILE}); data.system_prompt=... "
            f"overrides it{note}")


def check_runtime(cfg: Config) -> None:
    """What the engine and device need, checked before anything heavy loads."""
    import importlib.util

    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.engine=vllm needs vLLM: `pip install -e .[vllm]` (CPU, see docs/getting-started.md) or "
                          "`pip install vllm` (GPU); or set rollout.engine=hf")
    if cfg.trainer.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA device is visible; set trainer.device=cpu or auto")
