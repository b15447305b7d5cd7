"""The PostgreSQL backend against a real PostgreSQL server (tests/pg.py), always, whatever
ECOLOGY_TEST_DATABASE says: `ecology serve --database`, durability across a SIGKILL, the
schema version, and the same answers as SQLite from the Store methods with dialect-specific SQL."""

from __future__ import annotations

import pytest

from server.kernel.artifacts import Artifact
from server.storage import db
from tests.conftest import ServerProcess, check_ledger, pg_server


@pytest.fixture(scope="module")
def pg():
    return pg_server()


def test_serve_on_postgresql_survives_sigkill(pg, tmp_path):
    s = ServerProcess(tmp_path / "world")
    s.database = pg.new_database()
    s.start()
    try:
        a, b = s.agent("pg_a"), s.agent("pg_b")
        for i in range(5):
            a.transfer(b.agent_id, 3, request_id=f"t{i}")
        s.kill()  # acknowledged means committed: nothing may be lost
        s.start()
        b_id = b.agent_id
        b = s.client(b.token)
        assert b.balance() == 1000 + 15
        # a retry after the restart returns the first outcome, not a second transfer
        a = s.client(a.token)
        a.transfer(b_id, 3, request_id="t0")
        assert b.balance() == 1000 + 15
        assert not (s.data_dir / db.DB_FILE).exists()  # the state is in PostgreSQL only
        t = check_ledger(s)
        assert t["entries"] == 2 + 5
        store = s.db()
        try:
            assert store.schema_version() == db.SCHEMA_VERSION
            seqs = [e["seq"] for e in store.events_page(0, 10_000)[0]]
            assert seqs == list(range(1, len(seqs) + 1))  # dense, although failed ops rolled back
        finally:
            store.close()
    finally:
        s.kill()


def test_database_flag_refuses_other_urls(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path / "d"),
                          "--database", "mysql://x"], capture_output=True, text=True)
    assert out.returncode == 2 and "postgresql://" in out.stderr


def _art(aid: str, metadata: dict, created_at: float, content: str = "c") -> Artifact:
    return Artifact(id=aid, content=content, created_by="alice", access_contract_id="genesis_freeware",
                    has_standing=False, can_execute=False, interface=[], metadata=metadata,
                    state={"controller": "alice", "status": "active", "due_at": created_at + 5},
                    version=1, created_at=created_at, updated_at=created_at, size_bytes=1, billed_to="alice")


def test_same_answers_as_sqlite(pg, tmp_path):
    """The queries whose SQL differs most between the dialects (JSON, LIKE, ordering)."""
    lite = db.connect(tmp_path / "w.sqlite3")
    post = db.open_store(pg.new_database())
    stores = [lite, post]
    for st in stores:
        db.migrate(st)
        st.tx_begin()
        for i, (aid, meta) in enumerate([("B", {"x": 1}), ("a", {"x": 1.0, "t": True}), ("_c", {"x": "1"}),
                                         ("Z%", {"n": None, "d": {"k": [1]}}), ("b_2", {"t": False})]):
            st.artifact_insert(_art(aid, meta, 100.0 + i, content="same" if i % 2 else f"own{i}"))
        st.event_append(1.0, "ledger.transfer", "bob", "B", [], {"memo": "Price of B"})
        st.event_append(1.0, "ledger.transfer", "carl", "B", [], {"memo": "priced"})
        st.event_append(1.0, "artifact.invoked", "bob", "B", [], {"ok": True})
        st.event_append(1.0, "artifact.invoked", "bob", "B", [], {"ok": False})
        st.tx_commit()

    def answers(st):
        page = lambda **kw: [a.id for a in st.artifacts_page(after="", limit=100, **kw)]  # noqa: E731
        return {
            "all": page(), "after": [a.id for a in st.artifacts_page(after="Z", limit=100)],
            "x=1": page(metadata_equals={"x": 1}), "x='1'": page(metadata_equals={"x": "1"}),
            "t=true": page(metadata_equals={"t": True}), "t=false": page(metadata_equals={"t": False}),
            "n=null": page(metadata_equals={"n": None}), "d": page(metadata_equals={"d": {"k": [1]}}),
            "q%": page(query="%"), "q_": page(query="_"), "qb": page(query="B"),
            "payers": st.event_payers("B", "ledger.transfer", 0.0, "price", "price of "),
            "ok": st.event_ok_counts("B", "artifact.invoked", 0.0),
            "due": st.artifacts_state_due("alice", "active", 106.0),
            "dup": st.artifact_same_content_before(st.artifact_get("b_2")),
            "counts": st.artifact_counts(),
        }

    try:
        assert answers(post) == answers(lite)
        assert answers(lite)["all"] == ["B", "Z%", "_c", "a", "b_2"]  # byte order, as SQLite sorts
    finally:
        lite.close()
        post.close()


def test_json_holding_nul_never_makes_a_query_fail(pg):
    """jsonb cannot hold U+0000, and any agent can write a document holding it (metadata,
    a memo): such a row must not make the JSON queries fail for everyone. On PostgreSQL it
    matches no JSON condition (postgres.py `_jsonb`); the other rows are found as usual."""
    post = db.open_store(pg.new_database())
    try:
        db.migrate(post)
        post.tx_begin()
        post.artifact_insert(_art("bad", {"x": 1, "evil": "a\x00b"}, 100.0))
        post.artifact_insert(_art("good", {"x": 1}, 101.0))
        post.event_append(1.0, "ledger.transfer", "mallory", "good", [], {"memo": "price of \x00"})
        post.event_append(1.0, "ledger.transfer", "bob", "good", [], {"memo": "price"})
        post.event_append(1.0, "artifact.invoked", "mallory", "good", [], {"ok": True, "note": "\x00"})
        post.event_append(1.0, "artifact.invoked", "bob", "good", [], {"ok": True})
        post.tx_commit()
        page = lambda **kw: [a.id for a in post.artifacts_page(after="", limit=10, **kw)]  # noqa: E731
        assert page(metadata_equals={"x": 1}) == ["good"]
        assert page(metadata_equals={"evil": "a\x00b"}) == []
        assert page(metadata_equals={"\x00": None}) == []
        assert post.event_payers("good", "ledger.transfer", 0.0, "price", "price of ") == {"bob"}
        assert post.event_ok_counts("good", "artifact.invoked", 0.0) == (1, 0)
        assert post.artifacts_state_due("alice", "active", 1e9) == ["bad", "good"]  # state is clean in both
    finally:
        post.close()


def test_text_with_nul_and_control_characters_round_trips_and_sorts_as_on_sqlite(pg, tmp_path):
    """PostgreSQL text cannot hold U+0000; the store escapes it so ids, contents and memos
    with it are kept exactly and still page in SQLite's (code point) order."""
    lite = db.connect(tmp_path / "w.sqlite3")
    post = db.open_store(pg.new_database())
    ids = ["a", "a\x00", "a\x00b", "a\x01", "a\x01\x02", "a\x02", "\x00", "b\x00\x00"]
    try:
        for st in (lite, post):
            db.migrate(st)
            st.tx_begin()
            for i, aid in enumerate(ids):
                st.artifact_insert(_art(aid, {"k": aid}, 100.0 + i, content=f"x\x00{aid}\x01y"))
                st.balance_open(aid)
            st.ledger_entry(1.0, "a\x00", "a\x01", 5, "transfer", "memo\x00\x01")
            st.tx_commit()
        for st in (lite, post):
            assert [a.id for a in st.artifacts_page(after="", limit=100)] == sorted(ids)
            assert [a.id for a in st.artifacts_page(after="a\x00", limit=100)] == sorted(i for i in ids if i > "a\x00")
            assert st.artifact_get("a\x00b").content == "x\x00a\x00b\x01y"
            assert st.artifact_get("a\x00b").metadata == {"k": "a\x00b"}
            assert st.artifact_get("a\x01") is not None and st.artifact_get("a\x01\x01") is None
            assert set(st.balances_of(ids)) == set(ids)
            assert st.ledger_history("a\x00", 0, 10)[0]["memo"] == "memo\x00\x01"
        assert post.dump()["artifacts"] == [tuple(r) for r in lite.dump()["artifacts"]]
    finally:
        lite.close()
        post.close()


def test_savepoint_outside_a_transaction_begins_one_as_on_sqlite(pg):
    """Kernel code run outside the executor (tools, in-process tests) nests with savepoints
    only: the outermost one begins a transaction and its release commits it."""
    st = db.open_store(pg.new_database())
    reader = db.open_store(st.url, readonly=True)
    try:
        db.migrate(st)
        st.savepoint("tool")
        st.balance_open("kept")
        st.savepoint("step")
        st.balance_open("undone")
        st.rollback_to("step")
        st.release("step")
        assert reader.balance_get("kept") is None  # not committed yet
        st.release("tool")
        assert reader.balance_get("kept") == 0 and reader.balance_get("undone") is None
    finally:
        reader.close()
        st.close()


def test_a_failing_statement_raises_from_its_own_call_and_a_failed_commit_is_not_a_commit(pg):
    """Savepoint commands travel in front of the next statement (one round trip): a failing
    statement still raises from the Store call that ran it, rolling back to the savepoint
    recovers, and COMMIT of a transaction PostgreSQL has failed raises instead of silently
    rolling back (the executor then acknowledges nothing)."""
    import psycopg

    st = db.open_store(pg.new_database())
    reader = db.open_store(st.url, readonly=True)
    try:
        db.migrate(st)
        st.tx_begin()
        st.savepoint("op")
        st.balance_open("a")
        st.credential_add("h1", "a", 1.0)
        st.release("op")
        st.savepoint("op")
        with pytest.raises(psycopg.errors.UniqueViolation):
            st.credential_add("h1", "a", 1.0)  # the queued RELEASE/SAVEPOINT went ahead of it
        st.rollback_to("op")
        st.release("op")
        st.savepoint("op")
        st.balance_open("b")
        st.release("op")
        st.tx_commit()
        assert reader.balances_of(["a", "b"]) == {"a": 0, "b": 0}

        st.tx_begin()
        st.balance_open("c")
        with pytest.raises(psycopg.errors.UniqueViolation):
            st.credential_add("h1", "a", 1.0)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            st.tx_commit()  # PostgreSQL would answer ROLLBACK: reported, not taken for a commit
        assert reader.balance_get("c") is None
        st.tx_begin()
        st.balance_open("d")
        st.tx_commit()  # the store is usable again
        assert reader.balance_get("d") == 0
    finally:
        reader.close()
        st.close()


def test_sqlite_only_tests_are_not_collected_under_postgresql():
    """A test marked sqlite_only is deselected (not skipped) under ECOLOGY_TEST_DATABASE=postgresql."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    def collected(backend: str) -> str:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_durability.py"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120,
                             env={**os.environ, "ECOLOGY_TEST_DATABASE": backend})
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    name = "test_durability.py::test_sqlite_file_is_wal_with_full_sync"
    assert name in collected("sqlite")
    on_pg = collected("postgresql")
    assert name not in on_pg and "1 deselected" in on_pg and "skipped" not in on_pg
