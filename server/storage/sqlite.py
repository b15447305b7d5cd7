"""The SQLite backend of the storage seam (store.py): the default.

`SqliteStore` IS the sqlite3 connection (db.connect creates it with `factory=`), so a
store costs nothing over a bare connection and tools and tests can still run SQL of
their own on it (`execute`); code outside server/storage must not (see store.py).
Every method here is one or two statements on the writer's or a reader's connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from server.kernel.artifacts import Artifact, dumps
from server.storage.savepoints import Savepoints
from server.storage.store import RequestSeen, Store, one_snapshot

_COLUMNS = (
    "id, content, created_by, access_contract_id, has_standing, can_execute, interface, "
    "metadata, state, version, created_at, updated_at, size_bytes, deleted, billed_to"
)
_AGENT = "has_standing = 1 AND can_execute = 1 AND substr(id, 1, 8) != 'genesis_'"
_EVENT_COLUMNS = "seq, at, type, principal_id, artifact_id, related, data"
_BID_COLUMNS = "artifact_id, bidder, amount, placed_at, seq"


def _artifact(row) -> Artifact:
    return Artifact(
        id=row[0], content=row[1], created_by=row[2], access_contract_id=row[3],
        has_standing=bool(row[4]), can_execute=bool(row[5]), interface=json.loads(row[6]),
        metadata=json.loads(row[7]), state=json.loads(row[8]), version=row[9], created_at=row[10],
        updated_at=row[11], size_bytes=row[12], deleted=bool(row[13]), billed_to=row[14],
    )


def _event(r) -> dict:
    return {"seq": r[0], "at": r[1], "type": r[2], "principal_id": r[3], "artifact_id": r[4],
            "related_ids": json.loads(r[5]), "data": json.loads(r[6])}


def _bid(r) -> dict:
    return {"artifact_id": r[0], "bidder": r[1], "amount": r[2], "placed_at": r[3], "seq": r[4]}


class SqliteStore(sqlite3.Connection, Store):
    # -- transactions ----------------------------------------------------------------


    # -- the writer lease: one server per SQLite file (the data directory's lock file), so
    # the lock is always this store's and there is nobody to tell where it is.

    def lease_try(self) -> bool:
        return True

    def lease_publish(self, address: str, pid: int, host: str, at: float) -> None:
        pass

    def lease_holder(self) -> dict | None:
        return None

    def ping(self) -> None:
        self.execute("SELECT 1")

    def connection_lost(self, err: BaseException) -> bool:
        return False

    def tx_begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")
        self._savepoints.reset()

    def tx_commit(self) -> None:
        self.execute("COMMIT")
        self._savepoints.reset()

    def tx_rollback(self) -> None:
        self._savepoints.reset()
        self.execute("ROLLBACK")

    # Only the savepoints that matter are created (server/storage/savepoints.py): a
    # transfer's four nested ones are one. The outermost is always real, so outside a
    # transaction it begins one and its release commits it, as SQLite's own savepoints do.
    _sps: Savepoints | None = None

    @property
    def _savepoints(self) -> Savepoints:
        if self._sps is None:
            self._sps = Savepoints()
        return self._sps

    def savepoint(self, name: str) -> None:
        if not self.in_transaction:
            self._savepoints.reset()
        sql = self._savepoints.open(name, self.total_changes)
        if sql is not None:
            self.execute(sql)

    def rollback_to(self, name: str) -> None:
        _mark, sql = self._savepoints.rollback_to(name, self.total_changes)
        if sql is not None:
            self.execute(sql)

    def release(self, name: str) -> None:
        sql = self._savepoints.release(name)
        if sql is not None:
            self.execute(sql)

    def follow(self, writer: Store) -> None:
        """Reads are in process: nothing to save."""

    def flush(self) -> None:
        """Nothing is held back: every statement runs when called (in process, no round trip)."""

    def hold_writes(self, on: bool) -> None:
        """Nothing to hold (holds_writes is False: the executor never asks)."""

    def tx_commit_held(self) -> None:
        self.tx_commit()

    def changes(self) -> int:
        return self.total_changes

    def read_begin(self) -> None:
        self.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot

    def read_end(self) -> None:
        self.execute("ROLLBACK")

    def in_transaction_now(self) -> bool:
        return self.in_transaction

    # -- agents the operator stopped -------------------------------------------------

    def stopped_all(self) -> set[str]:
        return {r[0] for r in self.execute("SELECT agent_id FROM stopped_agents")}

    def stopped_add(self, agent_id: str, at: float, memo: str) -> bool:
        return self.execute("INSERT OR IGNORE INTO stopped_agents (agent_id, at, memo) VALUES (?, ?, ?)",
                            (agent_id, at, memo)).rowcount == 1

    def stopped_remove(self, agent_id: str) -> bool:
        return self.execute("DELETE FROM stopped_agents WHERE agent_id = ?", (agent_id,)).rowcount == 1

    # -- the operation log -----------------------------------------------------------

    def oplog_append(self, command: str, inputs: str, record: str) -> None:
        self.execute("INSERT INTO oplog (command, inputs, record) VALUES (?,?,?)", (command, inputs, record))

    def oplog_insert(self, seq: int, command: str, inputs: str, record: str) -> None:
        self.execute("INSERT INTO oplog VALUES (?,?,?,?)", (seq, command, inputs, record))

    def oplog_rows(self) -> Iterable[tuple[int, str, str, str]]:
        cur = self.execute("SELECT seq, command, inputs, record FROM oplog ORDER BY seq")
        cur.row_factory = None
        return cur

    def has_oplog(self) -> bool:
        return self.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='oplog'").fetchone() is not None

    def artifacts_total(self) -> int:
        return self.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0]

    def state_tables(self) -> list[str]:
        from server.storage.oplog import NOT_STATE

        names = [r[0] for r in self.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return [n for n in names if n not in NOT_STATE]

    def table_rows(self, table: str) -> tuple[list[str], Iterable[tuple]]:
        cols = [r[1] for r in self.execute(f'PRAGMA table_info("{table}")')]
        order = ", ".join(f'"{c}"' for c in cols)
        cur = self.execute(f'SELECT {order} FROM "{table}" ORDER BY {order}')
        cur.row_factory = None
        return cols, cur

    # -- artifacts -----------------------------------------------------------------

    def artifact_get(self, artifact_id: str) -> Artifact | None:
        row = self.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        return _artifact(row) if row else None

    def artifact_insert(self, art: Artifact) -> None:
        self.execute(
            f"INSERT INTO artifacts ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (art.id, art.content, art.created_by, art.access_contract_id, int(art.has_standing),
             int(art.can_execute), dumps(art.interface), dumps(art.metadata), dumps(art.state),
             art.version, art.created_at, art.updated_at, art.size_bytes, int(art.deleted), art.billed_to))

    def artifact_save(self, art: Artifact) -> None:
        self.execute(
            "UPDATE artifacts SET content=?, access_contract_id=?, interface=?, metadata=?, state=?, "
            "version=?, updated_at=?, size_bytes=?, deleted=?, billed_to=? WHERE id=?",
            (art.content, art.access_contract_id, dumps(art.interface), dumps(art.metadata),
             dumps(art.state), art.version, art.updated_at, art.size_bytes, int(art.deleted),
             art.billed_to, art.id))

    def artifacts_page(self, *, after: str, limit: int, created_by: str = "", has_standing: bool | None = None,
                       can_execute: bool | None = None, include_deleted: bool = False,
                       metadata_equals: dict | None = None, query: str = "") -> list[Artifact]:
        where, params = ["id > ?"], [after]
        if created_by:
            where.append("created_by = ?")
            params.append(created_by)
        if has_standing is not None:
            where.append("has_standing = ?")
            params.append(int(has_standing))
        if can_execute is not None:
            where.append("can_execute = ?")
            params.append(int(can_execute))
        if not include_deleted:
            where.append("deleted = 0")
        for key, value in (metadata_equals or {}).items():
            path = "$." + json.dumps(key)
            if isinstance(value, bool):  # JSON true/false, which SQLite extracts as 1/0
                where.append("json_type(metadata, ?) = ?")
                params.extend([path, "true" if value else "false"])
                continue
            where.append("json_extract(metadata, ?) IS NOT NULL AND json(json_extract(metadata, ?)) = json(?)"
                         if isinstance(value, (dict, list)) else
                         "json_type(metadata, ?) NOT IN ('true', 'false') AND json_extract(metadata, ?) IS ?")
            params.extend([path, path, dumps(value) if isinstance(value, (dict, list)) else value])
        if query:
            like = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(lower(id) LIKE ? ESCAPE '\\' OR lower(metadata) LIKE ? ESCAPE '\\' "
                         "OR lower(interface) LIKE ? ESCAPE '\\')")
            params.extend([like, like, like])
        sql = f"SELECT {_COLUMNS} FROM artifacts WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        return [_artifact(r) for r in self.execute(sql, (*params, limit))]

    def artifact_counts(self) -> tuple[int, int, int]:
        row = self.execute(
            "SELECT SUM(deleted = 0), SUM(deleted = 1), SUM(has_standing AND can_execute AND deleted = 0 "
            "AND substr(id, 1, 8) != 'genesis_') FROM artifacts").fetchone()
        return row[0] or 0, row[1] or 0, row[2] or 0

    def agents_page(self, after: str, limit: int) -> list[tuple[str, bool]]:
        return [(r[0], bool(r[1])) for r in self.execute(
            f"SELECT id, deleted FROM artifacts WHERE {_AGENT} AND id > ? ORDER BY id LIMIT ?", (after, limit))]

    def live_agent_ids(self) -> list[str]:
        return [r[0] for r in self.execute(f"SELECT id FROM artifacts WHERE {_AGENT} AND deleted = 0 ORDER BY id")]

    def agents_with_compute_rate(self, not_created_by: str) -> list[str]:
        return [r[0] for r in self.execute(
            "SELECT a.id FROM artifacts a JOIN flow f ON f.principal_id = a.id AND f.resource = 'compute' "
            "WHERE a.has_standing = 1 AND a.can_execute = 1 AND a.deleted = 0 "
            "AND substr(a.id, 1, 8) != 'genesis_' AND a.created_by != ? AND f.rate > 0 ORDER BY a.id",
            (not_created_by,))]

    def artifacts_created_by_count(self, created_by: str) -> int:
        return self.execute("SELECT COUNT(*) FROM artifacts WHERE created_by = ?", (created_by,)).fetchone()[0]

    def artifacts_state_due(self, created_by: str, status: str, due_before: float) -> list[str]:
        return [r[0] for r in self.execute(
            "SELECT id FROM artifacts WHERE created_by = ? AND deleted = 0 "
            "AND json_extract(state, '$.status') = ? AND json_extract(state, '$.due_at') <= ?",
            (created_by, status, due_before))]

    def artifacts_state_involving(self, created_by: str, principal_id: str) -> list[str]:
        p = principal_id
        return [r[0] for r in self.execute(
            "SELECT a.id FROM artifacts a LEFT JOIN escrow_listings e ON e.artifact_id = a.id "
            "WHERE a.created_by = ? AND a.deleted = 0 AND (json_extract(a.state, '$.lender') = ? "
            "OR json_extract(a.state, '$.borrower') = ? OR json_extract(a.state, '$.controller') = ? "
            "OR e.seller = ?) ORDER BY a.created_at, a.id", (created_by, p, p, p, p))]

    def artifact_same_content_before(self, art: Artifact) -> str | None:
        row = self.execute(
            "SELECT id FROM artifacts WHERE content = ? AND id != ? AND deleted = 0 AND content != '' "
            "AND (created_at < ? OR (created_at = ? AND id < ?)) ORDER BY created_at, id LIMIT 1",
            (art.content, art.id, art.created_at, art.created_at, art.id)).fetchone()
        return row[0] if row else None

    # -- scrip -----------------------------------------------------------------------

    def balance_open(self, principal_id: str) -> None:
        self.execute("INSERT OR IGNORE INTO balances VALUES (?, 0)", (principal_id,))

    def balance_get(self, principal_id: str) -> int | None:
        row = self.execute("SELECT scrip FROM balances WHERE principal_id = ?", (principal_id,)).fetchone()
        return row[0] if row else None

    def balances_of(self, principal_ids: Iterable[str]) -> dict[str, int]:
        names = list(principal_ids)
        marks = ",".join("?" * len(names))
        return dict(self.execute(f"SELECT principal_id, scrip FROM balances WHERE principal_id IN ({marks})", names))

    def balance_credit(self, principal_id: str, amount: int) -> bool:
        return self.execute("UPDATE balances SET scrip = scrip + ? WHERE principal_id = ?",
                            (amount, principal_id)).rowcount == 1

    def balance_debit(self, principal_id: str, amount: int) -> int | None:
        row = self.execute("UPDATE balances SET scrip = scrip - ? WHERE principal_id = ? AND scrip >= ? "
                           "RETURNING scrip", (amount, principal_id, amount)).fetchone()
        return row[0] if row else None

    def ledger_entry(self, at: float, debit: str, credit: str, amount: int, kind: str, memo: str) -> int:
        return self.execute(
            "INSERT INTO ledger_entries (at, debit, credit, amount, kind, memo) VALUES (?,?,?,?,?,?)",
            (at, debit, credit, amount, kind, memo)).lastrowid

    def ledger_totals_add(self, *, minted: int = 0, burned: int = 0) -> None:
        self.execute("UPDATE ledger_totals SET minted = minted + ?, burned = burned + ? WHERE id = 1",
                     (minted, burned))

    def ledger_issued(self) -> tuple[int, int]:
        row = self.execute("SELECT minted, burned FROM ledger_totals").fetchone()
        return row[0], row[1]

    def ledger_history(self, principal_id: str, after: int, limit: int) -> list[dict]:
        rows = self.execute(
            "SELECT seq, at, debit, credit, amount, kind, memo FROM ledger_entries "
            "WHERE seq > ? AND (debit = ? OR credit = ?) ORDER BY seq LIMIT ?",
            (after, principal_id, principal_id, limit)).fetchall()
        return [dict(r) for r in rows]

    def ledger_totals(self) -> dict:
        with one_snapshot(self):
            minted, burned = self.execute("SELECT minted, burned FROM ledger_totals").fetchone()
            total = self.execute("SELECT COALESCE(SUM(scrip), 0) FROM balances").fetchone()[0]
            entries = self.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0]
        return {"minted": minted, "burned": burned, "total_balances": total, "entries": entries}

    def ledger_audit(self) -> dict:
        with one_snapshot(self):
            return {
                "negative": self.execute("SELECT COUNT(*) FROM balances WHERE scrip < 0").fetchone()[0],
                "sums": {k: s for k, s in self.execute(
                    "SELECT kind, COALESCE(SUM(amount),0) FROM ledger_entries GROUP BY kind")},
                "entries": [tuple(r) for r in self.execute("SELECT debit, credit, amount FROM ledger_entries")],
                "balances": {p: s for p, s in self.execute("SELECT principal_id, scrip FROM balances")},
            }

    # -- resources -------------------------------------------------------------------

    def flow_create(self, principal_id: str, resource: str, rate: float, capacity: float, balance: float,
                    updated_at: float) -> None:
        self.execute("INSERT INTO flow VALUES (?, ?, ?, ?, ?, ?)",
                     (principal_id, resource, rate, capacity, balance, updated_at))

    def flow_get(self, principal_id: str, resource: str) -> tuple[float, float, float, float] | None:
        row = self.execute("SELECT rate, capacity, balance, updated_at FROM flow WHERE principal_id=? AND resource=?",
                           (principal_id, resource)).fetchone()
        return tuple(row) if row else None

    def flow_put(self, principal_id: str, resource: str, rate: float, capacity: float, balance: float,
                 updated_at: float) -> None:
        self.execute("UPDATE flow SET rate=?, capacity=?, balance=?, updated_at=? WHERE principal_id=? AND resource=?",
                     (rate, capacity, balance, updated_at, principal_id, resource))

    def flow_all(self, principal_id: str) -> list[tuple[str, float, float, float, float]]:
        return [tuple(r) for r in self.execute(
            "SELECT resource, rate, capacity, balance, updated_at FROM flow WHERE principal_id=? ORDER BY resource",
            (principal_id,))]

    def principal_state(self, principal_id: str) -> tuple[list, list, int | None, int]:
        return (self.flow_all(principal_id), self.stock_all(principal_id), self.balance_get(principal_id),
                self.events_last_seq())

    def stock_create(self, principal_id: str, resource: str, quota: int, *, if_missing: bool = False) -> None:
        self.execute(f"INSERT {'OR IGNORE ' if if_missing else ''}INTO stock VALUES (?, ?, ?, 0)",
                     (principal_id, resource, quota))

    def stock_get(self, principal_id: str, resource: str) -> tuple[int, int] | None:
        row = self.execute("SELECT quota, used FROM stock WHERE principal_id=? AND resource=?",
                           (principal_id, resource)).fetchone()
        return (row[0], row[1]) if row else None

    def stock_all(self, principal_id: str) -> list[tuple[str, int, int]]:
        return [tuple(r) for r in self.execute(
            "SELECT resource, quota, used FROM stock WHERE principal_id=? ORDER BY resource", (principal_id,))]

    def resources_of(self, principal_ids: Iterable[str]) -> tuple[dict[str, list], dict[str, list]]:
        names = list(principal_ids)
        marks = ",".join("?" * len(names))
        flow: dict[str, list] = {}
        stock: dict[str, list] = {}
        for r in self.execute("SELECT principal_id, resource, rate, capacity, balance, updated_at FROM flow "
                              f"WHERE principal_id IN ({marks}) ORDER BY principal_id, resource", names):
            flow.setdefault(r[0], []).append(tuple(r)[1:])
        for r in self.execute("SELECT principal_id, resource, quota, used FROM stock "
                              f"WHERE principal_id IN ({marks}) ORDER BY principal_id, resource", names):
            stock.setdefault(r[0], []).append(tuple(r)[1:])
        return flow, stock

    def stock_set_used(self, principal_id: str, resource: str, used: int) -> None:
        self.execute("UPDATE stock SET used=? WHERE principal_id=? AND resource=?", (used, principal_id, resource))

    def stock_add(self, principal_id: str, resource: str, *, quota: int = 0, used: int = 0) -> None:
        self.execute("UPDATE stock SET quota = quota + ?, used = used + ? WHERE principal_id=? AND resource=?",
                     (quota, used, principal_id, resource))

    # -- events ------------------------------------------------------------------------

    def event_append(self, at: float, type_: str, principal_id: str, artifact_id: str, related: list[str],
                     data: dict) -> int:
        return self.execute(
            "INSERT INTO events (at, type, principal_id, artifact_id, related, data) VALUES (?,?,?,?,?,?)",
            (at, type_, principal_id, artifact_id, dumps(list(related)), dumps(data))).lastrowid

    def events_last_seq(self) -> int:
        return self.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def events_page(self, after: int, limit: int,
                    keep_type: Callable[[str], bool] | None = None) -> tuple[list[dict], int, int]:
        rows = self.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                            (after, limit)).fetchall()
        if not rows:
            return [], after, 0
        kept = [_event(r) for r in rows if keep_type is None or keep_type(r[2])]
        return kept, rows[-1][0], len(rows)

    def event_payers(self, artifact_id: str, type_: str, since: float, memo: str, memo_prefix: str) -> set[str]:
        like = memo_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return {r[0] for r in self.execute(
            "SELECT DISTINCT principal_id FROM events WHERE artifact_id = ? AND type = ? AND at >= ? "
            "AND (json_extract(data, '$.memo') = ? OR json_extract(data, '$.memo') LIKE ? ESCAPE '\\')",
            (artifact_id, type_, since, memo, like))}

    def event_ok_counts(self, artifact_id: str, type_: str, since: float) -> tuple[int, int]:
        ok, failed = self.execute(
            "SELECT COALESCE(SUM(json_extract(data, '$.ok') = 1), 0), "
            "COALESCE(SUM(json_extract(data, '$.ok') = 0), 0) "
            "FROM events WHERE artifact_id = ? AND type = ? AND at >= ?", (artifact_id, type_, since)).fetchone()
        return int(ok), int(failed)

    # -- escrow ------------------------------------------------------------------------

    def escrow_get(self, artifact_id: str) -> tuple[str, int, float] | None:
        row = self.execute("SELECT seller, price, listed_at FROM escrow_listings WHERE artifact_id=?",
                           (artifact_id,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def escrow_insert(self, artifact_id: str, seller: str, price: int, listed_at: float) -> None:
        self.execute("INSERT INTO escrow_listings VALUES (?,?,?,?)", (artifact_id, seller, price, listed_at))

    def escrow_delete(self, artifact_id: str) -> None:
        self.execute("DELETE FROM escrow_listings WHERE artifact_id = ?", (artifact_id,))

    def escrow_all(self) -> list[dict]:
        return [dict(r) for r in self.execute(
            "SELECT artifact_id, seller, price, listed_at FROM escrow_listings ORDER BY listed_at, artifact_id")]

    # -- idempotency -----------------------------------------------------------------

    def idem_get(self, principal_id: str, request_id: str) -> tuple[str, bool, Any] | None:
        row = self.execute("SELECT method, ok, outcome FROM idempotency WHERE principal_id=? AND request_id=?",
                           (principal_id, request_id)).fetchone()
        return (row[0], bool(row[1]), json.loads(row[2])) if row else None

    def idem_exists(self, principal_id: str, request_id: str) -> bool:
        return self.execute("SELECT 1 FROM idempotency WHERE principal_id=? AND request_id=?",
                            (principal_id, request_id)).fetchone() is not None

    def idem_put(self, principal_id: str, request_id: str, method: str, ok: bool, outcome: Any, at: float) -> None:
        try:
            self.execute("INSERT INTO idempotency VALUES (?,?,?,?,?,?)",
                         (principal_id, request_id, method, int(ok), dumps(outcome), at))
        except sqlite3.IntegrityError as err:
            if err.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY":
                raise RequestSeen(principal_id, request_id) from None
            raise

    def idem_purge(self, before: float) -> int:
        return self.execute("DELETE FROM idempotency WHERE at < ?", (before,)).rowcount

    # -- credentials -------------------------------------------------------------------

    def credential_add(self, token_hash: str, principal_id: str, created_at: float) -> None:
        self.execute("INSERT INTO credentials VALUES (?,?,?)", (token_hash, principal_id, created_at))

    def credentials_all(self) -> dict[str, str]:
        return {h: p for h, p in self.execute("SELECT token_hash, principal_id FROM credentials")}

    def rpc_limits_set(self, principal_id: str, rate: float | None, burst: float | None) -> None:
        self.execute("INSERT INTO rpc_limits VALUES (?,?,?)", (principal_id, rate, burst))

    def rpc_limits_all(self) -> dict[str, tuple[float | None, float | None]]:
        return {p: (r, b) for p, r, b in self.execute("SELECT principal_id, rate, burst FROM rpc_limits")}

    # -- LLM reservations ------------------------------------------------------------

    def reservation_add(self, principal_id: str, amount: int, tokens: int, compute: float, model: str,
                        request_id: str, created_at: float) -> int:
        return self.execute(
            "INSERT INTO llm_reservations (principal_id, amount, tokens, compute, model, request_id, created_at) "
            "VALUES (?,?,?,?,?,?,?)", (principal_id, amount, tokens, compute, model, request_id, created_at)).lastrowid

    def reservation_take(self, reservation_id: int) -> dict | None:
        row = self.execute("DELETE FROM llm_reservations WHERE id=? RETURNING *", (reservation_id,)).fetchone()
        return dict(row) if row else None

    def reservations_take_all(self) -> list[dict]:
        rows = [dict(r) for r in self.execute("SELECT * FROM llm_reservations ORDER BY id")]
        self.execute("DELETE FROM llm_reservations")
        return rows

    def reservations_held(self, principal_id: str) -> tuple[int, int]:
        row = self.execute("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM llm_reservations WHERE principal_id=?",
                           (principal_id,)).fetchone()
        return row[0], row[1]

    def reservation_exists(self, principal_id: str, request_id: str) -> bool:
        return self.execute("SELECT 1 FROM llm_reservations WHERE principal_id=? AND request_id=?",
                            (principal_id, request_id)).fetchone() is not None

    # -- the oracle ------------------------------------------------------------------

    def oracle_init(self, start_at: float) -> None:
        self.execute("INSERT OR IGNORE INTO oracle_state VALUES (1, ?, 0, 0)", (start_at,))

    def oracle_state(self) -> tuple[float, int, int]:
        row = self.execute("SELECT start_at, carry, bid_seq FROM oracle_state WHERE id = 1").fetchone()
        return row[0], row[1], row[2]

    def oracle_set(self, *, carry: int | None = None, bid_seq: int | None = None) -> None:
        if carry is not None:
            self.execute("UPDATE oracle_state SET carry = ? WHERE id = 1", (carry,))
        if bid_seq is not None:
            self.execute("UPDATE oracle_state SET bid_seq = ? WHERE id = 1", (bid_seq,))

    def oracle_last_round(self) -> tuple[int, float | None]:
        row = self.execute("SELECT round, at FROM oracle_rounds ORDER BY round DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, None)

    def oracle_round_result(self, number: int) -> dict | None:
        row = self.execute("SELECT result FROM oracle_rounds WHERE round = ?", (number,)).fetchone()
        return json.loads(row[0]) if row else None

    def oracle_round_add(self, number: int, at: float, resolved_at: float, result: dict) -> None:
        self.execute("INSERT INTO oracle_rounds VALUES (?,?,?,?)", (number, at, resolved_at, dumps(result)))

    def oracle_bid_get(self, artifact_id: str) -> dict | None:
        row = self.execute(f"SELECT {_BID_COLUMNS} FROM oracle_bids WHERE artifact_id=?", (artifact_id,)).fetchone()
        return _bid(row) if row else None

    def oracle_bid_put(self, artifact_id: str, bidder: str, amount: int, placed_at: float, seq: int) -> None:
        self.execute("INSERT OR REPLACE INTO oracle_bids VALUES (?,?,?,?,?)",
                     (artifact_id, bidder, amount, placed_at, seq))

    def oracle_bid_delete(self, artifact_id: str) -> None:
        self.execute("DELETE FROM oracle_bids WHERE artifact_id = ?", (artifact_id,))

    def oracle_bids(self, *, bidder: str | None = None, placed_until: float | None = None) -> list[dict]:
        where, params = [], []
        if bidder is not None:
            where.append("bidder = ?")
            params.append(bidder)
        if placed_until is not None:
            where.append("placed_at <= ?")
            params.append(placed_until)
        sql = f"SELECT {_BID_COLUMNS} FROM oracle_bids {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY seq"
        return [_bid(r) for r in self.execute(sql, params)]

    def oracle_bids_total(self) -> tuple[int, int]:
        row = self.execute("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM oracle_bids").fetchone()
        return row[0], row[1]

    # -- decision traces -------------------------------------------------------------

    def decision_add(self, agent_id: str, at: float, step: int, observed: str, action: str, outcome: str,
                     llm_request_ids: list[str], truncated: bool) -> int:
        return self.execute(
            "INSERT INTO decisions (agent_id, at, step, observed, action, outcome, llm_request_ids, truncated) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (agent_id, at, step, observed, action, outcome, dumps(list(llm_request_ids)), int(truncated))).lastrowid

    def decisions_page(self, agent_id: str, after: int, limit: int) -> list[dict]:
        rows = self.execute("SELECT seq, at, step, observed, action, outcome, llm_request_ids, truncated "
                            "FROM decisions WHERE agent_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                            (agent_id, after, limit)).fetchall()
        return [{"seq": r[0], "at": r[1], "step": r[2], "observed": json.loads(r[3]), "action": json.loads(r[4]),
                 "outcome": json.loads(r[5]), "llm_request_ids": json.loads(r[6]), "truncated": bool(r[7])}
                for r in rows]

    def llm_exchange_put(self, agent_id: str, request_id: str, at: float, model: str, prompt: Any, answer: str,
                         truncated: bool) -> None:
        self.execute("INSERT OR REPLACE INTO llm_exchanges VALUES (?,?,?,?,?,?,?)",
                     (agent_id, request_id, at, model, dumps(prompt), answer, int(truncated)))

    def llm_exchange_get(self, agent_id: str, request_id: str) -> dict | None:
        x = self.execute("SELECT model, prompt, answer, truncated, at FROM llm_exchanges "
                         "WHERE agent_id = ? AND request_id = ?", (agent_id, request_id)).fetchone()
        if x is None:
            return None
        return {"request_id": request_id, "model": x[0], "prompt": json.loads(x[1]), "answer": x[2],
                "truncated": bool(x[3]), "at": x[4]}

    # -- whole-database views ----------------------------------------------------------

    def schema_version(self) -> int:
        return self.execute("PRAGMA user_version").fetchone()[0]

    def dump(self) -> dict:
        out = {
            "schema_version": self.schema_version(),
            "schema": [tuple(r) for r in self.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name")],
        }
        tables = [r[0] for r in self.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        from server.storage.oplog import NOT_STATE

        for table in tables:
            if table in NOT_STATE:  # not world state: every start appends to the oplog
                continue
            ncols = len(self.execute(f"PRAGMA table_info({table})").fetchall())
            order = ", ".join(str(i + 1) for i in range(ncols))
            out[table] = [tuple(r) for r in self.execute(f"SELECT * FROM {table} ORDER BY {order}")]
        return out
