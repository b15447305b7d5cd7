"""The event log: an append-only, densely numbered history of the world."""

from __future__ import annotations


def append(conn, type_: str, *, principal_id: str, now: float,
           artifact_id: str = "", related: list[str] | tuple = (), data: dict | None = None) -> int:
    return conn.event_append(now, type_, principal_id, artifact_id, list(related), data or {})


def last_seq(conn) -> int:
    return conn.events_last_seq()


def type_matches(patterns, type_: str) -> bool:
    if not patterns:
        return True
    for p in patterns:
        if p == type_ or (p.endswith(".*") and type_.startswith(p[:-1])):
            return True
    return False


def matches(ev: dict, types=(), artifact_set: frozenset | set = frozenset(),
            principal_set: frozenset | set = frozenset()) -> bool:
    """Does an event pass a subscriber's filters (every given filter must hold)?"""
    if not type_matches(types, ev["type"]):
        return False
    if artifact_set and ev["artifact_id"] not in artifact_set:
        return False
    if principal_set and not (ev["principal_id"] in principal_set or principal_set.intersection(ev["related_ids"])):
        return False
    return True


def since(conn, after: int, limit: int = 5000) -> list[dict]:
    """Every event with seq > after, oldest first (at most `limit`)."""
    return conn.events_page(after, limit)[0]


def read(conn, *, after: int = 0, limit: int = 100,
         types=(), artifact_ids=(), principal_ids=()) -> list[dict]:
    """Events with seq > after matching every given filter, oldest first."""
    return scan(conn, after=after, limit=limit, types=types, artifact_ids=artifact_ids,
                principal_ids=principal_ids)[0]


def scan(conn, *, after: int = 0, limit: int = 100,
         types=(), artifact_ids=(), principal_ids=(), max_rows: int = 10_000) -> tuple[list[dict], int]:
    """Like `read`, also returning the last seq examined (resume the scan from there)."""
    out: list[dict] = []
    artifact_set, principal_set = set(artifact_ids), set(principal_ids)
    cursor = after
    scanned = 0
    keep = (lambda t: type_matches(types, t)) if types else None  # cheap pre-filter before JSON decoding
    while len(out) < limit and scanned < max_rows:
        page, last, examined = conn.events_page(cursor, 1000, keep)
        if not examined:
            break
        scanned += examined
        cursor = last
        for ev in page:
            if not matches(ev, (), artifact_set, principal_set):
                continue
            out.append(ev)
            if len(out) >= limit:
                cursor = ev["seq"]
                break
    return out, cursor
