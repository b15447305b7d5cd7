"""A tiny seccomp-BPF program for sandbox workers: no new processes, threads or timers.

bubblewrap loads it (`--seccomp FD`) before starting the interpreter. These fail with
EPERM:
  * fork, vfork, clone, clone3: a fork bomb or a background thread is impossible
    (RLIMIT_NPROC would not do: it is not enforced when the server runs as root);
  * alarm, setitimer, timer_create, timer_settime, timerfd_create, timerfd_settime:
    nothing can arm a signal (or a timer fd) that would run the code's handler after
    its call returned - user code never outlives its call (aarch64 has no alarm
    syscall; glibc implements alarm() with setitimer there).
rt_sigaction stays allowed: the interpreter installs its handlers at startup. Foreign-ABI
syscalls (x32 on x86_64) and an unexpected architecture kill the process. What the
filter cannot stop (e.g. a finalizer that spins once the call is over) the pool's idle
watchdog does (server/sandbox/pool.py).
"""

from __future__ import annotations

import errno
import platform
import struct

# Syscall numbers and audit architecture per machine.
# x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: include/uapi/asm-generic/unistd.h
# (64-bit numbers).
_ARCHES = {
    "x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435,
                            "alarm": 37, "setitimer": 38, "timer_create": 222, "timer_settime": 223,
                            "timerfd_create": 283, "timerfd_settime": 286}),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435,
                             "setitimer": 103, "timer_create": 107, "timer_settime": 110,
                             "timerfd_create": 85, "timerfd_settime": 86}),
}

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL = 0x80000000
_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def supported() -> bool:
    return platform.machine() in _ARCHES


def no_new_processes() -> bytes:
    """The filter: no new processes, threads or timers (see the module docstring)."""
    arch, calls = _ARCHES[platform.machine()]
    blocked = sorted(calls.values())
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),          # A = seccomp_data.arch
        _insn(_JEQ_K, 1, 0, arch),          # expected arch? skip the kill
        _insn(_RET_K, 0, 0, _RET_KILL),
        _insn(_LD_W_ABS, 0, 0, 0),          # A = seccomp_data.nr
    ]
    if platform.machine() == "x86_64":
        prog += [_insn(_JGE_K, 0, 1, _X32_BIT), _insn(_RET_K, 0, 0, _RET_KILL)]
    n = len(blocked)
    for i, nr in enumerate(blocked):
        # On a match jump to the deny instruction after the allow.
        prog.append(_insn(_JEQ_K, n - i, 0, nr))
    prog.append(_insn(_RET_K, 0, 0, _RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))
    return b"".join(prog)
