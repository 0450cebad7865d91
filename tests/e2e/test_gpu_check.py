"""scripts/gpu_check.sh, the prepared single-GPU check, in its CPU dry mode: every stage runs (the CUDA-marked
tests listed, the tiny preset for two RL steps, the throughput lines) and the summary says each is ok."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_cpu_smoke_runs_every_stage():
    done = _run("--cpu-smoke")
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "tests/unit/core/test_cuda.py::" in out  # the CUDA-marked tests the GPU run executes
    assert "step 1: reward/mean" in out and "step 2: reward/mean" in out
    assert "HF engine: " in out and " generated tokens/s" in out
    assert "learner: " in out and " trained tokens/s" in out and "MFU" in out
    assert "vLLM: " in out
    summary = out[out.index("== summary"):].splitlines()[1:]
    assert len(summary) == 3 and all(": ok in " in line for line in summary), summary


def test_unknown_argument_exits_2():
    done = _run("--gpu")
    assert done.returncode == 2 and "usage: scripts/gpu_check.sh [--cpu-smoke]" in done.stderr
