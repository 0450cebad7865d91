"""The HF engine's re-prefill path against KV reuse with continuous batching, on one APPO rollout workload.

The workload is the quickstart's: its model (SmolLM2-135M-Instruct unless --model says otherwise), its task
(arithmetic with python, two-hop questions with search over the generated corpus), tools on, APPO with
branches. The same seeds run through `rollout.kv_reuse=false` (every round re-prefills prompt + response,
every branch its parent's prefix) and `rollout.kv_reuse=true`, each in its own child process so that each
path's peak memory is its own. Printed per path:

- prefill tokens computed per phase over the tokens new in that phase (below 1 where a prompt's rows
  share one prefill of it). Phases: initial rollouts (a row's first prompt), tool turns (everything after a tool result), branches (a branch's start: it needs the
  logits of its split token, which the parent did not keep, so that one token counts as new);
- generated tokens per second, wall and CPU time, peak KV-cache bytes (old: the largest `generate` batch's
  cache; new: the batch's, the parked rows' and the initial rollouts' kept for branches, together) and the
  child process's peak RSS;
- whether both paths sampled the same tokens (they should, up to float rounding in rare near-ties).

The quickstart's model calls tools only after its cold-start SFT; the base model rarely does. So that the
workload has tool turns, by default (`--opening trace`) each initial rollout opens with the first step of
its SFT trace cut before the closing tag (`<think>Use python.</think><python>print(12 * 3)`, not trained,
not a branch point): the model itself closes the tag, the tool runs, and all that follows is sampled.
`--opening none` runs the bare prompts (with an SFT checkpoint as --model, the real workload).

Where the vllm extra is installed (this interpreter, `.venv-vllm`, or `--vllm-python`), the same workload
also runs through `rollout.engine=vllm` and one more line gives its wall time and tok/s (its own sampler:
other tokens, so only rates compare).

The last line is `engine: prefill/new X.XX, speed-up Y.YY×`: X for the new path over the whole workload,
Y = old wall time / new wall time. The default size is one quickstart RL step's rollouts (6 prompts x 8
rows, 320 tokens); it takes about 4 minutes on a 2-core CPU.

    python benchmarks/bench_engine.py [--model smollm2-135m-instruct|tiny|PATH] [--prompts 6] [--n 8]
                                      [--max-response 320] [--threads N] [--opening trace|none]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = (("initial", "initial rollouts"), ("tool", "tool turns"), ("branch", "branches"))


def open_with_trace_steps(prompts, tokenizer) -> None:
    """Make every initial rollout of these prompts start with its task plan's first step, up to (not
    including) the closing tag (see the module docstring)."""
    from appo.rollout.tool_loop import LoopStart

    openings = {}
    for p in prompts:
        plan = p.extra.get("plan") or []
        if plan:
            step = plan[0]
            text = f"<think>{step['think']}</think><{step['tool']}>{step['payload']}"
            openings[tuple(p.prompt_ids)] = tokenizer.encode(text, add_special_tokens=False)
    fresh = LoopStart.fresh.__func__

    def opened(cls, prompt_ids, *, kind="init", **kw):
        start = fresh(cls, prompt_ids, kind=kind, **kw)
        ids = openings.get(tuple(prompt_ids)) if kind == "init" else None
        if ids:
            start.trajectory.append(ids, generated=0)
        return start

    LoopStart.fresh = classmethod(opened)


def run_child(args) -> None:
    import torch

    from appo.commands.common import with_task_index
    from appo.config import load_config
    from appo.data.prompt_sets import load_prompt_sets, prepare_task
    from appo.models import load_model, load_tokenizer
    from appo.rollout import packed_linears
    from appo.rollout.engine import GenRequest
    from appo.rollout.hf import HFEngine
    from appo.rollout.sampling import sample_groups
    from appo.tools import build_tools

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as out:
        cfg = load_config("quickstart", [
            f"model.path={args.model}", f"trainer.output_dir={out}", f"data.num_train={max(args.prompts, 8)}",
            "data.num_val=8", f"rollout.n={args.n}", f"rollout.initial_rollouts={args.n // 2}",
            f"rollout.max_response_length={args.max_response}", f"rollout.gen_batch_size={args.gen_batch_size}",
            "rollout.appo.fv_source=none", f"rollout.kv_reuse={str(args.child != 'old').lower()}",
            f"rollout.engine={'vllm' if args.child == 'vllm' else 'hf'}"])
        task = prepare_task(cfg)
        cfg = with_task_index(cfg, task)  # the quickstart task's search corpus, indexed under `out`
        tok = load_tokenizer(cfg.model.path)
        prompts = load_prompt_sets(cfg, tok, task)[0][:args.prompts]
        if args.opening == "trace":
            open_with_trace_steps(prompts, tok)
        model = load_model(cfg.model.path, "float32")
        if args.child == "vllm":
            from appo.rollout.engines import make_engine

            engine = make_engine(cfg.rollout, model, tok)
        else:
            engine = HFEngine(model, tok, max_batch_size=cfg.rollout.gen_batch_size, seed=cfg.rollout.seed,
                              kv_reuse=cfg.rollout.kv_reuse)
        engine.generate([GenRequest(prompts[0].prompt_ids, 4, seed=0)])  # warm-up
        with build_tools(cfg.tools) as tools:
            t0, c0 = time.perf_counter(), time.process_time()
            groups, metrics = sample_groups(engine, tools, prompts, cfg, step=0)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = [t for g in groups for t in g.rows]
    print(json.dumps({
        "wall": wall, "cpu": cpu, "metrics": metrics, "threads": torch.get_num_threads(),
        "packed_linears": packed_linears.used_by_default(),
        "generated": sum(sum(t.generated) for t in rows), "rows": len(rows),
        "tool_calls": sum(len(t.tool_log) for t in rows),
        "digests": [hashlib.sha1(json.dumps(t.token_ids).encode()).hexdigest() for t in rows],
        "peak_kv_bytes": metrics.get("rollout/peak_kv_bytes") or getattr(engine, "peak_kv_bytes", 0),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=6, help="quickstart training prompts in the workload "
                    "(default: one quickstart RL step's)")
    ap.add_argument("--n", type=int, default=8, help="rows per prompt: half initial rollouts, half branches")
    ap.add_argument("--max-response", type=int, default=320)
    ap.add_argument("--gen-batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--opening", choices=("trace", "none"), default="trace",
                    help="open each initial rollout with its SFT trace's first tool call, minus the closing tag")
    ap.add_argument("--vllm-python", default=None,
                    help="Python of a venv with the vllm extra, for a vLLM line on the same workload (default: "
                         "this interpreter if it has vllm, else .venv-vllm/bin/python if present, else none)")
    ap.add_argument("--child", choices=("old", "new", "vllm"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vllm_python and not (os.path.isfile(args.vllm_python) and os.access(args.vllm_python, os.X_OK)):
        ap.error(f"--vllm-python {args.vllm_python}: not an executable file")
    if args.child:
        run_child(args)
        return

    def child(python: str, path: str, check: bool = True) -> dict | str:
        argv = [python, os.path.abspath(__file__), "--child", path, "--model", args.model,
                "--prompts", str(args.prompts), "--n", str(args.n), "--max-response", str(args.max_response),
                "--gen-batch-size", str(args.gen_batch_size), "--threads", str(args.threads),
                "--opening", args.opening]
        done = subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=None if check else subprocess.PIPE,
                              text=True)
        if done.returncode:
            return (done.stderr.strip().splitlines() or ["no output"])[-1]
        return json.loads(done.stdout.strip().splitlines()[-1])

    results = {path: child(sys.executable, path) for path in ("old", "new")}

    old, new = results["old"], results["new"]
    print(f"model={args.model} prompts={args.prompts} rows={new['rows']} (n={args.n}, half branches) "
          f"max_response={args.max_response} threads={new['threads']} opening={args.opening} tool calls old/new "
          f"{old['tool_calls']}/{new['tool_calls']} linears={'packed oneDNN' if new['packed_linears'] else 'stock'}")
    print(f"{'path':<6}{'phase':<18}{'prefill tokens':>16}{'new tokens':>12}{'prefill/new':>13}")
    totals = {}
    for name, r in results.items():
        m = r["metrics"]
        pre_all = new_all = 0
        for key, label in PHASES:
            pre, fresh = m.get(f"rollout/prefill_tokens/{key}", 0), m.get(f"rollout/new_tokens/{key}", 0)
            pre_all, new_all = pre_all + pre, new_all + fresh
            ratio = f"{pre / fresh:.2f}" if fresh else "n/a"
            print(f"{name:<6}{label:<18}{pre:>16}{fresh:>12}{ratio:>13}")
        totals[name] = pre_all / max(new_all, 1)
        print(f"{name:<6}{'whole workload':<18}{pre_all:>16}{new_all:>12}{totals[name]:>13.2f}")
    # "tool wait": seconds the loop sat waiting for tool results (old: every round's calls; new: only a result
    # not ready when its row was due back in the batch).
    print(f"{'path':<6}{'wall s':>10}{'CPU s':>10}{'tool wait s':>13}{'gen tokens':>12}{'tok/s':>10}"
          f"{'peak KV MiB':>13}{'peak RSS MiB':>14}")
    for name, r in results.items():
        wait = r["metrics"].get("rollout/tool_seconds", 0.0)
        print(f"{name:<6}{r['wall']:>10.2f}{r['cpu']:>10.2f}{wait:>13.2f}{r['generated']:>12}"
              f"{r['generated'] / r['wall']:>10.1f}{r['peak_kv_bytes'] / 2**20:>13.1f}{r['max_rss_mib']:>14.0f}")
    same = sum(a == b for a, b in zip(old["digests"], new["digests"]))
    print(f"same samples token for token: {same}/{len(new['digests'])} rows")
    vllm_python = args.vllm_python or _find_vllm_python()
    served = child(vllm_python, "vllm", check=False) if vllm_python else None
    if served is None:
        print("vllm: not installed (see docs/getting-started.md, 'vLLM on a CPU'), no vLLM line")
    elif isinstance(served, str):
        print(f"vllm: the vLLM run failed ({vllm_python}): {served}")
    else:  # its own sampler: other tokens, so compare rates, not samples
        print(f"vllm: {served['wall']:.2f} s wall, {served['generated']} generated tokens, "
              f"{served['generated'] / served['wall']:.1f} tok/s (new HF path: {new['generated'] / new['wall']:.1f}), "
              f"peak RSS {served['max_rss_mib']:.0f} MiB, tool calls {served['tool_calls']}")
    print(f"engine: prefill/new {totals['new']:.2f}, speed-up {old['wall'] / new['wall']:.2f}×")


def _find_vllm_python() -> str | None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-vllm", "bin", "python")
    return venv if os.path.exists(venv) else None


if __name__ == "__main__":
    main()
