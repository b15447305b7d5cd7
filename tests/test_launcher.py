"""The launcher with the `process` and `bwrap` backends: real processes and real bubblewrap
sandboxes (the docker backend is in test_docker_agent.py). Agents are either a probe command
(a python snippet that reports what it can see and reach) or the real entry point
`python -m agent_runtime.run` against a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

import pytest

from agent_runtime.launcher import AgentLimits, Launcher
from agent_runtime.launcher.bwrap import available as bwrap_available
from tests.conftest import ROOT, plan_config, tick_version, wait_until

BWRAP_OK, BWRAP_WHY = bwrap_available()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unavailable: {BWRAP_WHY}")
BACKENDS = ["process", pytest.param("bwrap", marks=needs_bwrap)]

# Sleeps until SIGTERM, then exits 0 (like the agent entry point).
SLEEPER = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
           "print('up', flush=True)\n"
           "while True: time.sleep(0.1)\n")



@pytest.fixture
def sock_dir(tmp_path):
    """A directory with a listening unix socket standing in for the server's."""
    d = tmp_path / "run"
    d.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "world.sock"))
    s.listen(16)
    yield d
    s.close()


@pytest.fixture
def launchers():
    made: list[Launcher] = []

    def make(backend: str, server: str, **kw) -> Launcher:
        kw.setdefault("backoff_initial", 0.2)
        launcher = Launcher(backend, server, **kw)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.close(timeout=3)


def row(launcher: Launcher, agent_id: str) -> dict:
    return next(r for r in launcher.status() if r["agent_id"] == agent_id)


def agent_pid(launcher: Launcher, agent_id: str) -> int:
    return row(launcher, agent_id)["pid"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_status_stop(backend, sock_dir, launchers):
    launcher = launchers(backend, f"unix:{sock_dir}/world.sock", command=[sys.executable, "-c", SLEEPER])
    assert launcher.backend_name == backend
    launcher.start("alice", "tok_alice", {"memory_mb": 128, "cpus": 0.5, "pids": 32})
    wait_until(lambda: "up" in launcher.handle("alice").instance.output_tail(), 10, "the agent to start")
    r = row(launcher, "alice")
    assert r["alive"] and r["backend"] == backend and r["restarts"] == 0 and r["state"] == "running"
    assert isinstance(r["pid"], int) and os.path.exists(f"/proc/{r['pid']}")
    with pytest.raises(ValueError):
        launcher.start("alice", "tok_alice")            # one instance per agent
    t0 = time.monotonic()
    assert launcher.stop("alice", timeout=5) == "exit 0"   # SIGTERM reached the agent itself
    assert time.monotonic() - t0 < 3
    r = row(launcher, "alice")
    assert not r["alive"] and r["state"] == "stopped" and r["restarts"] == 0
    assert not os.path.exists(f"/proc/{r['pid']}") or open(f"/proc/{r['pid']}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_agent_is_restarted_with_exponential_backoff(backend, sock_dir, launchers):
    launcher = launchers(backend, f"unix:{sock_dir}/world.sock", command=[sys.executable, "-c", SLEEPER],
                         backoff_initial=0.4, backoff_max=1.0)
    launcher.start("bob", "tok_bob")
    wait_until(lambda: row(launcher, "bob")["alive"], 10, "start")
    delays = []
    for n in range(1, 4):
        pid = agent_pid(launcher, "bob")
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        wait_until(lambda: row(launcher, "bob")["restarts"] == n and row(launcher, "bob")["alive"], 15,
                   f"restart {n}", every=0.01)
        delays.append(time.monotonic() - t_kill)
        assert agent_pid(launcher, "bob") != pid
        assert "signal 9" in row(launcher, "bob")["last_exit"] or "exit 137" in row(launcher, "bob")["last_exit"]
    # 0.4 s, 0.8 s, then capped at 1.0 s (each plus the start of a process).
    assert 0.35 <= delays[0] < delays[1], delays
    assert delays[1] >= 0.75 and 0.95 <= delays[2] < 3.0, delays
    history = launcher.handle("bob").history
    assert len(history) == 3 and all(h["reason"] for h in history)
    wait_until(lambda: "up" in launcher.handle("bob").instance.output_tail(), 10, "the handler installed")
    assert launcher.stop("bob", timeout=5) == "exit 0"
    time.sleep(1.5)
    assert not row(launcher, "bob")["alive"] and row(launcher, "bob")["restarts"] == 3   # stopped stays stopped


@pytest.mark.parametrize("backend", BACKENDS)
def test_clean_exit_and_permanent_failures_are_not_restarted(backend, sock_dir, launchers):
    launcher = launchers(backend, f"unix:{sock_dir}/world.sock")
    launcher.start("done", "t", command=[sys.executable, "-c", "print('bye')"])
    launcher.start("badtoken", "t", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    launcher.start("crash", "t", command=[sys.executable, "-c", "import sys; sys.exit(1)"])
    wait_until(lambda: row(launcher, "crash")["restarts"] >= 2, 15, "the crashing agent restarted")
    r = row(launcher, "done")
    assert r["state"] == "stopped" and r["restarts"] == 0 and r["last_exit"] == "exit 0" and not r["failed"], r
    r = row(launcher, "badtoken")
    assert r["state"] == "failed" and r["restarts"] == 0 and r["last_exit"] == "exit 3", r
    assert r["failed"] == "exit 3: the server does not know its token (UNAUTHENTICATED)"
    assert row(launcher, "crash")["last_exit"] == "exit 1" and row(launcher, "crash")["state"] != "failed"
    assert launcher.can_run()                               # the crashing one will be restarted
    events = launcher.drain_events()
    kinds = {(e["agent_id"], e["kind"]) for e in events}
    assert {("done", "exited"), ("badtoken", "failed"), ("crash", "died")} <= kinds, events
    assert next(e for e in events if e["agent_id"] == "done")["output"] == "bye"


def test_an_agent_failing_again_and_again_is_given_up_with_its_output(sock_dir, launchers):
    launcher = launchers("process", f"unix:{sock_dir}/world.sock", backoff_initial=0.05, backoff_max=0.1,
                         max_failures=3)
    launcher.start("flaky", "t", command=[sys.executable, "-c", "print('cannot go on: no luck'); raise SystemExit(1)"])
    wait_until(lambda: not launcher.can_run(), 20, "the launcher to give the agent up")
    r = row(launcher, "flaky")
    assert r["state"] == "failed" and r["restarts"] == 2 and not r["alive"], r
    assert r["failed"] == "exit 1; gave up after 3 failures in a row"
    events = launcher.drain_events()
    assert [e["kind"] for e in events] == ["died", "died", "failed"], events
    assert all("cannot go on: no luck" in e["output"] for e in events)
    assert launcher.output_tail("flaky") == "cannot go on: no luck"


def test_paths_handed_to_agents_are_absolute(sock_dir, tmp_path, launchers, monkeypatch):
    """A relative state directory and socket address mean the caller's directory, not the
    agent's (it runs in its own)."""
    monkeypatch.chdir(tmp_path)
    probe = "import os; print(os.environ['ECOLOGY_SERVER'], os.environ['ECOLOGY_TOKEN_FILE'], open(os.environ['ECOLOGY_TOKEN_FILE']).read())"
    launcher = launchers("process", f"unix:{os.path.relpath(sock_dir, tmp_path)}/world.sock",
                         state_dir="state", command=[sys.executable, "-c", probe])
    launcher.start("abs", "tok-abs")
    wait_until(lambda: row(launcher, "abs")["state"] == "stopped", 15, "the probe to end")
    assert launcher.output_tail("abs").split() == [f"unix:{sock_dir}/world.sock",
                                                    str(tmp_path / "state" / "abs" / "token"), "tok-abs"]


def test_stop_all_stops_every_agent(sock_dir, launchers):
    launcher = launchers("process", f"unix:{sock_dir}/world.sock", command=[sys.executable, "-c", SLEEPER])
    for i in range(5):
        launcher.start(f"a{i}", "t")
    wait_until(lambda: all(r["alive"] for r in launcher.status()), 10, "all up")
    pids = [r["pid"] for r in launcher.status()]
    t0 = time.monotonic()
    launcher.stop_all(timeout=5)
    assert time.monotonic() - t0 < 4
    assert not any(r["alive"] for r in launcher.status())
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_auto_names_the_backend_and_process_says_development_only(sock_dir, launchers, monkeypatch):
    from agent_runtime.launcher import supervisor

    monkeypatch.setattr(supervisor, "_docker_backend", lambda *a: (None, "no engine (test)"))
    launcher = launchers("auto", f"unix:{sock_dir}/world.sock")
    assert launcher.backend_name == ("bwrap" if BWRAP_OK else "process")
    monkeypatch.setattr(supervisor, "_bwrap_backend", lambda: (None, "no bwrap (test)"))
    dev = launchers("auto", f"unix:{sock_dir}/world.sock")
    assert dev.backend_name == "process" and not dev.isolated
    assert "development only" in dev.backend.describe()
    with pytest.raises(ValueError, match="over TCP"):       # Pods cannot reach a unix socket
        launchers("kubernetes", f"unix:{sock_dir}/world.sock")
    with pytest.raises(ValueError, match="unknown backend"):
        launchers("swarm", f"unix:{sock_dir}/world.sock")


def test_limits_from_configuration():
    assert AgentLimits.from_config({"memory": "64m", "cpus": 0.25, "pids_limit": 16}) == \
        AgentLimits(memory_bytes=64 << 20, cpus=0.25, pids=16)
    assert AgentLimits.from_config({"memory_mb": 100, "nano_cpus": 2_000_000_000}).cpus == 2.0
    assert AgentLimits.from_config(None) == AgentLimits()
    with pytest.raises(ValueError):
        AgentLimits.from_config({"memory_mb": 1})


# -- bwrap isolation ------------------------------------------------------------------------

PROBE = r"""
import json, os, socket, sys
out = {"uid": os.getuid(), "server": os.environ["ECOLOGY_SERVER"],
       "token": open(os.environ["ECOLOGY_TOKEN_FILE"]).read()}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); out["tcp"] = "connected"
except OSError as e:
    out["tcp"] = repr(e)
try:
    c = socket.socket(socket.AF_UNIX); c.connect(out["server"][5:]); out["unix"] = "connected"
except OSError as e:
    out["unix"] = repr(e)
out["seen"] = {p: os.path.exists(p) for p in sys.argv[1:]}
for p in ("/", "/app/agent_runtime/run.py", "/run/secrets/ecology_token", "/tmp/x"):
    try:
        open(p if p != "/" else "/should-not-be-writable", "w").write("x"); out.setdefault("writable", []).append(p)
    except OSError:
        pass
out["ifaces"] = sorted(i[1] for i in socket.if_nameindex())
print("PROBE " + json.dumps(out), flush=True)
"""


def run_probe(launcher: Launcher, agent_id: str, *paths: str, limits=None) -> dict:
    launcher.start(agent_id, f"secret-{agent_id}", limits,
                   command=[sys.executable, "-c", PROBE, *paths])
    line = wait_until(lambda: next((ln for ln in launcher.handle(agent_id).last_output.splitlines()
                                    + launcher.handle(agent_id).instance.output_tail(50).splitlines()
                                    if ln.startswith("PROBE ")), None), 15, "the probe's report")
    return json.loads(line[6:])


@needs_bwrap
def test_bwrap_agent_has_no_network_and_sees_only_its_binds(sock_dir, tmp_path, launchers):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's")
    launcher = launchers("bwrap", f"unix:{sock_dir}/world.sock")
    out = run_probe(launcher, "probe", str(secret), str(ROOT / "README.md"), str(ROOT / "server"),
                    "/etc/hostname", "/etc/passwd", os.path.expanduser("~/.ssh"), "/var/lib", str(sock_dir))
    assert "connected" not in out["tcp"] and ("Network is unreachable" in out["tcp"] or "101" in out["tcp"])
    assert out["ifaces"] == ["lo"]
    assert out["unix"] == "connected"                       # only the server's socket is reachable
    assert out["server"] == "unix:/run/ecology/world.sock"
    assert out["token"] == "secret-probe"
    assert out["uid"] == 65534
    assert not any(out["seen"].values()), out["seen"]       # host files, the project's server code
    assert out["writable"] == ["/tmp/x"], out               # read-only everywhere but the tmpfs


@needs_bwrap
def test_bwrap_memory_limit_kills_and_the_supervisor_restarts(sock_dir, launchers):
    hog = ("import time\nblocks = []\n"
           "for _ in range(400):\n    blocks.append(bytearray(1 << 20)); blocks[-1][::4096] = b'x' * 256\n"
           "print('survived', flush=True)\ntime.sleep(60)\n")
    launcher = launchers("bwrap", f"unix:{sock_dir}/world.sock", backoff_initial=0.2, backoff_max=0.5)
    launcher.start("hog", "t", {"memory_mb": 64}, command=[sys.executable, "-c", hog])
    wait_until(lambda: row(launcher, "hog")["restarts"] >= 1, 20, "the memory hog killed and restarted")
    h = launcher.handle("hog")
    # With a memory cgroup: an OOM kill; with RLIMIT_AS only: MemoryError -> exit 1.
    assert h.history[0]["reason"] in ("oom-killed", "exit 1"), h.history
    assert "survived" not in h.last_output


# -- the real agent entry point -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_real_agent_runs_under_the_launcher(backend, make_server, launchers):
    server = make_server()
    me = server.agent("runner", config=plan_config("runner"))
    launcher = launchers(backend, server.socket)
    launcher.start("runner", me.token, {"memory_mb": 256, "pids": 64})
    wait_until(lambda: tick_version(me, "runner.tick") >= 3, 30, "the agent to act through the socket")
    r = row(launcher, "runner")
    assert r["alive"] and r["restarts"] == 0, (r, launcher.handle("runner").instance.output_tail())
    assert launcher.stop("runner", timeout=10) == "exit 0"
