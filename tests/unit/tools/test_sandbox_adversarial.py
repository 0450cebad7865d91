"""Hostile snippets against the real bubblewrap sandbox: each must be contained, return within its
wall-clock limit (plus a margin for process start-up on a loaded machine), and leave this process,
its files, its secrets and its listening sockets untouched."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from string import Template

import pytest

from appo.tools.base import ToolCall

REPO = Path(__file__).resolve().parents[3]
MARGIN_S = 3.0
SECRET = f"s3cr3t-{uuid.uuid4().hex}"
MARKER = f"appo-orphan-{uuid.uuid4().hex}"


def _has(*needles):
    return lambda r: all(n in r.text for n in needles)


def _failed_with(*needles):
    return lambda r: not r.ok and any(n in r.text for n in needles)


def _timed_out(r):
    return not r.ok and r.text.startswith("Execution timeout (exceeded 0.6s)")


# (id, tool fixture, code ($names are filled in from the test's context), check on the ToolResult)
CASES = [
    ("net-loopback-host-server", "sandboxed",
     "import socket\nsocket.create_connection(('127.0.0.1', $port), timeout=2)",
     _failed_with("ConnectionRefusedError", "Network is unreachable", "Address family not supported")),
    ("net-external", "sandboxed", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
     _failed_with("Network is unreachable", "OSError", "Address family not supported")),
    ("dns", "sandboxed", "import socket\nsocket.getaddrinfo('pypi.org', 443)", _failed_with("gaierror")),
    ("read-root-home", "sandboxed", "import os\nos.listdir('/root')", _failed_with("FileNotFoundError")),
    ("home-is-private", "sandboxed", "import os\nprint(os.path.expanduser('~'), os.listdir(os.path.expanduser('~')))",
     lambda r: r.ok and r.text == "/tmp/sandbox []"),
    ("read-repo", "sandboxed", "open('$repo/pyproject.toml').read()", _failed_with("FileNotFoundError")),
    ("read-work", "sandboxed", "import os\nos.listdir('/work')", _failed_with("FileNotFoundError")),
    ("find-venv", "sandboxed", "import os\nprint(os.path.exists('$venv_python'), os.path.exists('$repo'))",
     lambda r: r.ok and r.text == "False False"),
    ("env-secret", "sandboxed", "import os\nprint(dict(os.environ))",
     lambda r: r.ok and SECRET not in r.text and "APPO_TEST_SECRET" not in r.text),
    ("proc-environ-snoop", "sandboxed",
     "import os\nfor p in os.listdir('/proc'):\n    try: print(open(f'/proc/{p}/environ','rb').read())\n"
     "    except Exception: pass",
     lambda r: SECRET not in r.text),
    ("proc-host-pids", "sandboxed",
     "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]), os.path.exists('/proc/$host_pid'))",
     lambda r: r.ok and int(r.text.split()[0]) <= 4 and r.text.split()[1] == "False"),
    ("etc-shadow", "sandboxed", "print(open('/etc/shadow').read())", _failed_with("FileNotFoundError")),
    ("write-system-dir", "sandboxed", "open('/usr/lib/appo_pwned', 'w').write('x')",
     _failed_with("Read-only file system", "PermissionError")),
    ("write-tmp-is-private", "sandboxed", "open('/tmp/$marker', 'w').write('x')\nprint('wrote')",
     lambda r: r.ok and r.text == "wrote" and not Path("/tmp", MARKER).exists()),
    ("delete-host-file", "sandboxed", "import os\nos.remove('$sentinel')", _failed_with("FileNotFoundError")),
    ("symlink-escape", "sandboxed", "import os\nos.symlink('$repo', '/tmp/r')\nos.listdir('/tmp/r')",
     _failed_with("FileNotFoundError")),
    ("fork-bomb", "quick", "import os\nwhile True:\n    os.fork()", lambda r: not r.ok),
    ("memory-bomb", "sandboxed", "x = bytearray(4 << 30)", _failed_with("MemoryError")),
    ("memory-creep", "sandboxed", "chunks = []\nwhile True:\n    chunks.append(bytearray(10 << 20))",
     _failed_with("MemoryError")),
    ("infinite-loop", "quick", "while True:\n    pass", _timed_out),
    ("sleep", "quick", "import time\ntime.sleep(60)", _timed_out),
    ("huge-output", "sandboxed", "import sys\nfor _ in range(200):\n    sys.stdout.write('z' * 100_000)",
     lambda r: r.ok and len(r.text) <= 2000 and "truncated" in r.text and "20000000" in r.text),
    ("endless-output", "quick", "while True:\n    print('y' * 10_000)", _timed_out),
    ("spawn-shell", "sandboxed",
     "import subprocess\nprint(subprocess.run(['/bin/sh', '-c', 'id -u; cat $repo/pyproject.toml'], "
     "capture_output=True, text=True))",
     _has("65534", "No such file or directory")),
    ("kill-parent", "sandboxed", "import os\nos.kill(os.getppid(), 9)\nprint('still here')",
     lambda r: r.ok and r.text == "still here"),
    ("killpg-own-group", "sandboxed", "import os\nos.killpg(0, 9)", _failed_with("SIGKILL")),
    ("kill-everything", "sandboxed", "import os\nos.kill(-1, 9)", lambda r: not r.ok),
    ("ptrace-init", "sandboxed",
     "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())",
     lambda r: r.ok and r.text == "-1 1"),
    ("bpf-syscall", "sandboxed",
     "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.syscall(321, 0, 0, 0), ctypes.get_errno())",
     lambda r: r.ok and r.text == "-1 1"),
    ("nested-user-namespace", "sandboxed",
     "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000))",
     lambda r: r.ok and r.text == "-1"),
    ("mount", "sandboxed",
     "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))",
     lambda r: r.ok and r.text == "-1"),
    ("thread-bomb", "sandboxed",
     "import threading, time\nfor _ in range(1000):\n    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()",
     _failed_with("can't start new thread")),
    ("ignore-signals", "quick",
     "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass", _timed_out),
    ("raise-rlimit", "sandboxed",
     "import resource\nresource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
     _failed_with("not allowed to raise maximum limit")),
    ("ctypes-abort", "sandboxed", "import ctypes\nctypes.CDLL(None).abort()", _failed_with("SIGABRT")),
    ("write-devices", "sandboxed",
     "import os\nprint(sorted(set(os.listdir('/dev')) & {'sda', 'nvme0', 'mem', 'kmsg', 'nvidia0'}))\n"
     "open('/dev/sda', 'wb')", _failed_with("Read-only file system")),
    ("fill-dev-shm", "sandboxed", "i = 0\nwhile True:\n    open('/dev/shm/d%d' % i, 'wb').write(b'x' * (8 << 20))\n    i += 1",
     _failed_with("No space left on device")),
    ("many-open-files", "sandboxed", "files = [open('/tmp/f%d' % i, 'w') for i in range(10_000)]",
     _failed_with("Too many open files")),
    ("fill-disk", "sandboxed", "i = 0\nwhile True:\n    open('/tmp/d%d' % i, 'wb').write(b'x' * (8 << 20))\n    i += 1",
     _failed_with("No space left on device")),
    ("huge-file", "sandboxed", "open('/tmp/big', 'wb').write(b'x' * (64 << 20))", _failed_with("File too large")),
    ("orphan-outlives-call", "sandboxed",
     "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '$marker'])\n"
     "    os._exit(0)\nprint('parent exits')",
     lambda r: r.ok and r.text == "parent exits"),
    ("binary-and-unicode-output", "sandboxed",
     "import sys\nsys.stdout.buffer.write(bytes(range(256)))\nsys.stdout.flush()\nprint('pi ≈ 3.14 🎉')",
     lambda r: r.ok and "🎉" in r.text and "\ufffd" in r.text),
    ("stdin-is-closed", "sandboxed", "input()", _failed_with("EOFError")),
    ("sysfs-hidden", "sandboxed", "import os\nos.listdir('/sys')", _failed_with("FileNotFoundError")),
    ("usr-local-masked", "sandboxed", "import os\nprint(os.listdir('/usr/local'))", lambda r: r.ok and r.text == "[]"),
]


def _host_processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if marker.encode() in Path("/proc", pid, "cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("case_id, tool_name, code, check", CASES, ids=[c[0] for c in CASES])
def test_hostile_code_is_contained(case_id, tool_name, code, check, request, listener, tmp_path, monkeypatch):
    tool = request.getfixturevalue(tool_name)
    port, accepted = listener
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("intact")
    monkeypatch.setenv("APPO_TEST_SECRET", SECRET)
    source = Template(code).substitute(port=port, repo=REPO, venv_python=sys.executable, sentinel=sentinel,
                                       marker=MARKER, host_pid=os.getpid())
    started = time.monotonic()
    result = tool(ToolCall("python", source))
    elapsed = time.monotonic() - started
    assert check(result), f"{case_id}: ok={result.ok} text={result.text[:600]!r}"
    assert elapsed <= tool.timeout + MARGIN_S, f"{case_id} returned after {elapsed:.1f}s"
    # This process and what it owns are unharmed.
    assert sentinel.read_text() == "intact"
    assert accepted == [], "sandboxed code reached a host socket"
    assert _host_processes_with(MARKER) == [], "a process started by the sandbox outlived the call"

