"""Every move of scrip is exactly one `ledger.*` event (ledger.transfer / ledger.mint /
ledger.burn, one shape: data {from, to, amount, entry, memo}), emitted by server/kernel/ledger.py
itself. A client that follows balances from ledger.* events alone gets every balance right:
over escrow sales, bids (raised, lowered, cancelled, refunded on a change of control), a
resolved round (winners' change, losers' refunds, mints, basic income, the carry), loans
(accept, repay) and endowments."""

from __future__ import annotations

import itertools
import time

from server.kernel import events
from server.kernel.artifacts import SYSTEM_ACCOUNT
from tests.conftest import wait_until
from tests.test_oracle import ORACLE, World


def follow(evs) -> dict[str, int]:
    bal: dict[str, int] = {}
    for e in evs:
        d = e["data"]
        assert set(d) == {"from", "to", "amount", "entry", "memo"}, e
        assert {"ledger.mint": d["from"] == SYSTEM_ACCOUNT, "ledger.burn": d["to"] == SYSTEM_ACCOUNT,
                "ledger.transfer": SYSTEM_ACCOUNT not in (d["from"], d["to"])}[e["type"]], e
        for p, sign in ((d["from"], -1), (d["to"], 1)):
            if p != SYSTEM_ACCOUNT:
                bal[p] = bal.get(p, 0) + sign * d["amount"]
    return bal


def invoke(w: World, caller: str, target: str, method: str, **args):
    return w.run(lambda c: w.kernel.op_invoke(c, caller, target, method, args))


def test_balances_followed_from_ledger_events_equal_the_real_ones_in_process():
    w = World()
    w.oracle.settings = {**w.oracle.settings, "slots": 2}
    for n in ("a", "b", "c", "d"):
        w.agent(n, f"art_{n}")
    invoke(w, "a", "genesis_ledger", "transfer", to="b", amount=7, memo="gift")
    # An escrow sale.
    invoke(w, "b", "genesis_escrow", "list", artifact_id="art_b", price=25)
    invoke(w, "c", "genesis_escrow", "purchase", artifact_id="art_b")
    # Bids: placed, raised, lowered, cancelled, refunded by a change of control.
    w.bid("a", "art_a", 40)
    w.bid("a", "art_a", 55)
    w.bid("a", "art_a", 30)
    w.bid("c", "art_b", 9)
    w.bid("d", "art_d", 12)
    invoke(w, "d", "genesis_oracle", "cancel_bid", artifact_id="art_d")
    w.bid("d", "art_d", 5)
    w.bid("c", "art_c", 6)
    invoke(w, "c", "genesis_rights_registry", "transfer_control", artifact_id="art_c", to="b")
    # A loan: accepted, partly repaid.
    debt = invoke(w, "a", "genesis_debt", "offer", borrower="d", principal=50, repay_amount=60, due_at=w.now + 1000)
    invoke(w, "d", "genesis_debt", "accept", debt_id=debt["debt_id"])
    invoke(w, "d", "genesis_debt", "repay", debt_id=debt["debt_id"], amount=20)
    # A round: two winners pay the losing bid and get change, one loser refunded, mints, income.
    rec = w.advance_to_next_round()
    assert len(rec["winners"]) == 2 and len(rec["losers"]) == 1 and rec["minted"] > 0
    assert rec["income"]["share"] > 0 and rec["income"]["carry_out"] > 0   # 3 * 5 = 15 over 4 agents: 3 carried
    w.check()

    evs = events.read(w.conn, types=["ledger.*"], limit=10_000)
    real = {r[0]: r[1] for r in w.conn.execute("SELECT principal_id, scrip FROM balances")}
    got = follow(evs)
    assert {p: got.get(p, 0) for p in real} == real
    assert set(got) <= set(real)
    # Exactly one event per journal entry, each the entry it names.
    journal = {r[0]: (r[1], r[2], r[3]) for r in w.conn.execute("SELECT seq, debit, credit, amount FROM ledger_entries")}
    assert sorted(e["data"]["entry"] for e in evs) == sorted(journal)
    for e in evs:
        assert journal[e["data"]["entry"]] == (e["data"]["from"], e["data"]["to"], e["data"]["amount"])
    # Moves say what they are about: the artifact sold or bid on, the debt, the oracle for income.
    about = {(e["artifact_id"], e["data"]["memo"]) for e in evs}
    assert ("art_b", "escrow purchase art_b") in about and ("art_c", "oracle bid on art_c refunded: control changed") in about
    assert (debt["debt_id"], ) in {(a,) for a, _ in about} and (ORACLE, "oracle basic income") in about
    assert all(e["principal_id"] == ORACLE for e in evs if e["type"] == "ledger.mint" and e["artifact_id"] != "genesis_ledger")


REAL_CONFIG = """
[oracle]
interval_seconds = 2.0
slots = 1
minimum_bid = 1
"""


def test_a_subscriber_following_ledger_events_on_a_real_server_gets_every_balance(make_server):
    server = make_server(REAL_CONFIG)
    ann, bo, cy = (server.agent(n) for n in ("ann", "bo", "cy"))
    ann.write("ann.notes", "ann's notes on the market")
    bo.write("bo.notes", "bo's notes")
    ann.escrow_list("ann.notes", 11)
    bo.escrow_purchase("ann.notes")
    d = cy.debt_offer("ann", 40, 45, time.time() + 600)
    ann.debt_accept(d["debt_id"])
    ann.debt_repay(d["debt_id"], 45)
    bo.bid("bo.notes", 3)
    bo.transfer_control("bo.notes", "cy")                     # refunds bo's bid
    start = ann.get_state().last_event_seq
    # Both bids must count for one round: place them just after a (2 s, epoch-aligned) boundary.
    wait_until(lambda: 0.05 < time.time() % 2.0 < 0.6, 5, "the start of a round")
    bo.bid("ann.notes", 5)
    cy.bid("bo.notes", 4)                                     # bo wins, pays 4: income 1 each, 1 carried
    rounds = wait_until(lambda: [e for e in ann.events(after=start, types=["oracle.resolved"])
                                 if e["data"]["winners"]], 15, "a round with a winner")
    assert rounds[0]["data"]["income"]["share"] == 1
    conn = server.db()          # nothing moves any more: no bids are left and the carry is below 3
    try:
        real = {r[0]: r[1] for r in conn.execute("SELECT principal_id, scrip FROM balances")}
        entries = conn.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0]
    finally:
        conn.close()
    sub = server.client(cy.token)
    evs = [{"type": ev.type, "data": _plain(ev.data)}
           for ev in itertools.islice(sub.subscribe(after_seq=0, types=["ledger.*"], timeout=10), entries)]
    got = follow(evs)
    assert {p: got.get(p, 0) for p in real} == real and len(evs) == entries
    assert {e["type"] for e in evs} == {"ledger.mint", "ledger.transfer"}


def _plain(struct):
    from agent_runtime.client import to_python

    out = to_python(struct)
    for k in ("amount", "entry"):
        out[k] = int(out[k])
    return out
