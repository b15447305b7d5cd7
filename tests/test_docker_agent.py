"""The docker backend with real containers (the image from Dockerfile.agent on the local base
built from the host's Python). Skipped, with the reason, when no Docker engine answers;
`.ci/run` starts one (scripts/ensure_docker.sh) so in CI these run for real."""

from __future__ import annotations

import json
import socket
import time

import pytest

from agent_runtime.launcher import Launcher
from agent_runtime.launcher.image import AGENT_IMAGE
from tests.conftest import ROOT, plan_config, tick_version, wait_until


def _engine() -> tuple[bool, str]:
    try:
        import docker  # noqa: F401
    except ImportError:
        return False, "the docker Python SDK is not installed (pip install docker)"
    from agent_runtime.launcher import docker as docker_backend

    return docker_backend.available(AGENT_IMAGE, build=True)   # builds the images if missing


DOCKER_OK, DOCKER_WHY = _engine()
pytestmark = pytest.mark.skipif(not DOCKER_OK, reason=f"no usable Docker engine: {DOCKER_WHY}")



@pytest.fixture
def sock_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "world.sock"))
    s.listen(16)
    yield d
    s.close()


@pytest.fixture
def launchers():
    made: list[Launcher] = []

    def make(server: str, **kw) -> Launcher:
        kw.setdefault("backoff_initial", 0.3)
        launcher = Launcher("docker", server, **kw)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.close(timeout=3)


def row(launcher: Launcher, agent_id: str) -> dict:
    return next(r for r in launcher.status() if r["agent_id"] == agent_id)


PROBE = r"""
import json, os, socket, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "server": os.environ["ECOLOGY_SERVER"],
       "token": open(os.environ["ECOLOGY_TOKEN_FILE"]).read(), "hostname": open("/etc/hostname").read().strip()}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); out["tcp"] = "connected"
except OSError as e:
    out["tcp"] = repr(e)
try:
    c = socket.socket(socket.AF_UNIX); c.connect(out["server"][5:]); out["unix"] = "connected"
except OSError as e:
    out["unix"] = repr(e)
out["ifaces"] = sorted(i[1] for i in socket.if_nameindex())
out["seen"] = {p: os.path.exists(p) for p in sys.argv[1:]}
out["writable"] = []
for p in ("/should-not-be-writable", "/app/x", "/run/secrets/ecology_token", "/tmp/x"):
    try:
        open(p, "w").write("x"); out["writable"].append(p)
    except OSError:
        pass
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
out["cap_eff"] = status["CapEff"].strip(); out["no_new_privs"] = status["NoNewPrivs"].strip()
print("PROBE " + json.dumps(out), flush=True)
"""


def test_container_has_no_network_and_sees_only_its_mounts(sock_dir, tmp_path, launchers):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's")
    launcher = launchers(f"unix:{sock_dir}/world.sock")
    assert launcher.backend_name == "docker"
    launcher.start("probe", "secret-probe", {"memory_mb": 128, "cpus": 0.5, "pids": 32},
                   command=["python3", "-c", PROBE, str(secret), str(ROOT / "README.md"), str(ROOT),
                            str(sock_dir), "/root/.ssh", "/var/lib/docker", "/etc/shadow"])
    h = launcher.handle("probe")
    container = h.instance.container
    line = wait_until(lambda: next((ln for ln in (h.last_output + "\n" + h.instance.output_tail(50)).splitlines()
                                    if ln.startswith("PROBE ")), None), 30, "the probe's report")
    out = json.loads(line[6:])
    assert "connected" not in out["tcp"], out["tcp"]                 # no network ...
    assert out["ifaces"] == ["lo"]                                    # ... only loopback
    assert out["unix"] == "connected"                                 # but the server's socket
    assert out["server"] == "unix:/run/ecology/world.sock" and out["token"] == "secret-probe"
    assert (out["uid"], out["gid"]) == (10001, 10001)                 # not root
    host_name = open("/etc/hostname").read().strip() if __import__("os").path.exists("/etc/hostname") else ""
    assert out["hostname"] == "agent" and out["hostname"] != host_name   # the container's own file
    assert not any(out["seen"].values()), out["seen"]                 # no host file beyond the mounts
    assert out["writable"] == ["/tmp/x"], out["writable"]             # read-only rootfs, tmpfs /tmp
    assert int(out["cap_eff"], 16) == 0 and out["no_new_privs"] == "1"
    # The container's configuration, as the engine sees it.
    container.reload()
    hc = container.attrs["HostConfig"]
    assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
    assert hc["Memory"] == 128 << 20 and hc["MemorySwap"] == 128 << 20
    assert hc["NanoCpus"] == 500_000_000 and hc["PidsLimit"] == 32
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
    assert container.attrs["Config"]["User"] == "10001:10001"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert set(mounts) == {"/run/ecology", "/run/secrets/ecology_token"}
    assert mounts["/run/ecology"]["Source"] == str(sock_dir) and mounts["/run/ecology"]["RW"] is True
    assert mounts["/run/secrets/ecology_token"]["RW"] is False
    assert "/tmp" in hc["Tmpfs"]


def test_oom_killed_container_is_restarted_by_the_supervisor(sock_dir, launchers):
    hog = ("import time\nblocks = []\n"
           "for _ in range(400):\n    blocks.append(bytearray(1 << 20)); blocks[-1][::4096] = b'x' * 256\n"
           "print('survived', flush=True)\ntime.sleep(60)\n")
    launcher = launchers(f"unix:{sock_dir}/world.sock", backoff_initial=0.5, backoff_max=1.0)
    launcher.start("hog", "t", {"memory_mb": 64, "pids": 32}, command=["python3", "-c", hog])
    wait_until(lambda: row(launcher, "hog")["restarts"] >= 2, 60, "two restarts after OOM kills")
    h = launcher.handle("hog")
    assert h.history[0]["reason"] == "oom-killed", h.history
    assert all(e["reason"] == "oom-killed" for e in h.history), h.history
    assert "survived" not in h.last_output
    launcher.stop("hog", timeout=3)
    import docker

    left = docker.from_env().containers.list(all=True, filters={"label": f"ecology.launcher={launcher.id}"})
    assert left == []                                  # every run's container was removed


def test_stop_sends_sigterm_into_the_container(sock_dir, launchers):
    sleeper = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
               "print('up', flush=True)\nwhile True: time.sleep(0.1)\n")
    launcher = launchers(f"unix:{sock_dir}/world.sock")
    launcher.start("s", "t", command=["python3", "-c", sleeper])
    wait_until(lambda: "up" in launcher.handle("s").instance.output_tail(), 30, "start")
    assert launcher.stop("s", timeout=5) == "exit 0"
    assert row(launcher, "s")["state"] == "stopped"


# -- the real agent, the real server ---------------------------------------------------------

def test_agents_in_containers_reconnect_after_the_server_restarts(make_server, launchers):
    server = make_server()
    agents = {name: server.agent(name, config=plan_config(name)) for name in ("phoenix", "ember")}
    launcher = launchers(server.socket)
    for name, client in agents.items():
        launcher.start(name, client.token, {"memory_mb": 192, "cpus": 0.5, "pids": 64})
    for name, client in agents.items():
        wait_until(lambda: tick_version(client, f"{name}.tick") >= 2, 60,
                   f"{name} acting from its container")
    containers = {r["agent_id"]: r["container"] for r in launcher.status()}

    server.kill()                                      # SIGKILL: every connection breaks
    time.sleep(1.5)
    server.start()                                     # a new socket file at the same path
    for name in agents:
        again = server.client(agents[name].token)
        v = tick_version(again, f"{name}.tick")
        wait_until(lambda: tick_version(again, f"{name}.tick") >= v + 3, 60, f"{name} acting after the restart")
    # The same containers reconnected: nothing was restarted.
    assert {r["agent_id"]: r["container"] for r in launcher.status()} == containers
    assert all(r["alive"] and r["restarts"] == 0 for r in launcher.status()), launcher.status()
    for name in agents:
        assert launcher.stop(name, timeout=10) == "exit 0"
