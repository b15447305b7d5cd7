"""Held batches (server/storage/executor.py): on PostgreSQL a batch of ops that may run
twice holds every write back to its end - one round trip for all of them, then COMMIT -
and if PostgreSQL refuses any of them (here: a request id remembered already, the
common case), the whole transaction is rolled back and the batch runs again op by op.
Either way every caller gets what running the ops one at a time would have given.

Real kernel, real executor thread, the real "invoke" command (as server/rpc/outside.py
submits genesis_ledger.transfer), on a real PostgreSQL server (tests/pg.py) whatever
ECOLOGY_TEST_DATABASE says; the same batches on SQLite, which holds nothing back, must
end the same.
"""

from __future__ import annotations

import asyncio

import pytest

from server import config
from server.errors import KernelError
from server.kernel import invocation, ledger
from server.kernel.commands import Commands
from server.kernel.kernel import Kernel
from server.storage import db
from server.storage.executor import Executor
from tests.conftest import pg_server


class World:
    def __init__(self, store) -> None:
        self.store = store
        self.kernel = Kernel(config.build({"agents": {"endowment": 1000}}))
        ex = Executor(store)
        ex.run_blocking(self.kernel.bootstrap)
        for name in ("alice", "bob", "carol"):
            ex.run_blocking(lambda c, n=name: self.kernel.op_create_agent(c, n, "{}"))
        self.held_batches = self.held_refused = 0

    def batch(self, calls: list[tuple[str, str, str, int]]) -> list:
        """Run (caller, request_id, to, amount) transfers as ONE batch: every op is queued
        before the writer thread starts. Returns each outcome (a dict or a KernelError)."""
        ex = Executor(self.store)
        commands = Commands(self.kernel, ex)

        def op(caller, request_id, to, amount):
            chain = invocation.Chain(now=self.kernel.clock(), work=invocation.Work())
            return commands.op("invoke", {"caller": caller, "request_id": request_id,
                                          "artifact_id": "genesis_ledger", "method": "transfer",
                                          "args": {"to": to, "amount": amount}, "max_spend": 0, "chain": chain})

        async def main():
            tasks = [asyncio.ensure_future(ex.run(op(*c))) for c in calls]
            await asyncio.sleep(0.05)  # all queued
            ex.start()
            return await asyncio.gather(*tasks, return_exceptions=True)

        try:
            out = asyncio.run(main())
        finally:
            ex.stop()
        assert ex.batches == 1, "the calls were meant to share one batch"
        self.held_batches += ex.held_batches
        self.held_refused += ex.held_refused
        return out

    def balance(self, who: str) -> int:
        return self.store.balance_get(who)

    def count(self, sql: str) -> int:
        return self.store.execute(sql).fetchone()[0]


@pytest.fixture(params=["postgresql", "sqlite"])
def world(request, tmp_path):
    if request.param == "postgresql":
        url = pg_server().new_database()

        def connect():
            store = db.open_store(url)
            assert store.lease_try()  # the only writer, as the server is
            return store

        def behind_its_back():
            return db.open_store(url)
    else:
        def connect():
            return db.connect(tmp_path / db.DB_FILE)

        behind_its_back = connect
    store = connect()
    db.migrate(store)
    w = World(store)
    w.backend = request.param
    w.connect = connect
    w.behind_its_back = behind_its_back
    yield w
    w.store.close()


def test_a_batch_of_new_transfers_is_held_and_applied_once(world):
    world.batch([("alice", "warm", "carol", 1)])  # the writer's view now knows these rows
    trips = []
    if world.backend == "postgresql":  # the query strings sent (server/storage/postgres.py _send)
        send = world.store._send
        world.store._send = lambda queued, *a, **k: trips.append([t for t, _a, _r in queued]) or send(queued, *a, **k)
    out = world.batch([("alice", f"a{i}", "bob", 10) for i in range(6)])
    if world.backend == "postgresql":
        world.store._send = send
        assert len(trips) == 1, "a held batch: all its writes, their check and COMMIT in one round trip"
        assert trips[0][0] == "BEGIN" and not [t for t in trips[0] if "SAVEPOINT" in t], \
            "no op's savepoint reaches PostgreSQL: each was released before anything was sent"
    assert world.balance("carol") == 1001
    assert [o["amount"] for o in out] == [10] * 6
    assert [o["balance"] for o in out] == [989, 979, 969, 959, 949, 939]
    assert world.balance("alice") == 939 and world.balance("bob") == 1060
    assert world.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'transfer'") == 7
    assert world.count("SELECT COUNT(*) FROM oplog WHERE command = 'invoke'") == 7
    assert (world.held_batches, world.held_refused) == ((2, 0) if world.backend == "postgresql" else (0, 0))
    ledger.check_invariants(world.store)


def test_a_retry_in_a_held_batch_gets_its_first_outcome(world):
    first = world.batch([("alice", "pay", "bob", 100), ("carol", "c1", "bob", 1)])
    # The same batch again with new calls around the retry of "pay": PostgreSQL refuses its
    # idempotency record when the held writes are sent; the batch runs again op by op.
    out = world.batch([("carol", "c2", "bob", 2), ("alice", "pay", "bob", 100), ("carol", "c3", "alice", 3)])
    assert out[1] == first[0]
    assert out[0]["amount"] == 2 and out[2]["amount"] == 3
    assert world.balance("alice") == 1000 - 100 + 3
    assert world.balance("bob") == 1000 + 100 + 1 + 2
    assert world.balance("carol") == 1000 - 1 - 2 - 3
    assert world.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'transfer'") == 4
    if world.backend == "postgresql":
        assert (world.held_batches, world.held_refused) == (1, 1)
    ledger.check_invariants(world.store)


def test_duplicates_and_failures_inside_one_held_batch(world):
    out = world.batch([
        ("alice", "dup", "bob", 5),
        ("alice", "dup", "bob", 5),       # the same request twice in one batch: applied once
        ("carol", "broke", "bob", 5000),  # fails (no such scrip): remembered, changes nothing else
        ("bob", "b1", "carol", 7),
    ])
    assert out[0] == out[1] and out[0]["amount"] == 5
    assert isinstance(out[2], KernelError) and out[2].reason.value == "INSUFFICIENT_FUNDS"
    assert out[3]["amount"] == 7
    again = world.batch([("carol", "broke", "bob", 1), ("bob", "b2", "carol", 1)])
    assert isinstance(again[0], KernelError) and again[0].reason.value == "INSUFFICIENT_FUNDS"  # the first outcome
    assert world.balance("alice") == 995 and world.balance("bob") == 1000 + 5 - 7 - 1
    assert world.balance("carol") == 1000 + 7 + 1
    assert world.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'transfer'") == 3
    if world.backend == "postgresql":
        assert world.held_refused == 2 and world.held_batches == 0
    ledger.check_invariants(world.store)


def test_a_refusal_met_by_a_later_op_s_read_in_a_held_batch(world):
    """A refused held write can surface in a later op of the batch (its read sends the
    writes held before it), not only at the batch's end: the batch still runs again."""
    first = world.batch([("alice", "pay", "bob", 100), ("carol", "c1", "bob", 1)])
    world.store.close()
    world.store = world.connect()  # as after a restart: the writer's view knows no row, so ops read
    out = world.batch([("alice", "pay", "bob", 100), ("carol", "c2", "bob", 2)])
    assert out[0] == first[0] and out[1]["amount"] == 2
    assert world.balance("alice") == 900 and world.balance("carol") == 997
    assert world.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'transfer'") == 3
    if world.backend == "postgresql":
        assert world.held_refused == 1
    ledger.check_invariants(world.store)


def test_a_held_batch_whose_rows_changed_behind_the_writer_is_caught_before_commit(world):
    """The held writes go with COMMIT behind one check of the rows they leave: if a balance
    is not what the writer's view says, or a compute bucket it holds is gone (here another
    session did it: a bug, were it to happen), the check fails the transaction before
    COMMIT, and the batch runs again op by op from what the database holds."""
    def behind_its_back(sql):
        side = world.behind_its_back()
        try:
            side.execute(sql)
        finally:
            side.close()

    world.batch([("alice", "p1", "bob", 1), ("carol", "c0", "alice", 1)])  # the view holds their rows now
    behind_its_back("UPDATE balances SET scrip = scrip + 5 WHERE principal_id = 'bob'")
    out = world.batch([("alice", "p2", "bob", 1)])
    assert out[0]["balance"] == 999
    assert world.balance("bob") == 1000 + 1 + 5 + 1
    world.batch([("carol", "c1", "alice", 1)])  # (a refusal drops the view: carol's bucket read again)
    # A bucket the view holds is written whole (its level is the view's), so what can go
    # wrong with it is a row that is gone: its UPDATE matches nothing and raises nothing.
    behind_its_back("DELETE FROM flow WHERE principal_id = 'carol'")
    out = world.batch([("carol", "c2", "alice", 1)])
    # What the database says: carol has no compute left to charge, so the call fails (held,
    # the UPDATE of the missing bucket would have matched nothing and the transfer committed).
    assert isinstance(out[0], KernelError) and out[0].reason.value == "INSUFFICIENT_RESOURCES"
    assert world.balance("alice") == 1000 and world.balance("carol") == 998
    assert world.count("SELECT COUNT(*) FROM flow WHERE principal_id = 'carol'") == 0
    if world.backend == "postgresql":
        assert world.held_refused == 2 and world.held_batches == 2


def test_the_prepared_check_of_a_small_batch_still_catches_a_changed_row(world):
    """A transfer alone is checked by the same statement text every time, so the writer
    prepares it (postgres.py "Prepared statements"): sent as EXECUTE, with this batch's
    values, it must still fail a transaction whose balance changed behind the writer."""
    for i in range(4):  # the check's shape is used, then prepared (before a BEGIN), then EXECUTEd
        world.batch([("alice", f"w{i}", "bob", 1)])
    if world.backend == "postgresql":
        checks = [text for text in world.store._prepared if text.startswith("SELECT 1 / (")]
        assert len(checks) == 1, "the check of a lone transfer is prepared"
        sent = []
        send = world.store._send
        world.store._send = lambda queued, *a, **k: sent.extend(t for t, _a, _r in queued) or send(queued, *a, **k)
    side = world.behind_its_back()
    try:
        side.execute("UPDATE balances SET scrip = scrip + 5 WHERE principal_id = 'bob'")
    finally:
        side.close()
    out = world.batch([("alice", "p", "bob", 1)])
    assert out[0]["balance"] == 1000 - 5
    assert world.balance("bob") == 1000 + 4 + 5 + 1
    if world.backend == "postgresql":
        world.store._send = send
        assert any(t.startswith("EXECUTE eco_") and t.endswith(")") and t.count("%s") == 10 for t in sent), \
            "the check went as EXECUTE of the prepared statement, with 2 balances and a bucket's values"
        assert world.held_refused == 1 and world.held_batches == 4


def test_a_failing_op_inside_a_held_batch_that_commits_is_undone_alone(world):
    """A transfer that fails (no such scrip) in a held batch with no retry in it: its
    partial writes are undone (on PostgreSQL they were never sent: dropped from the
    queue, the batch has no savepoint in the database), its failure is remembered, and the
    ops around it commit with the batch."""
    out = world.batch([("alice", "a1", "bob", 5), ("carol", "broke", "bob", 5000), ("bob", "b1", "carol", 7)])
    assert out[0]["amount"] == 5 and out[2]["amount"] == 7
    assert isinstance(out[1], KernelError) and out[1].reason.value == "INSUFFICIENT_FUNDS"
    if world.backend == "postgresql":
        assert (world.held_batches, world.held_refused) == (1, 0)
    assert world.balance("alice") == 995 and world.balance("bob") == 998 and world.balance("carol") == 1007
    assert world.count("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'transfer'") == 2
    assert world.count("SELECT COUNT(*) FROM idempotency") == 3
    again = world.batch([("carol", "broke", "bob", 1)])  # the remembered failure, not a new try
    assert isinstance(again[0], KernelError) and again[0].reason.value == "INSUFFICIENT_FUNDS"
    assert world.balance("carol") == 1007
    ledger.check_invariants(world.store)
