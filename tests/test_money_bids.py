"""Only a controller bids on an artifact at the mint, and a bid does not survive a change of
control: whenever state.controller changes (escrow list / purchase / cancel, transfer_control)
the open bid is refunded to its bidder, with an oracle.bid_cancelled event. In-process kernel
with an injected clock (tests/test_oracle.py's World)."""

from __future__ import annotations

from server.errors import Reason
from server.kernel import events
from tests.test_oracle import ORACLE, World


def invoke(w: World, caller: str, target: str, method: str, **args):
    return w.run(lambda c: w.kernel.op_invoke(c, caller, target, method, args))


def cancelled(w: World) -> list[tuple]:
    return [(e["artifact_id"], e["data"]["bidder"], e["data"]["refunded"], e["data"].get("reason"))
            for e in events.read(w.conn, types=["oracle.bid_cancelled"])]


def test_transfer_of_control_refunds_the_old_controllers_bid():
    w = World()
    w.agent("a", "art_a")
    w.agent("b")
    w.agent("c", "art_c")
    w.bid("a", "art_a", 20)
    w.bid("c", "art_c", 8)
    invoke(w, "a", "genesis_rights_registry", "transfer_control", artifact_id="art_a", to="b")
    assert (w.bal("a"), w.bal(ORACLE)) == (1000, 8)            # refunded at once, in full
    assert cancelled(w) == [("art_a", "a", 20, "control changed")]
    w.check()
    rec = w.advance_to_next_round()
    # c's bid wins alone; nothing of a's bid is paid, nothing minted to b for it.
    assert [(x["artifact_id"], x["bidder"], x["minted_to"]) for x in rec["winners"]] == [("art_c", "c", "c")]
    assert w.bal("a") == 1000 + rec["income"]["share"] and w.bal("b") == 1000 + rec["income"]["share"]
    w.check()


def test_escrow_list_and_purchase_refund_bids_and_the_buyer_bids_anew():
    w = World()
    w.agent("seller", "item")
    w.agent("buyer")
    w.bid("seller", "item", 30)
    invoke(w, "seller", "genesis_escrow", "list", artifact_id="item", price=5)
    assert (w.bal("seller"), w.bal(ORACLE)) == (1000, 0)       # control went to the escrow: refunded
    w.fails(Reason.ACCESS_DENIED, lambda: w.bid("seller", "item", 30))   # no longer the controller
    invoke(w, "seller", "genesis_escrow", "cancel", artifact_id="item")
    w.bid("seller", "item", 30)                                # controller again: may bid again
    invoke(w, "seller", "genesis_escrow", "list", artifact_id="item", price=5)
    invoke(w, "buyer", "genesis_escrow", "purchase", artifact_id="item")
    assert (w.bal("seller"), w.bal("buyer"), w.bal(ORACLE)) == (1005, 995, 0)
    w.bid("buyer", "item", 4)
    rec = w.advance_to_next_round()
    assert [(x["bidder"], x["paid"], x["minted_to"]) for x in rec["winners"]] == [("buyer", 1, "buyer")]
    assert [r[3] for r in cancelled(w)] == ["control changed", "control changed"]
    w.check()


def test_only_the_controller_may_bid_even_where_the_contract_lets_anyone_transfer():
    w = World()
    w.agent("a")
    w.agent("b")
    w.run(lambda c: w.kernel.op_write(c, "a", {"artifact_id": "open", "content": "x",
                                               "access_contract_id": "genesis_public"}))
    e = w.fails(Reason.ACCESS_DENIED, lambda: w.bid("b", "open", 5))
    assert "controller" in e.message
    w.bid("a", "open", 5)
    # genesis_public lets b take control; a's bid is refunded as control moves.
    invoke(w, "b", "genesis_rights_registry", "transfer_control", artifact_id="open", to="b")
    assert (w.bal("a"), w.bal(ORACLE)) == (1000, 0)
    w.check()
