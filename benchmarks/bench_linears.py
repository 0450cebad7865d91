"""Stock float32 linears (torch's CPU BLAS, MKL) against packed oneDNN ones (`rollout/packed_linears.py`),
side by side, for the products a decode step and a prefill make.

The layers have SmolLM2-135M's shapes (30 blocks of q, k, v, o, gate, up, down, then the LM head: 540 MB
of float32 weights, so the weights stream from memory as in a real forward, not from cache). One pass
feeds every layer in order; printed per input size: ms per pass both ways and their ratio. Run it on a
new CPU to decide whether `packed_linears` should be on there by default (`pays_on`). Takes about a minute.

    python benchmarks/bench_linears.py [--rows 1,2,4,8,16,32,512] [--threads N]

The last line is `linears: packed speed-up X.XX× at 8 rows (decode), Y.YY× at 512 rows (prefill)` (one part
alone when --rows holds only sizes up to 32 or only larger ones).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from appo.rollout.packed_linears import available, packed_linears, used_by_default

HIDDEN, INTERMEDIATE, KV, VOCAB, BLOCKS = 576, 1536, 192, 49152, 30


def smollm2_linears() -> torch.nn.Sequential:
    shapes = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN),
              (HIDDEN, INTERMEDIATE), (HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]
    layers = [torch.nn.Linear(i, o, bias=False) for _ in range(BLOCKS) for i, o in shapes]
    return torch.nn.Sequential(*layers, torch.nn.Linear(HIDDEN, VOCAB, bias=False))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.machine()


def one_pass(layers: torch.nn.Sequential, inputs: dict[int, torch.Tensor]) -> None:
    for layer in layers:
        layer(inputs[layer.in_features])


def ms_per_pass(layers, rows: int, packed: bool, repeats: int) -> float:
    inputs = {n: torch.randn(rows, n) for n in (HIDDEN, INTERMEDIATE)}
    with torch.no_grad(), packed_linears(layers, enabled=packed):
        one_pass(layers, inputs)  # warm-up (and packing)
        start = time.perf_counter()
        for _ in range(repeats):
            one_pass(layers, inputs)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,2,4,8,16,32,512", help="input rows per product, comma-separated")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not available():
        raise SystemExit("bench_linears: this torch has no oneDNN linears on this CPU (x86 with a oneDNN build needed)")
    try:
        rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        ap.error(f"--rows {args.rows!r}: give positive integers separated by commas, e.g. 1,8,512")
    if min(rows) < 1:
        ap.error(f"--rows {args.rows!r}: every size must be at least 1")
    torch.manual_seed(0)
    layers = smollm2_linears()
    print(f"cpu={cpu_name()!r} threads={torch.get_num_threads()} "
          f"on by default here: {used_by_default()}")
    print(f"{'rows':>6}{'stock ms':>11}{'packed ms':>11}{'speed-up':>10}")
    ratios = {}
    for n in rows:
        repeats = 20 if n <= 32 else 3
        stock, packed = ms_per_pass(layers, n, False, repeats), ms_per_pass(layers, n, True, repeats)
        ratios[n] = stock / packed
        print(f"{n:>6}{stock:>11.1f}{packed:>11.1f}{ratios[n]:>9.2f}×")
    # Decode steps feed a few rows, prefills hundreds; name the sizes that stand for each.
    parts = []
    decode = [n for n in rows if n <= 32]
    if decode:
        n = min(decode, key=lambda n: abs(n - 8))
        parts.append(f"{ratios[n]:.2f}× at {n} rows (decode)")
    if max(rows) > 32:
        parts.append(f"{ratios[max(rows)]:.2f}× at {max(rows)} rows (prefill)")
    print(f"linears: packed speed-up {', '.join(parts)}")


if __name__ == "__main__":
    main()
