"""`core.runs.cheapest_runs` against every cut of short sequences."""

from __future__ import annotations

import itertools
import random

from appo.core.runs import cheapest_runs


def _all_cuts(n):
    for mask in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [k + 1 for k, cut in enumerate(mask) if cut] + [n]
        yield [range(a, b) for a, b in zip(bounds, bounds[1:])]


def test_it_finds_the_cheapest_cut_of_every_short_sequence():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 7)
        widths = [rng.randint(1, 50) for _ in range(n)]
        overhead = rng.choice([0, 5, 30])

        def cost(run, widths=widths, overhead=overhead):  # padded to its widest item, plus a cost per run
            return len(run) * max(widths[k] for k in run) + overhead

        got = cheapest_runs(n, lambda j: ((i, cost(range(i, j))) for i in range(j)))
        assert [k for run in got for k in run] == list(range(n))
        assert sum(map(cost, got)) == min(sum(map(cost, cut)) for cut in _all_cuts(n))


def test_runs_may_be_limited_in_length():
    got = cheapest_runs(5, lambda j: ((i, 1.0) for i in range(max(0, j - 2), j)))
    assert all(len(run) <= 2 for run in got) and len(got) == 3
