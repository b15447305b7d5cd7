"""Sandbox workers: start, supervise, and talk to the processes that run artifact code.

Isolation levels (the strongest available is used; the server logs which):
  * "bwrap": bubblewrap namespaces (user, pid, net, ipc, uts, cgroup), a read-only view
    of only the interpreter and system libraries, an empty size-limited tmpfs, a cleared
    environment, seccomp forbidding new processes/threads, rlimits on memory, file size
    and open files, and a wall-clock timeout after which the worker is killed.
  * "process": a plain subprocess with the same rlimits - FOR DEVELOPMENT ONLY: it can
    read the server's files and reach the network.

A worker serves one call at a time and is dedicated to one artifact version (code from
one artifact never shares a process with another's). A few spare workers are kept warm
so a call does not pay for a process start. Workers are replaced after a crash, a
timeout, or `max_uses` calls. CPU time is measured from outside (/proc), so the code
cannot under-report it.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from server.sandbox import seccomp
from server.sandbox.worker import MAX_FRAME, write_frame

log = structlog.get_logger("sandbox")

WORKER_SOURCE = Path(__file__).with_name("worker.py")
_HEADER = struct.Struct(">I")


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


def detect_isolation(requested: str) -> str:
    have_bwrap = shutil.which("bwrap") is not None and seccomp.supported()
    if requested == "bwrap" and not have_bwrap:
        raise RuntimeError("sandbox.isolation = 'bwrap' but bubblewrap is not installed (apt install bubblewrap)")
    if requested == "auto":
        if have_bwrap and _bwrap_works():
            return "bwrap"
        return "process"
    return requested


def _bwrap_works() -> bool:
    try:
        r = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True, timeout=10)
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


class Worker:
    def __init__(self, settings: SandboxSettings, isolation: str) -> None:
        self.settings = settings
        self.isolation = isolation
        self.key: tuple[str, int] | None = None
        self.uses = 0
        self.pid: int | None = None
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
                "bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
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
    """Warm spares plus idle workers dedicated to artifact versions (LRU-bounded)."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.isolation = detect_isolation(settings.isolation)
        self._spares: list[Worker] = []
        self._idle: OrderedDict[tuple[str, int], Worker] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.started = 0
        self._spawner = threading.Thread(target=self._keep_spares, name="sandbox-spawner", daemon=True)
        self._spawner.start()

    def _keep_spares(self) -> None:
        while not self._closed:
            with self._lock:
                need = self.settings.spare_workers - len(self._spares)
            if need > 0:
                try:
                    w = Worker(self.settings, self.isolation)
                    self.started += 1
                except Exception as e:  # keep trying, but not in a hot loop
                    log.error("worker_start_failed", error=repr(e))
                    time.sleep(1.0)
                    continue
                with self._lock:
                    if self._closed:
                        w.kill()
                        return
                    self._spares.append(w)
                continue
            self._wake.wait(1.0)
            self._wake.clear()

    def acquire(self, key: tuple[str, int]) -> tuple[Worker, bool]:
        """A worker for this artifact version; `fresh` is True when code must be loaded."""
        with self._lock:
            w = self._idle.pop(key, None)
            if w is not None and w.alive():
                return w, False
            spare = self._spares.pop() if self._spares else None
        if w is not None:
            w.kill()
        self._wake.set()
        if spare is None or not spare.alive():
            if spare is not None:
                spare.kill()
            spare = Worker(self.settings, self.isolation)
            self.started += 1
        spare.key = key
        return spare, True

    def release(self, w: Worker, healthy: bool) -> None:
        w.uses += 1
        if not healthy or w.uses >= self.settings.max_uses or not w.alive() or self._closed:
            w.kill()
            return
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
