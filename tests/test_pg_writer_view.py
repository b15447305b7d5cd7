"""The storage shortcuts against plain SQLite, on random programs (hypothesis).

Both stores send only the savepoints that matter and skip rollbacks with nothing to undo
(server/storage/savepoints.py); PostgresStore also holds writes back and keeps a view of
the rows it wrote (balances, flow buckets, sequence numbers: server/storage/postgres.py,
"Round trips"). None of it may change a single answer against a SQLite store that sends
every savepoint as it comes: every program of nested savepoints, rollbacks, releases,
debits, credits, bucket updates, journal entries and events gives the same return values,
the same `changes()` counts and the same rows on both backends, over several transactions
(the view outlives a COMMIT for the sole writer), committed or rolled back; and a reader
that follows the writer (Store.follow) answers flow_get and principal_state (GetState) as the
database does, in the middle of a transaction and after it. Runs against a
real PostgreSQL server (tests/pg.py) whatever ECOLOGY_TEST_DATABASE says.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.storage import db
from server.storage.sqlite import SqliteStore
from server.storage.store import RequestSeen
from tests.conftest import pg_server

PRINCIPALS = ["alice", "bob", "carol"]
NAMES = ["op", "idem", "work", "invoke"]
TABLES = ("balances", "flow", "stock", "events", "ledger_entries", "ledger_totals", "oplog", "idempotency")

step = st.one_of(
    st.tuples(st.just("savepoint"), st.sampled_from(NAMES)),
    st.tuples(st.just("rollback_to"), st.integers(0, 7)),
    st.tuples(st.just("release"), st.integers(0, 7)),
    st.tuples(st.just("credit"), st.sampled_from(PRINCIPALS + ["nobody"]), st.integers(1, 50)),
    st.tuples(st.just("debit"), st.sampled_from(PRINCIPALS + ["nobody"]), st.integers(1, 80)),
    st.tuples(st.just("balance"), st.sampled_from(PRINCIPALS + ["nobody", "dave"])),
    st.tuples(st.just("open"), st.sampled_from(["dave", "alice"])),
    st.tuples(st.just("flow_put"), st.sampled_from(PRINCIPALS + ["nobody"]), st.floats(-5, 100, width=32)),
    st.tuples(st.just("flow_get"), st.sampled_from(PRINCIPALS + ["nobody"])),
    st.tuples(st.just("entry"), st.integers(1, 9)),
    st.tuples(st.just("event"), st.text("ab\x00", max_size=3)),
    st.tuples(st.just("oplog"),),
    st.tuples(st.just("idem"), st.integers(0, 10**6)),
    st.tuples(st.just("idem_again"), st.integers(0, 10**6)),
    st.tuples(st.just("mint"), st.integers(1, 9)),
    st.tuples(st.just("last_seq"),),
    st.tuples(st.just("totals"),),
    st.tuples(st.just("flush"),),
    st.tuples(st.just("stock_used"), st.sampled_from(PRINCIPALS + ["nobody"]), st.integers(0, 500)),
    st.tuples(st.just("stock_add"), st.sampled_from(PRINCIPALS + ["nobody"]), st.integers(0, 50)),
    st.tuples(st.just("stock_get"), st.sampled_from(PRINCIPALS + ["nobody", "dave"])),
    st.tuples(st.just("stock_create"), st.sampled_from(["dave", "alice"]), st.integers(0, 9)),
)
transaction = st.tuples(st.lists(step, max_size=30), st.booleans())  # (steps, commit?)


def _setup(store) -> None:
    store.tx_begin()
    for p in PRINCIPALS:
        store.balance_open(p)
        store.balance_credit(p, 100)
        store.flow_create(p, "compute", 10.0, 100.0, 50.0, 1.0)
        store.stock_create(p, "disk_bytes", 1000)
    store.tx_commit()


def _run(store, program, after_tx=None) -> list:
    """Every answer and row count of `program` on `store`; `after_tx()` after each
    transaction and in the middle of each."""
    out = []
    idem = 0
    for steps, commit in program:
        open_marks: list[str] = []
        before = store.changes()
        store.tx_begin()
        for s in steps:
            kind = s[0]
            if kind == "savepoint":
                store.savepoint(s[1])
                open_marks.append(s[1])
                continue
            if kind in ("rollback_to", "release"):
                if not open_marks:
                    continue
                i = s[1] % len(open_marks)
                name = open_marks[i]
                # the innermost savepoint of that name, as in SQL
                i = len(open_marks) - 1 - open_marks[::-1].index(name)
                if kind == "rollback_to":
                    store.rollback_to(name)
                    del open_marks[i + 1:]
                else:
                    store.release(name)
                    del open_marks[i:]
                continue
            if kind == "credit":
                out.append(store.balance_credit(s[1], s[2]))
            elif kind == "debit":
                out.append(store.balance_debit(s[1], s[2]))
            elif kind == "balance":
                out.append(store.balance_get(s[1]))
            elif kind == "open":
                store.balance_open(s[1])
            elif kind == "flow_put":
                store.flow_put(s[1], "compute", 10.0, 100.0, float(s[2]), 2.0)
            elif kind == "flow_get":
                out.append(store.flow_get(s[1], "compute"))
            elif kind == "entry":
                out.append(store.ledger_entry(3.0, "alice", "bob", s[1], "transfer", "m"))
            elif kind == "event":
                out.append(store.event_append(3.0, "ledger.transfer", "alice", "genesis_ledger", ["bob"],
                                              {"memo": s[1]}))
            elif kind == "oplog":
                store.oplog_append("invoke", "{}", "{}")
            elif kind == "idem":
                idem += 1
                store.idem_put("alice", f"r{idem}", "m", True, {"n": s[1]}, 3.0)
            elif kind == "idem_again":  # a request id used before, as Kernel.idempotent does it
                store.savepoint("idem")
                try:
                    store.idem_put("alice", f"r{s[1] % (idem + 1)}", "m", False, {}, 3.0)
                except RequestSeen:  # unless it was rolled back, or is r0 the first time
                    store.rollback_to("idem")
                    out.append("seen")
                store.release("idem")
            elif kind == "mint":
                store.ledger_totals_add(minted=s[1])
            elif kind == "last_seq":
                out.append(store.events_last_seq())
            elif kind == "totals":
                out.append(store.ledger_totals())
            elif kind == "flush":
                store.flush()
            elif kind == "stock_used":
                store.stock_set_used(s[1], "disk_bytes", s[2])
            elif kind == "stock_add":
                store.stock_add(s[1], "disk_bytes", quota=s[2])
            elif kind == "stock_get":
                out.append(store.stock_get(s[1], "disk_bytes"))
            elif kind == "stock_create":  # a new principal's first row (dave), or nothing (alice)
                store.stock_create(s[1], "llm_budget", s[2], if_missing=True)
            out.append(("changes", store.changes() - before))
        store.flush()
        out.append(("changes", store.changes() - before))
        if after_tx is not None:
            after_tx()
        if commit:
            store.tx_commit()
        else:
            store.tx_rollback()
        out.append(("after", store.balance_get("alice"), store.events_last_seq(), store.flow_get("bob", "compute")))
        if after_tx is not None:
            after_tx()
    return out


def _rows(store) -> dict:
    dump = store.dump()
    return {t: dump[t] for t in TABLES if t in dump}


class PlainSavepoints(SqliteStore):
    """The reference: SQLite with every kernel savepoint sent as it is (no aliases, no
    skipped rollbacks), as the stores did before server/storage/savepoints.py."""

    def savepoint(self, name: str) -> None:
        self.execute(f"SAVEPOINT {name}")

    def rollback_to(self, name: str) -> None:
        self.execute(f"ROLLBACK TO {name}")

    def release(self, name: str) -> None:
        self.execute(f"RELEASE {name}")


def _reference():
    store = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, factory=PlainSavepoints)
    store.row_factory = sqlite3.Row
    db.migrate(store)
    return store


@pytest.fixture(scope="module")
def pg():
    return pg_server()


# Savepoint "work" opened after "idem" (which followed a write) was released: nothing was
# written since "idem" went, but a credit was since "op", so "work" must be sent and its
# rollback must keep that credit.
NESTED_AFTER_RELEASE = [([("savepoint", "op"), ("credit", "alice", 5), ("savepoint", "idem"), ("release", 1),
                          ("savepoint", "work"), ("credit", "bob", 1), ("rollback_to", 1), ("balance", "alice"),
                          ("balance", "bob")], True)]
# A rollback with nothing written since the mark sends nothing, one with writes in a
# released inner savepoint does.
ROLLBACK_OVER_RELEASED = [([("savepoint", "op"), ("savepoint", "invoke"), ("debit", "alice", 7),
                            ("savepoint", "invoke"), ("credit", "bob", 7), ("release", 2), ("rollback_to", 1),
                            ("balance", "alice"), ("balance", "bob"), ("rollback_to", 0), ("entry", 3)], True),
                          ([("debit", "alice", 1), ("event", "a")], False)]
# Nothing written since the inner savepoint, but it exists because of a write before it:
# rolling back to the outer one must undo that write.
ROLLBACK_OVER_SENT = [([("savepoint", "op"), ("debit", "alice", 3), ("savepoint", "work"), ("rollback_to", 0),
                        ("balance", "alice"), ("release", 0)], True)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=st.lists(transaction, min_size=1, max_size=3))
@example(program=NESTED_AFTER_RELEASE)
@example(program=ROLLBACK_OVER_RELEASED)
@example(program=ROLLBACK_OVER_SENT)
def test_postgres_writer_answers_as_sqlite(pg, program):
    lite = db.connect(Path(":memory:"))
    db.migrate(lite)
    post = pg.fresh_store()  # the only writer of its schema: its view outlives a COMMIT
    follower = db.open_store(post.url, readonly=True)  # answers flow_get from what post published
    follower.follow(post)
    reader = db.open_store(post.url, readonly=True)  # asks the database

    def followers_see_committed_state():
        for p in PRINCIPALS + ["nobody", "dave"]:
            assert follower.flow_get(p, "compute") == reader.flow_get(p, "compute")
            assert follower.principal_state(p) == reader.principal_state(p)
        last = reader.events_last_seq()
        for after, limit in ((0, 5000), (max(0, last - 3), 2), (last, 10), (last + 1, 10)):
            assert follower.events_page(after, limit) == reader.events_page(after, limit)

    plain = _reference()
    try:
        for store in (plain, lite, post):
            _setup(store)
        expected = _run(plain, program)
        assert _run(lite, program) == expected
        assert _run(post, program, followers_see_committed_state) == expected
        assert _rows(lite) == _rows(plain)
        assert _rows(post) == _rows(plain)
    finally:
        plain.close()
        lite.close()
        post.close()
        follower.close()
        reader.close()


def test_a_refused_held_back_write_rolls_back_with_its_savepoint(pg):
    """A held-back write PostgreSQL refuses (here: a duplicate idempotency record, sent with
    the debit held back before it) raises inside the savepoint of the op that made it;
    rolling back to it leaves the transaction usable and the view as before."""
    post = pg.fresh_store()
    try:
        _setup(post)
        post.tx_begin()
        post.idem_put("alice", "dup", "m", True, {}, 1.0)
        post.savepoint("op")
        assert post.balance_debit("alice", 30) == 70
        changes = post.changes()
        with pytest.raises(RequestSeen):  # refused by the primary key when sent, with the debit
            post.idem_put("alice", "dup", "m", True, {}, 1.0)
        assert post.changes() == changes  # the refused insert is not counted, as on SQLite
        post.rollback_to("op")
        post.release("op")
        assert post.balance_get("alice") == 100  # the view undid the debit with the savepoint
        post.tx_commit()
        assert post.execute("SELECT scrip FROM balances WHERE principal_id = 'alice'").fetchone()[0] == 100
        assert post.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0] == 1
    finally:
        post.close()


def test_a_view_out_of_step_with_the_database_is_caught_and_dropped(pg):
    """If the view ever disagreed with PostgreSQL (a row changed behind the writer's back),
    the held-back write's row count says so: the op fails instead of committing a guess."""
    post = pg.fresh_store()
    try:
        _setup(post)
        assert post.balance_get("alice") == 100  # now in the view
        other = db.open_store(post.url)
        other.conn.execute("DELETE FROM flow WHERE principal_id = 'alice'")  # behind the writer's back
        other.close()
        post.tx_begin()
        assert post.flow_get("alice", "compute") is not None  # the view still has it...
        post.savepoint("op")
        post.flow_put("alice", "compute", 1.0, 1.0, 1.0, 1.0)  # ...so this is held back
        with pytest.raises(RuntimeError, match="expected 1"):
            post.flush()
        post.rollback_to("op")
        post.release("op")
        post.tx_rollback()
        assert post.flow_get("alice", "compute") is None  # the view was dropped: read again
    finally:
        post.close()
