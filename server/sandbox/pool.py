"""Sandbox workers: start, supervise, and talk to the processes that run artifact code.

Isolation levels (`sandbox.isolation`; the server logs the level it got, GetStats and
`ecology status` report it, server/sandbox/notice.py has the sentence for each):
  * "bwrap": bubblewrap namespaces (user, pid, net, ipc, uts, cgroup), a read-only view
    of only the interpreter and system libraries, an empty size-limited tmpfs, a cleared
    environment, seccomp forbidding new processes/threads and timers, rlimits on memory,
    file size and open files, and a wall-clock timeout after which the worker is killed.
  * "none": what `auto` resolves to when bubblewrap is not on PATH or does not work here
    (a real worker is started as a probe). No worker is ever started: user code and user
    contracts are refused with SANDBOX_UNAVAILABLE (server/sandbox/__init__.py).
  * "process": a plain subprocess with the same rlimits - NOT isolated (it can read the
    server's files and reach the network); only when the configuration names it, and the
    server warns at every start.
`bwrap` requested where it does not work stops the server at startup.

A worker serves one call at a time and is dedicated to one artifact version (code from
one artifact never shares a process with another's). A few spare workers are kept warm
so a call does not pay for a process start. Workers are replaced after a crash, a
timeout, or `max_uses` calls. CPU time is measured from outside (/proc), so the code
cannot under-report it.

User code never outlives its call: the worker resets hooks before it replies, seccomp
refuses timers, and an idle watchdog records each worker's CPU when it is released and
kills (and so replaces) a worker whose CPU grew by more than IDLE_CPU_SLACK while idle -
checked when it is acquired and every WATCHDOG_INTERVAL by the spawner thread, so a
worker spinning after its call dies within about a second.

Workers run at a lower CPU priority than the server (nice +WORKER_NICE relative to the
server: workers are started from threads at that nice value, so they are born with it,
and it is checked before any code is loaded), so busy user code cannot starve the
server's own threads on a small machine.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from server.sandbox import seccomp
from server.sandbox.notice import INSTALL_HINT
from server.sandbox.worker import MAX_FRAME, write_frame

log = structlog.get_logger("sandbox")

WORKER_SOURCE = Path(__file__).with_name("worker.py")
_HEADER = struct.Struct(">I")
WORKER_NICE = 10               # added to the server's own nice value
IDLE_CPU_SLACK = 0.01          # CPU seconds an idle worker may still use after its reply
WATCHDOG_INTERVAL = 0.5        # seconds between the spawner thread's idle checks


@dataclass(frozen=True)
class SandboxSettings:
    isolation: str = "auto"            # auto | bwrap | process
    timeout_seconds: float = 2.0       # wall clock per invocation (nested calls included)
    contract_timeout_seconds: float = 0.5
    memory_bytes: int = 256 * 1024 * 1024
    file_bytes: int = 1024 * 1024
    tmpfs_bytes: int = 8 * 1024 * 1024
    open_files: int = 32
    max_uses: int = 200
    spare_workers: int = 4
    max_idle_workers: int = 64


class WorkerError(Exception):
    """The worker failed: `reason` is TIMEOUT or EXECUTION_ERROR (crash)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def detect_isolation(requested: str, settings: SandboxSettings | None = None) -> str:
    """The isolation level for `requested` (auto | bwrap | process): "bwrap", "process"
    or "none".
    Raises RuntimeError (one line, naming the package) when bwrap is requested and
    cannot be had. bwrap is looked up with shutil.which on PATH (an operator can hide
    it) and must really work: a real worker is started and stopped as a probe."""
    settings = settings or SandboxSettings(isolation=requested)
    if requested == "process":
        return "process"
    problem = bwrap_problem(settings)
    if problem is None:
        return "bwrap"
    if requested == "bwrap":
        raise RuntimeError(f"sandbox.isolation = \"bwrap\" but {problem}: install it ({INSTALL_HINT}) "
                           "or let sandbox.isolation = \"auto\" refuse user code instead")
    log.warning("sandbox_unavailable", reason=problem, hint=INSTALL_HINT)
    return "none"


def bwrap_problem(settings: SandboxSettings) -> str | None:
    """Why the bubblewrap sandbox cannot be used here, or None when it works."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (no bwrap on PATH)"
    if not seccomp.supported():
        return f"the sandbox's seccomp filter does not support this machine ({os.uname().machine})"
    if not _bwrap_works():
        return "bubblewrap cannot create namespaces on this machine"
    try:
        Worker(settings, "bwrap").kill()
    except Exception as e:  # noqa: BLE001 - any failure means no sandbox
        return f"a bubblewrap sandbox worker failed to start ({e})"
    return None


def _bwrap_works() -> bool:
    try:
        r = subprocess.run([shutil.which("bwrap") or "bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"],
                           capture_output=True, timeout=10)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _interpreter_binds() -> list[str]:
    """Read-only binds: the interpreter's prefix and the system libraries it links."""
    paths = {Path(sys.base_prefix).resolve()}
    paths.add(Path(sys.executable).resolve().parent.parent)
    args: list[str] = []
    for p in sorted(paths):
        args += ["--ro-bind", str(p), str(p)]
    for lib in ("/usr/lib", "/usr/lib64", "/lib64"):
        if os.path.isdir(lib) and not os.path.islink(lib):
            args += ["--ro-bind", lib, lib]
    for lib in ("/lib", "/lib64"):
        if os.path.islink(lib):
            args += ["--symlink", os.readlink(lib), lib]
    return args


def worker_nice() -> int:
    """The nice value of sandbox workers: the server's (its main thread's) + WORKER_NICE."""
    return min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + WORKER_NICE)


def _lower_this_thread() -> None:
    """Thread initializer: nice is per thread on Linux and a forked child inherits its
    parent thread's, so workers started from this thread are born at worker_nice().
    (Not preexec_fn: it forces fork(), whose atfork handlers - gRPC's - can crash the
    child of a multi-threaded server.)"""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), worker_nice())
    except OSError as e:
        log.warning("sandbox_starter_priority", error=repr(e))


class Worker:
    def __init__(self, settings: SandboxSettings, isolation: str) -> None:
        if isolation not in ("bwrap", "process"):  # "none" runs nothing, ever
            raise WorkerError("SANDBOX_UNAVAILABLE", f"no sandbox worker at isolation {isolation!r}")
        self.settings = settings
        self.isolation = isolation
        self.key: tuple[str, int] | None = None
        self.uses = 0
        self.pid: int | None = None
        self.idle_cpu: float | None = None  # CPU seconds when last released (idle since)
        python = str(Path(sys.executable).resolve())
        limits = {
            "memory_bytes": settings.memory_bytes, "file_bytes": settings.file_bytes,
            "open_files": settings.open_files,
            "cpu_seconds_total": int(settings.timeout_seconds * settings.max_uses) + 10,
        }
        if isolation == "bwrap":
            filter_r, filter_w = os.pipe()
            info_r, info_w = os.pipe()
            os.write(filter_w, seccomp.no_new_processes())
            os.close(filter_w)
            argv = [
                shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
                "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                *_interpreter_binds(),
                "--ro-bind", str(WORKER_SOURCE), "/sandbox/worker.py",
                "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                "--size", str(settings.tmpfs_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp",
                # bwrap's own root and /dev are tmpfs without a size limit: read-only, so
                # the size-limited /tmp is the only writable place (tmpfs pages are not
                # counted in RLIMIT_AS: a writable / or /dev/shm would hold host RAM).
                "--remount-ro", "/",
                "--seccomp", str(filter_r), "--info-fd", str(info_w),
                python, "-I", "-S", "-B", "/sandbox/worker.py",
            ]
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, pass_fds=(filter_r, info_w),
                                         start_new_session=True, env={})
            os.close(filter_r)
            os.close(info_w)
            self._info_fd = info_r
        else:
            self._tmp = tempfile.mkdtemp(prefix="ecology-sandbox-")
            self.proc = subprocess.Popen(
                [python, "-I", "-S", "-B", str(WORKER_SOURCE)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                env={}, cwd=self._tmp)
            self._info_fd = None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._buf = b""
        deadline = time.monotonic() + 15
        write_frame(self._in, {"type": "hello", "limits": limits})
        ready = self._read(deadline)
        if ready.get("type") != "ready":
            self.kill()
            raise WorkerError("EXECUTION_ERROR", "sandbox worker failed to start")
        self.pid = self.proc.pid if self._info_fd is None else self._child_pid()
        self._lower_priority()

    def _lower_priority(self) -> None:
        """nice +WORKER_NICE relative to the server, before any user code is loaded (the
        worker cannot start processes or threads, so this covers all its code; an
        unprivileged process cannot lower its nice value again). The pool starts workers
        from threads already at that value (`_lower_this_thread`), so they are born with
        it; this makes sure."""
        try:
            target = worker_nice()
            if os.getpriority(os.PRIO_PROCESS, self.pid) != target:
                os.setpriority(os.PRIO_PROCESS, self.pid, target)
        except OSError as e:
            self.kill()
            raise WorkerError("EXECUTION_ERROR", f"could not lower the sandbox worker's priority: {e}") from None

    def spun_while_idle(self) -> float | None:
        """CPU seconds used since the worker was released, when more than IDLE_CPU_SLACK
        (its code kept running after the call returned), else None."""
        if self.idle_cpu is None:
            return None
        grown = self.cpu_seconds() - self.idle_cpu
        return grown if grown > IDLE_CPU_SLACK else None

    def _child_pid(self) -> int:
        import json

        data = b""
        while True:
            chunk = os.read(self._info_fd, 4096)
            if not chunk:
                break
            data += chunk
            try:
                pid = json.loads(data)["child-pid"]
                break
            except ValueError:
                continue
        os.close(self._info_fd)
        self._info_fd = None
        return int(pid)

    # -- framing with a deadline --------------------------------------------------------

    def _read(self, deadline: float) -> dict:
        import json

        while True:
            if len(self._buf) >= 4:
                (size,) = _HEADER.unpack(self._buf[:4])
                if size > MAX_FRAME:
                    raise WorkerError("EXECUTION_ERROR", "worker sent an oversized frame")
                if len(self._buf) >= 4 + size:
                    frame, self._buf = self._buf[4:4 + size], self._buf[4 + size:]
                    try:
                        msg = json.loads(frame)
                    except ValueError:
                        raise WorkerError("EXECUTION_ERROR", "worker sent a malformed frame") from None
                    if not isinstance(msg, dict):
                        raise WorkerError("EXECUTION_ERROR", "worker sent a malformed frame")
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError("TIMEOUT", "time limit exceeded")
            ready, _, _ = select.select([self._out], [], [], remaining)
            if not ready:
                raise WorkerError("TIMEOUT", "time limit exceeded")
            chunk = os.read(self._out, 65536)
            if not chunk:
                code = self.proc.poll()
                raise WorkerError("EXECUTION_ERROR", f"the code's process died (exit status {code})")
            self._buf += chunk

    def send(self, msg: dict) -> None:
        try:
            write_frame(self._in, msg)
        except (BrokenPipeError, OSError):
            raise WorkerError("EXECUTION_ERROR", "the code's process died") from None

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used, read by the kernel from /proc."""
        try:
            with open(f"/proc/{self.pid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                return 0.0

    def exchange(self, first: dict, deadline: float, on_request: Callable[[dict], dict]) -> dict:
        """Send `first`, serve the worker's requests until it answers done/error/loaded."""
        self.send(first)
        while True:
            msg = self._read(deadline)
            if msg.get("type") in ("invoke", "pay"):
                self.send(on_request(msg))
                continue
            return msg

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if self._info_fd is not None:
            os.close(self._info_fd)
            self._info_fd = None
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)


class WorkerPool:
    """Warm spares plus idle workers dedicated to artifact versions (LRU-bounded), and an
    idle watchdog (see the module docstring). Only for "bwrap" and "process": at "none"
    no pool exists, so no worker is ever started."""

    def __init__(self, settings: SandboxSettings, isolation: str) -> None:
        assert isolation in ("bwrap", "process"), isolation
        self.settings = settings
        self.isolation = isolation
        self._spares: list[Worker] = []
        self._idle: OrderedDict[tuple[str, int], Worker] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.started = 0
        self.killed_spinning = 0
        # Every worker process is started from one of these threads (at worker_nice()).
        self._starter = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-start",
                                           initializer=_lower_this_thread)
        self._spawner = threading.Thread(target=self._keep_spares, name="sandbox-spawner", daemon=True)
        self._spawner.start()

    def _keep_spares(self) -> None:
        next_check = time.monotonic() + WATCHDOG_INTERVAL
        while not self._closed:
            if time.monotonic() >= next_check:
                self.reap_spinning()
                next_check = time.monotonic() + WATCHDOG_INTERVAL
            with self._lock:
                need = self.settings.spare_workers - len(self._spares)
            if need > 0:
                try:
                    w = self._new_worker()
                except Exception as e:  # keep trying, but not in a hot loop
                    if self._closed:
                        return
                    log.error("worker_start_failed", error=repr(e))
                    time.sleep(1.0)
                    continue
                with self._lock:
                    if self._closed:
                        w.kill()
                        return
                    self._spares.append(w)
                continue
            self._wake.wait(max(0.0, next_check - time.monotonic()))
            self._wake.clear()

    def _new_worker(self) -> Worker:
        w = self._starter.submit(Worker, self.settings, self.isolation).result()
        self.started += 1
        return w

    def reap_spinning(self) -> int:
        """Kill idle workers whose CPU grew since their release (or that died). Returns
        how many were removed."""
        with self._lock:
            snapshot = [(k, w, w.uses) for k, w in self._idle.items()]
        bad = []
        for k, w, uses in snapshot:
            grown = w.spun_while_idle() if w.alive() else 0.0
            if grown is not None:
                bad.append((k, w, uses, grown))
        removed = []
        with self._lock:
            for k, w, uses, grown in bad:
                # Still idle and not used meanwhile (else acquire checks it itself).
                if self._idle.get(k) is w and w.uses == uses:
                    del self._idle[k]
                    removed.append((k, w, grown))
        for k, w, grown in removed:
            self._kill_spinning(w, grown)
        return len(removed)

    def _kill_spinning(self, w: Worker, grown: float) -> None:
        if grown:
            self.killed_spinning += 1
            log.warning("sandbox_worker_spun_while_idle", artifact_id=w.key[0] if w.key else None,
                        cpu_seconds=round(grown, 4))
        w.kill()

    def stats(self) -> dict[str, int]:
        """Worker counts for monitoring (server/metrics.py)."""
        with self._lock:
            return {"warm": len(self._spares), "idle": len(self._idle), "started": self.started,
                    "killed_spinning": self.killed_spinning}

    def acquire(self, key: tuple[str, int]) -> tuple[Worker, bool]:
        """A worker for this artifact version; `fresh` is True when code must be loaded."""
        with self._lock:
            w = self._idle.pop(key, None)
        if w is not None:
            grown = w.spun_while_idle() if w.alive() else 0.0
            if grown is None:
                return w, False
            self._kill_spinning(w, grown)
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        self._wake.set()
        if spare is None or not spare.alive():
            if spare is not None:
                spare.kill()
            spare = self._new_worker()
        spare.key = key
        return spare, True

    def release(self, w: Worker, healthy: bool) -> None:
        w.uses += 1
        if not healthy or w.uses >= self.settings.max_uses or not w.alive() or self._closed:
            w.kill()
            return
        w.idle_cpu = w.cpu_seconds()
        evicted = []
        with self._lock:
            old = self._idle.pop(w.key, None)
            if old is not None:
                evicted.append(old)
            self._idle[w.key] = w
            while len(self._idle) > self.settings.max_idle_workers:
                evicted.append(self._idle.popitem(last=False)[1])
        for e in evicted:
            e.kill()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        with self._lock:
            workers = self._spares + list(self._idle.values())
            self._spares, self._idle = [], OrderedDict()
        for w in workers:
            w.kill()
        self._starter.shutdown(wait=False, cancel_futures=True)
