"""Resources of principals: flow resources (token buckets with debt) and stocks.

Flow: `compute` (and any other named bucket). Charging is `TokenBucket.spend`: allowed
while the balance is >= 0, may leave debt; while in debt, the caller gets
RESOURCE_EXHAUSTED / INSUFFICIENT_RESOURCES with retry_after = the exact seconds until
the balance is back at zero.

Stock: `disk_bytes` (quota and used; a write over quota fails QUOTA_EXCEEDED, no retry)
and `llm_budget` in integer micro-dollars (quota = what remains; used = spent).
"""

from __future__ import annotations


from server.errors import KernelError, Reason
from server.kernel.buckets import TokenBucket

FLOW_RESOURCES = ("compute",)
STOCK_RESOURCES = ("disk_bytes", "llm_budget")
# Units of genesis_rights_registry.transfer_quota.
TRANSFERABLE = ("disk_bytes", "llm_budget", "compute_rate", "compute_capacity")


def create_principal(conn, principal_id: str, *, now: float, compute_rate: float,
                     compute_capacity: float, disk_quota: int, llm_budget: int) -> None:
    conn.flow_create(principal_id, "compute", compute_rate, compute_capacity, compute_capacity, now)
    conn.stock_create(principal_id, "disk_bytes", disk_quota)
    conn.stock_create(principal_id, "llm_budget", llm_budget)


def load_bucket(conn, principal_id: str, resource: str) -> TokenBucket | None:
    row = conn.flow_get(principal_id, resource)
    return TokenBucket(*row) if row else None


def _store_bucket(conn, principal_id: str, resource: str, b: TokenBucket) -> None:
    conn.flow_put(principal_id, resource, b.rate, b.capacity, b.balance, b.updated_at)


def require_usable(conn, principal_id: str, resource: str, now: float) -> None:
    """Fail if the principal is in debt on `resource` (before any work is done)."""
    b = load_bucket(conn, principal_id, resource)
    if b is None:
        raise KernelError(Reason.INSUFFICIENT_RESOURCES, f"{principal_id} has no {resource} resource")
    wait = b.seconds_until_usable(now)
    if wait > 0:
        raise KernelError(
            Reason.INSUFFICIENT_RESOURCES,
            f"{principal_id} is in {resource} debt ({b.level(now):.3f}); usable again in {wait:.3f}s",
            retry_after=wait,
        )


def charge(conn, principal_id: str, resource: str, amount: float, now: float, *, force: bool = False) -> None:
    """Spend `amount` of a flow resource, possibly into debt; refused (with the exact
    wait) while already in debt, even for a zero amount - one read of the bucket does
    both the check and the spend. `force`: charge for what was already consumed (CPU
    time), even when already in debt."""
    if amount <= 0 and force:
        return
    b = load_bucket(conn, principal_id, resource)
    if b is None:
        if force:
            return  # a payer without buckets cannot exist; nothing to charge
        raise KernelError(Reason.INSUFFICIENT_RESOURCES, f"{principal_id} has no {resource} resource")
    if force:
        b.force_spend(amount, now)
        _store_bucket(conn, principal_id, resource, b)
        return
    wait = b.spend(max(amount, 0.0), now)
    if wait > 0:
        raise KernelError(
            Reason.INSUFFICIENT_RESOURCES,
            f"{principal_id} is in {resource} debt; usable again in {wait:.3f}s",
            retry_after=wait,
        )
    if amount > 0:
        _store_bucket(conn, principal_id, resource, b)


def refund(conn, principal_id: str, resource: str, amount: float, now: float) -> None:
    """Give back a charge for work that did not happen (a call that failed outside the
    kernel, e.g. at the LLM backend), up to the bucket's capacity."""
    if amount <= 0:
        return
    b = load_bucket(conn, principal_id, resource)
    if b is None:
        return
    b.refill(now)
    b.balance = min(b.capacity, b.balance + amount)
    _store_bucket(conn, principal_id, resource, b)


def stock(conn, principal_id: str, resource: str) -> tuple[int, int]:
    row = conn.stock_get(principal_id, resource)
    if row is None:
        raise KernelError(Reason.QUOTA_EXCEEDED, f"{principal_id} has no {resource} quota")
    return row[0], row[1]


def adjust_disk(conn, principal_id: str, delta: int) -> None:
    """Account `delta` bytes to a principal's disk use (negative frees)."""
    if delta == 0:
        return
    quota, used = stock(conn, principal_id, "disk_bytes")
    new_used = max(0, used + delta)
    if delta > 0 and new_used > quota:
        raise KernelError(
            Reason.QUOTA_EXCEEDED,
            f"{principal_id} would use {new_used} disk bytes of a {quota}-byte quota",
        )
    conn.stock_set_used(principal_id, "disk_bytes", new_used)


def snapshot(conn, principal_id: str, now: float, rows: tuple[list, list] | None = None) -> dict:
    """A principal's resources at `now`; `rows` = (flow rows, stock rows) when the caller
    fetched them already (Store.resources_of, for listings)."""
    flow_rows, stock_rows = rows if rows is not None else (conn.flow_all(principal_id), conn.stock_all(principal_id))
    flow = []
    for name, rate, capacity, balance, updated_at in flow_rows:
        b = TokenBucket(rate, capacity, balance, updated_at)
        wait = b.seconds_until_usable(now)
        flow.append({
            "name": name, "balance": b.level(now), "rate": rate, "capacity": capacity,
            "seconds_until_usable": wait, "usable_at": now + wait if wait > 0 else None,
        })
    stocks = [
        {"name": name, "quota": quota, "used": used}
        for name, quota, used in stock_rows
    ]
    return {"flow": flow, "stock": stocks}


def transfer_quota(conn, src: str, dst: str, resource: str, amount: int | float, now: float) -> None:
    """Move part of a quota from `src` to `dst` (the sender's right; no consent needed)."""
    if resource not in TRANSFERABLE:
        raise KernelError(Reason.INVALID_ARGS, f"resource must be one of {', '.join(TRANSFERABLE)}", field="resource")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
        raise KernelError(Reason.INVALID_ARGS, "amount must be a positive number", field="amount")
    if src == dst:
        raise KernelError(Reason.INVALID_ARGS, "cannot transfer to oneself", field="to")
    if resource in STOCK_RESOURCES:
        if not isinstance(amount, int):
            raise KernelError(Reason.INVALID_ARGS, "amount must be an integer", field="amount")
        quota, used = stock(conn, src, resource)
        free = quota - used if resource == "disk_bytes" else quota
        if amount > free:
            raise KernelError(Reason.INSUFFICIENT_RESOURCES, f"{src} can give at most {free} {resource}")
        if conn.stock_get(dst, resource) is None:
            raise KernelError(Reason.NOT_FOUND, f"{dst!r} is not a principal with a {resource} quota", field="to")
        conn.stock_add(src, resource, quota=-amount)
        conn.stock_add(dst, resource, quota=amount)
        return
    field = "rate" if resource == "compute_rate" else "capacity"
    a, b = load_bucket(conn, src, "compute"), load_bucket(conn, dst, "compute")
    if a is None or b is None:
        raise KernelError(Reason.NOT_FOUND, "both parties need a compute resource", field="to")
    a.refill(now)
    b.refill(now)
    if getattr(a, field) < amount:
        raise KernelError(Reason.INSUFFICIENT_RESOURCES, f"{src} has only {getattr(a, field)} {resource}")
    setattr(a, field, getattr(a, field) - amount)
    setattr(b, field, getattr(b, field) + amount)
    a.balance = min(a.balance, a.capacity)
    _store_bucket(conn, src, "compute", a)
    _store_bucket(conn, dst, "compute", b)
