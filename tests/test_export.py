"""`ecology export`: a real server with real activity (transfers, writes, a loan, an LLM call
through the offline model, decision traces, a grant), exported in both formats while the
server runs and again after a SIGKILL, read back with DuckDB and checked against
`ecology status`, the Admin API and the ledger itself.

Every test runs on both backends: on SQLite (`--data-dir`) and, under
ECOLOGY_TEST_DATABASE=postgresql, on the server's PostgreSQL database (`--database URL`).
The world is then copied row by row to the other backend and exported again: the files of
the two sources are identical (SqliteSource and PostgresSource give the same rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from server.storage import db, export_source
from tests.conftest import ROOT, pg_server
from tests.test_durability import _set_schema_version

QUIET = "[oracle]\nenabled = false\n"  # no mint rounds: the world changes only when the test acts
NUL_TEXT = "nul \x00 one \x01 both \x01\x00 escape-like \x01\x02 end"


def ecology(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def world_args(server) -> list[str]:
    """Where the server's world is: its data directory, and its PostgreSQL database if any."""
    return ["--data-dir", str(server.data_dir), *(["--database", server.database] if server.database else [])]


def export(server, fmt, out, *extra) -> dict:
    r = ecology("export", *world_args(server), "--format", fmt, "--out", str(out), *extra)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


def status(server) -> dict:
    r = ecology("status", "--server", server.socket, env={"ECOLOGY_ADMIN_TOKEN": server.admin_token})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def activity(server) -> None:
    alice, bob, carol = server.agent("alice"), server.agent("bob"), server.agent("carol", endowment=300)
    alice.transfer("bob", 120, memo="for the parser")
    bob.transfer("carol", 45)
    carol.transfer("alice", 7)
    alice.write("alice.notes", "a" * 100)
    carol.write("carol.bytes", NUL_TEXT)  # PostgreSQL text cannot hold U+0000: stored escaped
    bob.write("bob.tool", "def run(x):\n    return x\n")
    bob.write("bob.tool", "def run(x):\n    return x + 1\n")
    answer = alice.complete([{"role": "user", "content": "what sells?"}])
    assert answer["cost_micro_usd"] > 0
    debt = alice.debt_offer("bob", 50, 60, time.time() + 3600)
    bob.debt_accept(debt["debt_id"])
    bob.debt_repay(debt["debt_id"], 20)
    for step, (action, ok) in enumerate([("write", True), ("transfer", True), ("sleep", True)], 1):
        alice.record_decision(step=step, observed={"scrip": 900}, action={"action": action},
                              outcome={"ok": ok}, llm_request_ids=[])
    bob.record_decision(step=1, observed={}, action={"action": "invoke"}, outcome={"ok": False, "reason": "X"})
    with server.admin() as admin:
        admin.grant("carol", scrip=25, llm_budget_micro_usd=1000, memo="prize")


def tables(out, fmt):
    con = duckdb.connect()
    for t in ("ledger_entries", "events", "artifacts", "agents", "decisions", "llm_exchanges"):
        reader = f"read_parquet('{out}/{t}.parquet')" if fmt == "parquet" else f"read_csv('{out}/{t}.csv', allow_quoted_nulls = false)"
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM {reader}")
    return con


def figures(con) -> dict:
    """What the checks compare: the same numbers from either format."""
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    return {
        "agents": q("SELECT agent_id, alive, scrip, scrip_minted, scrip_received, scrip_paid, scrip_burned, "
                    "llm_spent_micro_usd, llm_budget_micro_usd, debt_owed, credit_held, artifacts_created, "
                    "decisions, transfers_in, transfers_out FROM agents ORDER BY agent_id"),
        "ledger": q("SELECT seq, debit, credit, amount, kind, memo FROM ledger_entries ORDER BY seq"),
        "events": q("SELECT seq, type, principal_id, artifact_id FROM events ORDER BY seq"),
        "decisions": q("SELECT seq, agent_id, step, action_name, outcome_ok FROM decisions ORDER BY seq"),
        "artifacts": q("SELECT id, created_by, version, deleted, size_bytes FROM artifacts ORDER BY id"),
        "llm": q("SELECT agent_id, model FROM llm_exchanges"),
    }


def check_against_the_world(con, st: dict, listed: dict) -> None:
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    # ecology status: agent count, supply, journal size, last event
    assert q("SELECT count(*) FROM agents WHERE alive") == [(st["agents"],)] == [(3,)]
    (minted, burned), = q("SELECT coalesce(sum(amount) FILTER (kind = 'mint'), 0), "
                          "coalesce(sum(amount) FILTER (kind = 'burn'), 0) FROM ledger_entries")
    assert (minted, burned) == (st["minted"], st["burned"])
    assert q("SELECT count(*) FROM ledger_entries") == [(st["ledger_entries"],)]
    assert q("SELECT max(seq) FROM events") == [(st["last_event_seq"],)]
    # the ledger: each account's credits minus debits is its balance, for every account
    per_account = dict(q("""
        WITH moves AS (SELECT credit AS account, amount FROM ledger_entries
                       UNION ALL SELECT debit, -amount FROM ledger_entries)
        SELECT account, sum(amount) FROM moves WHERE account != 'genesis_system' GROUP BY account"""))
    agents = {a: s for a, s in q("SELECT agent_id, scrip FROM agents")}
    assert {a: per_account.get(a, 0) for a in agents} == agents == listed
    assert sum(per_account.values()) == st["total_balances"] == st["minted"] - st["burned"]
    assert q("SELECT count(*) FROM agents WHERE scrip != scrip_minted + scrip_received - scrip_paid "
             "- scrip_burned") == [(0,)]
    # what the activity did, as the derived columns show it
    rows = {r[0]: r for r in q("SELECT agent_id, endowment, scrip_minted, llm_spent_micro_usd, debt_owed, "
                               "credit_held, artifacts_created, decisions, transfers_out FROM agents")}
    assert rows["alice"][1:] == (1000, 1000, rows["alice"][3], 0, 40, 1, 3, 2) and rows["alice"][3] > 0
    assert rows["bob"][1:] == (1000, 1000, 0, 40, 0, 1, 1, 2)  # paid 45 to carol, repaid 20 of 60
    assert rows["carol"][1:3] == (300, 325)  # the endowment and the grant
    assert q("SELECT action_name, outcome_ok FROM decisions WHERE agent_id = 'bob'") == [("invoke", False)]
    assert q("SELECT version FROM artifacts WHERE id = 'bob.tool'") == [(2,)]
    assert q("SELECT memo FROM ledger_entries WHERE debit = 'alice' AND credit = 'bob' AND amount = 120") \
        == [("for the parser",)]


def test_export_read_back_with_duckdb_agrees_with_status_and_the_ledger(make_server, tmp_path):
    server = make_server(QUIET)
    activity(server)
    st = status(server)
    with server.admin() as admin:
        listed = {a.agent_id: a.scrip for a in admin.list_agents()}
    # while the server runs: both formats
    seen = {}
    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        printed = export(server, fmt, out)
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [f"{t}.{fmt}" for t in printed["rows"]] + ["manifest.json"])
        con = tables(out, fmt)
        check_against_the_world(con, st, listed)
        seen[fmt] = figures(con)
        manifest = json.loads((out / "manifest.json").read_text())
        assert {t: m["rows"] for t, m in manifest["tables"].items()} == printed["rows"]
        assert printed["rows"]["agents"] == 3 and printed["rows"]["decisions"] == 4
    assert seen["parquet"] == seen["csv"]
    # the Parquet types are the documented ones: integers, float seconds, JSON, booleans
    con = tables(tmp_path / "parquet", "parquet")
    types = {name: t for name, t, *_ in con.execute("DESCRIBE events").fetchall()}
    assert types == {"seq": "BIGINT", "at": "DOUBLE", "type": "VARCHAR", "principal_id": "VARCHAR",
                     "artifact_id": "VARCHAR", "related": "JSON", "data": "JSON"}
    assert con.execute("SELECT data->>'memo' FROM events WHERE type = 'ledger.transfer' ORDER BY seq LIMIT 1"
                       ).fetchall() == [("for the parser",)]
    at, = con.execute('SELECT "at" FROM ledger_entries ORDER BY seq DESC LIMIT 1').fetchone()  # AT is a keyword
    assert abs(at - time.time()) < 600  # Unix seconds
    prompt, = con.execute("SELECT prompt->'$[0]'->>'content' FROM llm_exchanges").fetchone()
    assert prompt == "what sells?"
    assert con.execute("SELECT content FROM artifacts WHERE id = 'carol.bytes'").fetchall() == [(NUL_TEXT,)]

    # after a SIGKILL (SQLite: the WAL not checkpointed; PostgreSQL: what was committed): the same world
    server.kill()
    export(server, "parquet", tmp_path / "after-kill")
    assert figures(tables(tmp_path / "after-kill", "parquet")) == seen["parquet"]

    # the same rows copied to the other backend export to the same files, byte for byte (CSV)
    # and value for value, type for type (Parquet)
    if server.database:
        other_dir, other_url = tmp_path / "copy", None
        other_dir.mkdir()
        copy_world(db.open_store(server.database, readonly=True), db.connect(other_dir / db.DB_FILE))
    else:
        other_dir, other_url = tmp_path / "nowhere", pg_server().new_database()
        copy_world(db.connect(server.data_dir / db.DB_FILE, readonly=True), db.open_store(other_url))
    from server.export import export as export_in_process

    as_of = time.time()
    for fmt in ("parquet", "csv"):
        export_in_process(server.data_dir, fmt, tmp_path / f"a-{fmt}", as_of=as_of, database=server.database or None)
        export_in_process(other_dir, fmt, tmp_path / f"b-{fmt}", as_of=as_of, database=other_url)
        for t in printed["rows"]:
            a, b = tmp_path / f"a-{fmt}" / f"{t}.{fmt}", tmp_path / f"b-{fmt}" / f"{t}.{fmt}"
            if fmt == "csv":
                assert a.read_bytes() == b.read_bytes(), t
            else:
                assert pq.read_table(a).equals(pq.read_table(b), check_metadata=True), t
    assert pq.read_table(tmp_path / "b-parquet" / "artifacts.parquet").to_pydict()["content"].count(NUL_TEXT) == 1


def copy_world(src, dst) -> None:
    """Every state table of the store `src`, row by row, into the freshly migrated store `dst`."""
    try:
        db.migrate(dst)
        dst.execute("BEGIN")
        for table in src.state_tables():
            cols, rows = src.table_rows(table)
            dst.execute(f"DELETE FROM {table}")  # ledger_totals' row from the migration
            for row in list(rows):
                dst.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", row)
        dst.execute("COMMIT")
    finally:
        src.close()
        dst.close()


def test_export_refuses_bad_requests_with_one_line_and_status_1(server, tmp_path):
    def refused(*argv: str, says: str) -> subprocess.CompletedProcess:
        r = ecology("export", *argv)
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert r.stdout == ""
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("ecology: ") and says in r.stderr, r.stderr
        return r

    world = world_args(server)
    refused(*world, "--format", "xlsx", "--out", str(tmp_path / "x"), says="unknown format 'xlsx'")
    assert not (tmp_path / "x").exists()
    refused("--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"), says="does not exist")
    (tmp_path / "empty-dir").mkdir()
    refused("--data-dir", str(tmp_path / "empty-dir"), "--out", str(tmp_path / "y"), says="no world database")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(*world, "--out", str(out), says="not empty; use --force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    export(server, "csv", out, "--force")
    assert (out / "agents.csv").exists() and (out / "keep.txt").read_text() == "mine"
    refused(*world, "--out", str(out / "keep.txt"), says="not a directory")
    # PostgreSQL: not a PostgreSQL URL; nothing listening there (the password is not printed)
    refused("--database", "mysql://root@localhost/world", "--out", str(tmp_path / "y"),
            says="--database takes postgresql://USER@HOST:PORT/DB")
    r = refused("--database", f"postgresql://ecology:s3cret@/world?host={tmp_path / 'no-socket-here'}",
                "--out", str(tmp_path / "y"), says="ecology: cannot connect to postgresql://ecology:***@/world?host=")
    assert "s3cret" not in r.stderr and not (tmp_path / "y").exists()
    # a schema this ecology does not read, newer or older (the server's own database, either backend)
    server.stop()
    where = shown_world(server)
    _set_schema_version(server, db.SCHEMA_VERSION + 1)
    refused(*world, "--out", str(tmp_path / "y"), says=f"ecology: {where} has schema version {db.SCHEMA_VERSION + 1}, "
            f"this ecology reads {db.SCHEMA_VERSION}: export it with a newer ecology")
    _set_schema_version(server, db.SCHEMA_VERSION - 1)
    refused(*world, "--out", str(tmp_path / "y"), says=f"ecology: {where} has schema version {db.SCHEMA_VERSION - 1}, "
            f"this ecology reads {db.SCHEMA_VERSION}: start `ecology serve` on it once to migrate it")
    assert not (tmp_path / "y").exists()


def shown_world(server) -> str:
    return export_source.shown_url(server.database) if server.database else str(server.data_dir / db.DB_FILE)


def test_one_snapshot_for_every_table_read_in_batches(server, monkeypatch):
    """What a server commits after the source's first read is in none of its tables; the rows
    come in batches (BATCH = 2 here) and all of them come."""
    alice, bob = server.agent("alice"), server.agent("bob")
    alice.transfer("bob", 5)
    monkeypatch.setattr(export_source, "BATCH", 2)
    source = export_source.open_source(server.data_dir, server.database or None)
    try:
        bob.transfer("alice", 3)  # committed after the snapshot
        ledger, events = list(source.ledger_entries()), list(source.events())
        facts = source.agent_facts()
    finally:
        source.close()
    assert [(r[2], r[3], r[4]) for r in ledger if r[5] == "transfer"] == [("alice", "bob", 5)]
    assert facts["balances"]["alice"] == 995 and facts["balances"]["bob"] == 1005
    assert len(ledger) == status(server)["ledger_entries"] - 1 >= 3
    assert [r[0] for r in events] == list(range(1, len(events) + 1)) and len(events) > 4
    fresh = export_source.open_source(server.data_dir, server.database or None)
    try:
        assert len(list(fresh.events())) > len(events)
        assert fresh.agent_facts()["balances"]["alice"] == 998
    finally:
        fresh.close()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_empty_world_exports_empty_tables_with_their_columns(server, tmp_path, fmt):
    export(server, fmt, tmp_path / "out")
    con = tables(tmp_path / "out", fmt)
    assert con.execute("SELECT count(*) FROM agents").fetchall() == [(0,)]
    names = [r[0] for r in con.execute("DESCRIBE agents").fetchall()]
    assert names[:2] == ["agent_id", "alive"] and "compute_balance" in names
