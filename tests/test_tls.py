"""TLS and mutual TLS on TCP listeners (server/tls.py): certificates made by `ecology tls
init` and `ecology agent create --client-cert`, a principal bound to its certificate, and
plaintext refused. The last test crosses a real network hop: the server and an agent in two
network namespaces joined by a veth pair."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from agent_runtime import EcologyError, TlsOptions, WorldClient
from tests.conftest import ROOT, ServerProcess, database_args, fails, wait_until
from tests.test_js_agent import js_agent, run_agent  # noqa: F401  (js_agent: the npm ci fixture)


def ecology(*args, env=None, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def tls_server(tmp_path):
    """A server whose TCP listener needs TLS and a client certificate from its own CA."""
    data = tmp_path / "world"
    files = json.loads(ecology("tls", "init", "--data-dir", str(data), "--host", "localhost",
                               "--host", "127.0.0.1").stdout)
    for key in ("ca_file", "cert_file", "key_file"):
        assert Path(files[key]).exists()
    assert Path(files["key_file"]).stat().st_mode & 0o077 == 0
    config = (f'[server]\ntls_cert = "{files["cert_file"]}"\ntls_key = "{files["key_file"]}"\n'
              f'tls_client_ca = "{files["ca_file"]}"\n[oracle]\nenabled = false\n')
    s = ServerProcess(data, config).start()
    s.files = files
    yield s
    s.kill()


def create_with_cert(server: ServerProcess, name: str) -> dict:
    out = ecology("agent", "create", name, "--client-cert", "--data-dir", str(server.data_dir),
                  "--server", server.socket, env={"ECOLOGY_ADMIN_TOKEN": server.admin_token}).stdout
    created = json.loads(out)
    assert set(created) >= {"agent_id", "token", "cert_file", "key_file", "ca_file"}
    return created


def tls_client(server, created, cert_of=None) -> WorldClient:
    cert_of = cert_of or created
    return WorldClient(server.tcp, created["token"],
                       tls=TlsOptions(created["ca_file"], cert_of["cert_file"], cert_of["key_file"]))


def test_agent_acts_over_mutual_tls_and_its_certificate_binds_its_token(tls_server):
    alice = create_with_cert(tls_server, "alice")
    bob = create_with_cert(tls_server, "bob")
    assert tls_server.tcp.startswith("127.0.0.1:")
    with tls_client(tls_server, alice) as world:
        assert world.get_state().principal_id == "alice"
        world.transfer("bob", 7)
    # bob's token with alice's certificate: refused, nothing moves
    with tls_client(tls_server, bob, cert_of=alice) as world:
        err = fails(world.get_state, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        assert "client certificate for 'alice'" in err.message
        fails(lambda: world.transfer("alice", 1), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    with tls_client(tls_server, bob) as world:
        assert world.get_state().scrip == 1007


def test_missing_or_foreign_client_certificate_and_plaintext_are_refused(tls_server, tmp_path):
    alice = create_with_cert(tls_server, "alice")
    # no client certificate: the handshake fails
    with WorldClient(tls_server.tcp, alice["token"], tls=TlsOptions(alice["ca_file"])) as world:
        with pytest.raises(EcologyError) as info:
            world.get_state(timeout=5)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # a certificate from another CA: refused
    other = json.loads(ecology("tls", "init", "--data-dir", str(tmp_path / "other"), "--host", "localhost").stdout)
    with WorldClient(tls_server.tcp, alice["token"],
                     tls=TlsOptions(alice["ca_file"], other["admin_cert_file"], other["admin_key_file"])) as world:
        with pytest.raises(EcologyError) as info:
            world.get_state(timeout=5)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # plaintext to the TLS port: refused
    with WorldClient(tls_server.tcp, alice["token"]) as world:
        with pytest.raises(EcologyError) as info:
            world.get_state(timeout=5)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # the unix socket stays plaintext (file permissions protect it)
    with WorldClient(tls_server.socket, alice["token"]) as world:
        assert world.get_state().principal_id == "alice"


def test_admin_over_tcp_needs_the_operators_certificate(tls_server):
    from agent_runtime import AdminClient

    f = tls_server.files
    with AdminClient(tls_server.tcp, tls_server.admin_token,
                     tls=TlsOptions(f["ca_file"], f["admin_cert_file"], f["admin_key_file"])) as admin:
        assert admin.get_stats().agents == 0
    alice = create_with_cert(tls_server, "alice")
    with AdminClient(tls_server.tcp, tls_server.admin_token,
                     tls=TlsOptions(f["ca_file"], alice["cert_file"], alice["key_file"])) as admin:
        fails(admin.get_stats, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_non_loopback_plaintext_needs_insecure_and_warns(tmp_path):
    # 0.0.0.0 is not loopback: without TLS the server refuses to start...
    port = _free_port()
    r = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path / "w"),
                        "--listen", f"0.0.0.0:{port}"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert "needs TLS" in r.stderr and "--insecure" in r.stderr
    # ... and with --insecure it starts, warning that tokens cross the network in clear.
    p = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path / "w"),
                          "--listen", f"0.0.0.0:{port}", "--insecure", *database_args()], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: (tmp_path / "w" / "server.json").exists(), 30, "the server to start")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert "tokens cross the network in clear" in err


# -- a real network hop ------------------------------------------------------------------

def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts():
    """Two network namespaces made here, joined by a veth pair: 'srv' at 10.250.X.1 and
    'agt' at 10.250.X.2 (addresses that exist only inside these namespaces)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test makes network namespaces: run as root with iproute2 installed "
                    "(apt-get install iproute2)")
    tag = uuid.uuid4().hex[:6]
    srv, agt = f"eco-s-{tag}", f"eco-a-{tag}"
    net = f"10.250.{int(tag[:2], 16)}"
    _sh("ip", "netns", "add", srv)
    _sh("ip", "netns", "add", agt)
    try:
        _sh("ip", "link", "add", f"vs{tag}", "type", "veth", "peer", "name", f"va{tag}")
        _sh("ip", "link", "set", f"vs{tag}", "netns", srv)
        _sh("ip", "link", "set", f"va{tag}", "netns", agt)
        for ns, dev, addr in ((srv, f"vs{tag}", f"{net}.1/30"), (agt, f"va{tag}", f"{net}.2/30")):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield srv, agt, f"{net}.1"
    finally:
        subprocess.run(["ip", "netns", "del", srv], capture_output=True)
        subprocess.run(["ip", "netns", "del", agt], capture_output=True)


AGENT_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.environ["ROOT"])
from agent_runtime import EcologyError, TlsOptions, WorldClient
out = {}
for name, tls in (("tls", TlsOptions.from_env()), ("plaintext", None)):
    try:
        with WorldClient(os.environ["ECOLOGY_SERVER"], os.environ["ECOLOGY_TOKEN"], tls=tls) as w:
            out[name] = {"scrip": w.get_state(timeout=10).scrip, "paid": w.transfer("bob", 5)["amount"]}
    except EcologyError as e:
        out[name] = {"error": e.code.name}
print(json.dumps(out))
"""


def test_agent_in_another_network_namespace_connects_by_tls_only(tmp_path, two_hosts):
    srv_ns, agt_ns, server_ip = two_hosts
    data = tmp_path / "world"
    files = json.loads(ecology("tls", "init", "--data-dir", str(data), "--host", server_ip).stdout)
    port = 50443
    admin_token = "adm_test_" + uuid.uuid4().hex
    sock = tmp_path / "world.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": admin_token}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", srv_ns, sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data),
         "--listen", f"{server_ip}:{port}", "--listen", f"unix:{sock}", "--tls-cert", files["cert_file"],
         "--tls-key", files["key_file"], "--tls-client-ca", files["ca_file"], "--log-level", "warning",
         *database_args()],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"))
    try:
        wait_until(lambda: (data / "server.json").exists(), 30, "the server to start")
        admin_env = {"ECOLOGY_ADMIN_TOKEN": admin_token}
        alice = json.loads(ecology("agent", "create", "alice", "--client-cert", "--data-dir", str(data),
                                   "--server", f"unix:{sock}", env=admin_env).stdout)
        ecology("agent", "create", "bob", "--data-dir", str(data), "--server", f"unix:{sock}", env=admin_env)
        r = subprocess.run(
            ["ip", "netns", "exec", agt_ns, sys.executable, "-c", AGENT_SCRIPT], capture_output=True, text=True,
            timeout=120, env={**os.environ, "ROOT": str(ROOT), "ECOLOGY_SERVER": f"{server_ip}:{port}",
                              "ECOLOGY_TOKEN": alice["token"], "ECOLOGY_CA_FILE": alice["ca_file"],
                              "ECOLOGY_CERT_FILE": alice["cert_file"], "ECOLOGY_KEY_FILE": alice["key_file"]})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["tls"] == {"scrip": 1000, "paid": 5}
        assert out["plaintext"] == {"error": "UNAVAILABLE"}
        # the agent in the other namespace cannot reach the server's unix-socket-only peers
        # by any other way: its only route is the veth link
        routes = subprocess.run(["ip", "-n", agt_ns, "route"], capture_output=True, text=True).stdout
        assert server_ip.rsplit(".", 1)[0] in routes and "default" not in routes
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_javascript_agent_over_mutual_tls(tls_server, js_agent):

    alice = create_with_cert(tls_server, "alice")
    create_with_cert(tls_server, "bob")
    code, summary, out, err = run_agent(js_agent, tls_server.tcp, alice["token"], ECOLOGY_TRANSFER_TO="bob",
                                        ECOLOGY_TRANSFER_AMOUNT="3", ECOLOGY_CA_FILE=alice["ca_file"],
                                        ECOLOGY_CERT_FILE=alice["cert_file"], ECOLOGY_KEY_FILE=alice["key_file"])
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert summary["ok"] is True
    with WorldClient(tls_server.socket, alice["token"]) as world:
        assert world.get_state().scrip == 997
    # without the CA file the JavaScript agent speaks plaintext to the TLS port: refused
    code, summary, _, _ = run_agent(js_agent, tls_server.tcp, alice["token"], ECOLOGY_TIMEOUT="5")
    assert code == 1 and summary["ok"] is False


def test_agent_runtime_takes_tls_files_by_option(tls_server, tmp_path):
    """`python -m agent_runtime.run --ca-file/--cert-file/--key-file` reaches a mutual-TLS
    listener and acts (a plan agent writes its tick artifact)."""
    from tests.conftest import plan_config, tick_version

    alice = create_with_cert(tls_server, "ticker")
    with tls_server.admin() as admin:
        admin.grant("ticker", scrip=1)  # any admin call: the server is up
    with WorldClient(tls_server.socket, alice["token"]) as world:
        world.write("ticker", plan_config("ticker"))  # its configuration: write ticks
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOLOGY_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent_runtime.run", "--server", tls_server.tcp, "--ca-file", alice["ca_file"],
             "--cert-file", alice["cert_file"], "--key-file", alice["key_file"]],
            env={**env, "PYTHONPATH": str(ROOT), "ECOLOGY_TOKEN": alice["token"]}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"))
        try:
            wait_until(lambda: tick_version(world, "ticker.tick") >= 2, 30, "the agent to act over mutual TLS")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
