"""Float32 linear layers on x86 CPUs through oneDNN with weights packed once: for no-grad forwards (decoding,
prefill, scoring).

Why: torch's CPU `nn.Linear` calls MKL's SGEMM, which is slow on AMD CPUs for the shapes decoding makes;
oneDNN with the weights packed in its blocked layout is faster at every row count measured, with the CPU
restricted to AVX2 kernels too (`benchmarks/bench_linears.py`, `benchmarks/bench_engine.py`; the numbers
are in docs/performance.md#measurements-behind-the-codes-choices).

Packing costs about one copy of the weights, so a packed weight is kept with its layer and reused until
the weight changes: it is keyed by the tensor's storage and version counter, which every in-place update
(an optimizer step, `load_state_dict`, `copy_`) bumps. Assigning `param.data` changes neither the
parameter's version nor, when two tensors trade storage back and forth, its storage; code that does so
(the learner's previous-weights swap) calls `forget_packed()`. The memory cost is one more copy of the
float32 linear weights.

The product is the same in float32; only the order of the additions differs (last bits; checked against
float64 in the tests), which can flip a Gumbel-max sample only at an exact tie. Forwards that track
gradients or run under autocast take the stock path, so the block can wrap code that trains and keeps
autocast's precision.

It is on by default on AMD CPUs, where it was measured. On Intel CPUs MKL is Intel's own and was already
fast on the one Intel Xeon measured, and packed oneDNN was not measured
on one, so the stock path stays there until `benchmarks/bench_linears.py` shows otherwise. Elsewhere (no
oneDNN in this torch build, another architecture) the block changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

# layer -> ((weight storage, data pointer, version), packed weight)
_packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _packed_weight(layer: torch.nn.Linear) -> torch.Tensor:
    weight = layer.weight
    key = (weight.untyped_storage().data_ptr(), weight.data_ptr(), weight._version)
    held = _packed.get(layer)
    if held is None or held[0] != key:
        held = (key, _pack(weight))
        _packed[layer] = held
    return held[1]


def _forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)) \
            or torch.is_autocast_enabled(x.device.type):
        return torch.nn.functional.linear(x, layer.weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, _packed_weight(layer), bias, "none", [], "")


@functools.cache
def available() -> bool:
    """Whether this torch can run packed oneDNN linears here: an x86 CPU and a build with oneDNN."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def pays_on(cpuinfo: str) -> bool:
    """Whether packed linears are used by default on the CPU that /proc/cpuinfo's text describes: an AMD one."""
    return any(line.partition(":")[0].strip() == "vendor_id" and line.partition(":")[2].strip() == "AuthenticAMD"
               for line in cpuinfo.splitlines())


@functools.cache
def pays_on_this_cpu() -> bool:
    try:
        return pays_on(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def used_by_default() -> bool:
    """Whether `packed_linears` packs when not told: oneDNN `available` and a CPU it `pays_on`."""
    return available() and pays_on_this_cpu()


def forget_packed() -> None:
    """Drop every packed weight (after parameters' `.data` was reassigned, which no key can see)."""
    _packed.clear()


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, enabled: bool | None = None) -> Iterator[None]:
    """Within the block, every plain float32 `nn.Linear` of `model` on CPU computes its no-grad forwards with
    oneDNN from its packed weight, if `enabled` (default: `used_by_default()`). The
    module is unchanged after it; the packed weights stay cached for the next block."""
    if not (used_by_default() if enabled is None else enabled):
        yield
        return
    # Not FSDP2 shards (DTensor): FSDP refills their gathered weights itself, unchecked against the key.
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
              and m.weight.dtype == torch.float32 and not isinstance(m.weight, DTensor)
              and "forward" not in m.__dict__]  # (nested: already done)
    for layer in layers:
        layer.forward = _forward.__get__(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
