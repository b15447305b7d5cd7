"""Starts and supervises agent processes through pluggable backends.

  * docker  — one container per agent (Dockerfile.agent): no network, read-only rootfs, limits,
              all capabilities dropped, unprivileged user (agent_runtime/launcher/docker.py)
  * bwrap   — bubblewrap namespaces + cgroup limits, no Docker needed (bwrap.py)
  * process — plain subprocesses, DEVELOPMENT ONLY (process.py)
  * kubernetes — one Pod per agent on a cluster, with a Secret and a NetworkPolicy
              (kubernetes.py); only when asked by name, never chosen by auto
  * auto    — the strongest available of docker, bwrap, process; `Launcher.backend_name` says which

Images: `python -m agent_runtime.launcher.image ensure` (see image.py). This package never
imports the server.
"""

from agent_runtime.launcher.base import AgentLimits
from agent_runtime.launcher.supervisor import BACKENDS, AgentHandle, Launcher, make_backend

__all__ = ["AgentLimits", "AgentHandle", "BACKENDS", "Launcher", "make_backend"]
