"""`process` backend: plain subprocesses — FOR DEVELOPMENT ONLY.

No isolation at all: the agent can read the host's files and reach the network. It exists so
the system runs where neither Docker nor bubblewrap is available; logs and status name it
"process (development only, no isolation)"."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading

from agent_runtime.launcher.base import ROOT, AgentSpec, Backend, Instance, python_command


class _OutputTail:
    """Keeps the last lines a child wrote (stdout+stderr), read by a daemon thread."""

    def __init__(self, stream, keep: int = 200) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        stream.close()

    def tail(self, n: int) -> str:
        return "\n".join(list(self.lines)[-n:])


class ProcessInstance(Instance):
    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, preexec=None) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=preexec)
        self.pid = self.proc.pid
        self.ident = f"pid {self.pid}"
        self._out = _OutputTail(self.proc.stdout)

    def poll(self) -> int | None:
        return self.proc.poll()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output_tail(self, lines: int = 20) -> str:
        return self._out.tail(lines)

    def info(self) -> dict:
        return {"pid": self.pid}


class ProcessBackend(Backend):
    name = "process"
    isolated = False

    def describe(self) -> str:
        return "process (development only, no isolation)"

    def spawn(self, spec: AgentSpec) -> Instance:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "ECOLOGY_SERVER": spec.server,
            "ECOLOGY_TOKEN_FILE": str(spec.token_file),
            "ECOLOGY_AGENT_ID": spec.agent_id,
            "ECOLOGY_ISOLATION": self.name,
            **spec.env,
        }
        return ProcessInstance(spec.command or python_command(), env, cwd=str(spec.token_file.parent))
