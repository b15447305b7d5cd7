"""User code never outlives its call (issue 8.2), through a real server with the real
bubblewrap sandbox: timers cannot be armed (seccomp), a worker whose code keeps running
after its reply is killed by the pool's idle watchdog, and workers run at a lower CPU
priority than the server. CPU is read from /proc for the server's whole process tree.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, check_ledger, wait_until
from tests.test_sandbox_hostile import BWRAP
from tests.test_sandbox_unavailable import descendants, log_events

pytestmark = pytest.mark.skipif(not BWRAP, reason="needs a working bubblewrap (apt-get install bubblewrap)")

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONFIG = "[rate_limits]\nprincipal_rate = 10000.0\nprincipal_burst = 10000.0\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("lifetime") / "world", CONFIG).start()
    s.user = s.agent("timer_user", compute_capacity=10_000)
    yield s
    s.kill()


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (utime + stime, all threads) of `root` and each live descendant."""
    out = {}
    for pid in [root, *descendants(root)]:
        fields = _stat(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cores_used(root: int, seconds: float) -> float:
    """Average cores the process tree used over the next `seconds` (a process that
    appeared meanwhile counts whole; one that vanished cannot be counted)."""
    before, t0 = tree_cpu(root), time.monotonic()
    time.sleep(seconds)
    after, elapsed = tree_cpu(root), time.monotonic() - t0
    used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    return used / elapsed


SPIN_HANDLER = """
import ctypes, errno, os, signal

def spin(*_):
    while True:
        pass

def attempt(fn):
    try:
        r = fn()
        return {"armed": True, "result": repr(r)}
    except OSError as e:
        return {"armed": False, "errno": e.errno}

libc = ctypes.CDLL(None, use_errno=True)

def c_result(r):
    if r == -1:
        raise OSError(ctypes.get_errno(), "refused")
    return r
"""

TIMERS = {
    "setitimer_real": "signal.signal(signal.SIGALRM, spin)\n"
                      "    return attempt(lambda: signal.setitimer(signal.ITIMER_REAL, 0.05, 0.01))",
    "setitimer_virtual": "signal.signal(signal.SIGVTALRM, spin)\n"
                         "    return attempt(lambda: signal.setitimer(signal.ITIMER_VIRTUAL, 0.001, 0.001))",
    "setitimer_prof": "signal.signal(signal.SIGPROF, spin)\n"
                      "    return attempt(lambda: signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001))",
    # alarm() returns (unsigned) -1 when the syscall (or, on aarch64, setitimer) fails.
    "signal_alarm": "signal.signal(signal.SIGALRM, spin)\n"
                    "    r = signal.alarm(1)\n"
                    "    return {'armed': r != 2**32 - 1, 'errno': errno.EPERM if r == 2**32 - 1 else None}",
    "ctypes_alarm": "signal.signal(signal.SIGALRM, spin)\n"
                    "    return attempt(lambda: c_result(libc.alarm(1)))",
    "ctypes_setitimer": "signal.signal(signal.SIGALRM, spin)\n"
                        "    tv = (ctypes.c_long * 4)(0, 10000, 0, 50000)\n"
                        "    return attempt(lambda: c_result(libc.setitimer(0, tv, None)))",
    "ctypes_timer_create": "signal.signal(signal.SIGALRM, spin)\n"
                           "    tid = ctypes.c_void_p()\n"
                           "    return attempt(lambda: c_result(libc.timer_create(1, None, ctypes.byref(tid))))",
    "ctypes_timer_settime": "signal.signal(signal.SIGALRM, spin)\n"
                            "    spec = (ctypes.c_long * 4)(0, 10000000, 0, 50000000)\n"
                            "    return attempt(lambda: c_result(libc.syscall(SETTIME, 0, 0, spec, None)))",
    "ctypes_timerfd_create": "return attempt(lambda: c_result(libc.timerfd_create(1, 0)))",
    # Arming at load (the code's top level) is refused as well.
    "at_load": "return LOADED",
}


def tool_source(name: str) -> str:
    import platform

    settime = {"x86_64": 223, "aarch64": 110}[platform.machine()]
    top = ""
    if name == "at_load":
        top = ("signal.signal(signal.SIGALRM, spin)\n"
               "LOADED = attempt(lambda: signal.setitimer(signal.ITIMER_REAL, 0.05, 0.01))\n")
    return SPIN_HANDLER + f"SETTIME = {settime}\n" + top + "\ndef f():\n    " + TIMERS[name] + "\n"


def test_timers_cannot_outlive_their_call(world):
    assert len(TIMERS) == 10
    tools = {}
    for name in TIMERS:
        aid = f"timer_{name}_{uuid.uuid4().hex[:6]}"
        world.user.write(aid, tool_source(name), can_execute=True, interface=[{"name": "f"}])
        tools[name] = aid
    results = {name: world.user.invoke(aid, "f") for name, aid in tools.items()}  # every call returns
    returned = time.monotonic()
    for name, value in results.items():
        assert value["armed"] is False and value["errno"] == 1, (name, value)  # EPERM: seccomp
    time.sleep(max(0.0, returned + 0.8 - time.monotonic()))  # let the spawner refill its spares
    assert time.monotonic() - returned < 1.0
    used = cores_used(world.proc.pid, 2.0)
    print(f"timers: process tree used {used:.4f} cores over 2 s after the calls returned")
    assert used < 0.05, f"the server's process tree used {used:.3f} cores after the calls returned"
    check_ledger(world)


# The code rewrites the worker's own main loop (it shares the interpreter): once the
# reply is sent, the worker spins instead of waiting for the next call. Only the idle
# watchdog can stop that.
HIJACK = """
import sys

def f():
    def spin(fd):
        while True:
            pass
    sys.modules["__main__"].read_frame = spin
    return "bye"
"""


def test_a_worker_that_spins_after_its_call_is_killed(world):
    aid = "hijack_" + uuid.uuid4().hex[:8]
    world.user.write(aid, HIJACK, can_execute=True, interface=[{"name": "f"}])
    assert world.user.invoke(aid, "f") == "bye"
    returned = time.monotonic()

    def killed():
        return any(e.get("event") == "sandbox_worker_spun_while_idle" and e.get("artifact_id") == aid
                   for e in log_events(Path(world.log.name).read_text()))

    wait_until(killed, 10, "the watchdog to kill the spinning worker")
    killed_after = time.monotonic() - returned
    print(f"hijack: spinning worker killed {killed_after:.2f} s after its call returned")
    assert killed_after < 2.0, f"the spinning worker lived {killed_after:.2f} s after its call"
    time.sleep(0.5)  # the spawner refills its spares
    used = cores_used(world.proc.pid, 1.0)
    assert used < 0.05, f"the process tree still used {used:.3f} cores"
    assert world.user.invoke(aid, "f") == "bye"  # a fresh worker serves the next call
    # Called again soon after, the spinning worker is caught when it is acquired (or by
    # the watchdog, whichever comes first): the call gets a fresh worker, not a TIMEOUT.
    time.sleep(0.05)
    assert world.user.invoke(aid, "f") == "bye"
    check_ledger(world)


def test_workers_run_at_a_lower_priority_than_the_server(world):
    world.user.write("nice_probe", "import os\ndef f():\n    return os.nice(0)\n", can_execute=True,
                     interface=[{"name": "f"}])
    server_nice = int(_stat(world.proc.pid)[16])
    assert world.user.invoke("nice_probe", "f") == min(19, server_nice + 10)
    workers = []
    for pid in descendants(world.proc.pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "bwrap":
            workers.append(int(_stat(pid)[16]))
    assert workers and all(n == min(19, server_nice + 10) for n in workers), workers
