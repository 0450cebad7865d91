"""Rollout throughput, measured side by side in one process on the same prompts:

1. bare engine generation (one `generate` call, no stop strings, no tools);
2. the tool loop (stop strings, tool calls through the real sandbox, result splicing, re-prefill per turn);
3. APPO sampling: initial rollouts, then the branch phase (scoring, selection, continuations).

Prints generated tokens/s and wall times with ratios. Usage:

    python benchmarks/bench_rollout.py [--model tiny|smollm2-135m-instruct|PATH] [--prompts 8] [--n 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from appo.config import load_config  # noqa: E402
from appo.data.tasks import build_task  # noqa: E402
from appo.models import load_model, load_tokenizer  # noqa: E402
from appo.rollout.appo import init_scorer  # noqa: E402
from appo.rollout.engine import GenRequest  # noqa: E402
from appo.rollout.hf import HFEngine  # noqa: E402
from appo.rollout.sampling import sample_groups  # noqa: E402
from appo.rollout.teacher_forcing import teacher_forced_scores  # noqa: E402
from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop  # noqa: E402
from appo.seeding import derive_seed  # noqa: E402
from appo.tools import build_tools  # noqa: E402


def _prompts(tokenizer, k: int):
    from appo.data.datasets import build_prompts

    task = build_task("arithmetic", num_train=k, num_val=1, seed=3)
    cfg = load_config("tiny", [])
    return build_prompts(task.train, tokenizer, cfg.data, source="arithmetic")[0][:k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="rows per prompt (APPO: half initial, half branches)")
    ap.add_argument("--max-response", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    tok = load_tokenizer(args.model)
    model = load_model(args.model, device=args.device)
    engine = HFEngine(model, tok, max_batch_size=64)
    prompts = _prompts(tok, args.prompts)
    rows = args.prompts * args.n
    L = args.max_response
    cfg = load_config("tiny", [f"model.path={args.model}", f"rollout.n={args.n}",
                               f"rollout.initial_rollouts={args.n // 2}", f"rollout.max_response_length={L}",
                               "rollout.gen_batch_size=64", "tools.enabled=[python]", "tools.call_limit=2",
                               "rollout.appo.fv_source=train_infer_mismatch"])
    engine.generate([GenRequest(prompts[0].prompt_ids, 4, seed=0)])  # warm-up

    t0 = time.perf_counter()
    bare = engine.generate([GenRequest(p.prompt_ids, L, seed=derive_seed(0, i, j)) for i, p in enumerate(prompts)
                            for j in range(args.n)])
    bare_s = time.perf_counter() - t0
    bare_tokens = sum(len(r.token_ids) for r in bare)

    with build_tools(cfg.tools) as tools:
        stats: dict = {}
        t0 = time.perf_counter()
        trajs = run_tool_loop(engine, tools, [LoopStart.fresh(p.prompt_ids, seed=derive_seed(0, i, j))
                                              for i, p in enumerate(prompts) for j in range(args.n)],
                              RolloutLoopSettings.from_config(cfg.rollout, cfg.tools), stats)
        loop_s = time.perf_counter() - t0
        loop_tokens = sum(sum(t.generated) for t in trajs)

        # Rows that open with a python call (a prefix ending in `</python>`): the sandbox really runs,
        # the result is spliced in and each row is re-prefilled for the next turn.
        forced_stats: dict = {}
        starts = []
        for i, p in enumerate(prompts):
            for j in range(args.n):
                call = tok.encode(f"<python>print({i + 11} * {j + 3} - 7)</python>", add_special_tokens=False)
                start = LoopStart.fresh(p.prompt_ids, seed=derive_seed(1, i, j))
                start.trajectory.append(call, generated=1)
                starts.append(start)
        t0 = time.perf_counter()
        run_tool_loop(engine, tools, starts, RolloutLoopSettings.from_config(cfg.rollout, cfg.tools), forced_stats)
        forced_s = time.perf_counter() - t0
        forced_tokens = forced_stats.get("generated_tokens", 0)

        rescore = init_scorer("train_infer_mismatch",
                              lambda t, ent: teacher_forced_scores(model, t, with_entropy=ent), lambda t: None)
        groups, metrics = sample_groups(engine, tools, prompts, cfg, score_inits=rescore)

    init_s, branch_s = metrics["rollout/init_seconds"], metrics["rollout/branch_seconds"]
    select_s = metrics["rollout/select_seconds"]
    gen_tokens = metrics["rollout/generated_tokens"]
    print(f"model={args.model} device={args.device} prompts={args.prompts} rows={rows} max_response={L} "
          f"threads={torch.get_num_threads()}")
    print(f"{'phase':<34}{'rows':>6}{'gen tokens':>12}{'seconds':>10}{'tok/s':>10}{'ratio':>8}")
    print(f"{'bare engine.generate':<34}{rows:>6}{bare_tokens:>12}{bare_s:>10.2f}{bare_tokens / bare_s:>10.1f}"
          f"{1.0:>8.2f}")
    loop_rate = loop_tokens / loop_s
    print(f"{'tool loop (python tool)':<34}{rows:>6}{loop_tokens:>12}{loop_s:>10.2f}{loop_rate:>10.1f}"
          f"{loop_rate / (bare_tokens / bare_s):>8.2f}")
    print(f"  of which tools: {stats.get('tool_seconds', 0):.2f} s for {stats.get('tool_calls', 0)} calls, "
          f"{stats.get('rounds', 0)} rounds")
    forced_rate = forced_tokens / forced_s
    print(f"{'tool loop, 1 forced call per row':<34}{rows:>6}{forced_tokens:>12}{forced_s:>10.2f}{forced_rate:>10.1f}"
          f"{forced_rate / (bare_tokens / bare_s):>8.2f}")
    print(f"  of which tools: {forced_stats.get('tool_seconds', 0):.2f} s for {forced_stats.get('tool_calls', 0)} "
          f"calls, {forced_stats.get('rounds', 0)} rounds")
    print(f"{'appo: initial rollouts':<34}{metrics['rollout/init_rows']:>6}{'':>12}{init_s:>10.2f}")
    print(f"{'appo: scoring + selection':<34}{'':>6}{'':>12}{select_s:>10.2f}{'':>10}{select_s / init_s:>8.2f}")
    print(f"{'appo: branch continuations':<34}{metrics['rollout/branch_rows']:>6}{'':>12}{branch_s:>10.2f}{'':>10}"
          f"{branch_s / init_s:>8.2f}")
    print(f"appo total generated tokens {gen_tokens}, {gen_tokens / metrics['rollout/seconds']:.1f} tok/s overall; "
          f"ratios in the appo rows are relative to the initial-rollout phase")


if __name__ == "__main__":
    main()
