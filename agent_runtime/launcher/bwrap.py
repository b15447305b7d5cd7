"""`bwrap` backend: the agent in a bubblewrap sandbox, without Docker.

  * namespaces: user, pid, net (no network at all: only loopback, nothing listening), ipc, uts,
    cgroup; the agent runs as uid/gid 65534 inside, pid 1 of its own pid namespace;
  * filesystem: a read-only view of only the interpreter's prefix, the environment's
    site-packages, the system libraries, and the project's agent_runtime/ and ecology/
    packages (at /app); the server's socket directory bound read-write at /run/ecology; the
    token file read-only at /run/secrets/ecology_token; a size-limited tmpfs /tmp; nothing
    else of the host (no /home, /etc, /root, data directories ...);
  * limits: a per-agent cgroup (memory without swap, pids, CPU quota) when cgroups are
    writable (root, or a delegated v2 subtree). Otherwise rlimits: RLIMIT_AS for memory,
    RLIMIT_NPROC for processes (NOT enforced for root, whose uid the sandbox maps to), and nice
    19 for CPU — weaker, and logged as such.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from agent_runtime.launcher import cgroups
from agent_runtime.launcher.base import (
    AGENT_MODULE, ROOT, SOCKET_DIR_IN_SANDBOX, TOKEN_IN_SANDBOX, AgentSpec, Backend, Instance, log)
from agent_runtime.launcher.process import _OutputTail

SANDBOX_UID = 65534


def available() -> tuple[bool, str]:
    if shutil.which("bwrap") is None:
        return False, "bubblewrap is not installed (apt install bubblewrap)"
    try:
        r = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap does not run: {e}"
    if r.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {r.stderr.decode(errors='replace').strip()}"
    return True, "ok"


def _ro_binds() -> list[str]:
    """The interpreter, the environment's packages, system libraries, the agent packages."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
             Path(sys.executable).resolve().parent.parent}
    args: list[str] = []
    for p in sorted(paths):
        args += ["--ro-bind", str(p), str(p)]
    for lib in ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib64"):
        if os.path.isdir(lib) and not os.path.islink(lib):
            args += ["--ro-bind", lib, lib]
    for lib in ("/lib", "/lib64", "/bin"):
        if os.path.islink(lib):
            args += ["--symlink", os.readlink(lib), lib]
    for pkg in ("agent_runtime", "ecology"):
        args += ["--ro-bind", str(ROOT / pkg), f"/app/{pkg}"]
    return args


class BwrapInstance(Instance):
    def __init__(self, argv: list[str], cg: cgroups.AgentCgroup | None, rlimits: dict, info_fd: int,
                 info_w: int) -> None:
        self.cg = cg
        procs = cg.procs_files if cg else []

        rl = {k: v for k, v in rlimits.items() if k != "_"}
        nice = "nice" in rlimits.get("_", ())

        def preexec_fn() -> None:
            if procs:
                cgroups.join_in_child(procs)
            for res, value in rl.items():
                resource.setrlimit(res, (value, value))
            if nice:
                os.nice(19)

        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, env={},
                                     pass_fds=(info_w,), preexec_fn=preexec_fn)
        os.close(info_w)
        self._out = _OutputTail(self.proc.stdout)
        self.child_pid = self._read_child_pid(info_fd)
        self.ident = f"pid {self.child_pid or self.proc.pid}"

    @staticmethod
    def _read_child_pid(fd: int) -> int | None:
        data = b""
        try:
            while True:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
                try:
                    return int(json.loads(data)["child-pid"])
                except ValueError:
                    continue
        finally:
            os.close(fd)
        return None

    def poll(self) -> int | None:
        return self.proc.poll()

    def exit_reason(self) -> str:
        code = self.poll()
        if code is not None and self.cg and self.cg.oom_killed():
            return "oom-killed"
        return super().exit_reason()

    def terminate(self) -> None:
        # SIGTERM goes to the agent itself (pid 1 of its namespace: it has a handler); bwrap
        # then exits with the agent's status.
        for pid in (self.child_pid,):
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass

    def kill(self) -> None:
        for target in (self.child_pid,):
            if target:
                try:
                    os.kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self) -> None:
        if self.cg:
            self.cg.remove()

    def output_tail(self, lines: int = 20) -> str:
        return self._out.tail(lines)

    def info(self) -> dict:
        return {"pid": self.child_pid, "bwrap_pid": self.proc.pid,
                "cgroup": str(next(iter(self.cg.dirs.values()))) if self.cg else None}


class BwrapBackend(Backend):
    name = "bwrap"

    def __init__(self) -> None:
        ok, why = available()
        if not ok:
            raise RuntimeError(why)
        self._binds = _ro_binds()
        self._cgroups_ok: bool | None = None

    def describe(self) -> str:
        how = "cgroup limits" if self._cgroups_ok else "rlimits (no writable cgroup)" \
            if self._cgroups_ok is False else "cgroup limits when writable"
        return f"bwrap (namespaces, no network, {how})"

    def prepare_token_file(self, path: Path) -> None:
        os.chmod(path, 0o400)     # the sandbox's uid maps to ours: owner-readable is enough

    def spawn(self, spec: AgentSpec) -> Instance:
        sock = spec.socket_path
        if sock is None:
            raise ValueError("the bwrap backend needs a unix socket server address (no network inside)")
        limits = spec.limits
        cg = cgroups.create(f"ecology-{spec.agent_id}-{uuid.uuid4().hex[:6]}", limits.memory_bytes,
                            limits.pids, limits.cpus)
        if self._cgroups_ok is None:
            self._cgroups_ok = cg is not None
            if cg is None:
                log.warning("bwrap_without_cgroups",
                            detail="memory via RLIMIT_AS, processes via RLIMIT_NPROC (not enforced "
                                   "for root), CPU via nice 19")
        rlimits: dict = {resource.RLIMIT_CORE: 0}
        if cg is None:
            rlimits[resource.RLIMIT_AS] = limits.memory_bytes
            rlimits[resource.RLIMIT_NPROC] = limits.pids
            rlimits["_"] = ("nice",)
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": "/app",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MALLOC_ARENA_MAX": "2",
            "HOME": "/tmp",
            "ECOLOGY_SERVER": f"unix:{SOCKET_DIR_IN_SANDBOX}/{sock.name}",
            "ECOLOGY_TOKEN_FILE": TOKEN_IN_SANDBOX,
            "ECOLOGY_AGENT_ID": spec.agent_id,
            "ECOLOGY_ISOLATION": self.name,
            **spec.env,
        }
        setenv: list[str] = []
        for k, v in env.items():
            setenv += ["--setenv", k, v]
        command = spec.command or [sys.executable, "-m", AGENT_MODULE]
        info_r, info_w = os.pipe()
        argv = [
            "bwrap", "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv",
            "--hostname", "agent", *setenv,
            # /tmp first: binds below it (a venv in /tmp) must land on top of the tmpfs.
            "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp",
            *self._binds,
            "--bind", str(sock.parent), SOCKET_DIR_IN_SANDBOX,
            "--ro-bind", str(spec.token_file), TOKEN_IN_SANDBOX,
            "--proc", "/proc", "--dev", "/dev",
            "--chdir", "/tmp",
            "--remount-ro", "/",
            "--info-fd", str(info_w),
            *command,
        ]
        try:
            return BwrapInstance(argv, cg, rlimits, info_r, info_w)
        except Exception:
            if cg:
                cg.remove()
            raise
