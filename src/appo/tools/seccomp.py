"""A seccomp blocklist for the sandbox, as a classic-BPF program that bwrap installs (`--seccomp FD`).

Namespaces already hide the host; this closes what is left inside them: ways to reach another process of
the sandbox (ptrace, process_vm_*, pidfd_open/pidfd_getfd, kcmp, process_madvise; the supervisor at pid 1
is also non-dumpable, see sandbox_driver.py), memory that no process's address space shows and so no
rlimit or supervisor check sees (memfd_create and memfd_secret buffers, System V shared memory, message
queues and semaphores, POSIX message queues), and kernel interfaces that are frequent sources of privilege
escalation (bpf, perf_event_open, userfaultfd, io_uring, keyrings, the mount API). Blocked calls fail with
EPERM. Two calls are checked by argument: `socket`/`socketpair` only for AF_UNIX (the sandbox has no network,
and the kernel buffers of loopback TCP/UDP sockets are memory that no process's address space shows; others
fail with EAFNOSUPPORT), and `prlimit64` only on the calling process itself (pid 0), so that model code
cannot change the supervisor's limits. Only x86_64 is covered (the numbers are per architecture and only these were tested); other
machines run without the filter and say so once.
"""

from __future__ import annotations

import errno
import platform
import struct

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000

_BLOCKED_X86_64 = {
    "shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240, "kcmp": 312, "memfd_create": 319,
    "pidfd_open": 434, "pidfd_getfd": 438, "process_madvise": 440, "memfd_secret": 447,
    "ptrace": 101, "syslog": 103, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "pivot_root": 155, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_ERRNO = 0x00050000
_NR_OFFSET, _ARCH_OFFSET, _ARG0_OFFSET = 0, 4, 16   # struct seccomp_data; arg 0's low 32 bits (little-endian)
_SOCKET, _SOCKETPAIR, _PRLIMIT64 = 41, 53, 302
_AF_UNIX = 1


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _assemble(prog: list[tuple]) -> bytes:
    """(code, jt, jf, k) rows and ("label", name) markers -> bytes; jt/jf may name a label (jumps go
    forward only in classic BPF, so every label must follow its jumps)."""
    where, index = {}, 0
    for row in prog:
        if row[0] == "label":
            where[row[1]] = index
        else:
            index += 1
    out, index = [], 0
    for row in prog:
        if row[0] == "label":
            continue
        code, jt, jf, k = row
        jt = where[jt] - index - 1 if isinstance(jt, str) else jt
        jf = where[jf] - index - 1 if isinstance(jf, str) else jf
        out.append(_insn(code, jt, jf, k))
        index += 1
    return b"".join(out)


def blocklist_program() -> bytes | None:
    """The filter for this machine, or None where it has no syscall table here."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    prog: list[tuple] = [(_LD_W_ABS, 0, 0, _ARCH_OFFSET),
                         (_JEQ_K, 0, "kill", _AUDIT_ARCH_X86_64),
                         (_LD_W_ABS, 0, 0, _NR_OFFSET),
                         (_JGE_K, "kill", 0, _X32_SYSCALL_BIT),
                         (_JEQ_K, "socket", 0, _SOCKET),
                         (_JEQ_K, "socket", 0, _SOCKETPAIR),
                         (_JEQ_K, "prlimit", 0, _PRLIMIT64)]
    prog += [(_JEQ_K, "eperm", 0, nr) for nr in sorted(_BLOCKED_X86_64.values())]
    prog += [(_RET_K, 0, 0, _RET_ALLOW),
             ("label", "socket"), (_LD_W_ABS, 0, 0, _ARG0_OFFSET),
             (_JEQ_K, "allow", "eafnosupport", _AF_UNIX),
             ("label", "prlimit"), (_LD_W_ABS, 0, 0, _ARG0_OFFSET),
             (_JEQ_K, "allow", "eperm", 0),
             ("label", "allow"), (_RET_K, 0, 0, _RET_ALLOW),
             ("label", "eafnosupport"), (_RET_K, 0, 0, _RET_ERRNO | errno.EAFNOSUPPORT),
             ("label", "eperm"), (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
             ("label", "kill"), (_RET_K, 0, 0, _RET_KILL_PROCESS)]
    return _assemble(prog)
