"""The event log: an append-only, densely numbered history of the world."""

from __future__ import annotations

import json
import sqlite3

from server.kernel.artifacts import dumps


def append(conn: sqlite3.Connection, type_: str, *, principal_id: str, now: float,
           artifact_id: str = "", related: list[str] | tuple = (), data: dict | None = None) -> int:
    cur = conn.execute(
        "INSERT INTO events (at, type, principal_id, artifact_id, related, data) VALUES (?,?,?,?,?,?)",
        (now, type_, principal_id, artifact_id, dumps(list(related)), dumps(data or {})),
    )
    return cur.lastrowid


def last_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]


def _row(r) -> dict:
    return {
        "seq": r["seq"], "at": r["at"], "type": r["type"], "principal_id": r["principal_id"],
        "artifact_id": r["artifact_id"], "related_ids": json.loads(r["related"]),
        "data": json.loads(r["data"]),
    }


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


def since(conn: sqlite3.Connection, after: int, limit: int = 5000) -> list[dict]:
    """Every event with seq > after, oldest first (at most `limit`)."""
    rows = conn.execute(
        "SELECT seq, at, type, principal_id, artifact_id, related, data FROM events "
        "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
    return [_row(r) for r in rows]


def read(conn: sqlite3.Connection, *, after: int = 0, limit: int = 100,
         types=(), artifact_ids=(), principal_ids=()) -> list[dict]:
    """Events with seq > after matching every given filter, oldest first."""
    return scan(conn, after=after, limit=limit, types=types, artifact_ids=artifact_ids,
                principal_ids=principal_ids)[0]


def scan(conn: sqlite3.Connection, *, after: int = 0, limit: int = 100,
         types=(), artifact_ids=(), principal_ids=(), max_rows: int = 10_000) -> tuple[list[dict], int]:
    """Like `read`, also returning the last seq examined (resume the scan from there)."""
    out: list[dict] = []
    artifact_set, principal_set = set(artifact_ids), set(principal_ids)
    cursor = after
    scanned = 0
    while len(out) < limit and scanned < max_rows:
        rows = conn.execute(
            "SELECT seq, at, type, principal_id, artifact_id, related, data FROM events "
            "WHERE seq > ? ORDER BY seq LIMIT 1000", (cursor,)
        ).fetchall()
        if not rows:
            break
        scanned += len(rows)
        for r in rows:
            cursor = r["seq"]
            if not type_matches(types, r["type"]):  # cheap pre-filter before JSON decoding
                continue
            ev = _row(r)
            if not matches(ev, (), artifact_set, principal_set):
                continue
            out.append(ev)
            if len(out) >= limit:
                break
    return out, cursor
