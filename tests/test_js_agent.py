"""The JavaScript example agent (examples/js-agent): Node.js with @grpc/grpc-js and
@grpc/proto-loader, built only from the .proto files, run against a real server over TCP and
over the unix socket. `npm ci` runs once per session (skipped when node_modules already matches
package-lock.json). The tests skip only when `node` or `npm` is not installed."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, check_ledger

JS_DIR = ROOT / "examples" / "js-agent"
STAMP = JS_DIR / "node_modules" / ".ecology-lock.sha256"
NODE, NPM = shutil.which("node"), shutil.which("npm")

pytestmark = pytest.mark.skipif(
    not (NODE and NPM),
    reason=f"the JavaScript agent needs Node.js and npm on PATH (node: {NODE or 'missing'}, "
           f"npm: {NPM or 'missing'})")

# grpc-js would route TCP targets through these; the server is on loopback.
PROXY_VARS = {"grpc_proxy", "http_proxy", "https_proxy", "all_proxy"}


@pytest.fixture(scope="session")
def js_agent() -> Path:
    """examples/js-agent with its dependencies installed by `npm ci` from package-lock.json."""
    lock_hash = hashlib.sha256((JS_DIR / "package-lock.json").read_bytes()).hexdigest()
    lock_file = Path(tempfile.gettempdir()) / f"ecology-js-agent-{hashlib.sha1(str(JS_DIR).encode()).hexdigest()[:12]}.lock"
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions: one npm ci at a time
        if not (STAMP.exists() and STAMP.read_text().strip() == lock_hash):
            started = time.monotonic()
            r = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"npm ci failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            STAMP.write_text(lock_hash + "\n")
            print(f"npm ci in {time.monotonic() - started:.1f}s")
    return JS_DIR


def run_agent(js_dir: Path, target: str, token: str, timeout: float = 60, **env: str):
    """Run `node agent.js`; returns (exit code, final JSON summary, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("ECOLOGY_") and k.lower() not in PROXY_VARS}
    base.update({"ECOLOGY_SERVER": target, "ECOLOGY_TOKEN": token, **env})
    r = subprocess.run([NODE, "agent.js"], cwd=js_dir, env=base, capture_output=True, text=True,
                       timeout=timeout)
    lines = r.stdout.strip().splitlines()
    assert lines, f"no output (exit {r.returncode}); stderr:\n{r.stderr}"
    summary = json.loads(lines[-1])
    return r.returncode, summary, r.stdout, r.stderr


def transfers(client, debit: str, credit: str) -> list[dict]:
    return [e for e in client.history(credit, limit=500)
            if e["kind"] == "transfer" and e["debit"] == debit and e["credit"] == credit]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_js_agent_authenticates_reads_transfers_invokes(js_agent, server, transport):
    alice = server.agent("js_alice")
    bob = server.agent("js_bob")
    alice_before, bob_before = alice.balance(), bob.balance()
    target = server.tcp if transport == "tcp" else server.socket

    code, summary, out, err = run_agent(js_agent, target, alice.token,
                                        ECOLOGY_TRANSFER_TO="js_bob", ECOLOGY_TRANSFER_AMOUNT="7")
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert summary["ok"] is True
    assert summary["principal_id"] == "js_alice"
    assert summary["server_time"].endswith("Z")
    assert summary["compute"] > 0
    assert "server time" in out and f"scrip {alice_before}" in out and "compute" in out
    # The handbook page it read is the real one.
    assert summary["handbook_chars"] == len(alice.handbook("rules")) > 0
    # The transfer happened, exactly once although the agent replayed its request id.
    assert summary["scrip_before"] == alice_before
    assert summary["scrip_after"] == alice_before - 7 == alice.balance()
    assert bob.balance() == bob_before + 7
    t = summary["transfer"]
    assert t["to"] == "js_bob" and t["amount"] == 7 and t["replay_same_outcome"] is True
    assert t["result"]["balance"] == alice_before - 7
    entries = transfers(bob, "js_alice", "js_bob")
    assert [e["amount"] for e in entries] == [7]
    assert entries[0]["memo"] == "hello from the JavaScript agent"
    # It invoked genesis_store.search {query: "ledger"} and got artifacts back.
    inv = summary["invoked"]
    assert (inv["artifact_id"], inv["method"]) == ("genesis_store", "search")
    assert inv["artifacts_count"] >= 1
    assert summary["retries"] == 0
    check_ledger(server)


def test_js_agent_bad_token_reports_unauthenticated(js_agent, server):
    server.agent("js_bob")
    for target in (server.tcp, server.socket):
        code, summary, out, err = run_agent(js_agent, target, "eco_not_a_token",
                                            ECOLOGY_TRANSFER_TO="js_bob")
        assert code != 0
        assert summary["ok"] is False
        assert summary["rpc"] == "GetState"
        assert summary["error"]["code"] == "UNAUTHENTICATED"
        assert summary["error"]["reason"] == "UNAUTHENTICATED"  # from ErrorInfo in the trailer
        assert summary["error"]["domain"] == "ecology.v1"
        assert summary["error"]["retry_after"] is None
        assert "reason=UNAUTHENTICATED" in err
    check_ledger(server)


def test_js_agent_honours_retry_info(js_agent, server):
    """A tight per-agent rate limit: calls are rejected with RATE_LIMITED + RetryInfo; the agent
    waits the given delay and retries once (same request_id), and still completes."""
    alice = server.agent("js_slow", rpc_rate=4.0, rpc_burst=2.0)
    bob = server.agent("js_bob")
    bob_before = bob.balance()
    started = time.monotonic()
    code, summary, out, err = run_agent(js_agent, server.tcp, alice.token,
                                        ECOLOGY_TRANSFER_TO="js_bob", ECOLOGY_TRANSFER_AMOUNT="3")
    elapsed = time.monotonic() - started
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert summary["ok"] is True
    assert summary["retries"] >= 1
    assert "reason=RATE_LIMITED retry_after=0." in out
    assert "honouring RetryInfo" in out
    delays = [float(d) for d in re.findall(r"retrying once in ([0-9.]+)s", out)]
    assert len(delays) == summary["retries"] and all(d > 0 for d in delays)
    assert elapsed >= sum(delays)  # it waited as told, it did not hammer
    assert bob.balance() == bob_before + 3
    assert [e["amount"] for e in transfers(bob, "js_slow", "js_bob")] == [3]
    check_ledger(server)


def test_js_agent_invokes_named_artifact_and_decodes_field(js_agent, server):
    alice = server.agent("js_alice")
    code, summary, out, err = run_agent(js_agent, server.socket, alice.token,
                                        ECOLOGY_INVOKE="genesis_ledger.balance")
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "transfer" not in summary  # no ECOLOGY_TRANSFER_TO: no transfer
    assert summary["invoked"]["artifact_id"] == "genesis_ledger"
    assert "scrip" in summary["invoked"]["keys"]

    # Bad arguments: INVALID_ARGS, the field named in ErrorInfo.metadata, no RetryInfo, no retry.
    code, summary, out, err = run_agent(js_agent, server.socket, alice.token,
                                        ECOLOGY_INVOKE="genesis_ledger.transfer",
                                        ECOLOGY_INVOKE_ARGS='{"to": "js_alice", "amount": "lots"}')
    assert code != 0
    assert summary["error"]["code"] == "INVALID_ARGUMENT"
    assert summary["error"]["reason"] == "INVALID_ARGS"
    assert summary["error"]["field"] == "args.amount"
    assert summary["retries"] == 0
    check_ledger(server)
