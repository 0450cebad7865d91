"""Run a function in two gloo processes on the loopback and collect what each rank returns: for tests of
collectives (FSDP2 sharding) that need no torchrun."""

from __future__ import annotations

import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, fn, args, queue) -> None:
    import io
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # as bytes: a tensor sent through the queue itself would be shared memory of a process about to exit
        buffer = io.BytesIO()
        torch.save(fn(rank, *args), buffer)
        queue.put((rank, "ok", buffer.getvalue()))
    except Exception as e:  # the parent reports what each rank saw
        queue.put((rank, "error", f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def run_two_ranks(fn, *args, timeout: float = 300) -> dict[int, object]:
    """{rank: fn(rank, *args)} from two processes; AssertionError naming what went wrong when a rank raised
    or died (a collective mismatch aborts a rank without a word)."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, port, fn, args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results: dict[int, tuple[str, object]] = {}
    deadline = time.time() + timeout
    try:
        while len(results) < 2 and time.time() < deadline and not any(p.exitcode not in (None, 0) for p in procs):
            try:
                rank, status, value = queue.get(timeout=1)
            except Exception:
                continue
            results[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert len(results) == 2, f"a rank died or hung: exit codes {[p.exitcode for p in procs]}, results {results}"
    errors = {r: v for r, (status, v) in results.items() if status != "ok"}
    assert not errors, errors
    import io

    import torch

    return {r: torch.load(io.BytesIO(v), weights_only=False) for r, (_, v) in results.items()}
