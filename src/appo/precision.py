"""The autocast precision that fits the machine (`model.autocast`; 'auto' is the default).

bf16 autocast pays only where bf16 is multiplied natively: a CUDA device with bf16, or a CPU with
AVX512-BF16 or AMX. Elsewhere PyTorch's CPU bf16 GEMM takes a slow path, many times slower than float32
(measured: docs/performance.md#measurements-behind-the-codes-choices).
So 'auto' is bfloat16 on such hardware and float32 (no autocast) elsewhere. The choice is made once per
process and logged once; SFT, the learner and the future-value scorer (a learner forward) all run under it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # as /proc/cpuinfo spells them
# oneDNN (PyTorch's CPU bf16 GEMM) ISA caps that leave out its bf16 instructions: with ONEDNN_MAX_CPU_ISA set
# to one of these, bf16 takes the slow path even on a CPU that has them (how an AVX2 machine is emulated).
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
SLOW_BF16 = "about 19x slower for the learner's matmuls on AVX2, measured"


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    found: str  # the capability, as the log line names it


def cpu_bf16_support(cpuinfo: str | None = None, onednn_isa: str | None = None) -> Bf16Support:
    """Native bf16 on this CPU, from the `flags` line of /proc/cpuinfo (or the text given) and oneDNN's ISA
    cap (`ONEDNN_MAX_CPU_ISA`, read from the environment unless given)."""
    if onednn_isa is None:
        onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if onednn_isa.upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return Bf16Support(False, f"a CPU whose bf16 instructions oneDNN may not use (ONEDNN_MAX_CPU_ISA={onednn_isa})")
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return Bf16Support(False, "a CPU whose flags are unknown (no /proc/cpuinfo)")
    flags = next((set(line.partition(":")[2].split()) for line in cpuinfo.splitlines()
                  if line.partition(":")[0].strip() == "flags"), set())
    native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    if native:
        return Bf16Support(True, f"a CPU with native bf16 ({', '.join(native)})")
    vector = next((f for f in ("avx512f", "avx2") if f in flags), None)
    return Bf16Support(False, "a CPU without native bf16 (no avx512_bf16 or amx_bf16"
                              f"{f'; widest vector unit: {vector}' if vector else ''})")


def device_bf16_support(device_type: str) -> Bf16Support:
    if device_type == "cuda":
        import torch

        native = torch.cuda.is_bf16_supported()
        return Bf16Support(native, f"CUDA {torch.cuda.get_device_name()} ({'with' if native else 'without'} bf16)")
    return cpu_bf16_support()


_resolved: dict[tuple, str] = {}


def resolve_autocast(setting: str, device_type: str,
                     check: Callable[[str], Bf16Support] = device_bf16_support) -> str:
    """The autocast dtype to run ('none', 'bfloat16' or 'float16') for `model.autocast=setting` on
    `device_type`; `check` says whether the device has native bf16. Logged once per setting and device."""
    key = (setting, device_type, check)
    if key in _resolved:
        return _resolved[key]
    value = setting
    if setting == "auto":
        support = check(device_type)
        value = "bfloat16" if support.native else "none"
        log.info("precision: model.autocast=auto -> %s on %s", "bfloat16 autocast" if support.native else
                 "float32 (no autocast)", support.found)
    elif setting == "bfloat16" and device_type == "cpu":
        support = check(device_type)
        if not support.native:
            log.warning("precision: model.autocast=bfloat16 on %s works but is slow (%s); model.autocast=auto "
                        "runs float32 here", support.found, SLOW_BF16)
    _resolved[key] = value
    return value


def autocast(setting: str, device_type: str):
    """The context a forward runs in for `model.autocast=setting` ('auto' resolved as above)."""
    value = resolve_autocast(setting, device_type)
    if value == "none":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type, dtype=getattr(torch, value))
