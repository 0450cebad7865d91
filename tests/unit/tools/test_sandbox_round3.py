"""Regression tests for the sandbox causes of issue 25, each run as real code in the real bubblewrap sandbox:
writable mounts outside the size caps, kernel socket buffers outside the memory total, prlimit on the
supervisor, a forged replay signal, and replayed cells' output leaking into later results."""

from __future__ import annotations

import pytest

from appo.tools.base import ToolCall

from .conftest import _python_tool


def run(tool, code, history=()):
    return tool(ToolCall("python", code, tuple(history)))


@pytest.fixture(scope="module")
def small():
    return _python_tool(timeout=8.0, memory_mb=256, max_processes=8, max_tmp_files=2000, disk_mb=16)


# --- writable mounts --------------------------------------------------------------------------------------

WRITABLE_MOUNTS = """
rw = []
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    point, options, fstype = fields[4], fields[5].split(','), fields[fields.index('-') + 1]
    device_node = point.startswith('/dev/') and point != '/dev/shm'  # /dev/null and the like
    if 'rw' in options and fstype != 'proc' and not device_node:
        rw.append(point)
print(sorted(rw))
"""


def test_only_the_capped_tmpfs_mounts_are_writable(small):
    r = run(small, WRITABLE_MOUNTS)
    assert r.ok and r.text == "['/dev/shm', '/tmp']", r.text


@pytest.mark.parametrize("where", ["/", "/etc", "/usr/local", "/usr/local/lib", "/proc/self"])
def test_no_file_can_be_written_outside_tmp(small, where):
    code = (f"import os\npath = os.path.join({where!r}, 'hoard')\n"
            "try:\n    with open(path, 'wb') as f:\n        f.write(b'x' * (4 << 20))\n    print('wrote', path)\n"
            "except OSError as e:\n    print(type(e).__name__)")
    r = run(small, code)
    assert r.ok and not r.text.startswith("wrote"), r.text


def test_tmp_holds_no_more_than_disk_mb(small):
    code = ("chunk = b'x' * (1 << 20)\nwritten = 0\ntry:\n    with open('/tmp/big', 'wb') as f:\n"
            "        for _ in range(64):\n            f.write(chunk)\n            f.flush()\n            written += 1\n"
            "except OSError as e:\n    print(written, e.errno)")
    r = run(small, code)
    assert r.ok and int(r.text.split()[0]) <= 16, r.text


# --- socket buffers ---------------------------------------------------------------------------------------

LOOPBACK_HOARD = """
import socket
try:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(('127.0.0.1', 0))
    server.listen(4)
    client = socket.create_connection(server.getsockname())
    print('loopback connected')
except OSError as e:
    print('refused', type(e).__name__)
"""


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"])
def test_no_socket_but_unix_can_be_created(small, family):
    r = run(small, f"import socket\ntry:\n    socket.socket(socket.{family}, socket.SOCK_DGRAM)\n    print('created')\n"
                   "except OSError as e:\n    print('refused', type(e).__name__)")
    assert r.ok and r.text.startswith("refused"), r.text


def test_loopback_socket_buffers_cannot_be_filled(small):
    r = run(small, LOOPBACK_HOARD)
    assert r.ok and r.text.startswith("refused"), r.text


def test_unix_sockets_and_multiprocessing_still_work(small):
    code = ("import socket, multiprocessing as mp\na, b = socket.socketpair()\na.sendall(b'ping')\n"
            "print(b.recv(4).decode())\n"
            "with mp.get_context('fork').Pool(2) as pool:\n"
            "    print(sum(pool.map(abs, range(-9, 1))))")
    r = run(small, code)
    assert r.ok and r.text.split() == ["ping", "45"], r.text


# --- the supervisor's limits ------------------------------------------------------------------------------

@pytest.mark.parametrize("resource_name", ["RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_CPU", "RLIMIT_NPROC"])
def test_prlimit_on_the_supervisor_leaves_it_working(small, resource_name):
    code = (f"import resource\ntry:\n    resource.prlimit(1, resource.{resource_name}, (0, 0))\n    print('lowered')\n"
            "except OSError as e:\n    print(type(e).__name__)\nx = [0] * 10\nprint('still running')")
    r = run(small, code)
    assert r.ok and r.text.splitlines() == ["PermissionError", "still running"], r.text
    assert "Traceback" not in r.text and "sandbox_driver" not in r.text


def test_without_the_seccomp_filter_prlimit_on_the_supervisor_stops_the_call_cleanly():
    tool = _python_tool(timeout=8.0)
    tool.sandbox._seccomp = None  # other architectures run without it
    r = run(tool, "import resource, time\nresource.prlimit(1, resource.RLIMIT_NOFILE, (0, 0))\ntime.sleep(1)\n"
                  "print('finished')")
    assert not r.ok and "could no longer check" in r.text and "Traceback" not in r.text, r.text


# --- session replay ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session():
    return _python_tool(timeout=8.0, memory_mb=256, session=True)


def test_replayed_cells_subprocess_output_does_not_repeat(session):
    history = ["import subprocess\nsubprocess.run(['echo', 'from-history-subprocess'])",
               "import os\nos.write(1, b'from-history-fd\\n')\nos.write(2, b'history-stderr\\n')",
               "import os\nos.system('echo from-history-system')"]
    r = run(session, "print('now')", history)
    assert r.ok and r.text == "now", r.text


FORGER = """
import os
pipes = []
for name in os.listdir('/proc/self/fd'):
    try:
        if int(name) > 2 and os.readlink(f'/proc/self/fd/{name}').startswith('pipe:'):
            pipes.append(int(name))
    except OSError:
        pass  # the directory listing's own descriptor
for fd in pipes:
    os.set_inheritable(fd, True)
os.execv('/bin/sh', ['sh', '-c', ' '.join(f'printf 1 >&{fd};' for fd in pipes) + ' echo 4242 forged answer'])
"""


def test_an_earlier_cell_that_execs_a_forger_cannot_answer_for_the_later_cell(session):
    r = run(session, "print(6 * 7)", ["x = 1", FORGER])
    assert "forged" not in r.text, r.text



# --- the supervisor's poll ----------------------------------------------------------------------------------

# Eleven processes map one 8 KB tmpfs file 30,000 times each: ~2.7 GB of resident pages that are ~8 KB of
# memory, so every check needs the slow proportional (PSS) reading. Meanwhile four workers allocate 10 MB
# each per 5 ms and write an 'x' to stderr per 10 MB held.
STARVE = r"""
import os, time, ctypes
PAGE = 4096
for a in range(4):
    if os.fork() == 0:
        time.sleep(2.0)
        blocks = []
        for j in range(45):
            blocks.append(b'\x01' * (10 << 20))
            os.write(2, b'x')
            time.sleep(0.005)
        time.sleep(30)
        os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open('/dev/shm/block', os.O_RDWR | os.O_CREAT)
os.ftruncate(fd, 2 * PAGE)
for i in range(30000):
    ctypes.memset(libc.mmap(None, 2 * PAGE, 3, 1, fd, 0), 1, 2 * PAGE)
for k in range(10):
    if os.fork() == 0:
        time.sleep(30)
        os._exit(0)
time.sleep(8)
print('not stopped')
"""


def test_slow_checks_do_not_let_memory_run_past_the_budget():
    tool = _python_tool(timeout=14.0, memory_mb=512, max_processes=16, disk_mb=64)
    r = run(tool, STARVE)
    held_mb = 10 * r.text.count("x")
    assert not r.ok and "memory limit per call" in r.text, r.text[-300:]
    print(f"{held_mb} MB held at the kill")
    # Ten processes that each take a slow PSS read make a full check last a second under load: the check
    # must stop the call while it reads, not after (CI held 810 MB when it stopped only after).
    assert held_mb <= 704, f"{held_mb} MB were allocated before the kill (budget 512 MB)"
