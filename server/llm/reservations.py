"""Held LLM budget (table `llm_reservations`). Runs in the kernel's writer thread.

`llm_budget` is a stock resource: quota = what remains, used = what was spent. A
reservation moves its amount out of quota (so concurrent calls cannot overspend, and
the amount cannot be given away) until it is settled (charge the actual cost, at most
the amount held: used += cost, quota += the rest) or released (quota += amount, and
the compute the call was charged is refunded). Reservations found at startup belong to
calls a crash interrupted: they are released.
"""

from __future__ import annotations

from server.errors import KernelError, Reason
from server.kernel import resources
from server.storage.store import Store

RESOURCE = "llm_budget"


def budget(conn: Store, principal_id: str) -> tuple[int, int] | None:
    """(remaining, spent) micro-USD, or None if `principal_id` has no llm_budget."""
    return conn.stock_get(principal_id, RESOURCE)


def held(conn: Store, principal_id: str) -> tuple[int, int]:
    """(micro-USD held, number of calls in flight) for a principal."""
    return conn.reservations_held(principal_id)


def reserve(conn: Store, principal_id: str, *, amount: int, tokens: int, compute: float,
            model: str, request_id: str, now: float) -> int:
    """Hold `amount` micro-USD of the principal's budget; returns the reservation id.
    A budget smaller than `amount` fails INSUFFICIENT_RESOURCES without a retry delay:
    the budget does not renew, so waiting does not help."""
    have = budget(conn, principal_id)
    if have is None:
        raise KernelError(Reason.INSUFFICIENT_RESOURCES, f"{principal_id} is not a principal with an llm_budget")
    remaining = have[0]
    if remaining < amount:
        raise KernelError(
            Reason.INSUFFICIENT_RESOURCES,
            f"{principal_id}'s llm_budget has {remaining} micro-USD left; this call may cost up to {amount} "
            "(lower max_tokens, shorten the messages, or get budget from another principal)")
    conn.stock_add(principal_id, RESOURCE, quota=-amount)
    return conn.reservation_add(principal_id, amount, tokens, compute, model, request_id, now)


def _take(conn: Store, reservation_id: int) -> dict | None:
    return conn.reservation_take(reservation_id)


def settle(conn: Store, reservation_id: int, cost: int) -> int:
    """Charge `cost` (at most the amount held), give back the rest; returns the charge."""
    row = _take(conn, reservation_id)
    if row is None:  # released meanwhile (the server is stopping): nothing to charge
        raise KernelError(Reason.LLM_UNAVAILABLE, "the call was cancelled while the model answered; "
                                                  "nothing was charged")
    charged = max(0, min(cost, row["amount"]))
    conn.stock_add(row["principal_id"], RESOURCE, quota=row["amount"] - charged, used=charged)
    return charged


def release(conn: Store, reservation_id: int, now: float) -> bool:
    """Give the whole amount back and refund the call's compute: nothing is charged.
    False if it was already released (releasing twice is harmless)."""
    row = _take(conn, reservation_id)
    if row is None:
        return False
    _give_back(conn, row, now)
    return True


def _give_back(conn: Store, row: dict, now: float) -> None:
    conn.stock_add(row["principal_id"], RESOURCE, quota=row["amount"])
    resources.refund(conn, row["principal_id"], "compute", row["compute"], now)


def release_all(conn: Store, now: float) -> int:
    """At startup: release every reservation (their calls died with the last process)."""
    rows = conn.reservations_take_all()
    for row in rows:
        _give_back(conn, row, now)
    return len(rows)
