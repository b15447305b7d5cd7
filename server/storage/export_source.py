"""The export's reads (server/export.py), kept behind the storage seam: every query of
`ecology export` is here, in one read transaction of a read-only SQLite connection.
A PostgreSQL source provides the same methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

BATCH = 10_000


class ExportError(Exception):
    """The export cannot start or finish: one line for the operator."""


class SqliteSource:
    """Every read of the export, in one read transaction of a read-only connection.
    A PostgreSQL source provides the same methods (rows as tuples in the column order
    of TABLES, JSON columns as JSON text) inside one REPEATABLE READ transaction."""

    def __init__(self, data_dir: Path) -> None:
        from server.storage import db

        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise ExportError(f"data directory {data_dir} does not exist")
        path = data_dir / db.DB_FILE
        if not path.is_file():
            raise ExportError(f"no world database in {data_dir} ({db.DB_FILE} is missing)")
        try:
            self.conn = db.connect(path, readonly=True)
            self.conn.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot for all the rest
            self.schema_version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except Exception as e:  # sqlite3.Error: not a database, unreadable, locked for 10 s
            raise ExportError(f"cannot read {path}: {e}") from None
        if self.schema_version != db.SCHEMA_VERSION:
            newer = self.schema_version > db.SCHEMA_VERSION
            raise ExportError(
                f"{path} has schema version {self.schema_version}, this ecology reads {db.SCHEMA_VERSION}: "
                + ("export it with a newer ecology" if newer else "start `ecology serve` on it once to migrate it"))

    def close(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()

    def _rows(self, sql: str, args=()) -> Iterator[tuple]:
        cur = self.conn.execute(sql, args)
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                return
            for r in rows:
                yield tuple(r)

    def ledger_entries(self) -> Iterator[tuple]:
        return self._rows("SELECT seq, at, debit, credit, amount, kind, memo FROM ledger_entries ORDER BY seq")

    def events(self) -> Iterator[tuple]:
        return self._rows("SELECT seq, at, type, principal_id, artifact_id, related, data FROM events ORDER BY seq")

    def artifacts(self) -> Iterator[tuple]:
        for r in self._rows(
                "SELECT id, created_by, billed_to, access_contract_id, json_extract(metadata, '$.kind'), "
                "has_standing, can_execute, version, size_bytes, created_at, updated_at, deleted, "
                "interface, metadata, state, content FROM artifacts ORDER BY id"):
            kind = r[4] if isinstance(r[4], str) else None
            yield r[:4] + (kind, bool(r[5]), bool(r[6])) + r[7:11] + (bool(r[11]),) + r[12:]

    def decisions(self) -> Iterator[tuple]:
        for r in self._rows(
                "SELECT seq, agent_id, at, step, json_extract(action, '$.action'), json_extract(outcome, '$.ok'), "
                "observed, action, outcome, llm_request_ids, truncated FROM decisions ORDER BY seq"):
            ok = r[5]
            yield r[:4] + (r[4] if isinstance(r[4], str) else None,
                           bool(ok) if isinstance(ok, int) else None) + r[6:10] + (bool(r[10]),)

    def llm_exchanges(self) -> Iterator[tuple]:
        for r in self._rows("SELECT agent_id, request_id, at, model, prompt, answer, truncated FROM llm_exchanges "
                            "ORDER BY at, agent_id, request_id"):
            yield r[:6] + (bool(r[6]),)

    # -- what the agents table is derived from --------------------------------------

    def agent_facts(self) -> dict:
        """Everything about agents, as dicts keyed by principal id (small: one entry per
        principal, aggregated by the database)."""
        q = self.conn.execute
        agents = q("SELECT id, created_by, created_at, deleted FROM artifacts WHERE has_standing = 1 "
                   "AND can_execute = 1 AND substr(id, 1, 8) != 'genesis_' ORDER BY id").fetchall()
        facts: dict = {
            "agents": [tuple(a) for a in agents],
            "balances": dict(q("SELECT principal_id, scrip FROM balances").fetchall()),
            "credits": {(r[0], r[1]): (r[2], r[3]) for r in q(
                "SELECT credit, kind, SUM(amount), COUNT(*) FROM ledger_entries GROUP BY credit, kind")},
            "debits": {(r[0], r[1]): (r[2], r[3]) for r in q(
                "SELECT debit, kind, SUM(amount), COUNT(*) FROM ledger_entries GROUP BY debit, kind")},
            "flow": {r[0]: tuple(r[1:]) for r in q(
                "SELECT principal_id, rate, capacity, balance, updated_at FROM flow WHERE resource = 'compute'")},
            "stock": {(r[0], r[1]): (r[2], r[3]) for r in q("SELECT principal_id, resource, quota, used FROM stock")},
            "rpc_limits": {r[0]: (r[1], r[2]) for r in q("SELECT principal_id, rate, burst FROM rpc_limits")},
            "created": dict(q("SELECT created_by, COUNT(*) FROM artifacts WHERE deleted = 0 AND id != created_by "
                              "GROUP BY created_by").fetchall()),
            "debts": [json.loads(r[0]) for r in q(
                "SELECT state FROM artifacts WHERE created_by = 'genesis_debt' AND deleted = 0")],
            "decisions": {r[0]: (r[1], r[2]) for r in q(
                "SELECT agent_id, COUNT(*), MAX(at) FROM decisions GROUP BY agent_id")},
            "events": {r[0]: (r[1], r[2]) for r in q(
                "SELECT principal_id, COUNT(*), MAX(at) FROM events GROUP BY principal_id")},
            "endowments": {}, "deleted_at": {},
        }
        for agent_id, _, _, deleted in facts["agents"]:
            row = q("SELECT data FROM events WHERE artifact_id = ? AND type = 'agent.created' ORDER BY seq LIMIT 1",
                    (agent_id,)).fetchone()
            if row is not None:
                facts["endowments"][agent_id] = json.loads(row[0]).get("endowment")
            if deleted:
                facts["deleted_at"][agent_id] = q(
                    "SELECT MAX(at) FROM events WHERE artifact_id = ? AND type = 'artifact.deleted'",
                    (agent_id,)).fetchone()[0]
        return facts
