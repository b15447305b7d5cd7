"""Durability: every acknowledged change survives SIGTERM and SIGKILL, a restart gives
the identical state (every table of the database, SQLite or PostgreSQL), one server per data directory,
and a versioned schema that refuses to be opened by older code."""

from __future__ import annotations

import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_runtime.client import WorldClient
from agent_runtime.errors import EcologyError
from server.storage import db
from tests.conftest import ROOT, check_ledger, new_store

# The debtor's one handbook call costs 1 + 30 compute on a 2-unit bucket refilling at
# 0.5/s: 58 s of debt, far longer than the test.
# The mint's scheduled rounds add records and events on their own (a restart resolves
# the ones it missed), which the table-by-table comparison would see.
WORLD_CONFIG = """
[costs]
"genesis_handbook.pages" = 30.0
[oracle]
enabled = false
"""


def dump(server) -> dict:
    """Every table of the database, every row, in a fixed order; plus schema and version
    (Store.dump: the SQLite file or the PostgreSQL database, whichever the server uses).
    The oplog is left out (Store.dump): every start appends its `start` command."""
    conn = server.db()
    try:
        return conn.dump()
    finally:
        conn.close()


def compute_of(client):
    return next(f for f in client.get_state().flow if f.name == "compute")


def build_world(server) -> dict:
    """Agents, artifacts, a tombstone, transfers, an escrow listing, events, remembered
    request ids (a success and a failure), and one agent deep in compute debt."""
    alice, bob, carol = server.agent("alice"), server.agent("bob"), server.agent("carol")
    debtor = server.agent("debtor", compute_rate=0.5, compute_capacity=2.0)
    w = {"tokens": {c.agent_id: c.token for c in (alice, bob, carol, debtor)}}
    w["doc_v1"] = alice.write("doc", "hello", metadata={"kind": "note"}, request_id="w-doc")
    alice.write("doc", "hello again")
    alice.write("gone", "temporary")
    alice.delete("gone")
    w["t1"] = alice.transfer("bob", 30, memo="t1", request_id="t-1")
    bob.transfer("carol", 5, memo="t2")
    alice.write("forsale", "buy me")
    alice.escrow_list("forsale", 50)
    with pytest.raises(EcologyError) as exc:
        alice.transfer("bob", 10**6, request_id="t-fail")
    assert exc.value.reason == "INSUFFICIENT_FUNDS"
    debtor.invoke("genesis_handbook", "pages")
    debt = compute_of(debtor)
    assert debt.balance < -25 and debt.seconds_until_usable > 40
    w["usable_at"] = debt.usable_at.seconds + debt.usable_at.nanos / 1e9
    w["events"] = alice.events(limit=500)
    return w


def test_restart_after_sigkill_and_sigterm_gives_identical_state(make_server):
    server = make_server(WORLD_CONFIG)
    world = build_world(server)
    before = dump(server)

    # The dump really covers what must survive.
    assert before["schema_version"] == db.SCHEMA_VERSION
    assert [r[0] for r in before["escrow_listings"]] == ["forsale"]
    remembered = {(r[0], r[1]): r[3] for r in before["idempotency"]}
    assert remembered[("alice", "w-doc")] == 1 and remembered[("alice", "t-1")] == 1
    assert remembered[("alice", "t-fail")] == 0
    assert any(r[0] == "gone" for r in before["artifacts"])
    assert [r for r in before["flow"] if r[0] == "debtor"][0][4] < 0  # balance column: in debt
    assert len(before["credentials"]) == 4 and len(before["events"]) == len(world["events"])
    assert len(before["ledger_entries"]) == 6  # four endowments, two transfers

    # SIGKILL right after acknowledged writes: nothing may be lost or changed.
    server.kill()
    server.start()
    assert dump(server) == before

    # More acknowledged changes, then a graceful SIGTERM.
    carol = server.client(world["tokens"]["carol"])
    carol.write("c-note", "written after the crash")
    carol.transfer("alice", 2, memo="t3")
    before_term = dump(server)
    assert before_term != before
    assert server.stop() == 0
    server.start()
    assert dump(server) == before_term

    # Observed through the API: every token still authenticates.
    clients = {aid: server.client(tok) for aid, tok in world["tokens"].items()}
    for aid, c in clients.items():
        assert c.get_state().principal_id == aid
    alice, bob, debtor = clients["alice"], clients["bob"], clients["debtor"]

    # Compute debt persisted, on the same clock: back at zero at the same instant.
    debt = compute_of(debtor)
    assert debt.balance < 0
    usable_at = debt.usable_at.seconds + debt.usable_at.nanos / 1e9
    assert usable_at == pytest.approx(world["usable_at"], abs=1e-3)
    with pytest.raises(EcologyError) as exc:
        debtor.write("x", "nope")
    assert exc.value.reason == "INSUFFICIENT_RESOURCES"
    assert exc.value.retry_after == pytest.approx(world["usable_at"] - time.time(), abs=1.0)

    # Remembered request ids answer their first outcome and apply nothing.
    entries = len(before_term["ledger_entries"])
    assert alice.transfer("bob", 30, memo="t1", request_id="t-1") == world["t1"]
    replay = alice.write("doc", "hello", request_id="w-doc")
    assert replay.created and replay.artifact.version == world["doc_v1"].artifact.version == 1
    assert alice.read("doc").content == "hello again"
    with pytest.raises(EcologyError) as exc:
        alice.transfer("bob", 10**6, request_id="t-fail")
    assert exc.value.reason == "INSUFFICIENT_FUNDS"
    assert len(dump(server)["ledger_entries"]) == entries

    # The tombstone is still a tombstone; the events are all there.
    with pytest.raises(EcologyError) as exc:
        alice.read("gone")
    assert exc.value.reason == "DELETED"
    assert alice.events(limit=500)[:len(world["events"])] == world["events"]

    # The listing survived, and still trades atomically.
    listings = alice.escrow_listings()
    assert [(x["artifact_id"], x["seller"], x["price"]) for x in listings] == [("forsale", "alice", 50)]
    alice_scrip = alice.get_state().scrip
    bob.escrow_purchase("forsale")
    assert alice.get_state().scrip == alice_scrip + 50
    assert bob.read("forsale").state["controller"] == "bob"
    check_ledger(server)


# -- crash during a burst of transfers from several client processes -------------------------

CRASH_CONFIG = """
[agents]
endowment = 1000000
compute_rate = 1000000.0
compute_capacity = 1000000000.0
[rate_limits]
principal_rate = 100000.0
principal_burst = 100000.0
connection_rate = 100000.0
connection_burst = 100000.0
"""


def transfer_burst(address: str, token: str, me: str, peers: list[str], log_path: str, seconds: float) -> None:
    """Client process: transfers with unique request ids until the server goes away.
    Logs `try` before each call and `ack` only after the server acknowledged it."""
    rng = random.Random(me)
    client = WorldClient(address, token)
    deadline = time.monotonic() + seconds
    with open(log_path, "a", buffering=1) as log:
        i = 0
        while time.monotonic() < deadline:
            rid, to, amount = f"{me}-{i}", rng.choice(peers), rng.randint(1, 9)
            i += 1
            log.write(f"try {rid} {to} {amount}\n")
            try:
                result = client.transfer(to, amount, memo=rid, request_id=rid)
            except EcologyError as err:
                log.write(f"err {rid} {err.reason}\n")
                return
            log.write(f"ack {rid} {to} {amount} {result['entry']}\n")
    client.close()


def read_logs(paths) -> tuple[dict, dict, int]:
    tried, acked, errors = {}, {}, 0
    for me, path in paths.items():
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if parts[0] == "try":
                tried[parts[1]] = (me, parts[2], int(parts[3]))
            elif parts[0] == "ack":
                acked[parts[1]] = (me, parts[2], int(parts[3]), int(parts[4]))
            elif parts[0] == "err":
                errors += 1
    return tried, acked, errors


def test_sigkill_during_transfer_burst_loses_no_acknowledged_transfer(make_server, tmp_path):
    server = make_server(CRASH_CONFIG)
    clients = [server.agent(f"p{i}") for i in range(4)]
    ids = [c.agent_id for c in clients]
    logs = {c.agent_id: str(tmp_path / f"{c.agent_id}.log") for c in clients}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=transfer_burst, args=(
        server.address, c.token, c.agent_id, [x for x in ids if x != c.agent_id], logs[c.agent_id], 30.0))
        for c in clients]
    for p in procs:
        p.start()
    try:
        # Let the burst run until every client has had acknowledgements, then pull the plug.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.1)
            _, acked, _ = read_logs({k: v for k, v in logs.items() if os.path.exists(v)})
            per_client = {a[0] for a in acked.values()}
            if len(acked) >= 200 and len(per_client) == len(ids):
                break
        server.kill()
        for p in procs:
            p.join(timeout=20)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    tried, acked, errors = read_logs(logs)
    print(f"crash: {len(acked)} acknowledged, {len(tried) - len(acked)} in doubt")
    assert len(acked) >= 100, "the burst never got going"
    assert errors == len(ids), "every client was still sending when the server died"

    server.start()
    conn = server.db()
    try:
        rows = {}
        for seq, debit, credit, amount, memo in conn.execute(
                "SELECT seq, debit, credit, amount, memo FROM ledger_entries WHERE kind='transfer'"):
            assert memo not in rows, f"{memo} applied twice"
            rows[memo] = (debit, credit, amount, seq)
    finally:
        conn.close()
    for rid, (me, to, amount, entry) in acked.items():
        assert rows.get(rid) == (me, to, amount, entry), f"acknowledged transfer {rid} lost or altered"
    assert set(rows) <= set(tried)
    in_doubt = [rid for rid in tried if rid not in acked]
    assert len(in_doubt) <= len(ids)  # one call in flight per client at most

    # The clients retry what they never heard back about: each lands exactly once.
    tokens = {c.agent_id: c.token for c in clients}
    for rid in in_doubt:
        me, to, amount = tried[rid]
        with server.client(tokens[me]) as c:
            result = c.transfer(to, amount, memo=rid, request_id=rid)
        if rid in rows:
            assert result["entry"] == rows[rid][3]  # it had committed: the first outcome
    conn = server.db()
    try:
        for rid in tried:
            n = conn.execute("SELECT COUNT(*) FROM ledger_entries WHERE memo=?", (rid,)).fetchone()[0]
            assert n == 1, rid
    finally:
        conn.close()
    totals = check_ledger(server)
    assert totals["total_balances"] == len(ids) * 1_000_000


# -- one server per data directory; versioned schema ---------------------------------------

def test_second_server_on_same_data_dir_is_refused(server):
    alice = server.agent("alice")
    env = {**os.environ, "ECOLOGY_ADMIN_TOKEN": server.admin_token, "PYTHONPATH": str(ROOT)}
    second = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(server.data_dir),
         "--listen", server.socket, "--listen", "127.0.0.1:0", "--config", str(server.config_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert "in use by another server" in second.stderr
    assert str(server.data_dir) in second.stderr
    # The first server is untouched: same socket, same state, still serving.
    assert server.proc.poll() is None
    with server.client(alice.token) as again:
        assert again.get_state().scrip == 1000
    assert (server.data_dir / "server.json").exists()


def _set_schema_version(server, version: int) -> None:
    """Stamp the server's database with another schema version (the server is stopped)."""
    if server.database:
        store = db.open_store(server.database)
        try:
            store.execute("UPDATE schema_version SET version = ?", (version,))
        finally:
            store.close()
    else:
        raw = sqlite3.connect(server.data_dir / db.DB_FILE)
        raw.execute(f"PRAGMA user_version = {version}")
        raw.close()


def test_schema_version_recorded_and_newer_schema_refused(make_server):
    server = make_server()
    alice = server.agent("alice")
    token = alice.token
    conn = server.db()
    try:
        assert conn.schema_version() == db.SCHEMA_VERSION >= 1
    finally:
        conn.close()
    assert server.stop() == 0

    _set_schema_version(server, db.SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        server.start()
    log = Path(server.log.name).read_text()
    assert f"database schema version {db.SCHEMA_VERSION + 1} is newer than this server" in log

    # The refused start left the database alone.
    conn = server.db()
    try:
        assert conn.schema_version() == db.SCHEMA_VERSION + 1
        assert conn.balance_get("alice") == 1000
    finally:
        conn.close()
    _set_schema_version(server, db.SCHEMA_VERSION)
    server.start()
    with server.client(token) as again:
        assert again.get_state().scrip == 1000


@pytest.mark.sqlite_only
def test_sqlite_file_is_wal_with_full_sync(server, tmp_path):
    """The SQLite durability settings (db.connect): WAL for the server's file, synchronous=FULL."""
    conn = server.db()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    fresh = db.connect(tmp_path / "fresh.sqlite3")
    try:
        assert fresh.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        fresh.close()


def test_migrations_from_empty_are_versioned_and_idempotent(tmp_path):
    conn = new_store(tmp_path / "fresh.sqlite3", migrate=False)
    try:
        assert conn.schema_version() == 0
        assert db.migrate(conn) == db.SCHEMA_VERSION
        assert conn.schema_version() == db.SCHEMA_VERSION
        tables = set(conn.dump())
        assert {"artifacts", "balances", "ledger_entries", "flow", "stock", "credentials", "events",
                "escrow_listings", "idempotency"} <= tables
        schema = conn.dump()["schema"]
        assert db.migrate(conn) == db.SCHEMA_VERSION  # nothing to do the second time
        assert conn.dump()["schema"] == schema
    finally:
        conn.close()
