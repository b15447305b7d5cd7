"""The operation log (exact replay, `ecology replay`): its schema and its SQL.

One row per committed writer operation, written by the operation itself inside its own
savepoint (server/kernel/commands.py), so it commits atomically with the operation's
effects and survives kill -9 exactly like them: an operation rolled back leaves no row,
one that returns Failed(err) keeps its row with its partial effects. `seq` is commit
order (the single writer).

  command  the command's name (server/kernel/commands.py COMMANDS)
  inputs   JSON: its inputs, including the answers computed outside the writer that it
           was handed (contract decisions, the recorded run of user code, the LLM's answer)
  record   JSON: {"t": [clock readings], "a": [[kind, answer], ...], "r": "ok" | a Reason
           (the outcome), "n": rows it changed} - what replay must reproduce
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

MIGRATION = """
    CREATE TABLE oplog (
        seq     INTEGER PRIMARY KEY,
        command TEXT NOT NULL,
        inputs  TEXT NOT NULL,
        record  TEXT NOT NULL
    );
"""

# Not part of the world's state (the digest leaves them out).
NOT_STATE = ("oplog",)


def append(conn: sqlite3.Connection, command: str, inputs: str, record: str) -> None:
    conn.execute("INSERT INTO oplog (command, inputs, record) VALUES (?,?,?)", (command, inputs, record))


def append_unrecorded(conn: sqlite3.Connection, op) -> None:
    """An operation that is not a command changed rows: mark the spot (replay stops here)."""
    name = getattr(op, "__qualname__", None) or type(op).__name__
    append(conn, "unrecorded", json.dumps({"op": f"{getattr(op, '__module__', '?')}.{name}"}), "{}")


def insert(conn: sqlite3.Connection, seq: int, command: str, inputs: str, record: str) -> None:
    conn.execute("INSERT INTO oplog VALUES (?,?,?,?)", (seq, command, inputs, record))


def rows(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    return conn.execute("SELECT seq, command, inputs, record FROM oplog ORDER BY seq")


def count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM oplog").fetchone()[0]


def has_oplog(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='oplog'").fetchone() is not None


def last_event_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]


# -- canonical dump (the digest) --------------------------------------------------------------

def state_tables(conn: sqlite3.Connection) -> list[str]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return [n for n in names if n not in NOT_STATE]


def table_rows(conn: sqlite3.Connection, table: str) -> tuple[list[str], sqlite3.Cursor]:
    """Every row of `table` in a canonical order (all columns, in order)."""
    cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    order = ", ".join(f'"{c}"' for c in cols)
    cur = conn.execute(f'SELECT {order} FROM "{table}" ORDER BY {order}')
    cur.row_factory = None
    return cols, cur
