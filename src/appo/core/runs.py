"""Cutting a sequence of items into consecutive runs at the least total cost (a dynamic programme). The
engine groups a join's rows into prefill forwards with it, the learner its rows into micro-batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def cheapest_runs(n: int, runs_ending_at: Callable[[int], Iterable[tuple[int, float]]]) -> list[range]:
    """The cut of items 0..n-1 into consecutive runs whose costs sum the least. `runs_ending_at(j)` yields
    (i, cost of the run i..j-1) for the runs it allows to end before j (at least i = j - 1)."""
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest cut of items 0..j-1
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i, cost in runs_ending_at(j):
            if best[i] + cost < best[j]:
                best[j], cut[j] = best[i] + cost, i
    runs, j = [], n
    while j > 0:
        runs.append(range(cut[j], j))
        j = cut[j]
    return runs[::-1]
