"""`ecology run` as an operator starts it: from another working directory with a relative
--data-dir, on every backend; agent failures shown on the console the moment they happen;
the run stops (non-zero) when no agent can run; the summary's figures are right.

Every backend is available on the machines this project is developed and tested on
(bubblewrap, a Docker engine with the local agent image): these tests do not skip."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Job:
    """`python -m server.cli run ...` in `cwd`, its output lines collected with the time
    each arrived."""

    def __init__(self, cwd: Path, *args: str, env: dict | None = None) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "run", "--no-dashboard", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def wait(self, timeout: float = 240) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for t in self._readers:
            t.join(10)
        self.stderr = "".join(self._err)
        self.elapsed = time.monotonic() - self.started
        return self.proc.returncode

    @property
    def stdout(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, needle: str) -> tuple[float, str] | None:
        return next(((t, line) for t, line in self.lines if needle in line), None)

    def summary(self) -> dict:
        lines = [line for _, line in self.lines if line.startswith("SUMMARY ")]
        assert lines, self.stdout + self.stderr
        return json.loads(lines[-1][len("SUMMARY "):])


def events_by_principal(data: Path) -> dict[str, int]:
    """Counted from the server's own record (its database, read-only, after the run)."""
    conn = sqlite3.connect(f"file:{data / 'world.sqlite3'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT principal_id, COUNT(*) FROM events GROUP BY principal_id"))
    finally:
        conn.close()


@pytest.mark.parametrize("backend", ["process", "bwrap", "docker"])
def test_run_from_another_directory_with_a_relative_data_dir(backend, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    job = Job(cwd, "--agents", "2", "--duration", "14", "--backend", backend, "--data-dir", "./data")
    rc = job.wait()
    out = job.stdout
    assert rc == 0, out + job.stderr
    s = job.summary()
    assert s["backend"] == backend and s["ok"] and s["problems"] == []
    assert f"on backend '{backend}'" in out and "sandbox: " in out
    names = ["builder-1", "trader-1"]
    by_principal = events_by_principal(cwd / "data")
    assert all(by_principal.get(n, 0) > 0 for n in names), (by_principal, out)
    # The console's counts (through Subscribe) are the server's: actions are the events the
    # agents caused; the system's (agent creation, endowment mints) are not actions.
    assert s["actions_by_agent"] == {n: by_principal[n] for n in names}
    assert s["actions"] == sum(by_principal[n] for n in names) < s["events"]
    assert s["agents_alive_at_end"] == 2 and s["agents_failed"] == {}
    assert "no token" not in out and "FAILED" not in out


def test_a_kept_token_the_server_no_longer_knows_is_shown_at_once_and_not_restarted(tmp_path):
    data = tmp_path / "data"
    first = Job(tmp_path, "--agents", "2", "--duration", "4", "--backend", "process", "--data-dir", str(data))
    assert first.wait() == 0, first.stdout
    (data / "agents" / "trader-1.token").write_text("eco_" + "0" * 40)   # not a token of this world

    job = Job(tmp_path, "--agents", "2", "--duration", "12", "--backend", "process", "--data-dir", str(data))
    rc = job.wait()
    out = job.stdout
    started = job.first("started 2 agents")
    failed = job.first("agent trader-1 FAILED")
    assert started and failed, out
    assert failed[0] - started[0] < 5, out                     # within a few seconds
    line = failed[1]
    assert "UNAUTHENTICATED" in line and "not restarted" in line and "last output:" in line, line
    s = job.summary()
    assert rc == 0 and s["ok"], out                            # the other agent worked
    assert s["agents_failed"] == {"trader-1": "exit 3: the server does not know its token (UNAUTHENTICATED)"}
    assert s["agents_alive_at_end"] == 1 and s["restarts"] == 0
    assert s["actions_by_agent"]["trader-1"] == 0 and s["actions_by_agent"]["builder-1"] > 0


def test_no_agent_can_run_stops_at_once_and_fails(tmp_path):
    data = tmp_path / "data"
    first = Job(tmp_path, "--agents", "2", "--duration", "3", "--backend", "process", "--data-dir", str(data))
    assert first.wait() == 0, first.stdout
    for name in ("builder-1", "trader-1"):
        (data / "agents" / f"{name}.token").write_text("eco_" + "1" * 40)
    job = Job(tmp_path, "--agents", "2", "--duration", "120", "--backend", "process", "--data-dir", str(data))
    rc = job.wait(timeout=100)
    out = job.stdout
    assert rc == 1, out
    assert job.elapsed < 60, job.elapsed                       # long before --duration
    assert "no agent is alive and none can be restarted" in out
    assert job.first("agent builder-1 FAILED") and job.first("agent trader-1 FAILED"), out
    assert "FAILED: no agent is alive" in job.stderr and "no agent acted" in job.stderr
    s = job.summary()
    assert s["stopped_early"] and not s["ok"] and s["agents_alive_at_end"] == 0 and s["actions"] == 0


def test_unreadable_token_file_is_a_permanent_failure_naming_the_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_SERVER": f"unix:{tmp_path}/none.sock",
           "ECOLOGY_TOKEN_FILE": "relative/missing.token"}
    env.pop("ECOLOGY_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "agent_runtime.run"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr                          # permanent: the launcher gives up
    assert f"cannot read the token file {tmp_path}/relative/missing.token" in r.stderr, r.stderr
    assert "no token" not in r.stderr


NO_ACTION_RUN = """
import asyncio, json, sys
from pathlib import Path
from server.config import load
from server.main_job import MainJob
job = MainJob(load(None), Path(sys.argv[1]), agents=2, duration=5, backend="process", brain="plan", listen=[])
summary = asyncio.run(job.run())
sys.exit(0 if summary["ok"] else 1)
"""


def test_a_run_in_which_no_agent_acted_is_not_a_success(tmp_path):
    """Agents that live but never act (the plan brain without a plan only idles). In its own
    process: the job configures the process-wide logging."""
    r = subprocess.run([sys.executable, "-c", NO_ACTION_RUN, str(tmp_path / "data")], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("SUMMARY "))[8:])
    assert not summary["ok"] and summary["actions"] == 0, r.stdout
    assert any(p.startswith("no agent acted in") for p in summary["problems"]), summary["problems"]
    assert summary["agents_alive_at_end"] == 2 and not summary["stopped_early"]
    assert "FAILED: no agent acted" in r.stdout and "FAILED: no agent acted" in r.stderr


def test_console_names_isolation_backend_and_how_to_get_stronger_ones(tmp_path):
    """No bubblewrap on PATH and no Docker engine: the run falls back to plain processes and
    says, with the commands, how to get the stronger backends and the sandbox."""
    python_dir = str(Path(sys.executable).parent)
    job = Job(tmp_path, "--agents", "1", "--duration", "4", "--data-dir", "data",
              env={"PATH": f"{python_dir}:/usr/local/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    job.wait()
    out = job.stdout
    assert "agents: 1 on backend 'process' (process (development only, no isolation))" in out, out
    bwrap_hint = job.first("stronger agent isolation: bwrap")
    docker_hint = job.first("stronger agent isolation: docker")
    assert bwrap_hint and "apt-get install bubblewrap" in bwrap_hint[1], out
    assert docker_hint and "no Docker engine answers" in docker_hint[1], out
    assert "apt-get install docker.io" in docker_hint[1] and "scripts/ensure_docker.sh" in docker_hint[1]
    sandbox = job.first("sandbox: ")
    level = job.summary()["sandbox_isolation"]
    assert level != "bwrap" and sandbox and f"sandbox: {level} - " in sandbox[1], out
    assert "apt-get install bubblewrap" in sandbox[1], out


def test_fixes_for_stronger_backends():
    from agent_runtime.launcher.supervisor import fix_for

    assert fix_for("docker", "image ecology-agent:latest not built (...)") == \
        "python -m agent_runtime.launcher.image ensure"
    assert fix_for("docker", "the docker Python SDK is not installed") == "pip install docker"
    assert "scripts/ensure_docker.sh" in fix_for("docker", "no Docker engine answers (...)")
    assert fix_for("bwrap", "bubblewrap is not installed") == "apt-get install bubblewrap"


def test_image_ensure_without_an_engine_says_so_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": f"unix://{tmp_path}/nonexistent.sock"}
    r = subprocess.run([sys.executable, "-m", "agent_runtime.launcher.image", "ensure"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no Docker engine answers" in lines[0], r.stderr
    assert str(tmp_path / "nonexistent.sock") in lines[0]


def test_backend_asked_for_but_unavailable_fails_with_the_fix(tmp_path):
    job = Job(tmp_path, "--agents", "1", "--duration", "30", "--backend", "docker", "--data-dir", "data",
              env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert job.wait(timeout=60) == 2
    assert "Traceback" not in job.stderr, job.stderr
    line = job.first("FAILED: backend 'docker' is not available")
    assert line and "no Docker engine answers" in line[1] and "scripts/ensure_docker.sh" in line[1], job.stdout
