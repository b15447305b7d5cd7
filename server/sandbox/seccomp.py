"""A tiny seccomp-BPF program for sandbox workers: no new processes or threads.

bubblewrap loads it (`--seccomp FD`) before starting the interpreter. fork, vfork,
clone and clone3 fail with EPERM, so a fork bomb or a background thread is impossible;
foreign-ABI syscalls (x32 on x86_64) and an unexpected architecture kill the process.
RLIMIT_NPROC would not do: it is not enforced when the server runs as root.
"""

from __future__ import annotations

import errno
import platform
import struct

# Syscall numbers and audit architecture per machine.
_ARCHES = {
    "x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435}),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435}),
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
