"""The agents the operator stopped (Admin.StopAgent / StartAgent): the durable flag.

The server keeps the set in memory (server/rpc/pause.py WorldGate.stopped, loaded at start
from here) and checks it for every agent call; this table is what makes it survive a
restart. All SQL of the feature is here."""

from __future__ import annotations

import sqlite3


def load(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT agent_id FROM stopped_agents")}


def add(conn: sqlite3.Connection, agent_id: str, at: float, memo: str) -> bool:
    """True when the agent was not stopped before."""
    return conn.execute("INSERT OR IGNORE INTO stopped_agents (agent_id, at, memo) VALUES (?, ?, ?)",
                        (agent_id, at, memo)).rowcount == 1


def remove(conn: sqlite3.Connection, agent_id: str) -> bool:
    """True when the agent was stopped."""
    return conn.execute("DELETE FROM stopped_agents WHERE agent_id = ?", (agent_id,)).rowcount == 1
