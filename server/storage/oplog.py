"""The operation log (exact replay, `ecology replay`): its schema and its SQL.

One row per committed writer operation, written by the operation itself inside its own
savepoint (server/kernel/commands.py), so it commits atomically with the operation's
effects and survives kill -9 exactly like them: an operation rolled back leaves no row,
one that returns Failed(err) keeps its row with its partial effects. `seq` is commit
order (the single writer). The SQL is in the backends (Store.oplog_*), like every other table's.

  command  the command's name (server/kernel/commands.py COMMANDS)
  inputs   JSON: its inputs, including the answers computed outside the writer that it
           was handed (contract decisions, the recorded run of user code, the LLM's answer)
  record   JSON: {"t": [clock readings], "a": [[kind, answer], ...], "r": "ok" | a Reason
           (the outcome), "n": rows it changed} - what replay must reproduce
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.storage.store import Store

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


def append(conn: "Store", command: str, inputs: str, record: str) -> None:
    conn.oplog_append(command, inputs, record)


def append_unrecorded(conn: "Store", op) -> None:
    """An operation that is not a command changed rows: mark the spot (replay stops here)."""
    name = getattr(op, "__qualname__", None) or type(op).__name__
    append(conn, "unrecorded", json.dumps({"op": f"{getattr(op, '__module__', '?')}.{name}"}), "{}")
