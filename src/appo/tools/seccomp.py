"""A seccomp blocklist for the sandbox, as a classic-BPF program that bwrap installs (`--seccomp FD`).

Namespaces already hide the host; this closes what is left inside them: ways to reach another process of
the sandbox (ptrace, process_vm_*, pidfd_open/pidfd_getfd, kcmp, process_madvise; the supervisor at pid 1
is also non-dumpable, see sandbox_driver.py), memory that no process's address space shows and so no
rlimit or supervisor check sees (memfd_create and memfd_secret buffers, System V shared memory, message
queues and semaphores, POSIX message queues), and kernel interfaces that are frequent sources of privilege
escalation (bpf, perf_event_open, userfaultfd, io_uring, keyrings, the mount API). Blocked calls fail with
EPERM. Only x86_64 is covered (the numbers are per architecture and only these were tested); other
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
_RET_EPERM = 0x00050000 | errno.EPERM
_NR_OFFSET, _ARCH_OFFSET = 0, 4   # struct seccomp_data


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def blocklist_program() -> bytes | None:
    """The filter for this machine, or None where it has no syscall table here."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    numbers = sorted(_BLOCKED_X86_64.values())
    n = len(numbers)
    # Layout: [0] load arch, [1] arch check, [2] load nr, [3] x32 check, [4 .. 4+n) one test per number,
    # [4+n] allow, [5+n] EPERM, [6+n] kill. Jump offsets count from the next instruction.
    prog = [_insn(_LD_W_ABS, 0, 0, _ARCH_OFFSET),
            _insn(_JEQ_K, 0, n + 4, _AUDIT_ARCH_X86_64),
            _insn(_LD_W_ABS, 0, 0, _NR_OFFSET),
            _insn(_JGE_K, n + 1, 0, _X32_SYSCALL_BIT)]
    for i, nr in enumerate(numbers):
        prog.append(_insn(_JEQ_K, n - i, 0, nr))
    prog += [_insn(_RET_K, 0, 0, _RET_ALLOW), _insn(_RET_K, 0, 0, _RET_EPERM),
             _insn(_RET_K, 0, 0, _RET_KILL_PROCESS)]
    return b"".join(prog)
