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
