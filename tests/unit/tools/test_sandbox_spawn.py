"""How the sandbox is started from a large process (a trainer holds gigabytes): as root it must still run
model code as nobody with no groups, and it must not fork the caller. A fork copies the caller's page tables
and leaves every page it writes afterwards to fault once; CPython forks instead of vforking whenever Popen is
asked to change the user, which is why privileges are dropped by an exec'd helper instead."""

from __future__ import annotations

import os
import resource

import pytest

from appo.tools.base import ToolCall

from .conftest import _python_tool

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when running as root")


@pytest.fixture(scope="module")
def tool():
    return _python_tool(timeout=8.0, memory_mb=256)


@root_only
def test_model_code_runs_as_nobody_with_no_groups(tool):
    code = "import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())"
    r = tool(ToolCall("python", code))
    assert r.ok and r.text == "65534 65534 65534 65534 []", r.text


def _faults_writing(buf: bytearray) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf[::4096] = b"\x02" * len(range(0, len(buf), 4096))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@root_only
def test_a_call_does_not_fork_the_caller(tool):
    buf = bytearray(256 << 20)
    buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))  # resident and writable: rewriting it costs no faults
    assert _faults_writing(buf) < 64
    r = tool(ToolCall("python", "print(6 * 7)"))
    assert r.ok and r.text == "42", r.text
    # After a fork each of the 65,536 pages faults on its next write (copy-on-write); after vfork or
    # posix_spawn none does.
    faults = _faults_writing(buf)
    assert faults < 64, f"writing 256 MB after one sandbox call took {faults} page faults: the call forked the caller"


@root_only
def test_without_setpriv_popen_still_drops_to_nobody(tool, monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "setpriv" else which(name, *a, **k))
    r = tool(ToolCall("python", "import os\nprint(os.getuid(), os.getgid(), os.getgroups())"))
    assert r.ok and r.text == "65534 65534 []", r.text
