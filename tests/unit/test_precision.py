"""`model.autocast: auto`: bf16 only where the hardware has it natively, float32 elsewhere."""

from __future__ import annotations

import logging

import pytest
import torch

from appo import precision
from appo.config import ConfigError, load_config, preset_names
from appo.precision import Bf16Support, autocast, cpu_bf16_support, resolve_autocast

# Trimmed /proc/cpuinfo of the two kinds of x86 CPU (flags as the kernel prints them).
AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n\n" \
            "processor\t: 1\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"


def no_native(device_type: str) -> Bf16Support:
    return Bf16Support(False, "a CPU without native bf16 (no avx512_bf16 or amx_bf16; widest vector unit: avx2)")


def native(device_type: str) -> Bf16Support:
    return Bf16Support(True, "a CPU with native bf16 (amx_bf16)")


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a new process would: nothing resolved or logged yet."""
    monkeypatch.setattr(precision, "_resolved", {})


def test_cpu_flags_decide_native_bf16():
    assert cpu_bf16_support(AVX2_ONLY) == Bf16Support(
        False, "a CPU without native bf16 (no avx512_bf16 or amx_bf16; widest vector unit: avx2)")
    assert cpu_bf16_support(SAPPHIRE_RAPIDS) == Bf16Support(True, "a CPU with native bf16 (amx_bf16, avx512_bf16)")
    assert cpu_bf16_support("flags\t: avx2 avx512f avx512_bf16\n").native
    assert not cpu_bf16_support("flags\t: avx2 avx512f avx512bw\n").native  # AVX-512 alone is not bf16
    assert not cpu_bf16_support("").native


def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16():
    capped = cpu_bf16_support(SAPPHIRE_RAPIDS, onednn_isa="AVX2")
    assert not capped.native and "ONEDNN_MAX_CPU_ISA=AVX2" in capped.found
    assert cpu_bf16_support(SAPPHIRE_RAPIDS, onednn_isa="avx512_core_amx").native
    assert cpu_bf16_support(SAPPHIRE_RAPIDS, onednn_isa="").native


def test_auto_is_float32_without_native_bf16_and_logs_the_capability(caplog):
    caplog.set_level(logging.INFO, logger="appo")
    assert resolve_autocast("auto", "cpu", check=no_native) == "none"
    assert resolve_autocast("auto", "cpu", check=no_native) == "none"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["precision: model.autocast=auto -> float32 (no autocast) on a CPU without native bf16 "
                     "(no avx512_bf16 or amx_bf16; widest vector unit: avx2)"]  # once, however often asked


def test_auto_is_bf16_with_native_bf16(caplog):
    caplog.set_level(logging.INFO, logger="appo")
    assert resolve_autocast("auto", "cpu", check=native) == "bfloat16"
    assert resolve_autocast("auto", "cuda", check=native) == "bfloat16"
    assert "auto -> bfloat16 autocast on a CPU with native bf16 (amx_bf16)" in caplog.records[0].getMessage()


def test_explicit_bf16_without_native_bf16_still_runs_but_warns(caplog):
    assert resolve_autocast("bfloat16", "cpu", check=no_native) == "bfloat16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "about 19x slower for the learner's matmuls on AVX2, measured" in warnings[0]
    caplog.clear()
    assert resolve_autocast("bfloat16", "cpu", check=native) == "bfloat16"
    assert resolve_autocast("none", "cpu", check=no_native) == "none"
    assert not caplog.records


def test_autocast_context_runs_the_resolved_dtype():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("none", "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast("bfloat16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("auto", "cpu"):  # this machine's own flags decide
        assert (a @ b).dtype == (torch.bfloat16 if cpu_bf16_support().native else torch.float32)


def test_auto_is_the_default_in_every_preset_but_tiny():
    for name in preset_names():
        assert load_config(name).model.autocast == ("none" if name == "tiny" else "auto"), name
    with pytest.raises(ConfigError, match="auto, none, bfloat16, float16"):
        load_config("quickstart", ["model.autocast=bf16"])
