"""future_kl_loss forward+backward: the blocked future sum vs a naive L x L decay matrix.

Each (implementation, length) runs in its own subprocess so that the peak resident memory it reports
(ru_maxrss after the run minus ru_maxrss after building the inputs) belongs to that run alone.
Times are the median of a few repetitions on one CPU thread. Usage:

    python benchmarks/bench_future_kl.py [--rows 8] [--lengths 1024 4096 16384] [--naive-limit-gib 2]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from appo.core.loss import future_kl_loss

DECAY_RATE = 64.0
REPEATS = 3


def naive_future_kl_loss(log_prob, old_log_prob, advantages, mask, clip_low=0.2, clip_high=0.28, clip_c=3.0):
    """The same loss with the future sum as one matmul against a dense L x L decay matrix."""
    length = log_prob.shape[1]
    delta = torch.clamp(log_prob - old_log_prob, -20, 20)
    ratio = delta.exp()
    x = (delta * mask * (delta <= math.log(clip_c))).detach()
    pos = torch.arange(length)
    distance = pos.unsqueeze(0) - pos.unsqueeze(1)
    gamma = torch.tensor(2.0 ** (-1 / DECAY_RATE))
    decay = torch.where(distance >= 0, torch.pow(gamma, distance.clamp(min=0)), 0.0)
    influence = torch.exp(x @ decay.T).clamp(1.0, 1.2)
    influence = torch.where((advantages < 0) & (ratio.detach() > 6.0), influence.clamp(0.8, 1.0), influence)
    weighted = advantages * (1 + influence)
    clip1 = torch.maximum(-weighted * ratio, -weighted * ratio.clamp(1 - clip_low, 1 + clip_high))
    per_token = torch.where(weighted < 0, torch.minimum(-weighted * clip_c, clip1), clip1)
    dual = (advantages < 0) & (clip1 > -weighted * clip_c) & mask.bool()
    keep = mask * ~(dual.sum(-1, keepdim=True) > 1)
    return (per_token * keep).sum() / (keep.sum() + 1e-8)


def naive_bytes(length: int) -> int:
    """Dense intermediates of the naive version: int64 distances, two float32 L x L matrices, a bool mask."""
    return length * length * (8 + 4 + 4 + 1)


def worker(impl: str, rows: int, length: int) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(rows, length, generator=gen) * 2
    new = old + 0.05 * torch.randn(rows, length, generator=gen)
    adv = torch.randn(rows, 1, generator=gen).expand(rows, length).contiguous()
    mask = (torch.rand(rows, length, generator=gen) < 0.9).float()
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, value = [], 0.0
    for _ in range(REPEATS):
        log_prob = new.clone().requires_grad_(True)
        start = time.perf_counter()
        if impl == "blocked":
            loss, _ = future_kl_loss(log_prob, old, adv, mask, decay_rate=DECAY_RATE)
        else:
            loss = naive_future_kl_loss(log_prob, old, adv, mask)
        loss.backward()
        times.append(time.perf_counter() - start)
        value = loss.item()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    print(json.dumps({"ms": 1000 * statistics.median(times), "peak_mib": peak_kib / 1024, "loss": value}))


def run(impl: str, rows: int, length: int) -> dict:
    command = [sys.executable, __file__, "--worker", impl, "--rows", str(rows), "--lengths", str(length)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--naive-limit-gib", type=float, default=2.0,
                        help="skip the naive version when its dense matrices would need more than this")
    parser.add_argument("--worker", choices=("blocked", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rows, args.lengths[0])
        return

    print(f"future_kl_loss forward+backward, B={args.rows}, 1 CPU thread, median of {REPEATS}; "
          f"peak = extra resident memory of the run")
    header = (f"{'L':>6} | {'blocked ms':>10} {'naive ms':>10} {'speed-up':>9} | "
              f"{'blocked MiB':>11} {'naive MiB':>10} {'mem ratio':>9} | loss agreement")
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        blocked = run("blocked", args.rows, length)
        need_gib = naive_bytes(length) / 2**30
        if need_gib > args.naive_limit_gib:
            print(f"{length:>6} | {blocked['ms']:>10.1f} {'-':>10} {'-':>9} | {blocked['peak_mib']:>11.1f} "
                  f"{'-':>10} {'-':>9} | naive skipped (would need {need_gib:.1f} GiB)")
            continue
        naive = run("naive", args.rows, length)
        diff = abs(blocked["loss"] - naive["loss"])
        speed_up = naive["ms"] / blocked["ms"]
        print(f"{length:>6} | {blocked['ms']:>10.1f} {naive['ms']:>10.1f} {speed_up:>8.1f}x | "
              f"{blocked['peak_mib']:>11.1f} {naive['peak_mib']:>10.1f} "
              f"{naive['peak_mib'] / max(blocked['peak_mib'], 0.1):>8.1f}x | |diff| = {diff:.1e}")


if __name__ == "__main__":
    main()
