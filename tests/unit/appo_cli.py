"""Run the real `appo` console script in a subprocess, with this checkout's sources first on the path,
and check what a user sees for bad input: exit code 2, one line on stderr, no traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def appo_command() -> list[str]:
    script = Path(sys.executable).parent / "appo"
    # The console script of the installed package; `python -m appo.cli` is the same `main()` otherwise.
    return [str(script)] if script.exists() else [sys.executable, "-m", "appo.cli"]


def run_appo(*args: str, cwd: str | Path | None = None, timeout: float = 120,
             memory_mb: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")

    def limit():
        if memory_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run(appo_command() + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def assert_user_error(proc: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """rc 2 and exactly one stderr line `appo <command>: ...` holding every needle; returns that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"appo {command}: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
