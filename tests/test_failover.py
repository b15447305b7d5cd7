"""Standby servers on one PostgreSQL database (server/standby.py), for real: `ecology serve`
processes on a real PostgreSQL server (tests/pg.py), client processes using the SDK's
address list, SIGKILL of the active server during a burst of transfers, several times."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from agent_runtime.client import AdminClient, RetryPolicy, WorldClient
from server.kernel import ledger
from server.storage import db
from tests.conftest import fails, pg_server
from tests.failover_cluster import Cluster, start_client
from tests.pg import PgServer
from tests.test_js_agent import NODE, NPM, js_agent, run_agent  # noqa: F401 (js_agent: a fixture)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTERVAL = 1.0  # mint rounds every second, so several fall inside the test


@pytest.fixture(scope="module")
def pg():
    return pg_server()


def test_standby_refuses_and_names_the_active_server(pg, tmp_path):
    cluster = Cluster(tmp_path, pg.new_database(), 2).start()
    try:
        active, standby = cluster.nodes
        assert (active.role(), standby.role()) == ("active", "standby")
        for service in ("", "ecology.v1.World", "ecology.v1.Admin"):
            assert active.health(service) == SERVING
            assert standby.health(service) == NOT_SERVING
        with AdminClient(active.socket, cluster.admin_token) as admin:
            agent = admin.create_agent("sb")
        with WorldClient(standby.socket, agent.token) as w, AdminClient(standby.socket, cluster.admin_token) as a:
            for call in (w.get_state, lambda: w.transfer("genesis_ledger", 1), a.get_stats,
                         lambda: next(iter(w.subscribe(resume=False)))):
                err = fails(call, grpc.StatusCode.UNAVAILABLE, "STANDBY")
                assert err.active == active.socket
        # with both addresses, standby first, the SDK goes where the hint says
        with WorldClient(f"{standby.socket},{active.socket}", agent.token) as w:
            assert w.get_state().scrip == 1000 and w.target == active.socket
    finally:
        cluster.stop()


def test_sigkill_active_during_transfers_repeatedly(pg, tmp_path):
    url = pg.new_database()
    cluster = Cluster(tmp_path, url, 3, config=f"[oracle]\ninterval_seconds = {INTERVAL}\n").start()
    procs = []
    try:
        with AdminClient(cluster.targets, cluster.admin_token) as admin:
            agents = [admin.create_agent(f"fo{i}", endowment=100_000) for i in range(4)]
        # a Subscribe stream that lives through every failover
        seen: list[int] = []
        watcher = WorldClient(cluster.targets, agents[0].token)
        sub = watcher.subscribe()
        threading.Thread(target=lambda: [seen.append(ev.seq) for ev in sub], daemon=True).start()

        stop = tmp_path / "stop"
        outs = [tmp_path / f"client{i}.jsonl" for i in range(3)]
        for i, out in enumerate(outs):
            procs.append(start_client(cluster.targets, agents[i].token, agents[3].agent_id, f"c{i}", out, stop))
        times = []
        for _ in range(3):
            time.sleep(1.5)  # a burst of transfers
            old, new, took = cluster.kill_active()
            times.append(took)
            assert new is not old and new.role() == "active"
        time.sleep(1.5)
        stop.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0, (tmp_path / "client0.jsonl.err").read_text()[-2000:]
        print(f"failover seconds: {times}")
        assert max(times) < 5.0, times

        acked, summaries = [], []
        for out in outs:
            for line in out.read_text().splitlines():
                rec = json.loads(line)
                (summaries if rec.get("done") else acked).append(rec)
        assert len(acked) > 30 and len(summaries) == 3
        # idempotency across the failovers: every acknowledged id sent again answered
        # its first outcome
        assert all(s["same"] == s["retried"] for s in summaries), summaries
        assert sum(s["failovers"] for s in summaries) >= 3

        store = db.open_store(url, readonly=True)
        try:
            invariant = ledger.check_invariants(store)  # the full audit: sums, no negatives
            entries = store.execute("SELECT memo, seq FROM ledger_entries WHERE kind = 'transfer'").fetchall()
            by_memo: dict[str, list[int]] = {}
            for memo, seq in entries:
                by_memo.setdefault(memo, []).append(seq)
            # every acknowledged transfer is there exactly once, as the entry it was told
            for rec in acked:
                assert by_memo.get(rec["rid"]) == [rec["entry"]["entry"]], rec
            # nothing applied twice, acknowledged or not (a cut call retried elsewhere)
            assert all(len(v) == 1 for v in by_memo.values())
            rounds = store.execute("SELECT round, at, result FROM oracle_rounds ORDER BY round").fetchall()
            last_seq = store.events_last_seq()
        finally:
            store.close()
        assert invariant is not None
        # the mint: dense round numbers, every boundary resolved once (the ones inside an
        # outage together, by the round after it), none twice
        numbers = [r[0] for r in rounds]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 3
        ats = [r[1] for r in rounds]
        assert all(at % INTERVAL == 0 for at in ats) and ats == sorted(set(ats))
        missed = [json.loads(r[2])["missed_boundaries"] for r in rounds]
        assert sum(missed[1:]) == round((ats[-1] - ats[0]) / INTERVAL)
        # the stream resumed from its last event on each new server: every event once, in order
        deadline = time.monotonic() + 10
        while (not seen or seen[-1] < last_seq) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == list(range(seen[0], last_seq + 1)) and seen[0] == 1
        sub.close()
        watcher.close()
    finally:
        (tmp_path / "stop").touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
        cluster.stop()


@pytest.fixture
def own_pg():
    """A PostgreSQL server of its own: the test changes a server-wide setting."""
    server = PgServer()
    yield server
    server.stop()


def test_connection_cut_during_commit_is_outcome_unknown(own_pg, tmp_path):
    """COMMIT is made to wait (synchronous_standby_names names a standby that never comes:
    PostgreSQL has committed locally and waits for its acknowledgement), then the writer's
    session is terminated. The call must answer OUTCOME_UNKNOWN, the server fence itself
    (exit status 3), and a retry with the same request id on the standby that took over
    return the real outcome: applied, once."""
    import psycopg

    url = own_pg.new_database()
    cluster = Cluster(tmp_path, url, 2).start()
    try:
        active, standby = cluster.nodes
        with AdminClient(active.socket, cluster.admin_token) as admin:
            a, b = admin.create_agent("ou_a"), admin.create_agent("ou_b")
        side = psycopg.connect(own_pg.url(), autocommit=True)
        side.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        side.execute("SELECT pg_reload_conf()")
        result: dict = {}

        def call():
            with WorldClient(active.socket, a.token) as w:  # one address: no fail-over, we see the answer
                try:
                    result["ok"] = w.transfer(b.agent_id, 7, request_id="cut-1")
                except Exception as err:  # noqa: BLE001
                    result["err"] = err

        t = threading.Thread(target=call)
        t.start()
        db_name = url.split("?")[0].rsplit("/", 1)[1]
        deadline = time.monotonic() + 10
        pid = None
        while pid is None and time.monotonic() < deadline:  # the writer, waiting in COMMIT
            row = side.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'SyncRep'",
                               (db_name,)).fetchone()
            pid = row[0] if row else None
            time.sleep(0.01)
        assert pid is not None, "the commit never waited"
        side.execute("SELECT pg_terminate_backend(%s)", (pid,))
        t.join(timeout=30)
        side.execute("ALTER SYSTEM RESET synchronous_standby_names")
        side.execute("SELECT pg_reload_conf()")
        t.join(timeout=30)
        err = result.get("err")
        assert err is not None and (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), result
        assert active.proc.wait(timeout=20) == 3  # fenced: it exits loudly
        assert "writer lock" in active.log_path.read_text()
        new = cluster.active()
        assert new is standby
        with WorldClient(cluster.targets, a.token, retry=RetryPolicy()) as w:
            again = w.transfer(b.agent_id, 7, request_id="cut-1")
            assert again["amount"] == 7 and w.balance() == 1000 - 7  # applied once: it had committed
        side.close()
    finally:
        cluster.stop()


@pytest.mark.skipif(not (NODE and NPM), reason="the JavaScript agent needs Node.js and npm")
def test_js_agent_goes_from_the_standby_to_the_active_server(pg, tmp_path, js_agent):
    """examples/js-agent given "standby,active" follows STANDBY's hint and does its work there."""
    js_dir = js_agent
    cluster = Cluster(tmp_path, pg.new_database(), 2).start()
    try:
        active, standby = cluster.nodes
        with AdminClient(active.socket, cluster.admin_token) as admin:
            a, b = admin.create_agent("js_fo_a"), admin.create_agent("js_fo_b")
        code, summary, out, err = run_agent(js_dir, f"{standby.socket},{active.socket}", a.token,
                                            ECOLOGY_TRANSFER_TO=b.agent_id, ECOLOGY_TRANSFER_AMOUNT="5")
        assert code == 0 and summary["ok"], (out, err)
        assert summary["failovers"] >= 1 and summary["transfer"]["replay_same_outcome"]
        with WorldClient(active.socket, b.token) as w:
            assert w.balance() == 1000 + 5
    finally:
        cluster.stop()
