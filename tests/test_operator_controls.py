"""Operator controls: pause, resume and step the world, and grant scrip or LLM budget
(Admin RPCs and the `ecology` commands), against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc

from tests.conftest import ROOT, check_ledger, fails, wait_until


def events_of(client, types) -> list:
    """Every event so far of these types (the stream is read until it goes quiet)."""
    from agent_runtime import EcologyError

    out = []
    try:
        for e in client.subscribe(types=types, timeout=1.5):
            out.append(e)
    except EcologyError as err:
        assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED, err
    return out


def ecology(server, *args):
    r = subprocess.run([sys.executable, "-m", "server.cli", *args, "--server", server.socket], capture_output=True,
                       text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": server.admin_token})
    return r


def test_pause_refuses_mutations_keeps_reads_and_step_lets_n_through(make_server):
    server = make_server("[oracle]\nenabled = false\n")
    alice, bob = server.agent("alice"), server.agent("bob")
    alice.write("alice.note", "v1")
    r = ecology(server, "pause")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"paused": True, "steps_left": 0}
    err = fails(lambda: alice.transfer("bob", 5), grpc.StatusCode.UNAVAILABLE, "WORLD_PAUSED")
    assert err.retry_after and err.retry_after > 0
    fails(lambda: alice.write("alice.note", "v2"), grpc.StatusCode.UNAVAILABLE, "WORLD_PAUSED")
    fails(lambda: alice.delete("alice.note"), grpc.StatusCode.UNAVAILABLE, "WORLD_PAUSED")
    # reads still work, and nothing changed
    assert alice.read("alice.note").content == "v1"
    assert alice.get_state().scrip == 1000 and bob.balance() == 1000
    assert len(alice.list_artifacts(created_by="alice").artifacts) == 1
    with server.admin() as admin:
        stats = admin.get_stats()
        assert stats.paused and stats.steps_left == 0
    # step 2: exactly two mutating calls pass, the third is refused again
    assert json.loads(ecology(server, "step", "2").stdout) == {"paused": True, "steps_left": 2}
    alice.transfer("bob", 1)
    alice.transfer("bob", 1)
    fails(lambda: alice.transfer("bob", 1), grpc.StatusCode.UNAVAILABLE, "WORLD_PAUSED")
    assert bob.balance() == 1002
    assert json.loads(ecology(server, "resume").stdout) == {"paused": False, "steps_left": 0}
    alice.transfer("bob", 5)
    assert bob.balance() == 1007
    kinds = [e.type for e in events_of(alice, ["world.*"])]
    assert kinds == ["world.paused", "world.stepped", "world.resumed"]
    check_ledger(server)


def test_step_needs_a_paused_world_and_a_positive_count(server):
    with server.admin() as admin:
        fails(lambda: admin.step(1), grpc.StatusCode.ABORTED, "CONFLICT")
        admin.pause()
        fails(lambda: admin.step(0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", field="calls")
        admin.resume()
    from agent_runtime import AdminClient

    agent = server.agent("carol")
    with AdminClient(server.socket, agent.token) as impostor:  # an agent token is not the admin's
        fails(impostor.pause, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ONLY")
        fails(lambda: impostor.grant("carol", scrip=10**6), grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ONLY")
    assert agent.get_state().scrip == 1000


def test_paused_world_resolves_no_mint_round(make_server):
    server = make_server("[oracle]\ninterval_seconds = 1.0\n")
    with server.admin() as admin:
        admin.pause()
        time.sleep(0.3)
        db = server.db()
        before = db.execute("SELECT COUNT(*) FROM events WHERE type LIKE 'oracle.%'").fetchone()[0]
        time.sleep(2.5)
        after = db.execute("SELECT COUNT(*) FROM events WHERE type LIKE 'oracle.%'").fetchone()[0]
        assert after == before
        admin.resume()
        wait_until(lambda: db.execute("SELECT COUNT(*) FROM events WHERE type LIKE 'oracle.%'").fetchone()[0] > after,
                   10, "a mint round after resume")
        db.close()


def test_grant_scrip_and_llm_budget_are_recorded(server):
    alice = server.agent("alice")
    r = ecology(server, "agent", "grant", "alice", "--scrip", "250", "--llm-budget", "5000", "--memo", "prize")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["scrip"] == 1250
    assert alice.get_state().scrip == 1250
    events = {e.type: e for e in events_of(alice, ["ledger.mint", "quota.granted"])
              if "alice" in e.related_ids and "grant" in str(e.data)}
    assert set(events) == {"ledger.mint", "quota.granted"}
    totals = check_ledger(server)
    assert totals["minted"] == 1250
    with server.admin() as admin:
        fails(lambda: admin.grant("nobody", scrip=1), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", field="agent_id")
        fails(lambda: admin.grant("alice", scrip=-1), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", field="scrip")
        fails(lambda: admin.grant("alice"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS")
        fails(lambda: admin.grant("genesis_ledger", scrip=1), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert alice.get_state().scrip == 1250


def test_server_and_client_agree_on_read_only_genesis_methods():
    from agent_runtime.client import READ_ONLY_METHODS
    from server.rpc.pause import READ_ONLY_GENESIS

    assert READ_ONLY_GENESIS == READ_ONLY_METHODS


def test_a_grant_is_exactly_one_ledger_event(server):
    alice = server.agent("alice")
    with server.admin() as admin:
        admin.grant("alice", scrip=40, memo="once")
    mints = [e for e in events_of(alice, ["ledger.*"]) if "once" in str(e.data)]
    assert len(mints) == 1 and mints[0].type == "ledger.mint"
