"""`docker` backend: one container per agent, through the Docker Python SDK.

Each container: the agent image (Dockerfile.agent), network_mode "none", a read-only root
filesystem with a small tmpfs /tmp, the server's socket directory bind-mounted read-write at
/run/ecology (nothing else of the host), the token as a read-only file at
/run/secrets/ecology_token, mem_limit (= memswap limit: no swap), nano_cpus and pids_limit from
the agent's limits, cap_drop ALL, no-new-privileges, the unprivileged `agent` user (10001).
Docker's own restart policy is off: the launcher's supervisor restarts with backoff and
records each restart (exit code, OOM kill).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import docker as docker_sdk
from docker.types import Mount

from agent_runtime.launcher.base import (
    AGENT_GID, AGENT_UID, SOCKET_DIR_IN_SANDBOX, TOKEN_IN_SANDBOX, AgentSpec, Backend, Instance, log)

LABEL = "ecology.agent"
LABEL_LAUNCHER = "ecology.launcher"
LABEL_LAUNCHER_PID = "ecology.launcher_pid"


def client(timeout: int = 60):
    c = docker_sdk.from_env(timeout=timeout)
    c.ping()
    return c


def available(image: str, build: bool = True) -> tuple[bool, str]:
    """(True, how) when a daemon answers and the image exists (or was just built)."""
    try:
        c = client(timeout=10)
    except Exception as e:                      # no daemon, no socket, no permission
        return False, f"no Docker engine answers ({type(e).__name__}: {str(e)[:120]})"
    try:
        from agent_runtime.launcher import image as image_mod
        try:
            img = c.images.get(image)
            current = (img.labels or {}).get("ecology.source_hash") == image_mod.source_hash()
            if current or not build:
                return True, f"image {image} present" + ("" if current else " (older than the agent code)")
        except docker_sdk.errors.ImageNotFound:
            if not build:
                return False, f"image {image} not built (python -m agent_runtime.launcher.image ensure)"
        try:
            t0 = time.monotonic()
            image_mod.ensure(tag=image)
            return True, f"image {image} built in {time.monotonic() - t0:.1f}s"
        except BaseException as e:              # SystemExit from the builder too
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            return False, f"image {image} could not be built: {lines[-1] if lines else type(e).__name__}"
    finally:
        c.close()


class DockerInstance(Instance):
    def __init__(self, backend: "DockerBackend", container) -> None:
        self.backend = backend
        self.container = container
        self.id = container.id
        self.ident = f"container {container.id[:12]}"
        self._state: dict | None = None

    def _load(self) -> dict | None:
        if self._state is None and self.id in self.backend.ended:
            try:
                self.container.reload()
                self._state = self.container.attrs["State"]
            except docker_sdk.errors.NotFound:
                self._state = {"ExitCode": -9, "OOMKilled": False, "Status": "removed"}
        return self._state

    def poll(self) -> int | None:
        st = self._load()
        return None if st is None else int(st.get("ExitCode", -1))

    def exit_reason(self) -> str:
        st = self._load()
        if st is None:
            return "running"
        if st.get("OOMKilled"):
            return "oom-killed"
        code = int(st.get("ExitCode", -1))
        return f"exit {code}" + (f" (signal {code - 128})" if code > 128 else "")

    def terminate(self) -> None:
        try:
            self.container.kill(signal="SIGTERM")
        except docker_sdk.errors.APIError:
            pass

    def kill(self) -> None:
        try:
            self.container.kill(signal="SIGKILL")
        except docker_sdk.errors.APIError:
            pass

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.container.reload()
            except docker_sdk.errors.NotFound:
                return -9
            if self.container.status in ("exited", "dead"):
                self.backend.ended.add(self.id)
                self._state = self.container.attrs["State"]
                return int(self._state.get("ExitCode", -1))
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def output_tail(self, lines: int = 20) -> str:
        try:
            return self.container.logs(tail=lines).decode(errors="replace")
        except docker_sdk.errors.APIError:
            return ""

    def cleanup(self) -> None:
        try:
            self.container.remove(force=True)
        except docker_sdk.errors.APIError:
            pass

    def info(self) -> dict:
        return {"container": self.id[:12]}


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, image: str, launcher_id: str, user: str = f"{AGENT_UID}:{AGENT_GID}") -> None:
        self.image = image
        self.user = user
        self.launcher_id = launcher_id
        self.client = client()
        self.client.images.get(image)           # raises ImageNotFound early
        self.ended: set[str] = set()
        self._remove_orphans()

    def describe(self) -> str:
        return f"docker (image {self.image}, network none, read-only rootfs, caps dropped)"

    def _remove_orphans(self) -> None:
        """Containers left by a launcher that died without stopping them."""
        for c in self.client.containers.list(all=True, filters={"label": LABEL_LAUNCHER}):
            pid = c.labels.get(LABEL_LAUNCHER_PID, "")
            alive = pid.isdigit() and os.path.exists(f"/proc/{pid}") and int(pid) != os.getpid()
            if not alive and c.labels.get(LABEL_LAUNCHER) != self.launcher_id:
                log.info("docker_orphan_removed", container=c.short_id, agent=c.labels.get(LABEL))
                try:
                    c.remove(force=True)
                except docker_sdk.errors.APIError:
                    pass

    def prepare_token_file(self, path: Path) -> None:
        # Bind-mounted as is: the container's unprivileged user must be able to read it.
        if os.geteuid() == 0:
            os.chown(path, AGENT_UID, AGENT_GID)
            os.chmod(path, 0o400)
        else:
            os.chmod(path, 0o444)               # its directory (0700) keeps other host users out

    def refresh(self) -> None:
        """One API call per tick for all of this launcher's containers: which have ended."""
        try:
            for c in self.client.containers.list(
                    all=True, filters={"label": f"{LABEL_LAUNCHER}={self.launcher_id}",
                                       "status": ["exited", "dead"]}):
                self.ended.add(c.id)
        except docker_sdk.errors.APIError as e:
            log.warning("docker_refresh_failed", error=str(e)[:200])

    def spawn(self, spec: AgentSpec) -> Instance:
        sock = spec.socket_path
        if sock is None:
            raise ValueError("the docker backend needs a unix socket server address (network_mode none)")
        limits = spec.limits
        env = {
            "ECOLOGY_SERVER": f"unix:{SOCKET_DIR_IN_SANDBOX}/{sock.name}",
            "ECOLOGY_TOKEN_FILE": TOKEN_IN_SANDBOX,
            "ECOLOGY_AGENT_ID": spec.agent_id,
            "ECOLOGY_ISOLATION": self.name,
            **spec.env,
        }
        kwargs = dict(
            image=self.image,
            name=f"ecology-agent-{spec.agent_id[:40]}-{uuid.uuid4().hex[:6]}".replace(":", "-"),
            detach=True,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs_bytes},mode=1777"},
            mounts=[Mount(SOCKET_DIR_IN_SANDBOX, str(sock.parent), type="bind", read_only=False),
                    Mount(TOKEN_IN_SANDBOX, str(spec.token_file), type="bind", read_only=True)],
            environment=env,
            user=self.user,
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ipc_mode="private",
            hostname="agent",
            labels={LABEL: spec.agent_id, LABEL_LAUNCHER: self.launcher_id,
                    LABEL_LAUNCHER_PID: str(os.getpid())},
            restart_policy={"Name": "no"},
            log_config={"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        )
        if spec.command:
            kwargs["entrypoint"] = spec.command[:1]
            kwargs["command"] = spec.command[1:]
        container = self.client.containers.run(**kwargs)
        return DockerInstance(self, container)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
