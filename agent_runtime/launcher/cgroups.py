"""Per-agent cgroups for the bwrap backend (memory, pids, cpu), v1 or v2, when writable.

v2: one directory under the launcher's own cgroup with memory.max, pids.max, cpu.max (needs
the controllers enabled in the parent's cgroup.subtree_control). v1: one directory per
controller hierarchy (memory.limit_in_bytes + memsw when present, pids.max, cpu.cfs_quota_us).
A process joins by writing its pid to cgroup.procs — done in the child before exec, so every
descendant is inside from the start."""

from __future__ import annotations

import os
import time
from pathlib import Path

CG = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(",") or (controller == "" and ctrls == ""):
                return path
    except OSError:
        pass
    return None


class AgentCgroup:
    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs            # controller -> directory
        self.version = version

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        try:
            if self.version == 2:
                for line in (d / "memory.events").read_text().splitlines():
                    k, v = line.split()
                    if k == "oom_kill" and int(v) > 0:
                        return True
                return False
            for line in (d / "memory.oom_control").read_text().splitlines():
                k, v = line.split()
                if k == "oom_kill" and int(v) > 0:
                    return True
            return False
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        for d in set(self.dirs.values()):
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)     # processes still exiting


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def create(name: str, memory_bytes: int, pids: int, cpus: float) -> AgentCgroup | None:
    """A cgroup with these limits, or None when cgroups cannot be used here."""
    if (CG / "cgroup.controllers").exists():                        # unified (v2)
        own = _own_path("")
        if own is None:
            return None
        parent = CG / own.lstrip("/")
        d = parent / name
        try:
            d.mkdir(exist_ok=True)
        except OSError:
            return None
        ok = _write(d / "memory.max", str(memory_bytes)) and _write(d / "pids.max", str(pids))
        _write(d / "memory.swap.max", "0")
        _write(d / "cpu.max", f"{int(cpus * 100000)} 100000")
        if not ok:
            try:
                d.rmdir()
            except OSError:
                pass
            return None
        return AgentCgroup({"memory": d, "pids": d, "cpu": d}, 2)
    dirs: dict[str, Path] = {}
    for ctrl in ("memory", "pids", "cpu"):
        root = CG / ctrl
        own = _own_path(ctrl)
        if not root.is_dir() or own is None:
            continue
        d = root / own.lstrip("/") / name
        try:
            d.mkdir(exist_ok=True)
        except OSError:
            continue
        dirs[ctrl] = d
    if "memory" not in dirs or "pids" not in dirs:
        for d in dirs.values():
            try:
                d.rmdir()
            except OSError:
                pass
        return None
    m = dirs["memory"]
    ok = _write(m / "memory.limit_in_bytes", str(memory_bytes))
    _write(m / "memory.memsw.limit_in_bytes", str(memory_bytes))     # no swap beyond it, if accounted
    _write(m / "memory.swappiness", "0")
    ok = ok and _write(dirs["pids"] / "pids.max", str(pids))
    if "cpu" in dirs:
        _write(dirs["cpu"] / "cpu.cfs_period_us", "100000")
        _write(dirs["cpu"] / "cpu.cfs_quota_us", str(int(cpus * 100000)))
    cg = AgentCgroup(dirs, 1)
    if not ok:
        cg.remove()
        return None
    return cg


def join_in_child(procs_files: list[str]) -> None:
    """preexec_fn body: move the calling (child) process into the cgroup."""
    pid = str(os.getpid()).encode()
    for f in procs_files:
        fd = os.open(f, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
