"""genesis_debt against a real server: loans as tradeable debt artifacts."""

from __future__ import annotations

import time

import pytest

from agent_runtime import EcologyError
from tests.conftest import check_ledger


def reason(fn, *args, **kw) -> str:
    with pytest.raises(EcologyError) as e:
        fn(*args, **kw)
    return e.value.reason


def debt_events(client, debt_id: str) -> list[dict]:
    return [e for e in client.events(limit=500, types=["debt.*"]) if e["artifact_id"] == debt_id]


def test_offer_accept_partial_repayments_sale_midway_and_full_repayment(server):
    alice, bob, carol = server.agent("alice"), server.agent("bob"), server.agent("carol")
    due = time.time() + 120
    offer = alice.debt_offer("bob", 100, 130, due)
    debt_id = offer["debt_id"]
    assert offer["status"] == "offered" and offer["holder"] == "alice" and offer["lender"] == "alice"
    assert alice.balance() == 1000 and bob.balance() == 1000          # nothing moves on an offer
    art = carol.read(debt_id)                                          # anyone reads a debt
    assert art.access_contract_id == "genesis_debt_contract" and art.created_by == "genesis_debt"

    # Only the borrower accepts; an offer cannot be sold.
    assert reason(carol.debt_accept, debt_id) == "ACCESS_DENIED"
    assert reason(alice.escrow_list, debt_id, 10) == "ACCESS_DENIED"
    active = bob.debt_accept(debt_id)
    assert active["status"] == "active" and active["remaining"] == 130 and not active["overdue"]
    assert alice.balance() == 900 and bob.balance() == 1100
    assert reason(bob.debt_accept, debt_id) == "CONFLICT"

    # Partial repayments go to the holder; only the borrower repays.
    assert reason(carol.debt_repay, debt_id, 5) == "ACCESS_DENIED"
    r = bob.debt_repay(debt_id, 50)
    assert (r["paid"], r["paid_to"], r["repaid"], r["remaining"]) == (50, "alice", 50, 80)
    assert alice.balance() == 950 and bob.balance() == 1050

    # The creditor sells the debt through escrow. While it is listed, the seller is paid.
    alice.escrow_list(debt_id, 60)
    listed = carol.debt_status(debt_id)
    assert listed["listed"] and listed["controller"] == "genesis_escrow" and listed["holder"] == "alice"
    bob.debt_repay(debt_id, 10)
    assert alice.balance() == 960
    carol.escrow_purchase(debt_id)
    assert carol.balance() == 940 and alice.balance() == 1020
    s = bob.debt_status(debt_id)
    assert s["holder"] == "carol" and s["controller"] == "carol" and s["remaining"] == 70

    # Later repayments reach the new holder; an over-payment is capped at what remains.
    r = bob.debt_repay(debt_id, 1000)
    assert (r["paid"], r["paid_to"], r["status"], r["remaining"]) == (70, "carol", "repaid", 0)
    assert carol.balance() == 1010 and bob.balance() == 1100 - 130 and alice.balance() == 1020
    assert reason(bob.debt_repay, debt_id, 1) == "CONFLICT"

    # Everyone's lists, and the story in events.
    assert [d["debt_id"] for d in alice.debt_list()] == [debt_id]           # the lender
    assert [d["debt_id"] for d in carol.debt_list()] == [debt_id]           # the holder
    assert [d["debt_id"] for d in alice.debt_list("bob")] == [debt_id]      # the borrower
    kinds = [e["type"] for e in debt_events(alice, debt_id)]
    assert kinds == ["debt.offered", "debt.accepted", "debt.repaid", "debt.repaid", "debt.repaid"]
    assert sum(alice.balance(p) for p in ("alice", "bob", "carol")) == 3000
    check_ledger(server)


def test_the_debt_record_cannot_be_forged_by_anyone_but_genesis_debt(server):
    alice, bob, carol = server.agent("alice"), server.agent("bob"), server.agent("carol")
    debt_id = alice.debt_offer("bob", 10, 20, time.time() + 120)["debt_id"]
    bob.debt_accept(debt_id)
    alice.transfer_control(debt_id, "carol")                  # the creditor hands it over: allowed
    assert bob.debt_status(debt_id)["holder"] == "carol"
    for who in (alice, bob, carol):                            # lender, borrower, holder: none may write
        assert reason(who.write, debt_id, "", state={"repaid": 20, "status": "repaid"}) == "ACCESS_DENIED"
        assert reason(who.write, debt_id, "paid in full") == "ACCESS_DENIED"
        assert reason(who.write, debt_id, "", access_contract_id="genesis_public") == "ACCESS_DENIED"
        assert reason(who.delete, debt_id) == "ACCESS_DENIED"
    assert reason(bob.write, debt_id, "", state={"controller": "bob"}) == "INVALID_ARGS"
    s = bob.debt_status(debt_id)
    assert (s["status"], s["repaid"], s["remaining"], s["holder"]) == ("active", 0, 20, "carol")

    # A look-alike made by a user with the same contract is not a debt genesis_debt knows.
    bob.write("debt:99", "", access_contract_id="genesis_debt_contract",
              state={"lender": "bob", "borrower": "alice", "principal": 1, "repay_amount": 1, "repaid": 0,
                     "due_at": time.time() + 60, "status": "active"})
    assert reason(alice.debt_repay, "debt:99", 1) == "NOT_FOUND"
    assert reason(bob.debt_status, "debt:99") == "NOT_FOUND"
    assert reason(bob.write, "debt:99", "x") == "ACCESS_DENIED"   # its contract binds its maker too
    check_ledger(server)


def test_default_after_the_due_time_is_visible_once_and_nothing_is_taken(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    debt_id = alice.debt_offer("bob", 100, 150, time.time() + 1.5)["debt_id"]
    bob.debt_accept(debt_id)
    bob.debt_repay(debt_id, 20)
    bob.transfer("alice", 1080)                                # the borrower spends everything it has
    assert bob.balance() == 0
    time.sleep(1.7)
    s = alice.debt_status(debt_id)                             # the sweep marks it
    assert s["status"] == "defaulted" and s["overdue"] and s["remaining"] == 130 and s["defaulted_at"] >= s["due_at"]
    assert alice.debt_list()[0]["status"] == "defaulted"
    bob.debt_status(debt_id)
    defaults = [e for e in debt_events(alice, debt_id) if e["type"] == "debt.defaulted"]
    assert len(defaults) == 1 and defaults[0]["data"]["remaining"] == 130
    assert set(defaults[0]["related_ids"]) >= {"alice", "bob"}
    assert bob.balance() == 0                                  # nothing taken by force, never negative
    assert reason(bob.debt_repay, debt_id, 1) == "INSUFFICIENT_FUNDS"

    # A defaulted debt can still be sold, and repaid later to its holder.
    carol = server.agent("carol")
    alice.escrow_list(debt_id, 5)
    carol.escrow_purchase(debt_id)
    alice.transfer("bob", 200)
    r = bob.debt_repay(debt_id, 130)
    assert (r["status"], r["paid_to"], r["remaining"]) == ("repaid", "carol", 0)
    assert r["defaulted_at"] and carol.balance() == 1000 - 5 + 130
    check_ledger(server)


def test_default_is_found_lazily_by_repay_without_a_status_call(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    debt_id = alice.debt_offer("bob", 10, 10, time.time() + 1.0)["debt_id"]
    bob.debt_accept(debt_id)
    time.sleep(1.2)
    r = bob.debt_repay(debt_id, 4)
    assert r["status"] == "defaulted" and r["remaining"] == 6
    assert [e["type"] for e in debt_events(alice, debt_id)][-2:] == ["debt.defaulted", "debt.repaid"]
    check_ledger(server)


def test_offer_validation_cancel_and_a_lender_without_the_money(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    future = time.time() + 60
    assert reason(alice.debt_offer, "bob", 100, 99, future) == "INVALID_ARGS"       # repay < principal
    assert reason(alice.debt_offer, "bob", 100, 100, time.time() - 1) == "INVALID_ARGS"  # due in the past
    assert reason(alice.debt_offer, "alice", 1, 1, future) == "INVALID_ARGS"        # to oneself
    assert reason(alice.debt_offer, "nobody", 1, 1, future) == "NOT_FOUND"
    assert reason(alice.debt_offer, "genesis_ledger", 1, 1, future) == "NOT_FOUND"  # not a principal
    assert reason(alice.debt_offer, "bob", 0, 1, future) == "INVALID_ARGS"
    assert reason(alice.invoke, "genesis_debt", "offer", borrower="bob", principal=1, repay_amount=1,
                  due_at=future, extra=1) == "INVALID_ARGS"

    d1 = alice.debt_offer("bob", 10, 12, future)["debt_id"]
    assert reason(bob.debt_cancel, d1) == "ACCESS_DENIED"
    assert alice.debt_cancel(d1)["status"] == "cancelled"
    assert reason(bob.debt_accept, d1) == "CONFLICT"
    assert reason(alice.debt_cancel, d1) == "CONFLICT"

    d2 = alice.debt_offer("bob", 600, 700, future)["debt_id"]
    assert d2 != d1
    alice.transfer("bob", 500)                                 # the lender no longer has 600
    assert reason(bob.debt_accept, d2) == "INSUFFICIENT_FUNDS"
    s = bob.debt_status(d2)
    assert s["status"] == "offered" and alice.balance() == 500 and bob.balance() == 1500
    assert reason(bob.debt_status, "nothing-here") == "NOT_FOUND"
    assert reason(bob.debt_repay, d2, 1) == "CONFLICT"           # not accepted: nothing owed
    check_ledger(server)


def test_debt_contract_answers_when_invoked_directly(server):
    alice = server.agent("alice")
    ask = lambda action, requester, status="active": alice.invoke(  # noqa: E731
        "genesis_debt_contract", "check_permission", artifact_id="debt:1", action=action,
        requester_id=requester, context={"state": {"controller": "carol", "status": status}})["allowed"]
    assert ask("read", "anyone")
    assert not ask("write", "carol") and ask("write", "genesis_debt") and not ask("delete", "carol")
    assert ask("transfer", "carol") and not ask("transfer", "bob") and not ask("transfer", "carol", "offered")
    assert "genesis_debt" in alice.handbook("genesis_debt") and "repay" in alice.handbook("genesis_debt")
    assert alice.debt_list() == []
