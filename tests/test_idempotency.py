"""Idempotency of mutating calls: a client request id makes a retry return the first
outcome (success or permanent failure) and apply nothing twice. Failures that waiting
can fix (RetryInfo) are not remembered, so the same request id succeeds later.
All over a real server."""

from __future__ import annotations

import threading
import time

import pytest

from agent_runtime.errors import EcologyError
from tests.conftest import check_ledger


def count(server, sql: str, *params) -> int:
    conn = server.db()
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def transfers_with_memo(server, memo: str) -> int:
    return count(server, "SELECT COUNT(*) FROM ledger_entries WHERE kind='transfer' AND memo=?", memo)


def test_retried_transfer_returns_first_outcome_and_moves_scrip_once(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    first = alice.transfer("bob", 40, memo="pay-1", request_id="pay-1")
    assert first["amount"] == 40 and first["balance"] == 960
    again = alice.transfer("bob", 40, memo="pay-1", request_id="pay-1")
    assert again == first
    # A retry over a brand-new connection (the client reconnected) is the same request.
    with server.client(alice.token) as reconnected:
        assert reconnected.transfer("bob", 40, memo="pay-1", request_id="pay-1") == first
    assert alice.balance() == 960 and bob.balance() == 1040
    assert transfers_with_memo(server, "pay-1") == 1
    assert count(server, "SELECT COUNT(*) FROM events WHERE type='ledger.transfer'") == 1
    check_ledger(server)


def test_retry_that_would_now_fail_returns_the_first_success(server):
    """The kernel runs a call before it looks its request id up (Kernel.idempotent): a retry
    whose run would now fail (the scrip is gone) still answers the first success, and that
    run leaves nothing behind."""
    alice, bob = server.agent("alice"), server.agent("bob")
    everything = alice.balance()
    first = alice.transfer("bob", everything, request_id="all-in")
    assert first["balance"] == 0
    for _ in range(3):
        assert alice.transfer("bob", everything, request_id="all-in") == first
    with pytest.raises(EcologyError) as exc:
        alice.transfer("bob", everything, request_id="all-in-2")  # a new request does fail
    assert exc.value.reason == "INSUFFICIENT_FUNDS"
    assert alice.balance() == 0 and bob.balance() == 2 * everything
    assert count(server, "SELECT COUNT(*) FROM events WHERE type='ledger.transfer'") == 1
    check_ledger(server)


def test_retried_write_and_delete_return_first_outcome(server):
    alice = server.agent("alice")
    created = alice.write("doc", "v1 text", request_id="w-1")
    assert created.created and created.artifact.version == 1
    retry = alice.write("doc", "v1 text", request_id="w-1")
    assert retry.created and retry.artifact.version == 1 and retry.artifact.content == "v1 text"
    assert alice.read("doc").version == 1

    # An ordinary update moves on; replaying w-1 still answers its first outcome and
    # does not overwrite the newer content.
    alice.write("doc", "v2 text")
    replay = alice.write("doc", "v1 text", request_id="w-1")
    assert replay.artifact.version == 1 and replay.created
    current = alice.read("doc")
    assert current.version == 2 and current.content == "v2 text"
    assert count(server, "SELECT COUNT(*) FROM events WHERE type='artifact.written' AND artifact_id='doc'") == 2

    tomb = alice.delete("doc", request_id="d-1")
    assert tomb.deleted and tomb.version == 3
    again = alice.delete("doc", request_id="d-1")  # not DELETED: the first outcome
    assert again.deleted and again.version == 3
    with pytest.raises(EcologyError) as exc:
        alice.delete("doc")  # without a request id it is a new call
    assert exc.value.reason == "DELETED"
    assert count(server, "SELECT COUNT(*) FROM events WHERE type='artifact.deleted' AND artifact_id='doc'") == 1


def test_permanent_failure_is_remembered(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    with pytest.raises(EcologyError) as first:
        alice.transfer("bob", 1500, request_id="big")
    assert first.value.reason == "INSUFFICIENT_FUNDS" and first.value.retry_after is None

    bob.transfer("alice", 600)  # now alice could afford it...
    assert alice.balance() == 1600
    with pytest.raises(EcologyError) as again:
        alice.transfer("bob", 1500, request_id="big")  # ...but the retry is the same request
    assert again.value.reason == "INSUFFICIENT_FUNDS"
    assert again.value.message == first.value.message
    assert alice.balance() == 1600 and bob.balance() == 400

    # The same transfer under a new request id is a new request, and succeeds.
    alice.transfer("bob", 1500, request_id="big-2")
    assert alice.balance() == 100 and bob.balance() == 1900
    check_ledger(server)


def test_remembered_invalid_args_failure(server):
    alice = server.agent("alice")
    server.agent("bob")
    for _ in range(2):
        with pytest.raises(EcologyError) as exc:
            alice.transfer("bob", -5, request_id="neg")
        assert exc.value.reason == "INVALID_ARGS" and exc.value.field == "args.amount"
    assert alice.balance() == 1000


def test_request_id_reused_for_another_method_is_invalid(server):
    alice = server.agent("alice")
    server.agent("bob")
    first = alice.transfer("bob", 7, request_id="x")
    alice.write("thing", "for sale")

    with pytest.raises(EcologyError) as exc:
        alice.write("other", "text", request_id="x")
    assert exc.value.reason == "INVALID_ARGS" and exc.value.field == "request_id"
    with pytest.raises(EcologyError) as exc:
        alice.invoke("genesis_escrow", "list", request_id="x", artifact_id="thing", price=5)
    assert exc.value.reason == "INVALID_ARGS" and exc.value.field == "request_id"
    with pytest.raises(EcologyError) as exc:
        alice.delete("thing", request_id="x")
    assert exc.value.reason == "INVALID_ARGS" and exc.value.field == "request_id"

    # Nothing of those happened, and the original request is still answered.
    with pytest.raises(EcologyError) as exc:
        alice.read("other")
    assert exc.value.reason == "NOT_FOUND"
    assert alice.read("thing").state["controller"] == alice.agent_id and not alice.read("thing").deleted
    assert alice.escrow_listings() == []
    assert alice.transfer("bob", 7, request_id="x") == first
    assert alice.balance() == 993


def test_request_ids_are_scoped_to_the_principal(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    a = alice.transfer("bob", 10, request_id="same")
    b = bob.transfer("alice", 3, request_id="same")
    assert a["from"] == "alice" and b["from"] == "bob" and a["entry"] != b["entry"]
    assert alice.balance() == 993 and bob.balance() == 1007


def test_concurrent_duplicates_apply_once(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    results, errors = [], []
    barrier = threading.Barrier(8)

    def send():
        barrier.wait()
        try:
            results.append(alice.transfer("bob", 25, memo="dup", request_id="dup-1"))
        except EcologyError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert transfers_with_memo(server, "dup") == 1
    assert alice.balance() == 975 and bob.balance() == 1025


def test_overlong_request_id_is_rejected(server):
    alice = server.agent("alice")
    server.agent("bob")
    with pytest.raises(EcologyError) as exc:
        alice.transfer("bob", 1, request_id="r" * 129)
    assert exc.value.reason == "INVALID_ARGS" and exc.value.field == "request_id"
    assert alice.balance() == 1000
    alice.transfer("bob", 1, request_id="r" * 128)  # the limit itself is fine
    assert alice.balance() == 999


def test_failure_with_retry_info_is_not_remembered(make_server):
    # One handbook call costs 1 + 5 compute: with capacity 2 and rate 10/s the agent
    # lands at -4, i.e. 0.4 s of compute debt.
    server = make_server('[costs]\n"genesis_handbook.pages" = 5.0\n')
    poor = server.agent("poor", compute_rate=10.0, compute_capacity=2.0)
    server.agent("bob")

    def compute():
        return next(f for f in poor.get_state().flow if f.name == "compute")

    def into_debt():
        time.sleep(compute().seconds_until_usable + 0.02)
        poor.invoke("genesis_handbook", "pages")
        assert compute().balance < 0

    into_debt()
    with pytest.raises(EcologyError) as exc:
        poor.write("note", "hello", request_id="w")
    assert exc.value.reason == "INSUFFICIENT_RESOURCES"
    assert 0 < exc.value.retry_after <= 0.5
    time.sleep(exc.value.retry_after + 0.05)
    done = poor.write("note", "hello", request_id="w")  # same id, now it runs
    assert done.created and done.artifact.version == 1
    # The success is remembered: a retry answers it (even while in debt again) and
    # creates nothing new.
    again = poor.write("note", "hello", request_id="w")
    assert again.created and again.artifact.version == 1
    assert count(server, "SELECT COUNT(*) FROM events WHERE type='artifact.written' AND artifact_id='note'") == 1

    # The same for a transfer.
    into_debt()
    with pytest.raises(EcologyError) as exc:
        poor.transfer("bob", 10, memo="later", request_id="t")
    assert exc.value.reason == "INSUFFICIENT_RESOURCES" and exc.value.retry_after > 0
    assert transfers_with_memo(server, "later") == 0
    time.sleep(exc.value.retry_after + 0.05)
    poor.transfer("bob", 10, memo="later", request_id="t")
    poor.transfer("bob", 10, memo="later", request_id="t")
    assert transfers_with_memo(server, "later") == 1
    assert poor.get_state().scrip == 990  # GetState is free: poor is in debt again
    check_ledger(server)
