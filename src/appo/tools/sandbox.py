"""Process isolation for model-written code.

Each call starts a fresh bubblewrap sandbox: new user, pid, network, ipc, uts and cgroup namespaces (so no
network, no view of host processes and a fixed host name), only the system directories bound read-only
(the repository, /work, /root, home directories and any venv are simply absent), a size-capped private
tmpfs as /tmp and /dev/shm and nothing else writable (the root, /etc and /usr/local are read-only), an empty environment, and, when the host runs as root, the uid/gid of `nobody`. The
in-sandbox driver is the sandbox's pid 1: it applies the resource limits, then runs model code in a child
that cannot reach it, and enforces what per-process limits cannot (memory and files of the call as a
whole; see sandbox_driver.py). The host enforces the wall-clock limit by killing the sandbox's process
group; the pid namespace takes every descendant (orphans included) down with it.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import platform
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from appo.tools.output import CappedBuffer
from appo.tools.seccomp import blocklist_program

log = logging.getLogger(__name__)

NOBODY = 65534
WORKDIR = "/tmp/sandbox"
HOSTNAME = "sandbox"
# How often the supervisor checks the call's total memory and file count: a call can exceed its budget by
# what it allocates in this time, and each check costs the sandbox a little CPU (docs/performance.md).
WATCH_INTERVAL_S = 0.01
INSTALL_HINT = "apt-get install -y bubblewrap"
DRIVER_SOURCE = (Path(__file__).parent / "sandbox_driver.py").read_text()

# Threaded math libraries would each try to start a thread per core and trip RLIMIT_NPROC.
_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TMPDIR": "/tmp",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}
# Host paths the interpreter needs besides /usr: the shared-library cache and Debian's alternatives
# symlinks (numpy's BLAS is reached through /etc/alternatives).
_ETC_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")
_UNSANDBOXED_WARNED = False


class SandboxUnavailable(RuntimeError):
    """The configured sandbox cannot run here; the message says how to fix it."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 512
    max_processes: int = 16
    max_file_mb: int = 16
    max_open_files: int = 64
    disk_mb: int = 64
    max_tmp_files: int = 10_000

    def rlimits(self, timeout: float) -> dict[str, int]:
        mb = 1 << 20
        return {
            "RLIMIT_AS": self.memory_mb * mb,
            "RLIMIT_CPU": int(timeout) + 1,
            "RLIMIT_NPROC": self.max_processes,
            "RLIMIT_FSIZE": self.max_file_mb * mb,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
            "RLIMIT_MSGQUEUE": 0,  # POSIX message queues hold kernel memory no address space shows
        }

    def watch(self) -> dict:
        """What the sandbox's supervisor enforces over all the call's processes together."""
        return {"memory_mb": self.memory_mb, "max_files": self.max_tmp_files, "interval": WATCH_INTERVAL_S}


@dataclass
class Outcome:
    returncode: int | None      # None when the call was killed at the wall-clock limit
    stdout: CappedBuffer
    stderr: CappedBuffer
    timed_out: bool
    seconds: float


def _system_binds(interpreter: str) -> list[str]:
    real = os.path.realpath(interpreter)
    args = ["--ro-bind", "/usr", "/usr"]
    if not real.startswith("/usr/local/"):
        # Host-installed tools and their configs stay out of sight, behind an empty read-only tmpfs.
        args += ["--size", "4096", "--tmpfs", "/usr/local", "--remount-ro", "/usr/local"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    if not real.startswith("/usr/"):
        # An interpreter installed elsewhere (e.g. a conda env): expose its installation prefix only.
        prefix = str(Path(real).parent.parent)
        args += ["--ro-bind", prefix, prefix]
    return args


def _drop_privileges() -> tuple[list[str], dict]:
    """As root, run as nobody: root-owned 0700 dirs become unreadable and RLIMIT_NPROC applies. Returns a
    command prefix and Popen keyword arguments.

    Why an exec'd `setpriv` rather than Popen(user=...): CPython forks, not vforks, when Popen changes the
    user, so every call would copy the caller's page tables (a trainer holds gigabytes) and leave each page
    it writes afterwards to fault once. Without util-linux's setpriv, Popen drops them itself."""
    if os.geteuid() != 0:
        return [], {}
    setpriv = shutil.which("setpriv", path=os.defpath)
    if setpriv:
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"], {}
    return [], {"user": NOBODY, "group": NOBODY, "extra_groups": []}


class Sandbox:
    """Runs the driver with one job under `mode` ('bwrap' or 'none') and returns its capped output."""

    def __init__(self, interpreter: str = "/usr/bin/python3", mode: str = "bwrap", limits: Limits = Limits(),
                 capture_bytes: int = 1 << 16):
        if mode not in ("bwrap", "none"):
            raise ValueError(f"sandbox mode '{mode}' is not valid; choose one of: bwrap, none")
        self.interpreter = interpreter
        self.mode = mode
        self.limits = limits
        self.capture_bytes = capture_bytes
        if mode == "bwrap":
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                raise SandboxUnavailable(
                    "the python tool needs bubblewrap (bwrap) to sandbox model code, and it is not installed: "
                    f"run `{INSTALL_HINT}`, or set tools.python.sandbox=none to run model code UNSANDBOXED")
            # --as-pid-1: the driver replaces bwrap's own init, which ran as the same uid as model code,
            # without limits, and could be taken over (its memory written, its exit status forged).
            self._prefix = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                            "--new-session", "--as-pid-1", "--hostname", HOSTNAME, "--clearenv",
                            *_system_binds(interpreter),
                            "--dev", "/dev", "--proc", "/proc",
                            # Everything writable is a size-capped tmpfs; /dev itself is then made read-only.
                            "--size", str(limits.disk_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                            "--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp",
                            "--dir", WORKDIR, "--chdir", WORKDIR,
                            # bwrap's root tmpfs (/, /etc, mount points) has no size cap: read-only, last.
                            "--remount-ro", "/"]
            for key, value in {**_ENV, "HOME": WORKDIR}.items():
                self._prefix += ["--setenv", key, value]
            self._seccomp = blocklist_program()
            if self._seccomp is None:
                log.warning("no seccomp filter for %s: the sandbox relies on namespaces and limits only",
                            platform.machine())
        else:
            _warn_unsandboxed()
            self._prefix, self._seccomp = [], None

    def command(self, seccomp_fd: int | None = None) -> list[str]:
        seccomp = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        return [*self._prefix, *seccomp, self.interpreter, "-I", "-c", DRIVER_SOURCE]

    def run(self, job: dict, timeout: float) -> Outcome:
        # marshal format 4 (dicts, lists, str, int) reads the same in every Python >= 3.4.
        job = {**job, "limits": self.limits.rlimits(timeout)}
        if self.mode == "bwrap":
            job["watch"] = self.limits.watch()  # unsandboxed, pid 1 and /proc are the host's: no supervisor
        payload = marshal.dumps(job, 4)
        start = time.monotonic()
        workdir = None
        kwargs: dict = {"env": {}}
        if self.mode == "none":
            workdir = tempfile.mkdtemp(prefix="appo-py-")
            if os.geteuid() == 0:
                os.chown(workdir, NOBODY, NOBODY)
            kwargs = {"env": {**_ENV, "HOME": workdir}, "cwd": workdir}
        seccomp_fd = None
        if self._seccomp:
            # bwrap reads the filter from this pipe; it fits the pipe buffer, so write it all up front.
            seccomp_fd, write_end = os.pipe()
            os.write(write_end, self._seccomp)
            os.close(write_end)
            kwargs["pass_fds"] = (seccomp_fd,)
        try:
            try:
                drop, drop_kwargs = _drop_privileges()
                proc = subprocess.Popen([*drop, *self.command(seccomp_fd)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                        close_fds=True, **drop_kwargs, **kwargs)
            finally:
                if seccomp_fd is not None:
                    os.close(seccomp_fd)
            out, err = CappedBuffer(self.capture_bytes), CappedBuffer(self.capture_bytes)
            try:
                timed_out = _pump(proc, payload, start + timeout, out, err)
            finally:
                _kill_group(proc)
                returncode = proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream and not stream.closed:
                        stream.close()
            return Outcome(None if timed_out else returncode, out, err, timed_out, time.monotonic() - start)
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def check(self) -> list[str]:
        """Run a trivial job; raise SandboxUnavailable with the reason if it fails, else return the
        scientific modules the interpreter lacks."""
        probe = ("import importlib.util as u\n"
                 "print(' '.join(m for m in ('numpy', 'sympy') if u.find_spec(m) is None))")
        outcome = self.run({"history": [], "code": probe}, timeout=30.0)
        if outcome.returncode != 0:
            detail = outcome.stderr.text("tail")[0].strip() or f"exit status {outcome.returncode}"
            hint = ""
            if "uid map" in detail or "namespace" in detail:
                hint = (" (unprivileged user namespaces look disabled: enable them with "
                        "`sysctl -w kernel.unprivileged_userns_clone=1` or `user.max_user_namespaces`)")
            raise SandboxUnavailable(f"the {self.mode} sandbox failed to run {self.interpreter}: {detail}{hint}")
        return outcome.stdout.text("head")[0].split()


def _warn_unsandboxed() -> None:
    global _UNSANDBOXED_WARNED
    if not _UNSANDBOXED_WARNED:
        _UNSANDBOXED_WARNED = True
        log.warning("!!! tools.python.sandbox=none: model-written code runs UNSANDBOXED on this machine, with "
                    "network access and read access to your files. Use it only with code you trust. !!!")


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid keeps the process group id reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _pump(proc: subprocess.Popen, payload: bytes, deadline: float, out: CappedBuffer, err: CappedBuffer) -> bool:
    """Feed stdin and read both pipes until EOF or the deadline; True when the deadline hit first."""
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    view, sent = memoryview(payload), 0
    stop, exited = deadline, False
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= stop:
                return not exited
            # Short slices so that a finished process whose orphans keep the pipes open is noticed.
            for key, _ in sel.select(min(stop - now, 0.1)):
                if key.fileobj is proc.stdin:
                    try:
                        sent += os.write(proc.stdin.fileno(), view[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        sent = len(view)
                    if sent >= len(view):
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fileobj.fileno(), 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
            if not exited and _exited(proc.pid):
                exited, stop = True, min(stop, time.monotonic() + 0.2)  # drain what is buffered, then stop
        # Both pipes are closed, but the process may still run (it closed them itself).
        while not _exited(proc.pid):
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.005)
        return False
    finally:
        sel.close()


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
