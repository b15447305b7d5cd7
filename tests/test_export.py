"""`ecology export`: a real server with real activity (transfers, writes, a loan, an LLM call
through the offline model, decision traces, a grant), exported in both formats while the
server runs and again after a SIGKILL, read back with DuckDB and checked against
`ecology status`, the Admin API and the ledger itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import duckdb
import pytest

from tests.conftest import ROOT

# `ecology export --data-dir` reads the world's SQLite file (server/storage/export_source.py
# has no PostgreSQL source yet): not collected under ECOLOGY_TEST_DATABASE=postgresql.
pytestmark = pytest.mark.sqlite_only

QUIET = "[oracle]\nenabled = false\n"  # no mint rounds: the world changes only when the test acts


def ecology(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def export(data_dir, fmt, out, *extra) -> dict:
    r = ecology("export", "--data-dir", str(data_dir), "--format", fmt, "--out", str(out), *extra)
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
        printed = export(server.data_dir, fmt, out)
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

    # after a SIGKILL (the WAL not checkpointed): the same world
    server.kill()
    export(server.data_dir, "parquet", tmp_path / "after-kill")
    assert figures(tables(tmp_path / "after-kill", "parquet")) == seen["parquet"]


def test_export_refuses_bad_requests_with_one_line_and_status_1(server, tmp_path):
    def refused(*argv: str, says: str) -> None:
        r = ecology("export", *argv)
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert r.stdout == ""
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("ecology: ") and says in r.stderr, r.stderr

    data = str(server.data_dir)
    refused("--data-dir", data, "--format", "xlsx", "--out", str(tmp_path / "x"), says="unknown format 'xlsx'")
    assert not (tmp_path / "x").exists()
    refused("--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"), says="does not exist")
    (tmp_path / "empty-dir").mkdir()
    refused("--data-dir", str(tmp_path / "empty-dir"), "--out", str(tmp_path / "y"), says="no world database")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused("--data-dir", data, "--out", str(out), says="not empty; use --force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    export(data, "csv", out, "--force")
    assert (out / "agents.csv").exists() and (out / "keep.txt").read_text() == "mine"
    refused("--data-dir", data, "--out", str(out / "keep.txt"), says="not a directory")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_empty_world_exports_empty_tables_with_their_columns(server, tmp_path, fmt):
    export(server.data_dir, fmt, tmp_path / "out")
    con = tables(tmp_path / "out", fmt)
    assert con.execute("SELECT count(*) FROM agents").fetchall() == [(0,)]
    names = [r[0] for r in con.execute("DESCRIBE agents").fetchall()]
    assert names[:2] == ["agent_id", "alive"] and "compute_balance" in names
