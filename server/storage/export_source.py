"""The export's reads (server/export.py), kept behind the storage seam: every query of
`ecology export` is here. Two sources provide the same methods with the same rows:

* `SqliteSource`: the world's SQLite file in a data directory, in one read transaction
  of a read-only connection (WAL: a running server's writes and a killed server's
  committed transactions are both seen, nothing is written).
* `PostgresSource`: a world on PostgreSQL (`ecology serve --database URL`), in ONE
  `REPEATABLE READ READ ONLY` transaction (one snapshot for every table, taken at its
  first statement); big tables stream through server-side cursors, BATCH rows at a time.
  Text is unescaped exactly as PostgresStore reads it (its own dumper and loader are
  registered on the connection: U+0000 comes back as U+0000).

Both run the same SQL text (SQLite's `?` placeholders become `%s` on PostgreSQL); what
differs per dialect is left out of SQL: the `kind`, `action_name` and `outcome_ok`
columns are taken from the JSON text in Python (`_json_field`), so the two sources
cannot disagree on them (and PostgreSQL's jsonb, which refuses "\\u0000", is never needed).
`open_source` picks one: a `database` URL, else the data directory's SQLite file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

BATCH = 10_000


class ExportError(Exception):
    """The export cannot start or finish: one line for the operator."""


def _json_field(text: str, key: str):
    """`key` of the JSON object in `text` as SQLite's json_extract returns it for scalars
    (a string, a number; true/false as 1/0), None when absent, null, not an object, or an
    object/list (whose JSON text json_extract would return: no kind, action or ok is one)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    v = value.get(key)
    if isinstance(v, bool):
        return int(v)
    return v if isinstance(v, (str, int, float)) else None


def _version_error(where: str, version: int) -> ExportError:
    from server.storage import db

    newer = version > db.SCHEMA_VERSION
    return ExportError(
        f"{where} has schema version {version}, this ecology reads {db.SCHEMA_VERSION}: "
        + ("export it with a newer ecology" if newer else "start `ecology serve` on it once to migrate it"))


def _one_line(e: BaseException) -> str:
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


class _Source:
    """The queries, shared by both backends: rows as tuples in the column order of
    server/export.py's TABLES, JSON columns as JSON text, flags as booleans."""

    where: str  # what the operator named: the SQLite file, or the URL without its password
    schema_version: int
    _driver_errors: tuple[type[BaseException], ...] = ()

    def _stream(self, sql: str) -> Iterator[tuple]:
        raise NotImplementedError

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _rows(self, sql: str) -> Iterator[tuple]:
        try:
            yield from self._stream(sql)
        except self._driver_errors as e:
            raise ExportError(f"cannot read {self.where}: {_one_line(e)}") from None

    def ledger_entries(self) -> Iterator[tuple]:
        return self._rows("SELECT seq, at, debit, credit, amount, kind, memo FROM ledger_entries ORDER BY seq")

    def events(self) -> Iterator[tuple]:
        return self._rows("SELECT seq, at, type, principal_id, artifact_id, related, data FROM events ORDER BY seq")

    def artifacts(self) -> Iterator[tuple]:
        for r in self._rows(
                "SELECT id, created_by, billed_to, access_contract_id, has_standing, can_execute, version, "
                "size_bytes, created_at, updated_at, deleted, interface, metadata, state, content "
                "FROM artifacts ORDER BY id"):
            kind = _json_field(r[12], "kind")
            yield r[:4] + (kind if isinstance(kind, str) else None, bool(r[4]), bool(r[5])) + r[6:10] \
                + (bool(r[10]),) + r[11:]

    def decisions(self) -> Iterator[tuple]:
        for r in self._rows(
                "SELECT seq, agent_id, at, step, observed, action, outcome, llm_request_ids, truncated "
                "FROM decisions ORDER BY seq"):
            name, ok = _json_field(r[5], "action"), _json_field(r[6], "ok")
            yield r[:4] + (name if isinstance(name, str) else None,
                           bool(ok) if isinstance(ok, int) else None) + r[4:8] + (bool(r[8]),)

    def llm_exchanges(self) -> Iterator[tuple]:
        for r in self._rows("SELECT agent_id, request_id, at, model, prompt, answer, truncated FROM llm_exchanges "
                            "ORDER BY at, agent_id, request_id"):
            yield r[:6] + (bool(r[6]),)

    # -- what the agents table is derived from --------------------------------------

    def agent_facts(self) -> dict:
        """Everything about agents, as dicts keyed by principal id (small: one entry per
        principal, aggregated by the database)."""
        try:
            return self._agent_facts()
        except self._driver_errors as e:
            raise ExportError(f"cannot read {self.where}: {_one_line(e)}") from None

    def _agent_facts(self) -> dict:
        q = self._all
        agents = q("SELECT id, created_by, created_at, deleted FROM artifacts WHERE has_standing = 1 "
                   "AND can_execute = 1 AND substr(id, 1, 8) != 'genesis_' ORDER BY id")
        facts: dict = {
            "agents": [tuple(a) for a in agents],
            "balances": {r[0]: r[1] for r in q("SELECT principal_id, scrip FROM balances")},
            # CAST: PostgreSQL's SUM of a BIGINT is a NUMERIC (a Decimal); SQLite's an integer already.
            "credits": {(r[0], r[1]): (r[2], r[3]) for r in q(
                "SELECT credit, kind, CAST(SUM(amount) AS BIGINT), COUNT(*) FROM ledger_entries "
                "GROUP BY credit, kind")},
            "debits": {(r[0], r[1]): (r[2], r[3]) for r in q(
                "SELECT debit, kind, CAST(SUM(amount) AS BIGINT), COUNT(*) FROM ledger_entries "
                "GROUP BY debit, kind")},
            "flow": {r[0]: tuple(r[1:]) for r in q(
                "SELECT principal_id, rate, capacity, balance, updated_at FROM flow WHERE resource = 'compute'")},
            "stock": {(r[0], r[1]): (r[2], r[3]) for r in q("SELECT principal_id, resource, quota, used FROM stock")},
            "rpc_limits": {r[0]: (r[1], r[2]) for r in q("SELECT principal_id, rate, burst FROM rpc_limits")},
            "created": {r[0]: r[1] for r in q(
                "SELECT created_by, COUNT(*) FROM artifacts WHERE deleted = 0 AND id != created_by "
                "GROUP BY created_by")},
            "debts": [json.loads(r[0]) for r in q(
                "SELECT state FROM artifacts WHERE created_by = 'genesis_debt' AND deleted = 0")],
            "decisions": {r[0]: (r[1], r[2]) for r in q(
                "SELECT agent_id, COUNT(*), MAX(at) FROM decisions GROUP BY agent_id")},
            "events": {r[0]: (r[1], r[2]) for r in q(
                "SELECT principal_id, COUNT(*), MAX(at) FROM events GROUP BY principal_id")},
            "endowments": {}, "deleted_at": {},
        }
        for agent_id, _, _, deleted in facts["agents"]:
            rows = q("SELECT data FROM events WHERE artifact_id = ? AND type = 'agent.created' ORDER BY seq LIMIT 1",
                     (agent_id,))
            if rows:
                facts["endowments"][agent_id] = json.loads(rows[0][0]).get("endowment")
            if deleted:
                facts["deleted_at"][agent_id] = q(
                    "SELECT MAX(at) FROM events WHERE artifact_id = ? AND type = 'artifact.deleted'",
                    (agent_id,))[0][0]
        return facts


class SqliteSource(_Source):
    """The world's SQLite file in `data_dir`, in one read transaction of a read-only
    connection."""

    def __init__(self, data_dir: Path) -> None:
        import sqlite3

        from server.storage import db

        self._driver_errors = (sqlite3.Error,)
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise ExportError(f"data directory {data_dir} does not exist")
        path = data_dir / db.DB_FILE
        if not path.is_file():
            raise ExportError(f"no world database in {data_dir} ({db.DB_FILE} is missing)")
        self.where = str(path)
        try:
            self.conn = db.connect(path, readonly=True)
            self.conn.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot for all the rest
            self.schema_version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except Exception as e:  # sqlite3.Error: not a database, unreadable, locked for 10 s
            raise ExportError(f"cannot read {path}: {e}") from None
        if self.schema_version != db.SCHEMA_VERSION:
            self.conn.close()
            raise _version_error(str(path), self.schema_version)

    def close(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()

    def _stream(self, sql: str) -> Iterator[tuple]:
        cur = self.conn.execute(sql)
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                return
            for r in rows:
                yield tuple(r)

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        return [tuple(r) for r in self.conn.execute(sql, args).fetchall()]


def shown_url(url: str) -> str:
    """A database URL fit for messages and manifest.json: its password replaced by ***."""
    url = re.sub(r"(://[^/?#@:]*):[^/?#@]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


class PostgresSource(_Source):
    """A world on PostgreSQL, read in one REPEATABLE READ READ ONLY transaction; each
    table streams through a server-side (named) cursor, BATCH rows per round trip."""

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        from server.storage import db
        from server.storage.postgres import _StrDumper, _TextLoader

        self._driver_errors = (psycopg.Error,)
        self.where = shown_url(url)
        self._cursors = 0
        try:
            # An unreachable host fails within 10 s, not the OS's minutes (unless the URL says otherwise).
            extra = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": 10}
            self.conn = psycopg.connect(url, autocommit=True, application_name="ecology-export", **extra)
        except psycopg.Error as e:
            raise ExportError(f"cannot connect to {self.where}: {_one_line(e)}") from None
        try:
            self.conn.adapters.register_dumper(str, _StrDumper)
            self.conn.adapters.register_loader("text", _TextLoader)
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # The first statement of the transaction: it fixes the snapshot every table is read from.
            if self.conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                self.schema_version = 0
            else:
                row = self.conn.execute("SELECT version FROM schema_version").fetchone()
                self.schema_version = row[0] if row else 0
        except psycopg.Error as e:
            self.conn.close()
            raise ExportError(f"cannot read {self.where}: {_one_line(e)}") from None
        if self.schema_version != db.SCHEMA_VERSION:
            self.conn.close()
            raise _version_error(self.where, self.schema_version)

    def close(self) -> None:
        try:
            if not self.conn.closed and not self.conn.broken:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()

    def _stream(self, sql: str) -> Iterator[tuple]:
        self._cursors += 1
        with self.conn.cursor(name=f"ecology_export_{self._cursors}") as cur:
            cur.itersize = BATCH
            cur.execute(sql)
            while True:
                rows = cur.fetchmany(BATCH)
                if not rows:
                    return
                yield from rows

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql.replace("?", "%s"), args).fetchall()


def open_source(data_dir: Path | str, database: str | None = None) -> _Source:
    """The source of `ecology export`: the PostgreSQL database at `database`, else the
    SQLite file in `data_dir`."""
    from server.storage import db

    if database:
        if not db.is_url(database):
            raise ExportError("--database takes postgresql://USER@HOST:PORT/DB")
        return PostgresSource(database)
    return SqliteSource(Path(data_dir))
