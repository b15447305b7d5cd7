"""The PostgreSQL backend of the storage seam (store.py), psycopg 3.

`ecology serve --database postgresql://USER@HOST:PORT/DB` (or `[storage] url`). Same tables
and meaning as sqlite.py, so the kernel cannot tell the two apart:
- Durability: `synchronous_commit = on` on the writer's session, so COMMIT returns once
  the WAL is flushed; the executor acknowledges only after that.
- Group commit: the executor's batch is one transaction (BEGIN ... COMMIT), each
  operation in its own SAVEPOINT, exactly as on SQLite.
- Numbering: events, ledger entries, reservations and decisions get MAX(seq)+1 from the
  single writer (not a sequence: sequences are not rolled back with a savepoint, and the
  event log must stay dense, as SQLite's INTEGER PRIMARY KEY keeps it); the writer
  remembers the last number it gave (its view, below), so a number costs no round trip.
- Speed: PostgreSQL costs round trips where SQLite answers in process. The writer holds
  back writes, keeps a view of the rows it wrote, sends only the savepoints that matter and
  prepares what it repeats; readers answer hot reads from what the writer published at its
  last COMMIT. See "Round trips", "Publishing" and "Prepared statements" in the class, and
  bench/README.md for the figures.
- JSON columns are TEXT holding the same canonical JSON as on SQLite; queries cast to
  jsonb where they look inside.
- Schema versions: table `schema_version`; PG_MIGRATIONS[i] takes version i to i+1 and
  matches db.MIGRATIONS[i] (tests/test_storage_seam.py checks the counts agree).
- Text may hold U+0000 as on SQLite: escaped on the way in, unescaped on the way out
  (see _escape below; PostgreSQL text itself cannot hold it).
Connections run in autocommit mode: readers see committed state statement by statement,
like SQLite's readers; the writer opens its transactions explicitly.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg.adapt import Transformer
from psycopg.types.string import StrDumperUnknown as _BaseStrDumper
from psycopg.types.string import TextLoader as _BaseTextLoader

from server.kernel.artifacts import Artifact, dumps
from server.storage.savepoints import Savepoints
from server.storage.store import RequestSeen, Store, one_snapshot

_COLUMNS = (
    "id, content, created_by, access_contract_id, has_standing, can_execute, interface, "
    "metadata, state, version, created_at, updated_at, size_bytes, deleted, billed_to"
)
_AGENT = "has_standing = 1 AND can_execute = 1 AND substr(id, 1, 8) != 'genesis_'"
_BID_COLUMNS = "artifact_id, bidder, amount, placed_at, seq"
# The advisory lock key of the world's single writer (server/standby.py): "ecology" in ASCII.
WRITER_LOCK_KEY = 0x65636F6C6F6779

PG_MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema (db.MIGRATIONS[0]).
    """
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY, content TEXT NOT NULL, created_by TEXT NOT NULL,
        access_contract_id TEXT NOT NULL, has_standing INTEGER NOT NULL, can_execute INTEGER NOT NULL,
        interface TEXT NOT NULL, metadata TEXT NOT NULL, state TEXT NOT NULL, version BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        size_bytes BIGINT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, billed_to TEXT NOT NULL
    );
    CREATE INDEX artifacts_created_by ON artifacts(created_by, id);
    CREATE TABLE balances (principal_id TEXT PRIMARY KEY, scrip BIGINT NOT NULL CHECK (scrip >= 0));
    CREATE TABLE ledger_entries (
        seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, debit TEXT NOT NULL, credit TEXT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0), kind TEXT NOT NULL, memo TEXT NOT NULL
    );
    CREATE INDEX ledger_by_debit ON ledger_entries(debit, seq);
    CREATE INDEX ledger_by_credit ON ledger_entries(credit, seq);
    CREATE TABLE ledger_totals (id INTEGER PRIMARY KEY CHECK (id = 1), minted BIGINT NOT NULL,
                                burned BIGINT NOT NULL);
    INSERT INTO ledger_totals VALUES (1, 0, 0);
    CREATE TABLE flow (
        principal_id TEXT NOT NULL, resource TEXT NOT NULL, rate DOUBLE PRECISION NOT NULL,
        capacity DOUBLE PRECISION NOT NULL, balance DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (principal_id, resource)
    );
    CREATE TABLE stock (
        principal_id TEXT NOT NULL, resource TEXT NOT NULL, quota BIGINT NOT NULL CHECK (quota >= 0),
        used BIGINT NOT NULL CHECK (used >= 0), PRIMARY KEY (principal_id, resource)
    );
    CREATE TABLE credentials (token_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL,
                              created_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE rpc_limits (principal_id TEXT PRIMARY KEY, rate DOUBLE PRECISION, burst DOUBLE PRECISION);
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, principal_id TEXT NOT NULL,
        artifact_id TEXT NOT NULL, related TEXT NOT NULL, data TEXT NOT NULL
    );
    CREATE TABLE escrow_listings (artifact_id TEXT PRIMARY KEY, seller TEXT NOT NULL,
                                  price BIGINT NOT NULL CHECK (price >= 0), listed_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE idempotency (
        principal_id TEXT NOT NULL, request_id TEXT NOT NULL, method TEXT NOT NULL, ok INTEGER NOT NULL,
        outcome TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (principal_id, request_id)
    );
    CREATE INDEX idempotency_at ON idempotency(at);
    """,
    # 1 -> 2: LLM gateway reservations (db.MIGRATIONS[1]).
    """
    CREATE TABLE llm_reservations (
        id BIGINT PRIMARY KEY, principal_id TEXT NOT NULL, amount BIGINT NOT NULL CHECK (amount >= 0),
        tokens BIGINT NOT NULL CHECK (tokens >= 0), compute DOUBLE PRECISION NOT NULL, model TEXT NOT NULL,
        request_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX llm_reservations_principal ON llm_reservations(principal_id);
    CREATE UNIQUE INDEX llm_reservations_request ON llm_reservations(principal_id, request_id)
        WHERE request_id != '';
    """,
    # 2 -> 3: the mint, genesis_oracle (db.MIGRATIONS[2]).
    """
    CREATE TABLE oracle_bids (
        artifact_id TEXT PRIMARY KEY, bidder TEXT NOT NULL, amount BIGINT NOT NULL CHECK (amount > 0),
        placed_at DOUBLE PRECISION NOT NULL, seq BIGINT NOT NULL UNIQUE
    );
    CREATE INDEX oracle_bids_bidder ON oracle_bids(bidder);
    CREATE TABLE oracle_rounds (round BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL UNIQUE,
                                resolved_at DOUBLE PRECISION NOT NULL, result TEXT NOT NULL);
    CREATE TABLE oracle_state (id INTEGER PRIMARY KEY CHECK (id = 1), start_at DOUBLE PRECISION NOT NULL,
                               carry BIGINT NOT NULL CHECK (carry >= 0), bid_seq BIGINT NOT NULL);
    CREATE INDEX events_by_artifact ON events(artifact_id, seq);
    """,
    # 3 -> 4: decision traces (db.MIGRATIONS[3]).
    """
    CREATE TABLE decisions (
        seq BIGINT PRIMARY KEY, agent_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, step BIGINT NOT NULL,
        observed TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, llm_request_ids TEXT NOT NULL,
        truncated INTEGER NOT NULL
    );
    CREATE INDEX decisions_by_agent ON decisions(agent_id, seq);
    CREATE TABLE llm_exchanges (
        agent_id TEXT NOT NULL, request_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, model TEXT NOT NULL,
        prompt TEXT NOT NULL, answer TEXT NOT NULL, truncated INTEGER NOT NULL, PRIMARY KEY (agent_id, request_id)
    );
    """,
    # 4 -> 5: the operation log, for exact replay (db.MIGRATIONS[4], server/storage/oplog.py).
    """
    CREATE TABLE oplog (
        seq BIGINT PRIMARY KEY, command TEXT NOT NULL, inputs TEXT NOT NULL, record TEXT NOT NULL
    );
    """,
    # 5 -> 6: agents stopped by the operator (db.MIGRATIONS[5]).
    """
    CREATE TABLE stopped_agents (agent_id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, memo TEXT NOT NULL);
    """,
]

# Every text column compares byte-wise, as SQLite's do: ids page and sort the same way
# whatever the database's locale.
PG_MIGRATIONS = [m.replace(" TEXT ", ' TEXT COLLATE "C" ') for m in PG_MIGRATIONS]


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


def _reservation(r) -> dict:
    return {"id": r[0], "principal_id": r[1], "amount": r[2], "tokens": r[3], "compute": r[4], "model": r[5],
            "request_id": r[6], "created_at": r[7]}


def _jsonb(column: str) -> str:
    """`column` (canonical JSON text) as jsonb, or NULL for a document holding U+0000
    (the escape \\u0000), which jsonb cannot hold: one such row (any agent can write one)
    must not make a query fail for everyone. Such documents match no JSON condition on
    PostgreSQL; SQLite's JSON functions can still look inside them."""
    return f"(CASE WHEN strpos({column}, '\\u0000') = 0 THEN {column}::jsonb END)"


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# PostgreSQL text cannot hold U+0000; SQLite's can, and ids, contents, memos and request ids
# are the caller's text. Every str parameter is therefore escaped on its way in and every
# text value unescaped on its way out: U+0000 -> U+0001 U+0001, U+0001 -> U+0001 U+0002.
# The code is prefix-free and keeps code-point order, so ids still sort and page exactly as
# on SQLite; text without these two characters (all of it in practice) is stored as is.
_NUL, _ONE = "\x00", "\x01"
_IDEM_INSERT = "INSERT INTO idempotency"
# The held UPDATEs whose rows tx_commit_held checks (they may match no row without an error).
_CREDIT = "UPDATE balances SET scrip = scrip + %s WHERE principal_id = %s"
_DEBIT = "UPDATE balances SET scrip = scrip - %s WHERE principal_id = %s"
_FLOW_PUT = "UPDATE flow SET rate=%s, capacity=%s, balance=%s, updated_at=%s WHERE principal_id=%s AND resource=%s"
_TOTALS_ADD = "UPDATE ledger_totals SET minted = minted + %s, burned = burned + %s WHERE id = 1"
_RIDES_ALONG = "INSERT INTO oplog (seq"  # see "Round trips"
_UNKNOWN = object()  # a row the writer's view does not hold (PostgresStore._view)
def _published(key: tuple) -> bool:
    """The view's keys a follower may read (see PostgresStore "Publishing")."""
    return key[0] in ("flow", "stock", "balance", "event") or key == ("seq", "events")


PUBLISHED_EVENTS = 10_000  # the newest events the sole writer keeps published


def _escape(text: str) -> str:
    if _NUL in text or _ONE in text:
        return text.replace(_ONE, "\x01\x02").replace(_NUL, "\x01\x01")
    return text


def _unescape(text: str) -> str:
    if _ONE in text:
        return re.sub("\x01([\x01\x02])", lambda m: _NUL if m.group(1) == _ONE else _ONE, text)
    return text


class _StrDumper(_BaseStrDumper):
    def dump(self, obj: str):
        return super().dump(_escape(obj))


class _TextLoader(_BaseTextLoader):
    def load(self, data) -> str:
        return _unescape(super().load(data))


class _Row(tuple):
    """A result row read by index or by column name, like sqlite3.Row (raw `execute` only)."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_by_index_or_name(cursor):
    names = tuple(c.name for c in cursor.description or ())
    row_type = type("Row", (_Row,), {"_names": names})
    return lambda values: row_type(values)


class PostgresStore(Store):
    supports_lease = True

    def __init__(self, url: str, *, readonly: bool = False, application_name: str = "ecology") -> None:
        self.url = url
        self.readonly = readonly
        self._changes = 0
        self._queued = []
        self._view: dict[tuple, Any] = {}
        # What the sole writer published at its last COMMIT (see "Publishing"), the
        # principals it created rows for in this transaction, and a reader's writer.
        self.published: dict[tuple, Any] = {}
        self._published_events: collections.deque[int] = collections.deque()
        self._created: set[str] = set()
        self._writer: PostgresStore | None = None
        self._undo: list[tuple[tuple, Any]] = []
        self._savepoints = Savepoints()
        self._prepared: dict[str, str] = {}  # statement text -> prepared statement name
        self._uses: dict[str, int] = {}
        self._unpreparable: set[str] = set()
        self._failures = 0  # statements that failed: each leaves a transaction to roll back
        self.conn = psycopg.connect(url, autocommit=True, application_name=application_name)
        if not readonly:
            # The writer prepares its statements itself (see "Prepared statements"):
            # psycopg's own would make it send DEALLOCATE ALL after every ROLLBACK TO,
            # dropping ours with them.
            self.conn.prepare_threshold = None
        self.conn.adapters.register_dumper(str, _StrDumper)
        self.conn.adapters.register_loader("text", _TextLoader)
        self._templates: dict[str, list[bytes]] = {}  # see "Binding"
        self._literals = Transformer(self.conn)
        self.conn.execute("SET synchronous_commit = on")
        # A session whose client vanished without closing its socket (host lost, network
        # cut) is found dead by the server in ~4 s, releasing the writer lock it held.
        self.conn.execute("SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; "
                          "SET tcp_keepalives_count = 3")
        if readonly:
            self.conn.execute("SET default_transaction_read_only = on")

    # Round trips. A statement sent alone costs a round trip to PostgreSQL and ~50 us of
    # psycopg; SQLite answers in process. So the writer sends as few as it can:
    # - Queued (`_queued`): BEGIN, SAVEPOINT, RELEASE and ROLLBACK TO return nothing the
    #   caller needs, and neither do the writes marked `_defer` below (a flow bucket's new
    #   level, a debit or credit the view already checked, a journal entry, an event, an
    #   idempotency record, an oplog row). They are sent in front of the next statement, in
    #   the same query string (a client-side bound cursor: one round trip, several
    #   statements), at `flush()` (the executor calls it at the end of every operation,
    #   inside the operation's savepoint, so a failing write fails its own operation and
    #   nothing else) or in front of COMMIT. Each deferred write says how many rows it must
    #   change; a different count fails the operation and drops the view (`_send`).
    # - The view (`_view`): inside a transaction the writer remembers the rows it read or
    #   wrote of a few hot tables (balances, flow buckets, the last event, journal and
    #   oplog numbers), so reading them again costs nothing and a debit, credit or insert
    #   can be decided here and deferred. Every change of the view is undone with the
    #   savepoint it was made in (`_undo`, `_savepoints`), and the view is dropped at COMMIT -
    #   unless this session holds the world's writer lock (`lease_try`, server/standby.py)
    #   or was told it is the only writer (`claim_sole_writer`): nothing else then writes
    #   these tables, and the view stays valid from one transaction to the next.
    #   One deferred write does not make `flush()` send: an operation's oplog row
    #   (`_RIDES_ALONG`). It is appended after the operation's outcome is known (the
    #   kernel's own writes were sent by then, with its idempotency record), and it can
    #   only fail on a bug (its number comes from the view), so it travels with the next
    #   operation's first statement or with COMMIT. Should it ever fail, the batch fails,
    #   and nothing in it is acknowledged.
    # Counting (`changes()`) is the same as on SQLite: a deferred write counts when queued.
    _queued: list[tuple[str, tuple | list, int | None]]

    def _execute(self, sql: str, params: tuple | list = ()):
        queued = self._queued
        if not queued and self.readonly:  # readers: psycopg prepares what they repeat
            try:
                return self._counted(self.conn.execute(sql, params))
            except Exception:
                self._failures += 1
                raise
        self._queued = []
        return self._counted(self._send(queued, sql, params))

    def _send(self, queued: list, sql: str | None = None, params: tuple | list = (), *, counts: bool = True):
        """Queued statements, then `sql` if given, in one round trip; returns the cursor on
        the last result. Checks every deferred write's row count (unless `counts` is
        False: tx_commit_held checks the rows they leave instead)."""
        chunks: list[bytes] = []
        for text, args, rows in queued:
            self._bind(chunks, text if rows is None else self._statement(text), args)
        if sql is not None:
            self._bind(chunks, self._statement(sql), params)
        cur = psycopg.ClientCursor(self.conn)
        try:
            cur.execute(b"; ".join(chunks))
        except psycopg.errors.UniqueViolation as err:
            self._failures += 1
            if err.diag.table_name != "idempotency":
                raise
            # idem_put's insert, the last statement sent (idem_put sends at once): not
            # counted, as on SQLite.
            if sql is None:
                if not (queued and queued[-1][0].startswith(_IDEM_INSERT)):
                    raise
                self._changes -= queued[-1][2] or 0
            raise RequestSeen(err.diag.message_detail or "request id remembered already") from None
        except Exception:
            self._failures += 1
            raise
        for i, (text, _args, rows) in enumerate(queued):
            if counts and rows is not None and cur.rowcount != rows:
                self._failures += 1
                self._drop_view()
                raise RuntimeError(f"PostgreSQL changed {cur.rowcount} rows where the writer's view expected "
                                   f"{rows}: {text}")
            if i < len(queued) - 1 or sql is not None:
                cur.nextset()
        return cur

    # Binding. The values are merged into the query string here (as psycopg's
    # ClientCursor would, with the same literals): psycopg parses a query string for its
    # placeholders every time, unless it is short, and a batch's string is long and never
    # the same twice - that parsing cost more than the rest of psycopg's work. Here each
    # statement's text is split once (`_templates`).
    _TEMPLATES = 512  # statement texts whose split is kept (they are a fixed set of shapes)

    def _bind(self, chunks: list[bytes], text: str, args: tuple | list) -> None:
        if not args:  # "%%" is "%" either way, as psycopg reads it
            chunks.append((text.replace("%%", "%") if "%" in text else text).encode())
            return
        parts = self._templates.get(text)
        if parts is None:
            parts = [p.replace("%%", "%").encode() for p in text.split("%s")]
            if len(self._templates) < self._TEMPLATES:
                self._templates[text] = parts
        if len(parts) != len(args) + 1:
            raise TypeError(f"{len(args)} values for {len(parts) - 1} placeholders: {text}")
        literal = self._literals.as_literal
        out = [parts[0]]
        for value, part in zip(args, parts[1:]):
            out.append(b"NULL" if value is None else literal(value))
            out.append(part)
        chunks.append(b"".join(out))

    # Prepared statements. A query string is parsed and planned by PostgreSQL statement by
    # statement, every time: for a transfer's writes that is about a quarter of
    # PostgreSQL's work. So the writer prepares each statement with parameters once it
    # has used it twice (PREPARE, outside any transaction, just before its next BEGIN: a
    # PREPARE that fails, e.g. on a table that does not exist yet, then cannot take a
    # transaction down) and from then on sends it as EXECUTE with its values. Readers
    # leave it to psycopg (prepare_threshold).
    _PREPARE_AFTER = 2
    _TRACKED = 256  # statement texts counted at most (they are a fixed set of shapes)

    def _statement(self, text: str) -> str:
        name = self._prepared.get(text)
        if name is None:
            if "%s" in text and text not in self._unpreparable and (
                    text in self._uses or len(self._uses) < self._TRACKED):
                self._uses[text] = self._uses.get(text, 0) + 1
            return text
        n = text.count("%s")
        return f"EXECUTE {name}({', '.join(['%s'] * n)})" if n else f"EXECUTE {name}"

    def _prepare_used(self) -> None:
        """PREPARE the statements used often enough (outside a transaction, see above)."""
        for text, uses in list(self._uses.items()):
            if uses < self._PREPARE_AFTER or text in self._prepared or text in self._unpreparable:
                continue
            name = f"eco_{len(self._prepared) + 1}"
            numbers = iter(range(1, text.count("%s") + 1))
            body = re.sub(r"%s", lambda _m: f"${next(numbers)}", text)
            try:
                self.conn.execute(f"PREPARE {name} AS {body}")
            except psycopg.DatabaseError:
                self._unpreparable.add(text)
            else:
                self._prepared[text] = name
            del self._uses[text]

    def _defer(self, sql: str, params: tuple | list, rows: int = 1) -> None:
        """A write whose result the caller does not need: queued inside a transaction (it
        must change exactly `rows` rows), run at once outside one."""
        if not self._tx:
            self._run(sql, params)
            return
        self._queued.append((sql, params, rows))
        self._changes += rows

    holds_writes = True
    _holding = False

    def hold_writes(self, on: bool) -> None:
        self._holding = on

    def flush(self) -> None:
        if self._holding:
            return
        if any(rows is not None and not text.startswith(_RIDES_ALONG) for text, _a, rows in self._queued):
            queued, self._queued = self._queued, []
            self._send(queued)

    def _counted(self, cur):
        """Counts the rows a statement changed (Store.changes, exact replay)."""
        if (cur.statusmessage or "").startswith(("INSERT", "UPDATE", "DELETE")) and cur.rowcount > 0:
            self._changes += cur.rowcount
        return cur

    # -- the writer's view (see "Round trips" above) ------------------------------------

    _tx = False  # inside BEGIN ... COMMIT (explicit or implicit)
    _sole = False  # the only session that writes this database (holds the writer lock)

    def _viewing(self) -> bool:
        return self._tx or self._sole

    def _seen(self, key: tuple):
        return self._view.get(key, _UNKNOWN) if self._viewing() else _UNKNOWN

    def _see(self, key: tuple, value) -> None:
        """Remember a row's value (or _UNKNOWN to forget it), undone with its savepoint."""
        if self.readonly or not self._viewing():
            return
        old = self._view.get(key, _UNKNOWN)
        if self._tx:
            self._undo.append((key, old))
        if value is _UNKNOWN:
            self._view.pop(key, None)
        else:
            self._view[key] = value
        if not self._tx and _published(key):  # a statement of its own: committed already
            self._publish_one(key, value)

    def _undo_to(self, length: int) -> None:
        undo, view = self._undo, self._view
        while len(undo) > length:
            key, old = undo.pop()
            if old is _UNKNOWN:
                view.pop(key, None)
            else:
                view[key] = old

    def _drop_view(self) -> None:
        self._view.clear()
        self.published = {}  # a new one: what a reader puts into the old one is lost with it
        self._undo.clear()
        self._savepoints.marks = [m._replace(undo=0) for m in self._savepoints.marks]

    def claim_sole_writer(self) -> None:
        """Nothing but this session writes the database (tests' own schemas; the server
        after taking the writer lock): the view may outlive a transaction."""
        self._drop_view()
        self._sole = True

    # Publishing. The server's reader answers GetState (principal_state) and the compute
    # precheck before every call (flow_get) on the event loop, where a round trip holds up
    # every other call. The sole writer therefore publishes, right after each COMMIT
    # returns, the rows of the transaction it knows (`published`: balances, flow and
    # stock rows, the last event number), and a reader that `follow`s it answers from
    # them: committed state, as a read of the database gives, at most the batch being
    # committed behind. What the writer has not touched since it started, the reader
    # reads from the database once and adds with setdefault: a value it read can only be
    # older than one the writer publishes if the writer changed the row after the read,
    # and then the writer publishes (overwrites) it. The newest events are published too
    # (PUBLISHED_EVENTS of them, as rows): the event hub's read after every commit
    # (events_page) costs no round trip when it has kept up. The writer never publishes a row
    # as unknown; if its view is dropped, `published` is replaced, and whatever a reader
    # adds to the old one is lost. Which resources a principal has (the names) is kept
    # per version: `("created", p)` counts the commits that created rows of p, and a
    # reader's names are kept under the version it read before its query, so names read
    # before a creation committed are never used after it.

    def _publish_one(self, key: tuple, value) -> None:
        if value is _UNKNOWN:  # never happens for these keys; if it does, start afresh
            self.published = {}
            return
        published = self.published
        published[key] = value
        if key[0] == "event":  # the newest PUBLISHED_EVENTS only; the view keeps none
            self._view.pop(key, None)
            window = self._published_events
            window.append(key[1])
            while len(window) > PUBLISHED_EVENTS:
                published.pop(("event", window.popleft()), None)

    def _publish(self) -> None:
        view = self._view
        for key, _old in self._undo:
            if _published(key):
                self._publish_one(key, view.get(key, _UNKNOWN))
        published = self.published
        for principal_id in self._created:
            published[("created", principal_id)] = published.get(("created", principal_id), 0) + 1

    def follow(self, writer: Store) -> None:
        if isinstance(writer, PostgresStore) and writer.url == self.url and writer is not self:
            self._writer = writer

    def _followed(self) -> dict | None:
        """The writer's `published`, when this reader follows a writer that publishes
        (only the sole writer does: another's rows would never be overwritten)."""
        writer = self._writer
        return writer.published if writer is not None and writer._sole else None

    def _one(self, sql: str, params: tuple | list = ()):
        return self._execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple | list = ()):
        return self._execute(sql, params).fetchall()

    def _run(self, sql: str, params: tuple | list = ()) -> int:
        return self._execute(sql, params).rowcount

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: tuple | list = ()):
        """Raw SQL for tools and tests (as on SqliteStore), with SQLite's `?` placeholders.
        Code outside server/storage never calls it (tests/test_storage_seam.py). It may
        write anything, so the writer's view is dropped."""
        self._flush()
        self._drop_view()
        self._failures += 1  # whatever it did, a savepoint around it must be rolled back for real
        cur = self.conn.cursor(row_factory=_row_by_index_or_name)
        return cur.execute(sql.replace("%", "%%").replace("?", "%s"), params)

    def _flush(self) -> None:
        """Send everything queued (before a statement that bypasses `_execute`)."""
        if self._queued:
            queued, self._queued = self._queued, []
            self._send(queued)

    # -- schema ----------------------------------------------------------------------

    def schema_version(self) -> int:
        if self._one("SELECT to_regclass('schema_version')")[0] is None:
            return 0
        row = self._one("SELECT version FROM schema_version")
        return row[0] if row else 0

    def migrate(self, target: int) -> int:
        """Bring the schema up to `target` (each migration in its own transaction); refuses
        a newer database than this code."""
        self._flush()
        self._drop_view()
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = self.schema_version()
        if version > target:
            raise RuntimeError(f"database schema version {version} is newer than this server ({target})")
        while version < target:
            with self.conn.transaction():
                self.conn.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
                for statement in PG_MIGRATIONS[version].split(";\n"):
                    if statement.strip():
                        self.conn.execute(statement)
                version += 1
                self.conn.execute("DELETE FROM schema_version")
                self.conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        return version

    # -- transactions ----------------------------------------------------------------

    def tx_begin(self) -> None:
        if self._uses and not self._queued and not self.readonly:
            self._prepare_used()
        self._queued.append(("BEGIN", (), None))
        self._begun()

    def _begun(self) -> None:
        self._tx = True
        self._undo = []
        self._savepoints.reset()

    def _ended(self, *, committed: bool) -> None:
        self._tx = False
        self._holding = False
        self._implicit = False
        self._undo = []
        self._created = set()
        self._savepoints.reset()
        if not (committed and self._sole):
            self._view.clear()

    def tx_commit(self) -> None:
        self.flush()  # deferred writes first: a wrong row count must stop us before COMMIT
        queued, self._queued = self._queued, []
        self._commit(queued, counts=True)

    def _commit(self, queued: list, *, counts: bool) -> None:
        """`queued`, then COMMIT, in one round trip."""
        try:
            cur = self._send(queued, "COMMIT", counts=counts)
        except BaseException:
            self._ended(committed=False)
            raise
        committed = cur.statusmessage == "COMMIT"
        if committed and self._sole:
            self._publish()
        self._ended(committed=committed)
        if not committed:
            # PostgreSQL answers COMMIT in a failed transaction with a ROLLBACK, not an
            # error: nothing was applied, and the caller must not acknowledge anything.
            raise psycopg.errors.InFailedSqlTransaction(f"COMMIT was a {cur.statusmessage}: nothing was applied")

    # A held batch's COMMIT (executor.py "Held batches"): its writes, one statement that
    # checks the rows they leave, and COMMIT, in one round trip. A write PostgreSQL refuses
    # stops the string there (COMMIT is never run); the check fails the transaction the
    # same way (a division by zero) unless every balance, compute bucket and the totals
    # row the held UPDATEs touched now holds what the view says - which also catches the
    # UPDATE that matched no row, the one failure that raises nothing (INSERTs raise).
    # Where a held write is of another kind, its row count is checked first, as always.
    # The check's text depends only on how many rows it compares; those of small batches
    # (a transfer alone: 2 balances, 1 bucket) are prepared like any other statement
    # ("Prepared statements"): parsing and planning it cost PostgreSQL more than running
    # it, about 120 us of its CPU per COMMIT on the bench machine. Larger shapes are many
    # (bounded by _CHECK_PREPARED) and come with batches that share their cost.
    _CHECK_PREPARED = 4  # balances and buckets compared, at most, for the check to be prepared

    def tx_commit_held(self) -> None:
        check = self._held_check(self._queued)
        if check is None:
            self.tx_commit()
            return
        text, params, small = check
        queued, self._queued = self._queued, []
        queued.append((self._statement(text) if small else text, params, None))
        self._commit(queued, counts=False)

    def _held_check(self, queued: list) -> tuple[str, list, bool] | None:
        """The statement that fails unless the rows the held UPDATEs touched hold what the
        view says, its values, and whether it is small enough to prepare; None if some
        held write is not one it can check."""
        balances: dict[str, None] = {}
        flows: dict[tuple[str, str], None] = {}
        totals = False
        for text, args, rows in queued:
            if rows is None or (text.startswith("INSERT INTO ") and "ON CONFLICT" not in text):
                continue  # an INSERT that inserts nothing raises
            if text in (_CREDIT, _DEBIT):
                balances[args[1]] = None
            elif text == _FLOW_PUT:
                flows[(args[4], args[5])] = None
            elif text == _TOTALS_ADD:
                totals = True
            else:
                return None
        view = self._view
        conditions, params = [], []
        if balances:
            for p in balances:
                scrip = view.get(("balance", p), _UNKNOWN)
                if not isinstance(scrip, int):
                    return None
                params += [p, scrip]
            conditions.append(f"(SELECT COUNT(*) FROM balances WHERE (principal_id, scrip) IN "
                              f"({', '.join(['(%s, %s)'] * len(balances))})) = {len(balances)}")
        if flows:
            for p, resource in flows:
                bucket = view.get(("flow", p, resource), _UNKNOWN)
                if not isinstance(bucket, tuple):
                    return None
                params += [p, resource, *bucket]
            conditions.append(f"(SELECT COUNT(*) FROM flow WHERE (principal_id, resource, rate, capacity, balance, "
                              f"updated_at) IN ({', '.join(['(%s, %s, %s, %s, %s, %s)'] * len(flows))})) "
                              f"= {len(flows)}")
        if totals:
            conditions.append("(SELECT COUNT(*) FROM ledger_totals WHERE id = 1) = 1")
        if not conditions:
            return "SELECT 1", [], False
        small = len(balances) <= self._CHECK_PREPARED and len(flows) <= self._CHECK_PREPARED
        return f"SELECT 1 / ({' AND '.join(conditions)})::int", params, small

    def tx_rollback(self) -> None:
        self._ended(committed=False)
        self._queued = []
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")

    # A savepoint outside a transaction begins one, and releasing that outermost savepoint
    # commits it, as on SQLite (kernel code called outside the executor, e.g. by tools and
    # in-process tests, relies on it); PostgreSQL alone would refuse SAVEPOINT there.
    # `_implicit`: the transaction was begun so.
    _implicit = False

    # Savepoints: only those that matter are sent (server/storage/savepoints.py). The view's
    # changes are undone with the kernel's savepoint they were made in, sent or not.
    # A savepoint whose SAVEPOINT is still queued (nothing since it was sent: in a held
    # batch, every op's) never reaches PostgreSQL: releasing it drops it from the queue,
    # with the savepoints opened inside it, and rolling back to it drops what was queued
    # after it. Each savepoint PostgreSQL runs is a subtransaction, and the statements to
    # open and release it; a held batch of transfers now has none.

    def _unsent(self, savepoint: str) -> int | None:
        """Where `SAVEPOINT savepoint` is in the queue, if it was not sent yet."""
        queued, statement = self._queued, f"SAVEPOINT {savepoint}"
        for i in range(len(queued) - 1, -1, -1):
            if queued[i][0] == statement:
                return i
        return None

    def savepoint(self, name: str) -> None:
        if not self._tx and self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._queued.append(("BEGIN", (), None))
            self._begun()
            self._implicit = True
        sql = self._savepoints.open(name, self._changes + self._failures, len(self._undo))
        if sql is not None:
            self._queued.append((sql, (), None))

    def rollback_to(self, name: str) -> None:
        mark, sql = self._savepoints.rollback_to(name, self._changes + self._failures)
        self._undo_to(mark.undo)
        if sql is not None:
            at = self._unsent(mark.sql)
            if at is None:
                self._queued.append((sql, (), None))
            else:  # the changes to undo were never sent: forget them (the savepoint stays open)
                del self._queued[at + 1:]

    def release(self, name: str) -> None:
        sql = self._savepoints.release(name)
        if self._implicit and not self._savepoints.marks:
            self.tx_commit()
            return
        if sql is not None:
            at = self._unsent(sql.rsplit(" ", 1)[1])
            if at is None:
                self._queued.append((sql, (), None))
            else:  # never sent, nor any savepoint inside it (all are after it in the queue)
                self._queued[at:] = [q for q in self._queued[at + 1:] if not q[0].startswith("SAVEPOINT ")]

    def changes(self) -> int:
        return self._changes

    def read_begin(self) -> None:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def read_end(self) -> None:
        self.conn.execute("ROLLBACK")

    def in_transaction_now(self) -> bool:
        return self._tx or self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    # -- agents the operator stopped -------------------------------------------------

    def stopped_all(self) -> set[str]:
        return {r[0] for r in self._all("SELECT agent_id FROM stopped_agents")}

    def stopped_add(self, agent_id: str, at: float, memo: str) -> bool:
        return self._run("INSERT INTO stopped_agents (agent_id, at, memo) VALUES (%s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (agent_id, at, memo)) == 1

    def stopped_remove(self, agent_id: str) -> bool:
        return self._run("DELETE FROM stopped_agents WHERE agent_id = %s", (agent_id,)) == 1

    # -- the operation log -----------------------------------------------------------

    def _next_seq(self, table: str, insert: str, params: tuple) -> int:
        """Insert a row numbered MAX(seq)+1 of `table` (`insert` takes the seq first) and
        return its number: deferred when the view knows the last number, else one
        statement that reads it."""
        key = ("seq", table)
        last = self._seen(key)
        if last is _UNKNOWN or not self._tx:
            seq = self._one(f"{insert} SELECT COALESCE(MAX(seq), 0) + 1, "
                            f"{', '.join(['%s'] * len(params))} FROM {table} RETURNING seq", params)[0]
        else:
            seq = last + 1
            self._defer(f"{insert} VALUES ({', '.join(['%s'] * (len(params) + 1))})", (seq, *params))
        if table == "events":  # the row as a read returns it, before the number (Publishing)
            self._see(("event", seq), (seq, *params))
        self._see(key, seq)
        return seq

    def oplog_append(self, command: str, inputs: str, record: str) -> None:
        self._next_seq("oplog", "INSERT INTO oplog (seq, command, inputs, record)", (command, inputs, record))

    def oplog_insert(self, seq: int, command: str, inputs: str, record: str) -> None:
        self._run("INSERT INTO oplog VALUES (%s, %s, %s, %s)", (seq, command, inputs, record))
        self._see(("seq", "oplog"), _UNKNOWN)

    def oplog_rows(self) -> Iterable[tuple[int, str, str, str]]:
        self._flush()
        return self.conn.execute("SELECT seq, command, inputs, record FROM oplog ORDER BY seq")

    def has_oplog(self) -> bool:
        return self._one("SELECT to_regclass('oplog')")[0] is not None

    def artifacts_total(self) -> int:
        return self._one("SELECT COUNT(*) FROM artifacts")[0]

    def state_tables(self) -> list[str]:
        from server.storage.oplog import NOT_STATE

        names = [r[0] for r in self._all(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE' ORDER BY table_name")]
        return [n for n in names if n not in NOT_STATE and n not in ("schema_version", "server_lease")]

    def table_rows(self, table: str) -> tuple[list[str], Iterable[tuple]]:
        cols = [r[0] for r in self._all(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s ORDER BY ordinal_position", (table,))]
        order = ", ".join(f'"{c}"' for c in cols)
        self._flush()
        return cols, self.conn.execute(f'SELECT {order} FROM "{table}" ORDER BY {order}')

    # -- the writer lease (server/standby.py) ------------------------------------------
    # A session-level advisory lock: PostgreSQL releases it when the session ends, however
    # it ends (server killed, connection cut). The lease table is not world state and not
    # versioned: it only says where the holder is.

    def lease_try(self) -> bool:
        held = bool(self._one("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,))[0])
        if held:
            self.claim_sole_writer()  # the lock is what makes this session the only writer
        return held

    def lease_publish(self, address: str, pid: int, host: str, at: float) -> None:
        self._flush()
        self.conn.execute("CREATE TABLE IF NOT EXISTS server_lease (id INTEGER PRIMARY KEY CHECK (id = 1), "
                          "address TEXT NOT NULL, pid BIGINT NOT NULL, host TEXT NOT NULL, "
                          "since DOUBLE PRECISION NOT NULL, backend_pid BIGINT NOT NULL)")
        self.conn.execute("INSERT INTO server_lease VALUES (1, %s, %s, %s, %s, pg_backend_pid()) "
                          "ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, pid = EXCLUDED.pid, "
                          "host = EXCLUDED.host, since = EXCLUDED.since, backend_pid = EXCLUDED.backend_pid",
                          (address, pid, host, at))

    def lease_holder(self) -> dict | None:
        if self._one("SELECT to_regclass('server_lease')")[0] is None:
            return None
        row = self._one(
            "SELECT l.address, l.pid, l.host, l.since FROM server_lease l WHERE l.id = 1 AND EXISTS ("
            "SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted AND k.pid = l.backend_pid "
            "AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((k.classid::bigint << 32) | k.objid::bigint) = %s AND k.objsubid = 1)", (WRITER_LOCK_KEY,))
        return {"address": row[0], "pid": row[1], "host": row[2], "since": row[3]} if row else None

    def ping(self) -> None:
        self._one("SELECT 1")

    def connection_lost(self, err: BaseException) -> bool:
        return self.conn.broken or self.conn.closed or isinstance(err, psycopg.OperationalError) and (
            self.conn.info.transaction_status == psycopg.pq.TransactionStatus.UNKNOWN)

    def backend_pid(self) -> int:
        """This session's server process (tests cut it with pg_terminate_backend)."""
        return self.conn.info.backend_pid

    # -- artifacts -----------------------------------------------------------------

    def artifact_get(self, artifact_id: str) -> Artifact | None:
        row = self._one(f"SELECT {_COLUMNS} FROM artifacts WHERE id = %s", (artifact_id,))
        return _artifact(row) if row else None

    def artifact_insert(self, art: Artifact) -> None:
        self._run(
            f"INSERT INTO artifacts ({_COLUMNS}) VALUES ({','.join(['%s'] * 15)})",
            (art.id, art.content, art.created_by, art.access_contract_id, int(art.has_standing),
             int(art.can_execute), dumps(art.interface), dumps(art.metadata), dumps(art.state),
             art.version, art.created_at, art.updated_at, art.size_bytes, int(art.deleted), art.billed_to))

    def artifact_save(self, art: Artifact) -> None:
        self._run(
            "UPDATE artifacts SET content=%s, access_contract_id=%s, interface=%s, metadata=%s, state=%s, "
            "version=%s, updated_at=%s, size_bytes=%s, deleted=%s, billed_to=%s WHERE id=%s",
            (art.content, art.access_contract_id, dumps(art.interface), dumps(art.metadata),
             dumps(art.state), art.version, art.updated_at, art.size_bytes, int(art.deleted),
             art.billed_to, art.id))

    def artifacts_page(self, *, after: str, limit: int, created_by: str = "", has_standing: bool | None = None,
                       can_execute: bool | None = None, include_deleted: bool = False,
                       metadata_equals: dict | None = None, query: str = "") -> list[Artifact]:
        where, params = ["id > %s"], [after]
        if created_by:
            where.append("created_by = %s")
            params.append(created_by)
        if has_standing is not None:
            where.append("has_standing = %s")
            params.append(int(has_standing))
        if can_execute is not None:
            where.append("can_execute = %s")
            params.append(int(can_execute))
        if not include_deleted:
            where.append("deleted = 0")
        for key, value in (metadata_equals or {}).items():
            # Type-strict equality, as SQLite's json_extract comparisons are.
            wanted = dumps(value)
            if "\x00" in key or "\\u0000" in wanted:
                where.append("false")  # jsonb holds no U+0000 (see _jsonb)
            elif value is None:  # an explicit JSON null (a missing key matches nothing, as on SQLite)
                where.append(f"jsonb_typeof({_jsonb('metadata')} -> %s) = 'null'")
                params.append(key)
            else:
                where.append(f"{_jsonb('metadata')} -> %s = %s::jsonb")
                params.extend([key, wanted])
        if query:
            like = "%" + _like(query.lower()) + "%"
            where.append("(lower(id) LIKE %s OR lower(metadata) LIKE %s OR lower(interface) LIKE %s)")
            params.extend([like, like, like])
        sql = f"SELECT {_COLUMNS} FROM artifacts WHERE {' AND '.join(where)} ORDER BY id LIMIT %s"
        return [_artifact(r) for r in self._all(sql, (*params, limit))]

    def artifact_counts(self) -> tuple[int, int, int]:
        row = self._one(
            "SELECT COUNT(*) FILTER (WHERE deleted = 0), COUNT(*) FILTER (WHERE deleted = 1), "
            f"COUNT(*) FILTER (WHERE {_AGENT} AND deleted = 0) FROM artifacts")
        return row[0], row[1], row[2]

    def agents_page(self, after: str, limit: int) -> list[tuple[str, bool]]:
        return [(r[0], bool(r[1])) for r in self._all(
            f"SELECT id, deleted FROM artifacts WHERE {_AGENT} AND id > %s ORDER BY id LIMIT %s",
            (after, limit))]

    def live_agent_ids(self) -> list[str]:
        return [r[0] for r in self._all(
            f"SELECT id FROM artifacts WHERE {_AGENT} AND deleted = 0 ORDER BY id")]

    def agents_with_compute_rate(self, not_created_by: str) -> list[str]:
        return [r[0] for r in self._all(
            "SELECT a.id FROM artifacts a JOIN flow f ON f.principal_id = a.id AND f.resource = 'compute' "
            "WHERE a.has_standing = 1 AND a.can_execute = 1 AND a.deleted = 0 "
            "AND substr(a.id, 1, 8) != 'genesis_' AND a.created_by != %s AND f.rate > 0 ORDER BY a.id",
            (not_created_by,))]

    def artifacts_created_by_count(self, created_by: str) -> int:
        return self._one("SELECT COUNT(*) FROM artifacts WHERE created_by = %s", (created_by,))[0]

    def artifacts_state_due(self, created_by: str, status: str, due_before: float) -> list[str]:
        return [r[0] for r in self._all(
            f"SELECT id FROM artifacts WHERE created_by = %s AND deleted = 0 AND {_jsonb('state')} ->> 'status' = %s "
            f"AND CASE WHEN jsonb_typeof({_jsonb('state')} -> 'due_at') = 'number' "
            f"THEN ({_jsonb('state')} ->> 'due_at')::float8 <= %s ELSE false END ORDER BY id",
            (created_by, status, due_before))]

    def artifacts_state_involving(self, created_by: str, principal_id: str) -> list[str]:
        p = principal_id
        return [r[0] for r in self._all(
            "SELECT a.id FROM artifacts a LEFT JOIN escrow_listings e ON e.artifact_id = a.id "
            f"WHERE a.created_by = %s AND a.deleted = 0 AND ({_jsonb('a.state')} ->> 'lender' = %s "
            f"OR {_jsonb('a.state')} ->> 'borrower' = %s OR {_jsonb('a.state')} ->> 'controller' = %s "
            "OR e.seller = %s) ORDER BY a.created_at, a.id", (created_by, p, p, p, p))]

    def artifact_same_content_before(self, art: Artifact) -> str | None:
        row = self._one(
            "SELECT id FROM artifacts WHERE content = %s AND id != %s AND deleted = 0 AND content != '' "
            "AND (created_at < %s OR (created_at = %s AND id < %s)) "
            "ORDER BY created_at, id LIMIT 1",
            (art.content, art.id, art.created_at, art.created_at, art.id))
        return row[0] if row else None

    # -- scrip -----------------------------------------------------------------------

    def balance_open(self, principal_id: str) -> None:
        key = ("balance", principal_id)
        seen = self._seen(key)
        if seen is None:
            self._defer("INSERT INTO balances VALUES (%s, 0)", (principal_id,))
            self._see(key, 0)
        elif seen is _UNKNOWN:
            if self._run("INSERT INTO balances VALUES (%s, 0) ON CONFLICT DO NOTHING", (principal_id,)):
                self._see(key, 0)

    def balance_get(self, principal_id: str) -> int | None:
        key = ("balance", principal_id)
        seen = self._seen(key)
        if seen is not _UNKNOWN:
            return seen
        row = self._one("SELECT scrip FROM balances WHERE principal_id = %s", (principal_id,))
        value = row[0] if row else None
        self._see(key, value)
        return value

    def balances_of(self, principal_ids: Iterable[str]) -> dict[str, int]:
        return dict(self._all("SELECT principal_id, scrip FROM balances WHERE principal_id = ANY(%s)",
                              (list(principal_ids),)))

    # A debit or credit the view can decide is deferred, relative (scrip - amount), so
    # PostgreSQL still does the arithmetic and the CHECK (scrip >= 0) still guards it.
    def balance_credit(self, principal_id: str, amount: int) -> bool:
        key = ("balance", principal_id)
        seen = self._seen(key)
        if seen is None:
            return False  # no account: an UPDATE that would change nothing
        if seen is not _UNKNOWN and self._tx:
            self._defer(_CREDIT, (amount, principal_id))
            self._see(key, seen + amount)
            return True
        row = self._one("UPDATE balances SET scrip = scrip + %s WHERE principal_id = %s RETURNING scrip",
                        (amount, principal_id))
        self._see(key, row[0] if row else None)
        return row is not None

    def balance_debit(self, principal_id: str, amount: int) -> int | None:
        key = ("balance", principal_id)
        seen = self._seen(key)
        if seen is None or (seen is not _UNKNOWN and seen < amount):
            return None  # no account, or not enough: an UPDATE that would change nothing
        if seen is not _UNKNOWN and self._tx:
            self._defer(_DEBIT, (amount, principal_id))
            self._see(key, seen - amount)
            return seen - amount
        row = self._one("UPDATE balances SET scrip = scrip - %s WHERE principal_id = %s AND scrip >= %s "
                        "RETURNING scrip", (amount, principal_id, amount))
        if row:
            self._see(key, row[0])
        return row[0] if row else None

    def ledger_entry(self, at: float, debit: str, credit: str, amount: int, kind: str, memo: str) -> int:
        return self._next_seq("ledger_entries", "INSERT INTO ledger_entries (seq, at, debit, credit, amount, kind, memo)",
                              (at, debit, credit, amount, kind, memo))

    def ledger_totals_add(self, *, minted: int = 0, burned: int = 0) -> None:
        self._defer(_TOTALS_ADD, (minted, burned))

    def ledger_issued(self) -> tuple[int, int]:
        row = self._one("SELECT minted, burned FROM ledger_totals")
        return row[0], row[1]

    def ledger_history(self, principal_id: str, after: int, limit: int) -> list[dict]:
        rows = self._all(
            "SELECT seq, at, debit, credit, amount, kind, memo FROM ledger_entries "
            "WHERE seq > %s AND (debit = %s OR credit = %s) ORDER BY seq LIMIT %s",
            (after, principal_id, principal_id, limit))
        keys = ("seq", "at", "debit", "credit", "amount", "kind", "memo")
        return [dict(zip(keys, r)) for r in rows]

    def ledger_totals(self) -> dict:
        with one_snapshot(self):
            minted, burned = self.ledger_issued()
            total = self._one("SELECT COALESCE(SUM(scrip), 0) FROM balances")[0]
            entries = self._one("SELECT COUNT(*) FROM ledger_entries")[0]
        return {"minted": minted, "burned": burned, "total_balances": int(total), "entries": entries}

    def ledger_audit(self) -> dict:
        with one_snapshot(self):
            return {
                "negative": self._one("SELECT COUNT(*) FROM balances WHERE scrip < 0")[0],
                "sums": {k: int(s) for k, s in self._all(
                    "SELECT kind, COALESCE(SUM(amount), 0) FROM ledger_entries GROUP BY kind")},
                "entries": [tuple(r) for r in self._all("SELECT debit, credit, amount FROM ledger_entries")],
                "balances": dict(self._all("SELECT principal_id, scrip FROM balances")),
            }

    # -- resources -------------------------------------------------------------------

    def flow_create(self, principal_id: str, resource: str, rate: float, capacity: float, balance: float,
                    updated_at: float) -> None:
        self._defer("INSERT INTO flow VALUES (%s, %s, %s, %s, %s, %s)",
                    (principal_id, resource, rate, capacity, balance, updated_at))
        self._see(("flow", principal_id, resource), (rate, capacity, balance, updated_at))
        self._new_rows_of(principal_id)

    def flow_get(self, principal_id: str, resource: str) -> tuple[float, float, float, float] | None:
        key = ("flow", principal_id, resource)
        published = self._followed()
        if published is not None:
            value = published.get(key, _UNKNOWN)
            if value is not _UNKNOWN:
                return value
        seen = self._seen(key)
        if seen is not _UNKNOWN:
            return seen
        row = self._one("SELECT rate, capacity, balance, updated_at FROM flow WHERE principal_id=%s AND resource=%s",
                        (principal_id, resource))
        value = tuple(row) if row else None
        self._see(key, value)
        if published is not None:
            published.setdefault(key, value)
        return value

    def _new_rows_of(self, principal_id: str) -> None:
        """The writer created a flow or stock row of `principal_id` (its names change)."""
        if self._tx:
            self._created.add(principal_id)
        elif self._sole:
            self.published[("created", principal_id)] = self.published.get(("created", principal_id), 0) + 1

    def flow_put(self, principal_id: str, resource: str, rate: float, capacity: float, balance: float,
                 updated_at: float) -> None:
        key = ("flow", principal_id, resource)
        sql = _FLOW_PUT
        params = (rate, capacity, balance, updated_at, principal_id, resource)
        seen = self._seen(key)
        if seen is None:
            self._run(sql, params)  # no such bucket: changes nothing
        elif seen is not _UNKNOWN and self._tx:
            self._defer(sql, params)
            self._see(key, (rate, capacity, balance, updated_at))
        else:
            changed = self._run(sql, params)
            self._see(key, (rate, capacity, balance, updated_at) if changed else None)

    def flow_all(self, principal_id: str) -> list[tuple[str, float, float, float, float]]:
        return [tuple(r) for r in self._all(
            "SELECT resource, rate, capacity, balance, updated_at FROM flow WHERE principal_id=%s "
            "ORDER BY resource", (principal_id,))]

    def principal_state(self, principal_id: str) -> tuple[list, list, int | None, int]:
        published = self._followed()
        if published is not None:
            version = published.get(("created", principal_id), 0)
            known = self._published_state(published, principal_id, version)
            if known is not None:
                return known
        row = self._one(
            "SELECT (SELECT json_agg(json_build_array(resource, rate, capacity, balance, updated_at) "
            "ORDER BY resource) FROM flow WHERE principal_id = %s), "
            "(SELECT json_agg(json_build_array(resource, quota, used) ORDER BY resource) FROM stock "
            "WHERE principal_id = %s), (SELECT scrip FROM balances WHERE principal_id = %s), "
            "(SELECT COALESCE(MAX(seq), 0) FROM events)", (principal_id, principal_id, principal_id))
        flow_rows = [tuple(r) for r in row[0] or ()]
        stock_rows = [tuple(r) for r in row[1] or ()]
        if published is not None:  # see "Publishing"
            published.setdefault(("names", principal_id, version),
                                 (tuple(r[0] for r in flow_rows), tuple(r[0] for r in stock_rows)))
            for r in flow_rows:
                published.setdefault(("flow", principal_id, r[0]), tuple(r[1:]))
            for r in stock_rows:
                published.setdefault(("stock", principal_id, r[0]), tuple(r[1:]))
            published.setdefault(("balance", principal_id), row[2])
            published.setdefault(("seq", "events"), row[3])
        return flow_rows, stock_rows, row[2], row[3]

    @staticmethod
    def _published_state(published: dict, principal_id: str, version: int):
        names = published.get(("names", principal_id, version))
        if names is None:
            return None
        flow_rows, stock_rows = [], []
        for resource in names[0]:
            value = published.get(("flow", principal_id, resource))
            if value is None:
                return None
            flow_rows.append((resource, *value))
        for resource in names[1]:
            value = published.get(("stock", principal_id, resource))
            if value is None:
                return None
            stock_rows.append((resource, *value))
        balance = published.get(("balance", principal_id), _UNKNOWN)
        last = published.get(("seq", "events"))
        if balance is _UNKNOWN or last is None:
            return None
        return flow_rows, stock_rows, balance, last

    def stock_create(self, principal_id: str, resource: str, quota: int, *, if_missing: bool = False) -> None:
        created = self._run(f"INSERT INTO stock VALUES (%s, %s, %s, 0){' ON CONFLICT DO NOTHING' if if_missing else ''}",
                            (principal_id, resource, quota))
        if created:
            self._see(("stock", principal_id, resource), (quota, 0))
            self._new_rows_of(principal_id)

    def stock_get(self, principal_id: str, resource: str) -> tuple[int, int] | None:
        key = ("stock", principal_id, resource)
        seen = self._seen(key)
        if seen is not _UNKNOWN:
            return seen
        row = self._one("SELECT quota, used FROM stock WHERE principal_id=%s AND resource=%s",
                        (principal_id, resource))
        value = (row[0], row[1]) if row else None
        self._see(key, value)
        return value

    def stock_all(self, principal_id: str) -> list[tuple[str, int, int]]:
        return [tuple(r) for r in self._all(
            "SELECT resource, quota, used FROM stock WHERE principal_id=%s ORDER BY resource",
            (principal_id,))]

    def resources_of(self, principal_ids: Iterable[str]) -> tuple[dict[str, list], dict[str, list]]:
        names = list(principal_ids)
        flow: dict[str, list] = {}
        stock: dict[str, list] = {}
        for r in self._all("SELECT principal_id, resource, rate, capacity, balance, updated_at FROM flow "
                           "WHERE principal_id = ANY(%s) ORDER BY principal_id, resource", (names,)):
            flow.setdefault(r[0], []).append(tuple(r)[1:])
        for r in self._all("SELECT principal_id, resource, quota, used FROM stock "
                           "WHERE principal_id = ANY(%s) ORDER BY principal_id, resource", (names,)):
            stock.setdefault(r[0], []).append(tuple(r)[1:])
        return flow, stock

    # Stock changes are rare (artifact writes, quota transfers): sent at once, and the new
    # row read back in the same statement for the view.
    def stock_set_used(self, principal_id: str, resource: str, used: int) -> None:
        row = self._one("UPDATE stock SET used=%s WHERE principal_id=%s AND resource=%s RETURNING quota, used",
                        (used, principal_id, resource))
        self._see(("stock", principal_id, resource), (row[0], row[1]) if row else None)

    def stock_add(self, principal_id: str, resource: str, *, quota: int = 0, used: int = 0) -> None:
        row = self._one("UPDATE stock SET quota = quota + %s, used = used + %s WHERE principal_id=%s AND resource=%s "
                        "RETURNING quota, used", (quota, used, principal_id, resource))
        self._see(("stock", principal_id, resource), (row[0], row[1]) if row else None)

    # -- events ------------------------------------------------------------------------

    def event_append(self, at: float, type_: str, principal_id: str, artifact_id: str, related: list[str],
                     data: dict) -> int:
        return self._next_seq("events", "INSERT INTO events (seq, at, type, principal_id, artifact_id, related, data)",
                              (at, type_, principal_id, artifact_id, dumps(list(related)), dumps(data)))

    def events_last_seq(self) -> int:
        seen = self._seen(("seq", "events"))
        if seen is not _UNKNOWN:
            return seen
        last = self._one("SELECT COALESCE(MAX(seq), 0) FROM events")[0]
        self._see(("seq", "events"), last)
        return last

    def events_page(self, after: int, limit: int,
                    keep_type: Callable[[str], bool] | None = None) -> tuple[list[dict], int, int]:
        rows = self._published_events_after(after, limit)
        if rows is None:
            rows = self._all("SELECT seq, at, type, principal_id, artifact_id, related, data FROM events "
                             "WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit))
        if not rows:
            return [], after, 0
        kept = [_event(r) for r in rows if keep_type is None or keep_type(r[2])]
        return kept, rows[-1][0], len(rows)

    def _published_events_after(self, after: int, limit: int) -> list[tuple] | None:
        """The committed events after `after` (at most `limit`) from the writer this reader
        follows, if it published every one of them; else None (read the database). The
        server's event hub asks after every commit for what is new."""
        published = self._followed()
        if published is None:
            return None
        last = published.get(("seq", "events"))
        if not isinstance(last, int) or last < after:
            return None
        rows = []
        for seq in range(after + 1, min(last, after + limit) + 1):
            row = published.get(("event", seq))
            if row is None:
                return None
            rows.append(row)
        return rows

    def event_payers(self, artifact_id: str, type_: str, since: float, memo: str, memo_prefix: str) -> set[str]:
        # ILIKE: SQLite's LIKE is case-insensitive.
        return {r[0] for r in self._all(
            "SELECT DISTINCT principal_id FROM events WHERE artifact_id = %s AND type = %s AND at >= %s "
            f"AND ({_jsonb('data')} ->> 'memo' = %s OR {_jsonb('data')} ->> 'memo' ILIKE %s)",
            (artifact_id, type_, since, memo, _like(memo_prefix) + "%"))}

    def event_ok_counts(self, artifact_id: str, type_: str, since: float) -> tuple[int, int]:
        row = self._one(
            f"SELECT COUNT(*) FILTER (WHERE {_jsonb('data')} -> 'ok' = 'true'::jsonb), "
            f"COUNT(*) FILTER (WHERE {_jsonb('data')} -> 'ok' = 'false'::jsonb) "
            "FROM events WHERE artifact_id = %s AND type = %s AND at >= %s", (artifact_id, type_, since))
        return row[0], row[1]

    # -- escrow ------------------------------------------------------------------------

    def escrow_get(self, artifact_id: str) -> tuple[str, int, float] | None:
        row = self._one("SELECT seller, price, listed_at FROM escrow_listings WHERE artifact_id=%s", (artifact_id,))
        return (row[0], row[1], row[2]) if row else None

    def escrow_insert(self, artifact_id: str, seller: str, price: int, listed_at: float) -> None:
        self._run("INSERT INTO escrow_listings VALUES (%s,%s,%s,%s)", (artifact_id, seller, price, listed_at))

    def escrow_delete(self, artifact_id: str) -> None:
        self._run("DELETE FROM escrow_listings WHERE artifact_id = %s", (artifact_id,))

    def escrow_all(self) -> list[dict]:
        return [{"artifact_id": r[0], "seller": r[1], "price": r[2], "listed_at": r[3]} for r in self._all(
            "SELECT artifact_id, seller, price, listed_at FROM escrow_listings "
            "ORDER BY listed_at, artifact_id")]

    # -- idempotency -----------------------------------------------------------------

    def idem_get(self, principal_id: str, request_id: str) -> tuple[str, bool, Any] | None:
        row = self._one("SELECT method, ok, outcome FROM idempotency WHERE principal_id=%s AND request_id=%s",
                        (principal_id, request_id))
        return (row[0], bool(row[1]), json.loads(row[2])) if row else None

    def idem_exists(self, principal_id: str, request_id: str) -> bool:
        return self._one("SELECT 1 FROM idempotency WHERE principal_id=%s AND request_id=%s",
                         (principal_id, request_id)) is not None

    def idem_put(self, principal_id: str, request_id: str, method: str, ok: bool, outcome: Any, at: float) -> None:
        self._defer(_IDEM_INSERT + " VALUES (%s,%s,%s,%s,%s,%s)",
                    (principal_id, request_id, method, int(ok), dumps(outcome), at))
        # Sent at once, with the writes held back before it: the kernel runs the operation
        # first and relies on this insert to say whether the request id was seen
        # (Kernel.idempotent), which costs no round trip of its own.
        self.flush()

    def idem_purge(self, before: float) -> int:
        return self._run("DELETE FROM idempotency WHERE at < %s", (before,))

    # -- credentials -------------------------------------------------------------------

    def credential_add(self, token_hash: str, principal_id: str, created_at: float) -> None:
        self._run("INSERT INTO credentials VALUES (%s,%s,%s)", (token_hash, principal_id, created_at))

    def credentials_all(self) -> dict[str, str]:
        return dict(self._all("SELECT token_hash, principal_id FROM credentials"))

    def rpc_limits_set(self, principal_id: str, rate: float | None, burst: float | None) -> None:
        self._run("INSERT INTO rpc_limits VALUES (%s,%s,%s)", (principal_id, rate, burst))

    def rpc_limits_all(self) -> dict[str, tuple[float | None, float | None]]:
        return {p: (r, b) for p, r, b in self._all("SELECT principal_id, rate, burst FROM rpc_limits")}

    # -- LLM reservations ------------------------------------------------------------

    def reservation_add(self, principal_id: str, amount: int, tokens: int, compute: float, model: str,
                        request_id: str, created_at: float) -> int:
        return self._one(
            "INSERT INTO llm_reservations (id, principal_id, amount, tokens, compute, model, request_id, created_at) "
            "SELECT COALESCE(MAX(id), 0) + 1, %s, %s, %s, %s, %s, %s, %s FROM llm_reservations RETURNING id",
            (principal_id, amount, tokens, compute, model, request_id, created_at))[0]

    def reservation_take(self, reservation_id: int) -> dict | None:
        row = self._one("DELETE FROM llm_reservations WHERE id=%s RETURNING id, principal_id, amount, tokens, "
                        "compute, model, request_id, created_at", (reservation_id,))
        return _reservation(row) if row else None

    def reservations_take_all(self) -> list[dict]:
        rows = [_reservation(r) for r in self._all(
            "SELECT id, principal_id, amount, tokens, compute, model, request_id, created_at "
            "FROM llm_reservations ORDER BY id")]
        self._run("DELETE FROM llm_reservations")
        return rows

    def reservations_held(self, principal_id: str) -> tuple[int, int]:
        row = self._one("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM llm_reservations WHERE principal_id=%s",
                        (principal_id,))
        return int(row[0]), row[1]

    def reservation_exists(self, principal_id: str, request_id: str) -> bool:
        return self._one("SELECT 1 FROM llm_reservations WHERE principal_id=%s AND request_id=%s",
                         (principal_id, request_id)) is not None

    # -- the oracle ------------------------------------------------------------------

    def oracle_init(self, start_at: float) -> None:
        self._run("INSERT INTO oracle_state VALUES (1, %s, 0, 0) ON CONFLICT DO NOTHING", (start_at,))

    def oracle_state(self) -> tuple[float, int, int]:
        row = self._one("SELECT start_at, carry, bid_seq FROM oracle_state WHERE id = 1")
        return row[0], row[1], row[2]

    def oracle_set(self, *, carry: int | None = None, bid_seq: int | None = None) -> None:
        if carry is not None:
            self._run("UPDATE oracle_state SET carry = %s WHERE id = 1", (carry,))
        if bid_seq is not None:
            self._run("UPDATE oracle_state SET bid_seq = %s WHERE id = 1", (bid_seq,))

    def oracle_last_round(self) -> tuple[int, float | None]:
        row = self._one("SELECT round, at FROM oracle_rounds ORDER BY round DESC LIMIT 1")
        return (row[0], row[1]) if row else (0, None)

    def oracle_round_result(self, number: int) -> dict | None:
        row = self._one("SELECT result FROM oracle_rounds WHERE round = %s", (number,))
        return json.loads(row[0]) if row else None

    def oracle_round_add(self, number: int, at: float, resolved_at: float, result: dict) -> None:
        self._run("INSERT INTO oracle_rounds VALUES (%s,%s,%s,%s)", (number, at, resolved_at, dumps(result)))

    def oracle_bid_get(self, artifact_id: str) -> dict | None:
        row = self._one(f"SELECT {_BID_COLUMNS} FROM oracle_bids WHERE artifact_id=%s", (artifact_id,))
        return _bid(row) if row else None

    def oracle_bid_put(self, artifact_id: str, bidder: str, amount: int, placed_at: float, seq: int) -> None:
        # Like SQLite's INSERT OR REPLACE: the row is replaced whole.
        self._run("DELETE FROM oracle_bids WHERE artifact_id = %s OR seq = %s", (artifact_id, seq))
        self._run("INSERT INTO oracle_bids VALUES (%s,%s,%s,%s,%s)", (artifact_id, bidder, amount, placed_at, seq))

    def oracle_bid_delete(self, artifact_id: str) -> None:
        self._run("DELETE FROM oracle_bids WHERE artifact_id = %s", (artifact_id,))

    def oracle_bids(self, *, bidder: str | None = None, placed_until: float | None = None) -> list[dict]:
        where, params = [], []
        if bidder is not None:
            where.append("bidder = %s")
            params.append(bidder)
        if placed_until is not None:
            where.append("placed_at <= %s")
            params.append(placed_until)
        sql = f"SELECT {_BID_COLUMNS} FROM oracle_bids {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY seq"
        return [_bid(r) for r in self._all(sql, params)]

    def oracle_bids_total(self) -> tuple[int, int]:
        row = self._one("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM oracle_bids")
        return row[0], int(row[1])

    # -- decision traces -------------------------------------------------------------

    def decision_add(self, agent_id: str, at: float, step: int, observed: str, action: str, outcome: str,
                     llm_request_ids: list[str], truncated: bool) -> int:
        return self._one(
            "INSERT INTO decisions (seq, agent_id, at, step, observed, action, outcome, llm_request_ids, truncated) "
            "SELECT COALESCE(MAX(seq), 0) + 1, %s, %s, %s, %s, %s, %s, %s, %s FROM decisions RETURNING seq",
            (agent_id, at, step, observed, action, outcome, dumps(list(llm_request_ids)), int(truncated)))[0]

    def decisions_page(self, agent_id: str, after: int, limit: int) -> list[dict]:
        rows = self._all("SELECT seq, at, step, observed, action, outcome, llm_request_ids, truncated "
                         "FROM decisions WHERE agent_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                         (agent_id, after, limit))
        return [{"seq": r[0], "at": r[1], "step": r[2], "observed": json.loads(r[3]), "action": json.loads(r[4]),
                 "outcome": json.loads(r[5]), "llm_request_ids": json.loads(r[6]), "truncated": bool(r[7])}
                for r in rows]

    def llm_exchange_put(self, agent_id: str, request_id: str, at: float, model: str, prompt: Any, answer: str,
                         truncated: bool) -> None:
        self._run("INSERT INTO llm_exchanges VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (agent_id, request_id) "
                  "DO UPDATE SET at = EXCLUDED.at, model = EXCLUDED.model, prompt = EXCLUDED.prompt, "
                  "answer = EXCLUDED.answer, truncated = EXCLUDED.truncated",
                  (agent_id, request_id, at, model, dumps(prompt), answer, int(truncated)))

    def llm_exchange_get(self, agent_id: str, request_id: str) -> dict | None:
        x = self._one("SELECT model, prompt, answer, truncated, at FROM llm_exchanges "
                      "WHERE agent_id = %s AND request_id = %s", (agent_id, request_id))
        if x is None:
            return None
        return {"request_id": request_id, "model": x[0], "prompt": json.loads(x[1]), "answer": x[2],
                "truncated": bool(x[3]), "at": x[4]}

    # -- whole-database views ----------------------------------------------------------

    def dump(self) -> dict:
        out = {
            "schema_version": self.schema_version(),
            "schema": [tuple(r) for r in self._all(
                "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")]
            + [tuple(r) for r in self._all(
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "ORDER BY tablename, indexname")],
        }
        tables = [r[0] for r in self._all(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE' AND table_name != 'schema_version' ORDER BY table_name")]
        from server.storage.oplog import NOT_STATE

        for table in tables:
            if table in NOT_STATE or table == "server_lease":  # not world state
                continue
            ncols = self._one("SELECT COUNT(*) FROM information_schema.columns "
                              "WHERE table_schema = current_schema() AND table_name = %s", (table,))[0]
            order = ", ".join(str(i + 1) for i in range(ncols))
            out[table] = [tuple(r) for r in self._all(f"SELECT * FROM {table} ORDER BY {order}")]
        return out
