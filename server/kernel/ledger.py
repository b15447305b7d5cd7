"""The ledger: scrip, an integer currency, moved only by three explicit operations.

Invariants (asserted by `check_invariants`, tested after every operation in the tests):
  I1. Every balance is an integer >= 0 (also a CHECK constraint in the schema).
  I2. sum(balances) == minted - burned.
  I3. Every change is an immutable journal entry debiting one account and crediting
      another with a positive amount; mint debits and burn credits SYSTEM_ACCOUNT,
      the issuance account, which holds no balance row.
  I4. minted == sum(mint entries), burned == sum(burn entries).

`mint`, `burn` and `transfer` are the only functions that change balances. They run
inside the caller's transaction (the executor's savepoint), so a failure anywhere in an
operation undoes every entry it made.

Events: each of them also appends its event, here and nowhere else, so that every move of
scrip is exactly one `ledger.*` event and a client can follow every balance from
`ledger.*` events alone (tests/test_money_events.py). One shape for all three:
  type          ledger.transfer | ledger.mint | ledger.burn
  principal_id  `by`: for a transfer or burn the debited account unless given; for a mint
                whoever mints (genesis_system for the endowment, genesis_oracle for the mint)
  artifact_id   what the move is about (the artifact bought, bid on, priced, the debt...);
                default genesis_ledger
  related_ids   the parties other than principal_id (never genesis_system)
  data          {from, to, amount, entry, memo}; `from` of a mint and `to` of a burn are
                genesis_system (the issuance account); `entry` is the journal entry's seq.
Callers must not append ledger.* events of their own.
"""

from __future__ import annotations

from server.errors import KernelError, Reason
from server.kernel import events
from server.kernel.artifacts import SYSTEM_ACCOUNT
from server.storage.store import one_snapshot

LEDGER_ID = "genesis_ledger"

MAX_AMOUNT = 2**53  # amounts travel as JSON numbers; keep them exact


def _check_amount(amount: object) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise KernelError(Reason.INVALID_ARGS, "amount must be an integer", field="amount")
    if amount <= 0:
        raise KernelError(Reason.INVALID_ARGS, "amount must be positive", field="amount")
    if amount > MAX_AMOUNT:
        raise KernelError(Reason.INVALID_ARGS, "amount too large", field="amount")
    return amount


def open_account(conn, principal_id: str) -> None:
    conn.balance_open(principal_id)


def balance(conn, principal_id: str) -> int | None:
    """Balance of a principal, or None if it has no account."""
    return conn.balance_get(principal_id)


def _entry(conn, now, debit, credit, amount, kind, memo) -> int:
    return conn.ledger_entry(now, debit, credit, amount, kind, memo[:200])


def _credit(conn, principal_id: str, amount: int) -> None:
    if not conn.balance_credit(principal_id, amount):
        raise KernelError(Reason.NOT_FOUND, f"{principal_id!r} is not a principal", field="to")


def _debit(conn, principal_id: str, amount: int) -> int:
    """Take `amount` from a balance that has it; returns the new balance. One statement
    when it succeeds; the balance is read again only to say why it failed."""
    left = conn.balance_debit(principal_id, amount)
    if left is not None:
        return left
    have = balance(conn, principal_id)
    if have is None:
        raise KernelError(Reason.NOT_FOUND, f"{principal_id!r} is not a principal")
    raise KernelError(
        Reason.INSUFFICIENT_FUNDS, f"{principal_id} has {have} scrip, needs {amount}"
    )


def _event(conn, kind: str, by: str, artifact_id: str, now: float, src: str, dst: str, amount: int,
           entry: int, memo: str) -> None:
    related = [p for p in dict.fromkeys((src, dst)) if p not in (by, SYSTEM_ACCOUNT)]
    events.append(conn, f"ledger.{kind}", principal_id=by, artifact_id=artifact_id or LEDGER_ID, now=now,
                  related=related, data={"from": src, "to": dst, "amount": amount, "entry": entry,
                                         "memo": memo[:200]})


def transfer(conn, src: str, dst: str, amount: int, *, now: float, memo: str = "", artifact_id: str = LEDGER_ID,
             by: str | None = None) -> int:
    """Move scrip between two principals, with its `ledger.transfer` event (see the module
    docstring). Returns the journal entry's sequence number."""
    return transfer_with_balance(conn, src, dst, amount, now=now, memo=memo, artifact_id=artifact_id, by=by)[0]


def transfer_with_balance(conn, src: str, dst: str, amount: int, *, now: float, memo: str = "",
                          artifact_id: str = LEDGER_ID, by: str | None = None) -> tuple[int, int]:
    """`transfer`, returning (the journal entry's sequence number, `src`'s balance after it)."""
    _check_amount(amount)
    if src == dst:
        raise KernelError(Reason.INVALID_ARGS, "cannot transfer to oneself", field="to")
    if SYSTEM_ACCOUNT in (src, dst):
        raise KernelError(Reason.INVALID_ARGS, "the issuance account moves scrip only by mint and burn",
                          field="to" if dst == SYSTEM_ACCOUNT else "from")
    left = _debit(conn, src, amount)
    _credit(conn, dst, amount)
    entry = _entry(conn, now, src, dst, amount, "transfer", memo)
    _event(conn, "transfer", by or src, artifact_id, now, src, dst, amount, entry, memo)
    return entry, left


def mint(conn, to: str, amount: int, *, now: float, memo: str = "", artifact_id: str = LEDGER_ID,
         by: str = SYSTEM_ACCOUNT) -> int:
    """Create new scrip for `to` (recorded against the issuance account), with its
    `ledger.mint` event."""
    _check_amount(amount)
    _credit(conn, to, amount)
    conn.ledger_totals_add(minted=amount)
    entry = _entry(conn, now, SYSTEM_ACCOUNT, to, amount, "mint", memo)
    _event(conn, "mint", by, artifact_id, now, SYSTEM_ACCOUNT, to, amount, entry, memo)
    return entry


def burn(conn, src: str, amount: int, *, now: float, memo: str = "", artifact_id: str = LEDGER_ID,
         by: str | None = None) -> int:
    """Destroy scrip held by `src`, with its `ledger.burn` event."""
    _check_amount(amount)
    _debit(conn, src, amount)
    conn.ledger_totals_add(burned=amount)
    entry = _entry(conn, now, src, SYSTEM_ACCOUNT, amount, "burn", memo)
    _event(conn, "burn", by or src, artifact_id, now, src, SYSTEM_ACCOUNT, amount, entry, memo)
    return entry


def history(conn, principal_id: str, *, after: int = 0, limit: int = 100) -> list[dict]:
    return conn.ledger_history(principal_id, after, limit)


def totals(conn) -> dict:
    return conn.ledger_totals()


def check_invariants(conn) -> dict:
    """Assert I1-I4 over the whole database; returns the totals. Used by tests and
    `ecology status`."""
    with one_snapshot(conn):  # the totals and the audit of one committed state
        t = totals(conn)
        audit = conn.ledger_audit()
    assert audit["negative"] == 0, "I1: negative balance"
    assert t["total_balances"] == t["minted"] - t["burned"], f"I2 broken: {t}"
    sums = audit["sums"]
    assert sums.get("mint", 0) == t["minted"], "I4: minted total differs from the journal"
    assert sums.get("burn", 0) == t["burned"], "I4: burned total differs from the journal"
    # Replaying the journal gives every balance exactly.
    replay: dict[str, int] = {}
    for debit, credit, amount in audit["entries"]:
        replay[debit] = replay.get(debit, 0) - amount
        replay[credit] = replay.get(credit, 0) + amount
    replay.pop(SYSTEM_ACCOUNT, None)
    for pid, scrip in audit["balances"].items():
        assert replay.get(pid, 0) == scrip, f"I3: journal replay of {pid} gives {replay.get(pid, 0)}, balance {scrip}"
    return t
