"""Peak KV-cache memory of one tool-loop call that runs more rows than the batch holds (an evaluation chunk):
this checkout against another checkout's `src/` (--base), side by side, each in its own child process.

    python benchmarks/bench_open_rows.py --model DIR --base /tmp/base/src [--questions 20] [--k 4] [--batch 16]

DIR is a model that calls tools (an SFT checkpoint of the study or the quickstart); its task's held-out
questions are asked k times each at temperature 1, `--batch` rows decoded together. Printed per side: wall
time, the loop's peak KV bytes and peak rows holding a cache, the child's peak RSS, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE_SRC = Path(__file__).resolve().parents[1] / "src"


def worker(model_dir: str, preset: str, questions: int, k: int, batch: int) -> None:
    import dataclasses

    from appo.commands.common import with_task_index
    from appo.config import load_config
    from appo.data.prompt_sets import load_prompt_sets, prepare_task
    from appo.models import load_model, load_tokenizer
    from appo.rollout.hf import HFEngine
    from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop
    from appo.tools.registry import build_tools

    cfg = load_config(preset, [f"model.path={model_dir}", f"rollout.gen_batch_size={batch}"])
    task = prepare_task(cfg)
    cfg = with_task_index(cfg, task)
    tok = load_tokenizer(model_dir)
    _, val = load_prompt_sets(cfg, tok, task)
    engine = HFEngine(load_model(model_dir, cfg.model.dtype), tok)
    # as an evaluation samples: temperature 1, one seed per (question, sample)
    settings = dataclasses.replace(RolloutLoopSettings.from_config(cfg.rollout, cfg.tools), temperature=1.0)
    starts = [LoopStart.fresh(p.prompt_ids, group=i, seed=1000 * i + s) for i, p in enumerate(val[:questions])
              for s in range(k)]
    stats: dict = {}
    with build_tools(cfg.tools) as tools:
        t0 = time.time()
        run_tool_loop(engine, tools, starts, settings, stats)
        wall = time.time() - t0
    print(json.dumps({"wall": wall, "peak_kv_gb": stats.get("peak_kv_bytes", 0) / 2**30,
                      "peak_open_rows": stats.get("peak_open_rows", "n/a"), "rows": len(starts),
                      "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="study")
    p.add_argument("--base", type=Path, help="another checkout's src/ (required)")
    p.add_argument("--questions", type=int, default=20)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.model, a.preset, a.questions, a.k, a.batch)
    if a.base is None or not (a.base / "appo" / "rollout" / "tool_loop.py").is_file():
        p.error(f"--base {a.base}: expected another checkout's src/ (with appo/rollout/tool_loop.py)")
    out = {}
    for side, src in (("base", a.base.resolve()), ("this", HERE_SRC)):
        env = dict(os.environ, PYTHONPATH=str(src))
        done = subprocess.run([sys.executable, __file__, "--worker", "--model", a.model, "--preset", a.preset,
                               "--questions", str(a.questions), "--k", str(a.k), "--batch", str(a.batch)],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{side}: {done.stderr[-1500:]}")
        out[side] = json.loads(done.stdout.strip().splitlines()[-1])
        print(side, out[side], flush=True)
    b, t = out["base"], out["this"]
    print(f"{t['rows']} rows, batch {a.batch}: "
          f"wall {b['wall']:.0f} -> {t['wall']:.0f} s ({t['wall'] / b['wall']:.2f}x), "
          f"peak KV {b['peak_kv_gb']:.2f} -> {t['peak_kv_gb']:.2f} GB ({t['peak_kv_gb'] / b['peak_kv_gb']:.2f}x), "
          f"peak RSS {b['rss_gb']:.2f} -> {t['rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
