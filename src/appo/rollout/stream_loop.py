"""The asynchronous tool loop, for engines that stream requests (vLLM's `open_stream`): every trajectory
advances through its own turns, with no round barrier.

A row's generation request goes into the running engine as soon as the row is ready (a fresh row, a
branch, a row whose tool result has arrived); the engine batches whatever requests are running, step by
step. A row whose turn ends with calls (a tool's closing tag; with a chat template, EOS) hands them to the tool runner's pool and leaves the
engine; the others keep decoding, and it rejoins when its own result is there, whatever the other rows'
tools are doing. The loop blocks on tools only when nothing is left to decode. Rows added from `on_done`
(APPO's branches, as soon as their prompt's initial rows are done) join the same stream. At most
`gen_batch_size` requests run at once, as in the round-by-round path's engine calls.

Each row's segments carry the same seeds as round by round (row seed, turn number), and vLLM samples a
seeded request from its own generator, so a row's tokens are those of the round-by-round path; which rows
share an engine step now depends on how fast tools answer, which can move log-probs in the last float
bits (tests/unit/rollout/test_stream_loop.py measures it).

The per-row logic (requests, absorbing a segment, calls, call limits, splicing results) is the ToolLoop's
own; this module only schedules it.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait

from appo.rollout.tool_loop import LoopRow, ToolLoop, _Turn


def run_streamed(loop: ToolLoop) -> None:
    """Every live row of `loop` (and every row added while it runs) to completion on `loop.engine`'s stream."""
    stream = loop.engine.open_stream()
    ready: deque[LoopRow] = deque()
    calls: dict[Future, tuple[int, LoopRow, _Turn]] = {}
    order = itertools.count()  # results that arrive together are spliced in the order their calls were made
    loop._arrivals = deque(loop.active)

    def after(row: LoopRow, stop: str | None) -> None:
        def start(turn: _Turn) -> None:
            calls[loop._submit_turn(turn)] = (next(order), row, turn)

        loop._dispatch(row, stop, ready, start)

    try:
        while True:
            loop._drain_arrivals(after)
            if not (ready or calls or len(stream)):
                break
            if calls:
                idle = not ready and not len(stream)  # nothing to decode: wait for the first result
                t0 = time.perf_counter()
                done, _ = wait(list(calls), timeout=None if idle else 0, return_when=FIRST_COMPLETED)
                if idle:
                    loop._count("tool_seconds", time.perf_counter() - t0)
                for future in sorted(done, key=lambda f: calls[f][0]):
                    _, row, turn = calls.pop(future)
                    loop._count("tool_calls", len(turn.calls))
                    turn.fill(future.result())
                    loop._splice_turn(turn)
                    after(row, None)
            while ready and len(stream) < loop.settings.gen_batch_size:
                row = ready.popleft()
                stream.add(row, loop._request(row))
            if len(stream):
                t0 = time.perf_counter()
                finished = stream.step()
                loop._count("generate_seconds", time.perf_counter() - t0)
                for row, res in finished:
                    after(row, loop._absorb(row, res, None))
    finally:
        loop._arrivals = None
    loop._count("rounds", max((r.rounds for r in loop.rows), default=0))
