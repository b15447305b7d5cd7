"""genesis_debt: scrip loans as tradeable debt artifacts.

A debt is an ordinary data artifact `debt:<n>` created by genesis_debt (created_by =
"genesis_debt", which no caller can be, is how genesis_debt recognises its own
records). Its state holds the terms and the progress:

    {controller, lender, borrower, principal, repay_amount, repaid, due_at, status,
     offered_at, accepted_at?, defaulted_at?, repaid_at?, cancelled_at?}

`state.controller` is the current creditor: the lender at first, then whoever bought the
debt (through genesis_escrow, like any artifact) or was handed it
(genesis_rights_registry.transfer_control). Its access contract,
`genesis_debt_contract`, lets anyone read it, only genesis_debt write or delete it (so
nobody can forge its state or its terms), and its controller transfer it once it is
accepted.

Money moves only by ledger transfers, so balances never go negative:
  * accept: the principal moves lender -> borrower (INSUFFICIENT_FUNDS if the lender no
    longer has it; nothing changes then);
  * repay: from the borrower to whoever holds the debt now (its controller; while it is
    listed in escrow, the listing's seller), capped at what remains. A debt held by its
    own borrower is extinguished by a repayment without any transfer.
Past due and not fully repaid, an active debt is marked `defaulted` (event
`debt.defaulted`, once): lazily whenever genesis_debt touches it, and by a sweep over all
debts on every `status` and `list`. Nothing is taken by force; a defaulted debt can still
be repaid (it then becomes `repaid`, keeping `defaulted_at`).
"""

from __future__ import annotations

from server.errors import KernelError, Reason, invalid
from server.genesis.base import AMOUNT, ID, Call, Genesis, method
from server.kernel import artifacts, events, ledger
from server.kernel.artifacts import Artifact

CONTRACT_ID = "genesis_debt_contract"
ESCROW_ID = "genesis_escrow"
STATUSES = ("offered", "active", "repaid", "defaulted", "cancelled")
TIME = {"type": "number", "minimum": 0, "maximum": 1e11}


class DebtArtifact(Genesis):
    id = "genesis_debt"
    description = ("Scrip loans as tradeable debt artifacts. A lender offers a loan; the borrower accepts "
                   "(the principal moves then); the borrower repays, in parts if it likes, to whoever holds "
                   "the debt at that moment (sell a debt through genesis_escrow like any artifact). Past due "
                   "and unpaid, a debt is marked defaulted for everyone to see; nothing is taken by force.")

    # -- helpers -----------------------------------------------------------------------

    def _load(self, call: Call, debt_id: str) -> Artifact:
        artifacts.check_id(debt_id, "debt_id")
        art = artifacts.get(call.conn, debt_id)
        if art is None or art.created_by != self.id or art.access_contract_id != CONTRACT_ID:
            raise KernelError(Reason.NOT_FOUND, f"no debt {debt_id!r}", field="debt_id")
        if art.deleted:
            raise KernelError(Reason.DELETED, f"debt {debt_id!r} was deleted", field="debt_id")
        return self._check_default(call, art)

    def _save(self, call: Call, art: Artifact, **state) -> Artifact:
        new_state = {**art.state, **state}
        # The same permission path as everyone else: the debt's contract allows us.
        self.kernel.authorize(call.conn, art, "write", self.id, call.now,
                              proposed={"metadata": art.metadata, "state": new_state,
                                        "content_changed": False, "interface_changed": False})
        new = artifacts.bump(art, call.now, state=new_state)
        artifacts.save(call.conn, new)
        return new

    def _check_default(self, call: Call, art: Artifact) -> Artifact:
        s = art.state
        if s.get("status") == "active" and call.now >= s["due_at"] and s["repaid"] < s["repay_amount"]:
            art = self._save(call, art, status="defaulted", defaulted_at=call.now)
            events.append(call.conn, "debt.defaulted", principal_id=self.id, artifact_id=art.id, now=call.now,
                          related=[s["borrower"], s["lender"], self._holder(call, art)],
                          data={"borrower": s["borrower"], "holder": self._holder(call, art),
                                "remaining": s["repay_amount"] - s["repaid"], "due_at": s["due_at"]})
        return art

    def _sweep(self, call: Call) -> None:
        """Mark every active debt that is past due as defaulted."""
        for debt_id in call.conn.artifacts_state_due(self.id, "active", call.now):
            self._load(call, debt_id)

    def _holder(self, call: Call, art: Artifact) -> str:
        """Who is paid now: the controller, or the seller while it is listed in escrow."""
        holder = art.controller or art.state.get("lender")
        if holder == ESCROW_ID:
            row = call.conn.escrow_get(art.id)
            if row is not None:
                holder = row[0]
        return holder

    def _view(self, call: Call, art: Artifact) -> dict:
        s = art.state
        remaining = max(0, s["repay_amount"] - s["repaid"]) if s["status"] in ("active", "defaulted") else 0
        return {
            "debt_id": art.id, **{k: v for k, v in s.items() if k != "controller"},
            "controller": art.controller, "holder": self._holder(call, art),
            "listed": art.controller == ESCROW_ID, "remaining": remaining,
            "overdue": remaining > 0 and call.now >= s["due_at"], "version": art.version,
        }

    def _is_principal(self, call: Call, pid: str) -> bool:
        art = artifacts.get(call.conn, pid)
        return bool(art and art.has_standing and not art.deleted and ledger.balance(call.conn, pid) is not None)

    def _next_id(self, call: Call) -> str:
        n = call.conn.artifacts_created_by_count(self.id) + 1
        while artifacts.get(call.conn, f"debt:{n}") is not None:
            n += 1
        return f"debt:{n}"

    def _move(self, call: Call, src: str, dst: str, amount: int, memo: str, debt_id: str) -> int:
        return ledger.transfer(call.conn, src, dst, amount, now=call.now, memo=memo, artifact_id=debt_id)

    # -- methods -----------------------------------------------------------------------

    @method("Offer a loan to `borrower`: you will give `principal` scrip when it accepts, and it owes you "
            "`repay_amount` (>= principal) by `due_at` (seconds since the epoch, in the future). Creates the "
            "debt artifact (status offered); nothing moves yet.",
            {"borrower": ID, "principal": AMOUNT, "repay_amount": AMOUNT, "due_at": TIME},
            ("borrower", "principal", "repay_amount", "due_at"))
    def offer(self, call: Call, borrower: str, principal: int, repay_amount: int, due_at: float) -> dict:
        lender = call.caller
        if not self._is_principal(call, lender):
            raise KernelError(Reason.ACCESS_DENIED, f"{lender} holds no scrip account; only principals lend")
        if borrower == lender:
            raise invalid("borrower", "cannot lend to oneself")
        if not self._is_principal(call, borrower):
            raise KernelError(Reason.NOT_FOUND, f"{borrower!r} is not a principal", field="borrower")
        if repay_amount < principal:
            raise invalid("repay_amount", "must be at least the principal")
        if due_at <= call.now:
            raise invalid("due_at", f"must be in the future (now is {call.now:.3f})")
        debt_id = self._next_id(call)
        state = {"controller": lender, "lender": lender, "borrower": borrower, "principal": principal,
                 "repay_amount": repay_amount, "repaid": 0, "due_at": due_at, "status": "offered",
                 "offered_at": call.now}
        art = Artifact(
            id=debt_id, content="", created_by=self.id, access_contract_id=CONTRACT_ID, has_standing=False,
            can_execute=False, interface=[], metadata={"kind": "debt", "lender": lender, "borrower": borrower,
                                                       "description": f"loan of {principal} scrip, "
                                                                      f"{repay_amount} due at {due_at}"},
            state=state, version=1, created_at=call.now, updated_at=call.now, size_bytes=0, billed_to=lender)
        artifacts.insert(call.conn, art)
        events.append(call.conn, "debt.offered", principal_id=lender, artifact_id=debt_id, now=call.now,
                      related=[borrower], data={"lender": lender, "borrower": borrower, "principal": principal,
                                                "repay_amount": repay_amount, "due_at": due_at})
        return self._view(call, art)

    @method("Accept a loan offered to you: its principal moves from the lender to you now, and the debt "
            "becomes active.", {"debt_id": ID}, ("debt_id",))
    def accept(self, call: Call, debt_id: str) -> dict:
        art = self._load(call, debt_id)
        s = art.state
        if call.caller != s["borrower"]:
            raise KernelError(Reason.ACCESS_DENIED, f"only the borrower {s['borrower']} may accept {debt_id}",
                              field="debt_id")
        if s["status"] != "offered":
            raise KernelError(Reason.CONFLICT, f"{debt_id} is {s['status']}, not offered", field="debt_id")
        if call.now >= s["due_at"]:
            raise KernelError(Reason.CONFLICT, f"{debt_id}: the offer is past its due time", field="debt_id")
        entry = self._move(call, s["lender"], s["borrower"], s["principal"], f"loan {debt_id}", debt_id)
        art = self._save(call, art, status="active", accepted_at=call.now)
        events.append(call.conn, "debt.accepted", principal_id=call.caller, artifact_id=debt_id, now=call.now,
                      related=[s["lender"]], data={"lender": s["lender"], "borrower": s["borrower"],
                                                   "principal": s["principal"], "entry": entry})
        return self._view(call, art)

    @method("Repay (part of) a debt you owe: min(amount, remaining) moves from you to whoever holds the "
            "debt now (its controller; while listed in escrow, the seller). Allowed after a default too.",
            {"debt_id": ID, "amount": AMOUNT}, ("debt_id", "amount"))
    def repay(self, call: Call, debt_id: str, amount: int) -> dict:
        art = self._load(call, debt_id)
        s = art.state
        if call.caller != s["borrower"]:
            raise KernelError(Reason.ACCESS_DENIED, f"only the borrower {s['borrower']} repays {debt_id}",
                              field="debt_id")
        if s["status"] not in ("active", "defaulted"):
            raise KernelError(Reason.CONFLICT, f"{debt_id} is {s['status']}; nothing to repay", field="debt_id")
        remaining = s["repay_amount"] - s["repaid"]
        pay = min(amount, remaining)
        holder = self._holder(call, art)
        entry = None
        if holder != s["borrower"]:  # a borrower holding its own debt owes nobody
            entry = self._move(call, s["borrower"], holder, pay, f"repay {debt_id}", debt_id)
        repaid = s["repaid"] + pay
        changes: dict = {"repaid": repaid}
        if repaid >= s["repay_amount"]:
            changes.update(status="repaid", repaid_at=call.now)
        art = self._save(call, art, **changes)
        events.append(call.conn, "debt.repaid", principal_id=call.caller, artifact_id=debt_id, now=call.now,
                      related=[holder], data={"amount": pay, "to": holder, "repaid": repaid,
                                              "remaining": s["repay_amount"] - repaid, "entry": entry,
                                              "status": art.state["status"]})
        return {**self._view(call, art), "paid": pay, "paid_to": holder}

    @method("Withdraw a loan offer that was not accepted yet (the lender only).", {"debt_id": ID}, ("debt_id",))
    def cancel(self, call: Call, debt_id: str) -> dict:
        art = self._load(call, debt_id)
        s = art.state
        if call.caller != s["lender"]:
            raise KernelError(Reason.ACCESS_DENIED, f"only the lender {s['lender']} may cancel {debt_id}",
                              field="debt_id")
        if s["status"] != "offered":
            raise KernelError(Reason.CONFLICT, f"{debt_id} is {s['status']}; only an offer can be cancelled",
                              field="debt_id")
        art = self._save(call, art, status="cancelled", cancelled_at=call.now)
        events.append(call.conn, "debt.cancelled", principal_id=call.caller, artifact_id=debt_id, now=call.now,
                      related=[s["borrower"]], data={"lender": s["lender"], "borrower": s["borrower"]})
        return self._view(call, art)

    @method("One debt: its terms, status, repaid and remaining amounts, current holder, and whether it is "
            "overdue.", {"debt_id": ID}, ("debt_id",))
    def status(self, call: Call, debt_id: str) -> dict:
        self._sweep(call)
        return self._view(call, self._load(call, debt_id))

    @method("Debts where a principal (default: the caller) is the lender, the borrower or the current "
            "holder, oldest first.", {"principal_id": ID})
    def list(self, call: Call, principal_id: str | None = None) -> dict:
        pid = principal_id or call.caller
        self._sweep(call)
        rows = call.conn.artifacts_state_involving(self.id, pid)
        return {"principal_id": pid, "debts": [self._view(call, self._load(call, debt_id)) for debt_id in rows]}
