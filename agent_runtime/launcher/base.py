"""What every backend shares: the agent's limits, the launch spec, and the instance interface."""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("launcher")

ROOT = Path(__file__).resolve().parents[2]          # the checkout holding agent_runtime/ and ecology/
AGENT_MODULE = "agent_runtime.run"
SOCKET_DIR_IN_SANDBOX = "/run/ecology"
TOKEN_IN_SANDBOX = "/run/secrets/ecology_token"
AGENT_IMAGE = "ecology-agent:latest"               # built by `python -m agent_runtime.launcher.image ensure`
AGENT_UID = 10001                                   # the image's `agent` user
AGENT_GID = 10001


def _parse_size(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
    if not m:
        raise ValueError(f"bad size {value!r} (use bytes or e.g. '256m')")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


@dataclass(frozen=True)
class AgentLimits:
    """Per-agent resource limits (from the agent's configuration)."""
    memory_bytes: int = 256 * 1024 * 1024   # hard; over it the agent is OOM-killed (and restarted)
    cpus: float = 0.5                        # share of one core (CFS quota)
    pids: int = 64                           # processes + threads
    tmpfs_bytes: int = 16 * 1024 * 1024      # the only writable place (/tmp)

    @classmethod
    def from_config(cls, config: dict | "AgentLimits" | None) -> "AgentLimits":
        """Accepts an AgentLimits, None (defaults), or a dict with any of memory_bytes /
        memory_mb / memory ("256m") / mem_limit, cpus / cpu / nano_cpus, pids / pids_limit,
        tmpfs_bytes / tmpfs_mb."""
        if isinstance(config, AgentLimits):
            return config
        c = dict(config or {})
        kw: dict[str, Any] = {}
        if "memory_bytes" in c:
            kw["memory_bytes"] = int(c["memory_bytes"])
        elif "memory_mb" in c:
            kw["memory_bytes"] = int(float(c["memory_mb"]) * 1024 * 1024)
        elif "memory" in c or "mem_limit" in c:
            kw["memory_bytes"] = _parse_size(c.get("memory", c.get("mem_limit")))
        if "cpus" in c or "cpu" in c:
            kw["cpus"] = float(c.get("cpus", c.get("cpu")))
        elif "nano_cpus" in c:
            kw["cpus"] = int(c["nano_cpus"]) / 1e9
        if "pids" in c or "pids_limit" in c:
            kw["pids"] = int(c.get("pids", c.get("pids_limit")))
        if "tmpfs_bytes" in c:
            kw["tmpfs_bytes"] = int(c["tmpfs_bytes"])
        elif "tmpfs_mb" in c:
            kw["tmpfs_bytes"] = int(float(c["tmpfs_mb"]) * 1024 * 1024)
        limits = cls(**kw)
        if limits.memory_bytes < 16 * 1024 * 1024 or limits.cpus <= 0 or limits.pids < 4:
            raise ValueError(f"limits too small: {limits}")
        return limits


@dataclass
class AgentSpec:
    agent_id: str
    token_file: Path                         # on the host; mounted read-only in sandboxes
    limits: AgentLimits
    server: str                              # "unix:/path" (or host:port for the process backend)
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None         # default: python -m agent_runtime.run

    def __post_init__(self) -> None:
        # Handed to a process with another working directory, a sandbox or a container:
        # only absolute paths mean the same thing there.
        self.token_file = Path(self.token_file).absolute()
        if self.server.startswith("unix:") and not self.server.startswith("unix:/"):
            self.server = "unix:" + os.path.abspath(self.server[5:])

    @property
    def socket_path(self) -> Path | None:
        return Path(self.server[5:]) if self.server.startswith("unix:") else None


class Instance:
    """One run of an agent (a process or a container). Restarts create new instances."""

    ident: str = ""                          # "pid 123" / "container abc123"

    def poll(self) -> int | None:
        """The exit status once it has ended, else None."""
        raise NotImplementedError

    def exit_reason(self) -> str:
        """Why it ended: "exit 1", "signal 9", "oom-killed" ..."""
        code = self.poll()
        if code is None:
            return "running"
        return f"signal {-code}" if code < 0 else f"exit {code}"

    def terminate(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def wait(self, timeout: float) -> int | None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Free what the run left behind (container, cgroup) once it has ended."""

    def output_tail(self, lines: int = 20) -> str:
        return ""

    def info(self) -> dict:
        return {}


class Backend:
    name = "?"
    isolated = True

    def spawn(self, spec: AgentSpec) -> Instance:
        raise NotImplementedError

    def refresh(self) -> None:
        """Called once per supervisor tick before the instances are polled."""

    def prepare_token_file(self, path: Path) -> None:
        os.chmod(path, 0o400)

    def release(self, agent_id: str) -> None:
        """The agent was stopped for good: free what its runs shared (kubernetes: its Secret and
        NetworkPolicy). Restarts do not call it."""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


def python_command() -> list[str]:
    return [sys.executable, "-m", AGENT_MODULE]


def ensure_socket_reachable(socket_path: Path, warned: set) -> None:
    """Let an unprivileged sandbox user reach the server's socket: search permission on its
    directory and read/write on the socket (unix-socket connect needs write permission).

    grpc creates the socket with the server's umask (0755 under the default umask), so it is
    re-checked on every tick: a restarted server recreates it. This grants nothing beyond
    speaking to the server, which authenticates every call by token."""
    try:
        d = socket_path.parent
        dmode = d.stat().st_mode
        if not dmode & stat.S_IXOTH:
            os.chmod(d, stat.S_IMODE(dmode) | stat.S_IXOTH)
            if d not in warned:
                warned.add(d)
                log.info("socket_dir_made_traversable", dir=str(d))
        st = socket_path.stat()
        if stat.S_ISSOCK(st.st_mode) and (st.st_mode & 0o006) != 0o006:
            os.chmod(socket_path, stat.S_IMODE(st.st_mode) | 0o006)
    except (FileNotFoundError, PermissionError):
        pass
