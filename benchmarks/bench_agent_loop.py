"""The tool loop on vLLM, round by round against asynchronous (rollout.vllm_async), side by side in one run
on the same tool-heavy workload. Needs the vllm extra.

Workload: `--rows` rollouts (`--prompts` prompts) of the 10M-parameter tiny model (fp32, random weights),
nudged toward `<search>...</search>` by a logits processor (every token makes `<`/`</` a little likelier,
and `<`/`</` -> `search` -> `>` very likely) so that rows call the tool often, up to `--call-limit` calls
per row in a `--max-len`-token response budget. The tool is a search stand-in: it answers with a fixed
snippet after a latency drawn per call from a log-normal distribution (median 0.3 s, sigma 0.8) clipped to
[0.05 s, 2 s], seeded by the call's content, so both paths wait the same time for the same call
(real search APIs: most calls a few hundred ms, a long tail to seconds). Both paths use the same engine,
seeds and tool pool; the script checks that they produce the same trajectories.

    python benchmarks/bench_agent_loop.py [--prompts 8] [--rows 4] [--max-len 192] [--call-limit 4]
        [--gen-batch 32] [--nudge 4.5] [--repeats 1] [--model tiny-10m|PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from appo.models import build_tiny, load_tokenizer, resolve_model_path  # noqa: E402
from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop  # noqa: E402
from appo.tools.base import ToolResult  # noqa: E402
from appo.tools.registry import ToolRunner  # noqa: E402

QUESTIONS = ["Who wrote the first film?", "Name three rivers in Africa.", "What is the capital of France?",
             "When was the telescope invented?", "Which planet has the most moons?", "Who painted the Night Watch?",
             "What is the tallest mountain in Europe?", "Where was paper first made?"]
LATENCY_MEDIAN, LATENCY_SIGMA, LATENCY_MIN, LATENCY_MAX = 0.3, 0.8, 0.05, 2.0


def tool_nudge(tok, tool: str = "python", start: float = 4.5, follow: float = 12.0) -> type:
    """A vLLM logits processor (class, for `vllm.LLM(logits_processors=[...])`): every token makes `<` and
    `</` a little more likely, and `<`/`</` then `tool` then `>` very likely; the model's own distribution
    otherwise. Used by this benchmark and tests/unit/rollout/test_stream_loop.py."""
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    (lt,), (close,), (name,), (gt,) = (tok.encode(s, add_special_tokens=False) for s in ("<", "</", tool, ">"))

    def nudge(prompt_ids, output_ids, logits):
        last = output_ids[-1] if output_ids else prompt_ids[-1]
        logits[[lt, close]] += start
        if last in (lt, close):
            logits[name] += follow
        elif last == name:
            logits[gt] += follow
        return logits

    class ToolNudge(AdapterLogitsProcessor):
        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params):
            return nudge

    return ToolNudge


class LatentSearch:
    """A search stand-in whose latency is drawn from the distribution above, seeded by the call's content
    (its reasoning so far and payload), so that the same call waits the same time in both loops."""
    name = "search"

    def __init__(self):
        self.latencies: list[float] = []

    def __call__(self, call):
        digest = hashlib.sha256(f"{call.reasoning}\x00{call.payload}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        latency = min(LATENCY_MAX, max(LATENCY_MIN, rng.lognormvariate(math.log(LATENCY_MEDIAN), LATENCY_SIGMA)))
        self.latencies.append(latency)
        time.sleep(latency)
        return ToolResult(f"Result for {call.payload[:40]!r}: a page that mentions it.", ok=True)


def run(engine, prompts, rows: int, settings, asynchronous: bool) -> tuple[float, list, dict, list[float]]:
    engine.supports_streaming = asynchronous
    search = LatentSearch()
    stats: dict = {}
    starts = [LoopStart.fresh(p, group=g, seed=1000 * g + j) for g, p in enumerate(prompts) for j in range(rows)]
    with ToolRunner({"search": search}, max_workers=64) as tools:
        t0 = time.perf_counter()
        trajs = run_tool_loop(engine, tools, starts, settings, stats)
        seconds = time.perf_counter() - t0
    return seconds, trajs, stats, search.latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-10m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4, help="rollouts per prompt")
    ap.add_argument("--max-len", type=int, default=192, help="response budget in tokens, tool results included")
    ap.add_argument("--call-limit", type=int, default=4)
    ap.add_argument("--gen-batch", type=int, default=32, help="rollout.gen_batch_size")
    ap.add_argument("--nudge", type=float, default=4.5, help="logit bonus of `<` and `</` (more: more calls)")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs, in alternating order; times are summed")
    args = ap.parse_args()

    from appo.rollout.vllm import VLLMEngine

    path = (str(build_tiny(tempfile.mkdtemp(prefix="bench-agent-") + "/model", size="10m"))
            if args.model == "tiny-10m" else resolve_model_path(args.model))
    tok = load_tokenizer(path)
    engine = VLLMEngine(path, tok, dtype="float32", max_model_len=1024, enforce_eager=True,
                        logits_processors=[tool_nudge(tok, "search", start=args.nudge)])
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                                  add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False) for i in range(args.prompts)]
    settings = RolloutLoopSettings(max_response_length=args.max_len, call_limit=args.call_limit,
                                   gen_batch_size=args.gen_batch)
    print(f"workload: {args.prompts} prompts x {args.rows} rows, {args.max_len}-token budget, <= {args.call_limit} "
          f"calls/row, gen_batch_size {args.gen_batch}, nudge {args.nudge}; model {args.model} fp32 (vLLM, eager); tool latency "
          f"log-normal median {LATENCY_MEDIAN} s sigma {LATENCY_SIGMA}, clipped to [{LATENCY_MIN}, {LATENCY_MAX}] s, "
          f"seeded per call")
    run(engine, prompts[:2], 1, RolloutLoopSettings(max_response_length=16, call_limit=0), True)  # warm-up
    results: dict[str, tuple[float, list]] = {}
    # Pairs in alternating order (rounds, async, async, rounds, ...): a machine whose load drifts favours neither.
    order = [("rounds", False), ("async", True)]
    for i in range(args.repeats):
        for name, asynchronous in (order if i % 2 == 0 else order[::-1]):
            seconds, trajs, stats, lat = run(engine, prompts, args.rows, settings, asynchronous)
            results[name] = (results.get(name, (0.0, None))[0] + seconds, trajs)
            tokens = sum(sum(t.generated) for t in trajs)
            print(f"{name:6s}: {seconds:6.2f} s wall; {len(trajs)} rows, {tokens} generated tokens, "
                  f"{len(lat)} tool calls (latency sum {sum(lat):.1f} s, median {statistics.median(lat or [0]):.2f} s, "
                  f"max {max(lat or [0]):.2f} s); engine {stats.get('generate_seconds', 0.0):.2f} s, "
                  f"waiting for tools with nothing to decode {stats.get('tool_seconds', 0.0):.2f} s, "
                  f"rounds {stats.get('rounds', 0)}")
    same = all(a.token_ids == b.token_ids for a, b in zip(results["rounds"][1], results["async"][1]))
    print(f"same trajectories in both loops: {'yes' if same else 'NO'}")
    print(f"total over {args.repeats} pair(s): rounds {results['rounds'][0]:.2f} s, async {results['async'][0]:.2f} s")
    print(f"agent loop: async/rounds speed-up {results['rounds'][0] / results['async'][0]:.2f}×")


if __name__ == "__main__":
    main()
