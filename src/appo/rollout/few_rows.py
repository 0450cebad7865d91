"""Linear layers for decode steps of a few rows on CPU: `weight @ x.T` instead of `x @ weight.T`.

Why: a decode step feeds each linear layer one token per live row, and in the tail of a rollout batch
only a handful of rows are left. For 2 to 8 rows, MKL's SGEMM (torch 2.13's CPU BLAS) is slow in the
`x @ weight.T` orientation: on the project's 2-core EPYC a whole SmolLM2-135M decode step of 2 rows took
113 ms, twice the 58 ms of a 1-row step, and 4 rows 110 ms; the same products computed as
`(weight @ x.T).T` took 52 and 66 ms (`benchmarks/bench_engine.py` reports the effect on a rollout
workload). Beyond about 16 rows the two orientations cost the same, so larger inputs (prefills, the
learner) keep the stock path. The result is the same matrix product; only the order of the float32
additions differs (last bits), which can flip a sampled token only at an exact tie.

A single row is a matrix-vector product, which MKL runs on one thread: there the weight's rows are cut
into one block per torch thread and multiplied as a batch, so every core streams its share of the weights
(on the same CPU a 1-row SmolLM2 decode step went from 66-69 ms to 35-41 ms).

Both are workarounds for how MKL multiplies on AMD CPUs, so they are used there only. On an Intel Xeon
(with AMX, family 6 model 167 as KVM reports it, 2 cores) the stock path was the faster one: all of SmolLM2's linears for 8 rows took 53 ms
as `x @ W.T` and 62 ms as `(W @ x.T).T`, one row 24 ms either way (it already streams the weights on
both cores), and one quickstart RL step's rollouts ran in 40.2 s without the workaround against 46.4 s with
it (same tokens).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

MAX_ROWS = 16  # inputs with more rows than this take the stock path (measured: no gain beyond)


def _few_rows_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > MAX_ROWS:
        return torch.nn.functional.linear(x, layer.weight, layer.bias)
    weight = layer.weight
    parts = torch.get_num_threads()
    rows = flat.shape[0]
    if rows == 1 and parts > 1 and weight.shape[0] % parts == 0:
        out = torch.bmm(weight.view(parts, -1, weight.shape[1]), flat.t().expand(parts, -1, -1)).reshape(1, -1)
    else:  # .contiguous(): a transposed result slows every op after it more than the product gained
        out = torch.mm(weight, flat.t()).t().contiguous()
    if layer.bias is not None:
        out = out + layer.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def pays_on(cpuinfo: str) -> bool:
    """Whether the few-row products pay on the CPU that /proc/cpuinfo's text describes: an AMD one."""
    return any(line.partition(":")[0].strip() == "vendor_id" and line.partition(":")[2].strip() == "AuthenticAMD"
               for line in cpuinfo.splitlines())


@functools.cache
def pays_on_this_cpu() -> bool:
    try:
        return pays_on(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


@contextlib.contextmanager
def few_row_linears(model: torch.nn.Module, enabled: bool | None = None) -> Iterator[None]:
    """Within the block, every plain float32 `nn.Linear` of `model` on CPU computes inputs of at most
    MAX_ROWS rows as `(weight @ x.T).T`, if `enabled` (default: where that pays, `pays_on_this_cpu`).
    Meant for no-grad decoding; the module is unchanged after it."""
    if not (pays_on_this_cpu() if enabled is None else enabled):
        yield
        return
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
              and m.weight.dtype == torch.float32 and "forward" not in m.__dict__]  # (nested: already done)
    for layer in layers:
        layer.forward = _few_rows_forward.__get__(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
