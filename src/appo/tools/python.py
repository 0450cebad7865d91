"""The `<python>` tool: run a model-written cell in the sandbox and return the text the model sees.

Semantics follow the reference PythonTool: a trailing bare expression is printed; on success the
stripped stdout is returned, on failure the stripped error text (here ok=False, where the reference
passed errors off as successes); a timeout says `Execution timeout (exceeded Ns)`, and here the limit
really is enforced. With `session=True` the trajectory's earlier successful cells are replayed silently
first, so variables persist across calls (a replayed `os._exit` ends only its own cell).
"""

from __future__ import annotations

import signal
import time

from appo.config import PythonToolConfig
from appo.tools.base import ToolCall, ToolResult
from appo.tools.output import truncate
from appo.tools.sandbox import Limits, Sandbox


def _describe_exit(returncode: int, mode: str) -> str:
    # bwrap reports a child killed by signal N as 128+N; a plain subprocess as -N.
    signum = -returncode if returncode < 0 else returncode - 128 if mode == "bwrap" and returncode > 128 else 0
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"Process killed by {name}"
    return f"Process exited with status {returncode}"


class PythonTool:
    name = "python"

    def __init__(self, cfg: PythonToolConfig, timeout: float = 10.0, result_max_chars: int = 2000):
        self.cfg = cfg
        self.timeout = timeout
        self.result_max_chars = result_max_chars
        limits = Limits(memory_mb=cfg.memory_mb, max_processes=cfg.max_processes, max_file_mb=cfg.max_file_mb,
                        max_open_files=cfg.max_open_files, disk_mb=cfg.disk_mb, max_tmp_files=cfg.max_tmp_files)
        # Capture a few times the shown size so head and tail survive; the rest is only counted.
        self.sandbox = Sandbox(cfg.interpreter, cfg.sandbox, limits, capture_bytes=max(4 * result_max_chars, 8192))
        self.missing_modules = self.sandbox.check()

    def __call__(self, call: ToolCall) -> ToolResult:
        start = time.time()
        history = list(call.history) if self.cfg.session else []
        outcome = self.sandbox.run({"history": history, "code": call.payload}, self.timeout)
        meta = {"returncode": outcome.returncode, "timed_out": outcome.timed_out}
        if outcome.timed_out:
            text, ok = f"Execution timeout (exceeded {self.timeout:g}s)", False
        elif outcome.returncode == 0:
            raw, total = outcome.stdout.text("head")
            text, ok = raw.strip(), True
            text = truncate(text, self.result_max_chars, "head", len(text) if total == len(raw) else total)
        else:
            raw, total = outcome.stderr.text("tail")
            if raw.strip():
                text = raw.strip()
                text = truncate(text, self.result_max_chars, "tail", len(text) if total == len(raw) else total)
            elif outcome.returncode == 128 + signal.SIGXCPU or outcome.returncode == -signal.SIGXCPU:
                text = f"Execution stopped: CPU time limit ({int(self.timeout) + 1}s) exceeded"
            else:
                text = _describe_exit(outcome.returncode, self.cfg.sandbox)
            ok = False
        return ToolResult(text=text, ok=ok, seconds=outcome.seconds, meta={**meta, "start": start, "end": time.time()})
