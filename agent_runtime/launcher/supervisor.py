"""The Launcher: starts agents through a backend and keeps them running.

A background thread polls every agent's current instance. When one ends without having been
asked to stop, it is restarted after a backoff (initial, doubled per consecutive failure,
capped; the count resets once a run lasted `stable_seconds`), and the restart is recorded
(count, last exit reason: "exit 1", "signal 9", "oom-killed" ...). An agent that exits 0 on its
own is finished and not restarted (policy "on-failure"; "always" restarts it too), and so is
one that exits with a status the entry point documents as permanent (2 usage, 3 unknown token,
4 its artifact was deleted: restarting cannot help; see agent_runtime/run.py). With
`max_failures`, an agent that failed that many times in a row (no run lasting
`stable_seconds` in between) is given up too. Both end in state "failed".

What happens to agents is also queued as events (`drain_events()`): "died" (restarting in
N s), "start_failed" (retrying in N s), "failed" (permanent, not restarted), "exited"
(ended 0 on its own) - each with the agent, the reason and the last lines of its output -
so a caller can show a failure the moment it happens. `can_run()` is False once every agent
has ended for good (nothing alive, nothing to restart).

Paths: the state directory (the token files handed to agents) and a unix socket address are
made absolute here, whatever the caller's working directory: agents run elsewhere (their own
directory, a sandbox, a container) and must not resolve them against theirs.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from agent_runtime.launcher.base import (
    AGENT_IMAGE, AgentLimits, AgentSpec, Backend, Instance, ensure_socket_reachable, log)

BACKENDS = ("auto", "docker", "bwrap", "process", "kubernetes")   # kubernetes: only by name, never auto
PERMANENT_EXIT_CODES = frozenset({2, 3, 4})
# What the agent entry point's permanent exit statuses mean (agent_runtime/run.py).
EXIT_MEANINGS = {2: "usage: no server address or no readable token",
                 3: "the server does not know its token (UNAUTHENTICATED)",
                 4: "its artifact was deleted"}


def fix_for(backend: str, why: str) -> str:
    """The command that would make a passed-over backend available (for the operator)."""
    if backend == "bwrap":
        return "apt-get install bubblewrap"
    if backend == "docker":
        if "SDK" in why:
            return "pip install docker"
        if "image" in why:
            return "python -m agent_runtime.launcher.image ensure"
        return ("install and start a Docker engine: apt-get install docker.io, then (as root) "
                "scripts/ensure_docker.sh")
    return ""


@dataclass
class AgentHandle:
    agent_id: str
    spec: AgentSpec
    instance: Instance | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0                 # consecutive, for the backoff
    next_start: float | None = None   # set while waiting out a backoff
    stopping: bool = False
    finished: bool = False            # exited 0 on its own, stopped, or failed for good
    failed: str | None = None         # why it was given up (permanent exit, too many failures)
    last_exit: str | None = None
    last_output: str = ""
    history: list[dict] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.instance is not None and self.instance.poll() is None


def _docker_backend(image: str, launcher_id: str, build: bool) -> tuple[Backend | None, str]:
    try:
        from agent_runtime.launcher import docker as docker_mod
    except ImportError as e:
        return None, f"the docker Python SDK is not installed ({e})"
    ok, why = docker_mod.available(image, build=build)
    if not ok:
        return None, why
    try:
        return docker_mod.DockerBackend(image, launcher_id), why
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def _bwrap_backend() -> tuple[Backend | None, str]:
    from agent_runtime.launcher import bwrap
    try:
        return bwrap.BwrapBackend(), "ok"
    except RuntimeError as e:
        return None, str(e)


def _kubernetes_backend(image: str, launcher_id: str, options: dict) -> tuple[Backend | None, str]:
    from agent_runtime.launcher import kubernetes as k8s_mod
    try:
        opts = dict(options)
        if image != AGENT_IMAGE:
            opts.setdefault("image", image)
        return k8s_mod.KubernetesBackend(launcher_id, **opts), "ok"
    except RuntimeError as e:
        return None, str(e)


def make_backend(name: str, image: str, launcher_id: str, build_image: bool = True,
                 options: dict | None = None) -> tuple[Backend, dict]:
    """The requested backend, or for "auto" the strongest that works: docker (daemon answers
    and the image exists or can be built), else bwrap, else process. Returns it with the
    reasons the stronger ones were passed over. "kubernetes" is never chosen by "auto" (it
    runs agents on a cluster, not on this host); `options` are its keyword arguments
    (namespace, image, runtime_class, server_labels, kubeconfig, context)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: one of {', '.join(BACKENDS)}")
    skipped: dict[str, str] = {}
    order = ["docker", "bwrap", "process"] if name == "auto" else [name]
    for candidate in order:
        if candidate == "docker":
            backend, why = _docker_backend(image, launcher_id, build_image)
        elif candidate == "bwrap":
            backend, why = _bwrap_backend()
        elif candidate == "kubernetes":
            backend, why = _kubernetes_backend(image, launcher_id, options or {})
        else:
            from agent_runtime.launcher.process import ProcessBackend
            backend, why = ProcessBackend(), "ok"
        if backend is not None:
            return backend, skipped
        skipped[candidate] = why
        if name != "auto":
            raise RuntimeError(f"backend {candidate!r} is not available: {why}")
    raise AssertionError("unreachable")


class Launcher:
    """Starts and supervises agent processes.

        launcher = Launcher(backend="auto", server_socket="unix:/run/ecology/world.sock")
        launcher.start("alice", token, {"memory_mb": 256, "cpus": 0.5, "pids": 64})
        launcher.status()          # [{agent_id, backend, alive, restarts, pid/container, ...}]
        launcher.stop_all(timeout=10)
    """

    def __init__(self, backend: str = "auto", server_socket: str | os.PathLike | None = None, *,
                 image: str = AGENT_IMAGE, state_dir: str | os.PathLike | None = None,
                 command: list[str] | None = None, env: dict[str, str] | None = None,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0, stable_seconds: float = 60.0,
                 restart: str = "on-failure", poll_interval: float = 0.25, build_image: bool = True,
                 max_failures: int | None = None, backend_options: dict | None = None) -> None:
        if server_socket is None:
            server_socket = os.environ.get("ECOLOGY_SERVER")
        if not server_socket:
            raise ValueError("server_socket is required (unix:PATH; host:port only for the process backend)")
        server_socket = str(server_socket)
        if server_socket.startswith("/"):
            server_socket = "unix:" + server_socket
        if server_socket.startswith("unix:") and not server_socket.startswith("unix:/"):
            server_socket = "unix:" + os.path.abspath(server_socket[5:])     # see the module docstring
        if backend == "kubernetes":        # Pods reach the server over TCP: refuse a unix socket early
            from agent_runtime.launcher.kubernetes import split_address
            split_address(server_socket)
        if restart not in ("on-failure", "always", "never"):
            raise ValueError("restart must be on-failure, always or never")
        self.server = server_socket
        self.command = command
        self.env = dict(env or {})
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_seconds = stable_seconds
        self.restart_policy = restart
        self.poll_interval = poll_interval
        self.max_failures = max_failures
        self.id = uuid.uuid4().hex[:12]
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="ecology-launcher-")).absolute()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.backend, skipped = make_backend(backend, image, self.id, build_image, backend_options)
        self.passed_over = skipped           # stronger backends not used: {name: why}
        self._image = image
        self.backend_name = self.backend.name
        self.isolated = self.backend.isolated
        (log.warning if not self.backend.isolated else log.info)(
            "launcher_backend", backend=self.backend_name, requested=backend,
            description=self.backend.describe(), passed_over=skipped or None)
        self._agents: dict[str, AgentHandle] = {}
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._socket_warned: set = set()
        self._events: collections.deque[dict] = collections.deque(maxlen=1000)
        self._thread = threading.Thread(target=self._supervise, name="launcher-supervisor", daemon=True)
        self._thread.start()

    # -- public API -------------------------------------------------------------------------

    def start(self, agent_id: str, token: str, limits: dict | AgentLimits | None = None, *,
              env: dict[str, str] | None = None, command: list[str] | None = None) -> AgentHandle:
        if not agent_id or "/" in agent_id or agent_id.startswith("."):
            raise ValueError(f"bad agent id {agent_id!r}")
        with self._lock:
            old = self._agents.get(agent_id)
            if old is not None and not old.finished:
                raise ValueError(f"agent {agent_id!r} is already running")
            adir = self.state_dir / agent_id
            adir.mkdir(exist_ok=True)
            os.chmod(adir, 0o700)
            token_file = adir / "token"
            if token_file.exists():
                token_file.unlink()
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token)
            self.backend.prepare_token_file(token_file)
            spec = AgentSpec(agent_id=agent_id, token_file=token_file, limits=AgentLimits.from_config(limits),
                             server=self.server, env={**self.env, **(env or {})},
                             command=command or self.command)
            handle = AgentHandle(agent_id, spec)
            self._agents[agent_id] = handle
            self._spawn(handle)
            return handle

    def stop(self, agent_id: str, timeout: float = 10.0) -> str | None:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit reason."""
        with self._lock:
            handle = self._agents.get(agent_id)
            if handle is None:
                raise KeyError(agent_id)
            handle.stopping = True
            handle.next_start = None
            inst = handle.instance
        reason = None
        if inst is not None:
            inst.terminate()
            if inst.wait(timeout) is None:
                inst.kill()
                inst.wait(5)
            reason = inst.exit_reason()
            handle.last_output = inst.output_tail()
            inst.cleanup()
        self.backend.release(agent_id)
        with self._lock:
            handle.finished = True
            handle.last_exit = reason or handle.last_exit
            log.info("agent_stopped", agent=agent_id, backend=self.backend_name, exit=reason)
        return reason

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every agent (in parallel: SIGTERM to all, then wait up to `timeout`)."""
        with self._lock:
            handles = [h for h in self._agents.values() if not h.finished]
            for h in handles:
                h.stopping = True
                h.next_start = None
        threads = [threading.Thread(target=self.stop, args=(h.agent_id, timeout), daemon=True) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 15)

    def close(self, timeout: float = 10.0) -> None:
        """stop_all, end the supervisor, remove the state directory (tokens) if we made it."""
        self.stop_all(timeout)
        self._stop_event.set()
        self._thread.join(5)
        self.backend.close()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def handle(self, agent_id: str) -> AgentHandle:
        return self._agents[agent_id]

    def stronger(self) -> list[dict]:
        """The backends stronger than the one in use, each with why it is not in use and
        the command that would change that: [{backend, why, fix}]. For a backend named
        explicitly the stronger ones are probed here (docker: engine and image, no build)."""
        order = ["docker", "bwrap", "process"]
        out = []
        if self.backend_name not in order:  # kubernetes: chosen by name, nothing here is stronger
            return out
        for name in order[:order.index(self.backend_name)]:
            why = self.passed_over.get(name)
            if why is None:
                if name == "docker":
                    try:
                        from agent_runtime.launcher import docker as docker_mod
                        ok, why = docker_mod.available(self._image, build=False)
                    except ImportError as e:
                        ok, why = False, f"the docker Python SDK is not installed ({e})"
                else:
                    from agent_runtime.launcher import bwrap
                    ok, why = bwrap.available()
                if ok:
                    out.append({"backend": name, "why": f"available but not requested ({why})",
                                "fix": "--backend auto"})
                    continue
            out.append({"backend": name, "why": why, "fix": fix_for(name, why)})
        return out

    def drain_events(self) -> list[dict]:
        """What happened to agents since the last call (see the module docstring):
        [{at, agent_id, kind, reason, output, restart_in?}]."""
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def can_run(self) -> bool:
        """True while some agent is alive or will be (re)started."""
        with self._lock:
            return any(not h.finished for h in self._agents.values())

    def output_tail(self, agent_id: str, lines: int = 20) -> str:
        """The last lines the agent's current (else last) run wrote."""
        h = self._agents[agent_id]
        inst = h.instance
        if inst is not None and not h.finished and h.next_start is None:
            try:
                return inst.output_tail(lines)
            except Exception:  # noqa: BLE001 - the backend's API may be gone at shutdown
                return ""
        return "\n".join(h.last_output.splitlines()[-lines:])

    def _event(self, h: AgentHandle, kind: str, reason: str, **extra) -> None:
        self._events.append({"at": time.time(), "agent_id": h.agent_id, "kind": kind, "reason": reason,
                             "output": "\n".join(h.last_output.splitlines()[-20:]), **extra})

    def status(self) -> list[dict]:
        out = []
        with self._lock:
            for h in self._agents.values():
                inst = h.instance
                row = {
                    "agent_id": h.agent_id,
                    "backend": self.backend_name,
                    "alive": bool(inst is not None and inst.poll() is None),
                    "restarts": h.restarts,
                    "last_exit": h.last_exit,
                    "failed": h.failed,
                    "state": ("failed" if h.failed else "stopped" if h.finished else "backoff" if h.next_start is not None
                              else "running" if inst is not None and inst.poll() is None else "starting"),
                    "uptime": round(time.monotonic() - h.started_at, 1) if inst is not None else 0.0,
                }
                if inst is not None:
                    row.update(inst.info())
                out.append(row)
        return out

    # -- supervision ------------------------------------------------------------------------

    def _spawn(self, handle: AgentHandle) -> None:
        try:
            handle.instance = self.backend.spawn(handle.spec)
        except Exception as e:
            handle.instance = None
            handle.failures += 1
            handle.last_exit = f"start failed: {type(e).__name__}: {str(e)[:200]}"
            delay = self._delay(handle)
            handle.next_start = time.monotonic() + delay
            log.error("agent_start_failed", agent=handle.agent_id, backend=self.backend_name,
                      error=handle.last_exit, retry_in=delay)
            if self.max_failures is not None and handle.failures >= self.max_failures:
                self._give_up(handle, f"{handle.last_exit}; gave up after {handle.failures} failures in a row")
            else:
                self._event(handle, "start_failed", handle.last_exit, restart_in=delay)
            return
        handle.started_at = time.monotonic()
        handle.next_start = None
        log.info("agent_started", agent=handle.agent_id, backend=self.backend_name,
                 instance=handle.instance.ident, restarts=handle.restarts)

    def _give_up(self, h: AgentHandle, why: str) -> None:
        h.finished = True
        h.next_start = None
        h.failed = why
        log.error("agent_failed", agent=h.agent_id, backend=self.backend_name, reason=why,
                  output=h.last_output[-500:])
        self._event(h, "failed", why)

    def _delay(self, handle: AgentHandle) -> float:
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, handle.failures - 1))

    def _supervise(self) -> None:
        while not self._stop_event.wait(self.poll_interval):
            try:
                self._tick()
            except Exception:
                log.exception("launcher_tick_failed")

    def _tick(self) -> None:
        sock = Path(self.server[5:]) if self.server.startswith("unix:") else None
        if sock is not None and self.backend.isolated:
            ensure_socket_reachable(sock, self._socket_warned)
        self.backend.refresh()
        now = time.monotonic()
        with self._lock:
            handles = list(self._agents.values())
        for h in handles:
            with self._lock:
                if h.finished or h.stopping:
                    continue
                if h.next_start is not None:
                    if now >= h.next_start:
                        h.restarts += 1
                        self._spawn(h)
                    continue
                inst = h.instance
                if inst is None:
                    continue
                code = inst.poll()
                if code is None:
                    if h.failures and now - h.started_at >= self.stable_seconds:
                        h.failures = 0
                    continue
                reason = inst.exit_reason()
                h.last_exit = reason
                h.last_output = inst.output_tail()
                ran = now - h.started_at
                h.history.append({"at": time.time(), "reason": reason, "ran_seconds": round(ran, 2)})
                del h.history[:-50]
                inst.cleanup()
                if code == 0 and self.restart_policy in ("on-failure", "never"):
                    h.finished = True
                    log.info("agent_exited", agent=h.agent_id, backend=self.backend_name, exit=reason)
                    self._event(h, "exited", reason)
                    continue
                if code in PERMANENT_EXIT_CODES and reason != "oom-killed":
                    self._give_up(h, f"{reason}: {EXIT_MEANINGS[code]}")
                    continue
                if self.restart_policy == "never":
                    self._give_up(h, f"{reason} (restart policy never)")
                    continue
                if ran >= self.stable_seconds:
                    h.failures = 0
                h.failures += 1
                if self.max_failures is not None and h.failures >= self.max_failures:
                    self._give_up(h, f"{reason}; gave up after {h.failures} failures in a row")
                    continue
                delay = self._delay(h)
                h.next_start = now + delay
                log.warning("agent_died", agent=h.agent_id, backend=self.backend_name, exit=reason,
                            ran_seconds=round(ran, 2), restart_in=delay, restarts=h.restarts,
                            output=h.last_output[-500:])
                self._event(h, "died", reason, restart_in=delay)
