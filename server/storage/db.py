"""SQLite storage: connection settings, the versioned schema and its migrations.

Durability: WAL journal with synchronous=FULL, so a transaction is on disk when COMMIT
returns; the server acknowledges a mutating call only after that (see executor.py).
The schema version lives in `PRAGMA user_version`; MIGRATIONS[i] takes the database
from version i to i+1, each in its own transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.storage.sqlite import SqliteStore
from server.storage.store import Store
from server.storage import oplog

DB_FILE = "world.sqlite3"

MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema.
    """
    CREATE TABLE artifacts (
        id                 TEXT PRIMARY KEY,
        content            TEXT NOT NULL,
        created_by         TEXT NOT NULL,
        access_contract_id TEXT NOT NULL,
        has_standing       INTEGER NOT NULL,
        can_execute        INTEGER NOT NULL,
        interface          TEXT NOT NULL,   -- JSON list of method specs
        metadata           TEXT NOT NULL,   -- JSON object
        state              TEXT NOT NULL,   -- JSON object (controller, ...)
        version            INTEGER NOT NULL,
        created_at         REAL NOT NULL,
        updated_at         REAL NOT NULL,
        size_bytes         INTEGER NOT NULL,
        deleted            INTEGER NOT NULL DEFAULT 0,
        billed_to          TEXT NOT NULL
    );
    CREATE INDEX artifacts_created_by ON artifacts(created_by, id);

    -- Scrip balances of principals. The issuance account (genesis_system) has no row:
    -- it is the source of mints and the sink of burns.
    CREATE TABLE balances (
        principal_id TEXT PRIMARY KEY,
        scrip        INTEGER NOT NULL CHECK (scrip >= 0)
    );
    -- Immutable double-entry journal: every entry debits one account, credits another.
    CREATE TABLE ledger_entries (
        seq     INTEGER PRIMARY KEY,
        at      REAL NOT NULL,
        debit   TEXT NOT NULL,
        credit  TEXT NOT NULL,
        amount  INTEGER NOT NULL CHECK (amount > 0),
        kind    TEXT NOT NULL,     -- mint | burn | transfer
        memo    TEXT NOT NULL
    );
    CREATE INDEX ledger_by_debit ON ledger_entries(debit, seq);
    CREATE INDEX ledger_by_credit ON ledger_entries(credit, seq);
    -- Running totals kept in the same transaction as the entries (one row).
    CREATE TABLE ledger_totals (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        minted INTEGER NOT NULL,
        burned INTEGER NOT NULL
    );
    INSERT INTO ledger_totals VALUES (1, 0, 0);

    -- Flow resources: token buckets that may go into debt.
    CREATE TABLE flow (
        principal_id TEXT NOT NULL,
        resource     TEXT NOT NULL,
        rate         REAL NOT NULL,
        capacity     REAL NOT NULL,
        balance      REAL NOT NULL,
        updated_at   REAL NOT NULL,
        PRIMARY KEY (principal_id, resource)
    );
    -- Stock resources: disk_bytes (quota, used) and llm_budget (quota = remaining).
    CREATE TABLE stock (
        principal_id TEXT NOT NULL,
        resource     TEXT NOT NULL,
        quota        INTEGER NOT NULL CHECK (quota >= 0),
        used         INTEGER NOT NULL CHECK (used >= 0),
        PRIMARY KEY (principal_id, resource)
    );

    -- Credentials: only hashes of tokens are stored.
    CREATE TABLE credentials (
        token_hash   TEXT PRIMARY KEY,
        principal_id TEXT NOT NULL,
        created_at   REAL NOT NULL
    );
    -- Per-agent RPC rate-limit overrides (NULL: the configured default).
    CREATE TABLE rpc_limits (
        principal_id TEXT PRIMARY KEY,
        rate         REAL,
        burst        REAL
    );

    CREATE TABLE events (
        seq          INTEGER PRIMARY KEY,
        at           REAL NOT NULL,
        type         TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        artifact_id  TEXT NOT NULL,
        related      TEXT NOT NULL,   -- JSON list of ids
        data         TEXT NOT NULL    -- JSON object
    );

    CREATE TABLE escrow_listings (
        artifact_id TEXT PRIMARY KEY,
        seller      TEXT NOT NULL,
        price       INTEGER NOT NULL CHECK (price >= 0),
        listed_at   REAL NOT NULL
    );

    -- Outcomes of mutating calls that carried a client request id.
    CREATE TABLE idempotency (
        principal_id TEXT NOT NULL,
        request_id   TEXT NOT NULL,
        method       TEXT NOT NULL,
        ok           INTEGER NOT NULL,
        outcome      TEXT NOT NULL,   -- JSON result, or JSON KernelError
        at           REAL NOT NULL,
        PRIMARY KEY (principal_id, request_id)
    );
    CREATE INDEX idempotency_at ON idempotency(at);
    """,
    # 1 -> 2: LLM gateway reservations (server/llm/reservations.py). While a call to the
    # LLM backend is in flight, its worst-case cost is held here, already taken out of the
    # caller's llm_budget quota; the reconcile step charges the actual cost and gives the
    # rest back. Rows left by a crash are released at startup.
    """
    CREATE TABLE llm_reservations (
        id           INTEGER PRIMARY KEY,
        principal_id TEXT NOT NULL,
        amount       INTEGER NOT NULL CHECK (amount >= 0),  -- micro-USD held
        tokens       INTEGER NOT NULL CHECK (tokens >= 0),  -- estimated tokens (tokens-per-minute)
        compute      REAL NOT NULL,                         -- compute charged, refunded on failure
        model        TEXT NOT NULL,
        request_id   TEXT NOT NULL,                         -- '' when the call had none
        created_at   REAL NOT NULL
    );
    CREATE INDEX llm_reservations_principal ON llm_reservations(principal_id);
    CREATE UNIQUE INDEX llm_reservations_request ON llm_reservations(principal_id, request_id)
        WHERE request_id != '';
    """,
    # 2 -> 3: the mint, genesis_oracle (server/genesis/oracle.py). Bids hold scrip in the
    # oracle's own account until their round resolves; every resolved round is one row
    # (UNIQUE round number and scheduled time: a round can never be resolved twice).
    # The oracle's scoring reads events by artifact, hence the index.
    """
    CREATE TABLE oracle_bids (
        artifact_id TEXT PRIMARY KEY,              -- one bid per artifact
        bidder      TEXT NOT NULL,
        amount      INTEGER NOT NULL CHECK (amount > 0),  -- held in genesis_oracle's balance
        placed_at   REAL NOT NULL,                 -- last change; counts for the first round at or after it
        seq         INTEGER NOT NULL UNIQUE        -- order of last change: ties go to the lower
    );
    CREATE INDEX oracle_bids_bidder ON oracle_bids(bidder);
    CREATE TABLE oracle_rounds (
        round       INTEGER PRIMARY KEY,           -- 1, 2, 3, ...
        at          REAL NOT NULL UNIQUE,          -- the scheduled (epoch-aligned) time it resolved
        resolved_at REAL NOT NULL,                 -- server time it was applied
        result      TEXT NOT NULL                  -- JSON record (see oracle.status)
    );
    CREATE TABLE oracle_state (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        start_at REAL NOT NULL,                    -- the mint's creation: rounds are the boundaries after it
        carry    INTEGER NOT NULL CHECK (carry >= 0),  -- income remainder carried into the next round
        bid_seq  INTEGER NOT NULL
    );
    CREATE INDEX events_by_artifact ON events(artifact_id, seq);
    """,
    # 4: decision traces (server/kernel/traces.py)
    """
    CREATE TABLE decisions (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        agent_id    TEXT NOT NULL,
        at          REAL NOT NULL,                 -- server time it was recorded
        step        INTEGER NOT NULL,              -- the agent's own step counter
        observed    TEXT NOT NULL,                 -- JSON: what the agent saw (its summary)
        action      TEXT NOT NULL,                 -- JSON: the parsed action
        outcome     TEXT NOT NULL,                 -- JSON: {ok, value | reason, message}
        llm_request_ids TEXT NOT NULL,             -- JSON list: genesis_llm calls behind it
        truncated   INTEGER NOT NULL               -- 1 if a field was cut to [traces] max_field_bytes
    );
    CREATE INDEX decisions_by_agent ON decisions(agent_id, seq);
    CREATE TABLE llm_exchanges (
        agent_id    TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        at          REAL NOT NULL,
        model       TEXT NOT NULL,
        prompt      TEXT NOT NULL,                 -- JSON: the exact messages sent to the model
        answer      TEXT NOT NULL,                 -- the model's raw answer
        truncated   INTEGER NOT NULL,
        PRIMARY KEY (agent_id, request_id)
    );
    """,
    # 5: the operation log, for exact replay (server/storage/oplog.py, server/kernel/commands.py)
    oplog.MIGRATION,
    # 6: agents stopped by the operator (Admin.StopAgent, server/storage/stopped.py)
    """
    CREATE TABLE stopped_agents (
        agent_id    TEXT PRIMARY KEY,
        at          REAL NOT NULL,                 -- server time it was stopped
        memo        TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, readonly: bool = False) -> SqliteStore:
    """A store (server/storage/store.py) on the SQLite file: the writer's, or a reader's."""
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, factory=SqliteStore)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


def is_url(database: object) -> bool:
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


def open_store(database: Path | str, *, readonly: bool = False) -> Store:
    """A store on `database`: a PostgreSQL URL (server/storage/postgres.py), else the path
    of a SQLite file."""
    if is_url(database):
        from server.storage.postgres import PostgresStore

        return PostgresStore(str(database), readonly=readonly)
    return connect(Path(database), readonly=readonly)


def migrate(conn: Store) -> int:
    """Bring the schema up to SCHEMA_VERSION. Refuses a newer database than this code."""
    if not isinstance(conn, sqlite3.Connection):
        return conn.migrate(SCHEMA_VERSION)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this server ({SCHEMA_VERSION})"
        )
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def open_replay_source(path: Path) -> SqliteStore:
    """A recorded world for `ecology replay` (server/replay.py): read-write mode so the WAL
    of a killed server is read, but query_only, so nothing is ever written."""
    conn = connect(path)
    conn.execute("PRAGMA query_only = 1")
    return conn


def open_replay_target(path: Path) -> SqliteStore:
    """A new world being rebuilt by `ecology replay`: no fsync (if the rebuild dies, run
    it again), the current schema."""
    conn = connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    migrate(conn)
    return conn

