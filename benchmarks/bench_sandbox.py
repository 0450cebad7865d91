"""Cost of the python tool's sandbox.

Default: per-call latency and calls/second at 1, 4 and 16 parallel calls, for a plain `python3 -c`
subprocess (what the reference runs), appo's tool with sandbox=none, and appo's bubblewrap sandbox, measured
side by side in one run.

`--base SRC`: the bubblewrap sandbox of another checkout's `src/` (e.g. a `git worktree add /tmp/base REV`)
against this one's, side by side in one run: each side runs in its own child process with its `src` first
on PYTHONPATH, the two alternate for `--rounds` rounds (so that the load of a shared machine falls on both
alike) and the median of the rounds is kept. Workloads: a one-line cell (start-up cost), a session call
replaying three earlier cells, and a cell computing for ~0.1 s of CPU in each of two worker processes (the
supervisor's polling while the call runs). The ratio columns are this checkout over the base (ms: below 1
is faster). `--caller-gb G` makes each side's process hold G GB of resident memory and write one byte of
every page of it after each call, as a trainer calling tools rewrites its tensors: a call that forks the
caller shows up as that rewrite's page faults and system time, which count in the call's time.

    python benchmarks/bench_sandbox.py [--calls 48] [--code "print(6*7)"]
    python benchmarks/bench_sandbox.py --base /tmp/base/src [--calls 16] [--rounds 3] [--caller-gb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE_SRC = Path(__file__).resolve().parents[1] / "src"

WORKLOADS = {
    "one line": ("print(6*7)", ()),
    "session, 3 replayed cells": ("print(a + b + c)", ("a = 1", "import math\nb = math.factorial(10)",
                                                      "c = sum(range(1000))")),
    "0.1 s compute, 2 workers": ("import os, time\npids = []\nfor _ in range(2):\n    pid = os.fork()\n"
                                 "    if pid == 0:\n        t = time.process_time()\n"
                                 "        while time.process_time() - t < 0.1:\n            pass\n"
                                 "        os._exit(0)\n    pids.append(pid)\n"
                                 "print(sum(os.waitpid(p, 0)[1] == 0 for p in pids))", ()),
}


def plain(code: str, timeout: float) -> str:
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=timeout).stdout


def measure(fn, calls: int, parallel: int) -> tuple[float, float]:
    """(median seconds per call, calls per second) for `calls` calls, `parallel` at a time."""
    durations: list[float] = []

    def one(_):
        t = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - t)

    fn()  # warm the page cache
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(calls)))
    return statistics.median(durations), calls / (time.perf_counter() - start)


def runners_table(calls: int, code: str) -> None:
    from appo.config import PythonToolConfig
    from appo.tools.base import ToolCall
    from appo.tools.python import PythonTool

    timeout = 30.0
    runners = {
        "plain subprocess": lambda: plain(code, timeout),
        "appo sandbox=none": PythonTool(PythonToolConfig(sandbox="none"), timeout=timeout),
        "appo sandbox=bwrap": PythonTool(PythonToolConfig(sandbox="bwrap"), timeout=timeout),
    }
    call = ToolCall("python", code)
    print(f"code: {code!r}; {calls} calls per setting")
    print(f"{'parallel':>8} | {'runner':<20} | {'median ms/call':>14} | {'calls/s':>8} | {'ms ratio':>8} | {'calls/s ratio':>13}")
    for parallel in (1, 4, 16):
        base = None
        for name, runner in runners.items():
            fn = runner if name == "plain subprocess" else (lambda r=runner: r(call))
            latency, rate = measure(fn, calls, parallel)
            base = base or (latency, rate)
            print(f"{parallel:>8} | {name:<20} | {latency * 1000:>14.1f} | {rate:>8.1f} | "
                  f"{latency / base[0]:>7.2f}x | {rate / base[1]:>12.2f}x")


def worker(calls: int, parallels: list[int], caller_gb: float) -> None:
    """One side of --base: the bwrap tool of whichever `appo` is first on the path; JSON on stdout."""
    import resource

    from appo.config import PythonToolConfig
    from appo.tools.base import ToolCall
    from appo.tools.python import PythonTool

    held = bytearray(int(caller_gb * (1 << 30)))
    pages = len(range(0, len(held), 4096))

    def rewrite():
        held[::4096] = b"\x01" * pages

    rewrite()
    tool = PythonTool(PythonToolConfig(sandbox="bwrap", session=True), timeout=30.0)
    out = {}
    for name, (code, history) in WORKLOADS.items():
        call = ToolCall("python", code, history)
        result = tool(call)
        if not result.ok:
            raise SystemExit(f"{name}: the call failed: {result.text[-300:]}")
        before = resource.getrusage(resource.RUSAGE_SELF)
        out[name] = {str(p): measure(lambda c=call: (tool(c), rewrite()), calls, p) for p in parallels}
        after = resource.getrusage(resource.RUSAGE_SELF)
        n = calls * len(parallels) + len(parallels)  # measure() warms up with one call per setting
        out[name]["faults"] = (after.ru_minflt - before.ru_minflt) / n
        out[name]["sys_ms"] = (after.ru_stime - before.ru_stime) * 1000 / n
    print(json.dumps(out))


def compare(base_src: Path, calls: int, rounds: int, parallels: list[int], caller_gb: float) -> None:
    if not (base_src / "appo" / "tools" / "sandbox.py").is_file():
        raise SystemExit(f"--base {base_src}: not a checkout's src/ (no appo/tools/sandbox.py in it)")
    sides = {"base": base_src.resolve(), "this": HERE_SRC}
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    for _ in range(rounds):
        for side, src in sides.items():
            env = dict(os.environ, PYTHONPATH=str(src))
            done = subprocess.run([sys.executable, __file__, "--worker", "--calls", str(calls),
                                   "--parallel", ",".join(map(str, parallels)), "--caller-gb", str(caller_gb)],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{side} ({src}) failed: {done.stderr[-2000:]}")
            runs[side].append(json.loads(done.stdout.splitlines()[-1]))
    print(f"bubblewrap sandbox per call: base {sides['base']} vs this {sides['this']}; {calls} calls per "
          f"setting, median of {rounds} alternating rounds; the caller holds {caller_gb:g} GB")
    print(f"{'workload':<26} | {'parallel':>8} | {'base ms':>8} | {'this ms':>8} | {'ms ratio':>8} | "
          f"{'base calls/s':>12} | {'this calls/s':>12} | {'calls/s ratio':>13}")
    ratios = []
    for name in WORKLOADS:
        for p in map(str, parallels):
            b_ms, t_ms = (statistics.median(r[name][p][0] for r in runs[s]) * 1000 for s in ("base", "this"))
            b_rate, t_rate = (statistics.median(r[name][p][1] for r in runs[s]) for s in ("base", "this"))
            ratios.append(t_ms / b_ms)
            print(f"{name:<26} | {p:>8} | {b_ms:>8.1f} | {t_ms:>8.1f} | {t_ms / b_ms:>7.2f}x | "
                  f"{b_rate:>12.1f} | {t_rate:>12.1f} | {t_rate / b_rate:>12.2f}x")
    print(f"{'workload':<26} | {'base faults/call':>16} | {'this faults/call':>16} | {'base sys ms/call':>16} | "
          f"{'this sys ms/call':>16}  (the caller's)")
    for name in WORKLOADS:
        bf, tf, bs, ts = (statistics.median(r[name][k] for r in runs[side])
                          for k in ("faults", "sys_ms") for side in ("base", "this"))
        print(f"{name:<26} | {bf:>16.0f} | {tf:>16.0f} | {bs:>16.1f} | {ts:>16.1f}")
    print(f"sandbox: per-call time this/base, geometric mean {statistics.geometric_mean(ratios):.2f}x "
          f"(range {min(ratios):.2f}x-{max(ratios):.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per setting (48; 16 with --base)")
    parser.add_argument("--code", default="print(6*7)", help="the cell every call runs (default mode)")
    parser.add_argument("--base", type=Path, help="another checkout's src/ to compare this sandbox against")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side (with --base)")
    parser.add_argument("--parallel", default="1,4", help="parallel calls to measure (with --base)")
    parser.add_argument("--caller-gb", type=float, default=0.0,
                        help="resident memory each side's process holds and rewrites after every call (with --base)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        parallels = [int(p) for p in args.parallel.split(",")]
        if not parallels or min(parallels) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--parallel {args.parallel!r}: expected positive integers separated by commas, e.g. 1,4")
    if args.caller_gb < 0:
        parser.error(f"--caller-gb {args.caller_gb}: expected a size in GB, 0 or more")
    if args.worker:
        worker(args.calls, parallels, args.caller_gb)
    elif args.base is not None:
        compare(args.base, args.calls or 16, args.rounds, parallels, args.caller_gb)
    else:
        runners_table(args.calls or 48, args.code)


if __name__ == "__main__":
    main()
