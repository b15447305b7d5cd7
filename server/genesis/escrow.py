"""genesis_escrow: sell control of an artifact for scrip, atomically.

Listing moves control to the escrow at once (state.controller = genesis_escrow), so
the seller can no longer write, delete or list it elsewhere while it is for sale.
Purchase moves the price to the seller and control to the buyer in one transaction.
"""

from __future__ import annotations

from server.errors import KernelError, Reason
from server.genesis.base import COUNT, ID, Call, Genesis, method
from server.kernel import artifacts, events, ledger


def set_controller(call: Call, art: artifacts.Artifact, to: str) -> artifacts.Artifact:
    """The one path that changes state.controller (escrow and transfer_control). An open
    bid at the mint by anyone but the new controller is refunded (genesis/oracle.py)."""
    from server.genesis.oracle import refund_on_control_change

    refund_on_control_change(call.conn, art.id, to, call.caller, call.now)
    new = artifacts.bump(art, call.now, state={**art.state, "controller": to})
    artifacts.save(call.conn, new)
    return new


class EscrowArtifact(Genesis):
    id = "genesis_escrow"
    has_standing = True
    description = ("Sells control of artifacts for scrip. list hands control to the escrow; purchase pays the "
                   "seller and hands control to the buyer in one transaction; cancel returns it.")

    def _listing(self, call: Call, artifact_id: str):
        row = call.conn.escrow_get(artifact_id)
        if row is None:
            raise KernelError(Reason.NOT_LISTED, f"{artifact_id} is not listed", field="artifact_id")
        return row

    @method("Offer control of an artifact for `price` scrip. Needs the `transfer` right on it.",
            {"artifact_id": ID, "price": COUNT}, ("artifact_id", "price"))
    def list(self, call: Call, artifact_id: str, price: int) -> dict:
        art = artifacts.require(call.conn, artifact_id)
        if artifact_id.startswith(artifacts.RESERVED_PREFIX):
            raise KernelError(Reason.ACCESS_DENIED, "genesis artifacts cannot be sold")
        if call.conn.escrow_get(artifact_id) is not None:
            raise KernelError(Reason.CONFLICT, f"{artifact_id} is already listed", field="artifact_id")
        self.kernel.authorize(call.conn, art, "transfer", call.caller, call.now)
        set_controller(call, art, self.id)
        call.conn.escrow_insert(artifact_id, call.caller, price, call.now)
        events.append(call.conn, "escrow.listed", principal_id=call.caller, artifact_id=artifact_id,
                      now=call.now, data={"price": price, "seller": call.caller})
        return {"artifact_id": artifact_id, "seller": call.caller, "price": price}

    @method("Buy a listed artifact: its price goes to the seller and control to you, or nothing happens.",
            {"artifact_id": ID}, ("artifact_id",))
    def purchase(self, call: Call, artifact_id: str) -> dict:
        seller, price, _ = self._listing(call, artifact_id)
        if seller == call.caller:
            raise KernelError(Reason.INVALID_ARGS, "you are the seller; use cancel", field="artifact_id")
        art = artifacts.require(call.conn, artifact_id)
        self.kernel.authorize(call.conn, art, "transfer", self.id, call.now)
        entry = ledger.transfer(call.conn, call.caller, seller, price, now=call.now,
                                memo=f"escrow purchase {artifact_id}", artifact_id=artifact_id) if price > 0 else None
        set_controller(call, art, call.caller)
        call.conn.escrow_delete(artifact_id)
        events.append(call.conn, "escrow.purchased", principal_id=call.caller, artifact_id=artifact_id,
                      now=call.now, related=[seller], data={"price": price, "seller": seller,
                                                            "buyer": call.caller, "entry": entry})
        return {"artifact_id": artifact_id, "seller": seller, "buyer": call.caller, "price": price}

    @method("Withdraw your listing; control returns to you.", {"artifact_id": ID}, ("artifact_id",))
    def cancel(self, call: Call, artifact_id: str) -> dict:
        seller, price, _ = self._listing(call, artifact_id)
        if seller != call.caller:
            raise KernelError(Reason.ACCESS_DENIED, "only the seller may cancel a listing", field="artifact_id")
        art = artifacts.require(call.conn, artifact_id)
        set_controller(call, art, seller)
        call.conn.escrow_delete(artifact_id)
        events.append(call.conn, "escrow.cancelled", principal_id=call.caller, artifact_id=artifact_id,
                      now=call.now, data={"price": price})
        return {"artifact_id": artifact_id, "cancelled": True}

    @method("Every open listing.")
    def listings(self, call: Call) -> dict:
        return {"listings": call.conn.escrow_all()}
