"""Runs inside the sandbox, under the sandbox's own interpreter (stdlib only, Python >= 3.8).

It reads one job (a marshal-encoded dict of plain types) from stdin: resource limits, earlier cells to
replay silently, and the cell to run.
Limits are set here, after the interpreter has started and before any model code runs, with soft = hard
so the code cannot raise them again; inside the sandbox's user namespace RLIMIT_NPROC then counts only
this call's processes and threads.

With a `watch` entry (the bwrap sandbox) this process is the sandbox's pid 1 (bwrap --as-pid-1) and model
code runs in a child it forks. The supervisor makes itself non-dumpable first: model code runs as the same
uid but without capabilities, so it can then neither open /proc/1/mem nor take the supervisor's file
descriptors, and signals it sends to pid 1 are dropped (pid 1 has no handlers). The supervisor reports the
child's exit status as its own and watches the call as a whole, which per-process rlimits cannot: the
memory all the call's processes hold together, and the number of files in its tmpfs mounts.
"""

import _ast  # the C node classes; the `ast` module itself costs start-up time on every call
import _signal  # not `signal`: its enum classes cost start-up time on every call
import marshal  # not json: importing json costs start-up time on every call (docs/performance.md)
import os
import resource
import sys
import time

_PR_SET_DUMPABLE = 4
_TMPFS = ("/tmp", "/dev/shm")


class _Discard:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


class _CellExited(BaseException):
    """Raised in place of os._exit while earlier cells are replayed, so one of them cannot end the call."""


def _set_limits(limits):
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _compile_cell(source):
    """Compile with the reference's convenience: a trailing bare expression (not a print call) is
    printed. The tree is edited in place so line numbers in tracebacks match what the model wrote."""
    tree = compile(source, "<string>", "exec", _ast.PyCF_ONLY_AST)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, _ast.Expr):
        value = last.value
        is_print = (isinstance(value, _ast.Call) and isinstance(value.func, _ast.Name)
                    and value.func.id == "print")
        if not is_print:
            loc = {k: getattr(last, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}
            func = _ast.Name(id="print", ctx=_ast.Load(), **loc)
            tree.body[-1] = _ast.Expr(value=_ast.Call(func=func, args=[value], keywords=[], **loc), **loc)
    return compile(tree, "<string>", "exec")


def _report(error, tb):
    """Print the traceback; `traceback` is imported only here, to keep start-up fast, so when the code
    has exhausted memory or file descriptors the import can fail: then the exception line still shows."""
    try:
        import traceback

        traceback.print_exception(type(error), error, tb)
    except BaseException:
        sys.stderr.write(f"{type(error).__name__}: {error}\n")


def _replay(history, namespace):
    import posix

    replaying, real_exit = os.getpid(), os._exit

    def exit_cell(status):
        if os.getpid() != replaying:  # a process the cell forked ends as it asked
            real_exit(status)
        raise _CellExited

    out, err = sys.stdout, sys.stderr
    os._exit = posix._exit = exit_cell
    # Silence the replay below Python too: what subprocesses, os.write(1, ...) or a program an earlier cell
    # execs write then goes nowhere instead of into this cell's result. The real descriptors are kept as
    # close-on-exec copies and put back afterwards.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    try:
        for cell in history:
            sys.stdout = sys.stderr = _Discard()
            try:
                exec(_compile_cell(cell), namespace)
            except (Exception, SystemExit, _CellExited):
                pass  # a replayed cell that fails now only loses its own variables
            finally:
                sys.stdout, sys.stderr = out, err
    finally:
        os._exit = posix._exit = real_exit
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _run(job, replayed_fd=None):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    _replay(job["history"], namespace)
    if replayed_fd is not None:
        os.write(replayed_fd, b"1")
        os.close(replayed_fd)
    try:
        code = _compile_cell(job["code"])
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte in the source
        _report(e, None)
        return 1
    try:
        exec(code, namespace)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        sys.stderr.write(f"{e.code}\n")  # as the interpreter does for sys.exit("message")
        return 1
    except BaseException as e:
        _report(e, e.__traceback__.tb_next)  # without this driver's own frame
        return 1
    return 0


def _exit(status):
    """End as interpreter shutdown would for the cell (non-daemon threads joined, atexit handlers run,
    output flushed) without then tearing every module down, which costs time on every call."""
    threading = sys.modules.get("threading")
    if threading is not None and hasattr(threading, "_shutdown"):
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = status or 120  # the interpreter's status when it cannot flush
    os._exit(status)


def _set_dumpable(libc, flag):
    if libc.prctl(_PR_SET_DUMPABLE, flag, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE) failed")


# Memory a process holds that is not a file's page cache: private, shared anonymous (mmap(-1, n), which a
# fork can share), tmpfs pages it maps, and what of these is swapped out.
_HELD = (b"RssAnon:", b"RssShmem:", b"VmSwap:")
_HELD_PROPORTIONAL = (b"Pss_Anon:", b"Pss_Shmem:", b"SwapPss:")


def _sum_fields(path, names):
    """(sum in bytes of the `names` lines, values in kB; whether the first of them was there, as kernels add
    these fields over time; whether the file had any line at all) of a /proc status-like file."""
    total, seen, lines = 0, False, False
    with open(path, "rb") as f:
        for line in f:
            lines = True
            if line.startswith(names):
                total += int(line.split()[1]) << 10
                seen = seen or line.startswith(names[0])
    return total, seen, lines


def _held_fields(pid):
    """(RssAnon, RssShmem, VmSwap) of a process in bytes, zeros once it has exited; O(1) for the kernel."""
    values = [0, 0, 0]
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                for i, name in enumerate(_HELD):
                    if line.startswith(name):
                        values[i] = int(line.split()[1]) << 10
    except (OSError, IndexError, ValueError):
        pass  # the process has just exited
    return tuple(values)


def _resident_bytes(pids):
    """The processes' resident sets: a cheap bound on what they hold while the machine has no swap."""
    pages = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                pages += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # the process has just exited
    return pages * resource.getpagesize()


def _proportional_held(pid, plain):
    """What the process holds with shared pages split among their sharers (PSS). Costs time in proportion
    to the pages it maps, which model code can make large."""
    try:
        split, seen, lines = _sum_fields(f"/proc/{pid}/smaps_rollup", _HELD_PROPORTIONAL)
    except PermissionError:
        return plain  # it made itself non-dumpable: no PSS, count it all
    except (OSError, IndexError, ValueError):
        return 0  # it is exiting: its memory is being freed
    if not lines:
        return 0  # exiting as well
    return split if seen else plain  # a kernel before 5.10, without Pss_Anon


def _private(fields):
    """What of (RssAnon, RssShmem, VmSwap) only this process's own allocations can raise: anonymous pages,
    resident or swapped. A rise in RssShmem may be a page some other process already holds."""
    return fields[0] + fields[2]


class _MemoryWatch:
    """Whether the call's processes together hold more than `budget` bytes.

    A full check splits shared pages among their sharers (PSS), which is slow when processes map many
    pages: model code can make it take a second. So a full check is followed by a back-off (4x its
    duration, under ~20% of a core), and in between every poll still reads each process's held fields,
    O(1) each: a rise of any field over the lowest value seen since the full check counts as new memory
    (frees are credited only by the next full check), and once the last total plus that growth passes the
    budget a full check runs at once, reading the processes that grew first.

    A full check itself must not open a window either: between its slow reads it re-reads every process's
    O(1) fields, and stops the call once the PSS read so far plus the anonymous memory allocated since
    (a lower bound on what the call holds, so this never stops a call under its budget) passes the budget.
    """

    def __init__(self, budget, swap):
        self.budget, self.swap = budget, swap
        self.base = None   # the held total at the last full check (None: none since a cheap all-clear)
        self.low = {}      # pid -> lowest (anon, shmem, swap) seen since then
        self.next_full = 0.0

    def over(self, pids):
        if not self.swap and _resident_bytes(pids) <= self.budget:
            self.base = None
            return False
        now = {pid: _held_fields(pid) for pid in pids}
        growth = {}
        for pid, fields in now.items():
            low = self.low.get(pid, (0, 0, 0))
            self.low[pid] = tuple(min(a, b) for a, b in zip(low, fields))
            growth[pid] = sum(f - m for f, m in zip(fields, self.low[pid]))
        started = time.monotonic()
        if self.base is not None and started < self.next_full and self.base + sum(growth.values()) <= self.budget:
            return False
        total, seen = sum(sum(fields) for fields in now.values()), now
        if total > self.budget:
            total, seen = self._full_check(now, growth)
            if total is None:
                return True
        self.base, self.low = total, seen
        self.next_full = time.monotonic() + 4 * (time.monotonic() - started)
        return False

    def _full_check(self, now, growth):
        """(The call's PSS total and each process's fields as of its read), or (None, None) once it is
        sure the call holds more than the budget."""
        total, seen, read = 0, dict(now), set()
        refreshed = time.monotonic()
        for pid in sorted(now, key=lambda p: -growth[p]):
            held = _proportional_held(pid, sum(now[pid]))
            seen[pid] = _held_fields(pid)  # after the read: what it allocates from here on is new
            total += held
            read.add(pid)
            if total > self.budget:
                return None, None
            if time.monotonic() - refreshed < 0.005:
                continue  # cheap reads so far: nothing could have grown much
            refreshed = time.monotonic()
            current = {p: _held_fields(p) for p in now}
            since = sum(_private(current[p]) - _private(seen[p]) for p in read)
            since += sum(max(0, _private(current[p]) - _private(now[p])) for p in now if p not in read)
            if total + since > self.budget:
                return None, None
        return total, seen


def _files():
    used = 0
    for mount in _TMPFS:
        st = os.statvfs(mount)
        used += st.f_files - st.f_ffree
    return used


def _swap_enabled():
    try:
        with open("/proc/swaps", "rb") as f:
            return len(f.read().splitlines()) > 1  # a header, then one line per swap area
    except OSError:
        return True  # unknown: take the exact path


def _over_limit(watch, me, baseline_files, memory):
    """A message naming the limit the call as a whole has passed, or None. This is the sandbox's pid
    namespace, so /proc lists the call's processes only."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    if memory.over(pids):
        return (f"MemoryError: the call's processes together held more than {watch['memory_mb']} MB "
                "(the memory limit per call)")
    if _files() - baseline_files > watch["max_files"]:
        return (f"OSError: the call created more than {watch['max_files']} files in /tmp and /dev/shm "
                "(the file limit per call)")
    return None


def _describe(status):
    if os.WIFSIGNALED(status):
        import signal

        try:
            return "killed by " + signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _supervise(job):
    """Fork the process that runs the code; in the supervisor, watch it and exit with its status.
    Returns only in the child, with the fd on which it says that the replay is done (or None)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    _set_dumpable(libc, 0)
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # Python's handler would let the code interrupt pid 1
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGCHLD})
    replay_pipe = os.pipe() if job["history"] else None
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGCHLD})
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        _set_dumpable(libc, 1)  # so the supervisor may read its memory use
        if replay_pipe:
            os.close(replay_pipe[0])
            return replay_pipe[1]
        return None
    me, watch, baseline_files = os.getpid(), job["watch"], _files()
    memory = _MemoryWatch(watch["memory_mb"] << 20, _swap_enabled())
    if replay_pipe:
        os.close(replay_pipe[1])
        os.set_blocking(replay_pipe[0], False)
    status, message = None, None
    while status is None:
        _signal.sigtimedwait({_signal.SIGCHLD}, watch["interval"])
        status = _reap(child)
        if status is None:
            try:
                message = _over_limit(watch, me, baseline_files, memory)
            except (OSError, MemoryError):  # its own limits lowered (prlimit, where seccomp does not stop it)
                message = ("Error: the sandbox could no longer check this call's limits (its supervisor's "
                           "resources were taken), so the call was stopped")
            if message:
                os.kill(-1, _signal.SIGKILL)  # every process here but this one
                while status is None:
                    status = _reap(child, block=True)
    if message is None and replay_pipe and not _read_ready(replay_pipe[0]):
        message = (f"Error: replaying the session's earlier cells ended the process ({_describe(status)}), "
                   "so this cell did not run; an earlier cell exits or kills its own process")
    if message:
        os.write(2, message.encode() + b"\n")
        os._exit(1)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


def _reap(child, block=False):
    """Reap every exited process (orphans are re-parented here); the child's wait status once it exited."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block and found is None else os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


def _read_ready(fd):
    try:
        return os.read(fd, 1) == b"1"
    except BlockingIOError:
        return False


def main():
    job = marshal.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # noqa: SIM115 -- stays open for the cell: input() sees EOF
    _set_limits(job["limits"])
    if "watch" in job and os.getpid() != 1:
        # The supervisor reads /proc and kills with kill(-1): both mean "this call" only in its own pid
        # namespace. Anywhere else they would mean every process of the machine.
        sys.exit("sandbox driver: a supervised job must run as pid 1 of its own pid namespace")
    replayed_fd = _supervise(job) if "watch" in job else None
    _exit(_run(job, replayed_fd))


if __name__ == "__main__":
    main()
