from __future__ import annotations

from server.errors import KernelError, Reason
from server.genesis.base import AMOUNT, COUNT, ID, LIMIT, Call, Genesis, method
from server.kernel import ledger


class LedgerArtifact(Genesis):
    id = "genesis_ledger"
    description = "Scrip balances, transfers from the caller, and the journal of every entry."

    @method("Scrip balance of a principal (default: the caller).", {"principal_id": ID})
    def balance(self, call: Call, principal_id: str | None = None) -> dict:
        pid = principal_id or call.caller
        scrip = ledger.balance(call.conn, pid)
        if scrip is None:
            raise KernelError(Reason.NOT_FOUND, f"{pid!r} is not a principal", field="principal_id")
        return {"principal_id": pid, "scrip": scrip}

    @method("Move `amount` scrip from the caller to principal `to`. Always from the caller.",
            {"to": ID, "amount": AMOUNT, "memo": {"type": "string", "maxLength": 200}},
            ("to", "amount"))
    def transfer(self, call: Call, to: str, amount: int, memo: str = "") -> dict:
        # + its event; the payer's balance as the debit left it (no second read)
        seq, left = ledger.transfer_with_balance(call.conn, call.caller, to, amount, now=call.now, memo=memo)
        return {"entry": seq, "from": call.caller, "to": to, "amount": amount, "balance": left}

    @method("Journal entries touching a principal (default: the caller), oldest first, after entry `after`.",
            {"principal_id": ID, "after": COUNT, "limit": LIMIT})
    def history(self, call: Call, principal_id: str | None = None, after: int = 0, limit: int = 100) -> dict:
        pid = principal_id or call.caller
        entries = ledger.history(call.conn, pid, after=after, limit=limit)
        return {"principal_id": pid, "entries": entries}
