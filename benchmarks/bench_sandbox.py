"""Cost of the python tool's sandbox: per-call latency and calls/second at 1, 4 and 16 parallel calls,
for a plain `python3 -c` subprocess (what the reference runs), appo's tool with sandbox=none, and appo's
bubblewrap sandbox, measured side by side in one run.

    python benchmarks/bench_sandbox.py [--calls 48] [--code "print(6*7)"]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from appo.config import PythonToolConfig
from appo.tools.base import ToolCall
from appo.tools.python import PythonTool


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=48, help="calls per setting")
    parser.add_argument("--code", default="print(6*7)", help="the cell every call runs")
    args = parser.parse_args()
    timeout = 30.0
    runners = {
        "plain subprocess": lambda: plain(args.code, timeout),
        "appo sandbox=none": PythonTool(PythonToolConfig(sandbox="none"), timeout=timeout),
        "appo sandbox=bwrap": PythonTool(PythonToolConfig(sandbox="bwrap"), timeout=timeout),
    }
    call = ToolCall("python", args.code)
    print(f"code: {args.code!r}; {args.calls} calls per setting")
    print(f"{'parallel':>8} | {'runner':<20} | {'median ms/call':>14} | {'calls/s':>8} | {'ms ratio':>8} | {'calls/s ratio':>13}")
    for parallel in (1, 4, 16):
        base = None
        for name, runner in runners.items():
            fn = runner if name == "plain subprocess" else (lambda r=runner: r(call))
            latency, rate = measure(fn, args.calls, parallel)
            base = base or (latency, rate)
            print(f"{parallel:>8} | {name:<20} | {latency * 1000:>14.1f} | {rate:>8.1f} | "
                  f"{latency / base[0]:>7.2f}x | {rate / base[1]:>12.2f}x")


if __name__ == "__main__":
    main()
