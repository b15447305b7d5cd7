"""A real PostgreSQL server for the tests (Debian's `postgresql` package, no mocks).

`PgServer` runs initdb and pg_ctl from /usr/lib/postgresql/*/bin in a fresh temporary
directory, listening only on a unix socket there (no TCP port to collide on). As root the
server runs as the `postgres` user (initdb refuses root). Each world gets its own database
(`new_database`). Set ECOLOGY_TEST_DATABASE=postgresql to run the server fixtures of the
suite against it (tests/conftest.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid

import psycopg

from server.storage.postgres import PostgresStore
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self._schemas_db: str | None = None
        self._pool: list = []
        self.root = Path(tempfile.mkdtemp(prefix="ecology-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
            shutil.chown(self.socket_dir, self.user)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o",
                  f"-k {self.socket_dir} -c listen_addresses='' -c max_connections=300 -c fsync=on "
                  "-c synchronous_commit=on", "start")

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bindir / tool), *args]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, cwd=self.root)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}"

    def new_database(self) -> str:
        name = "world_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def new_schema(self) -> str:
        """The URL of a fresh, empty schema (first on the search_path) in one shared database:
        cheaper than a database for the in-process stores of tests/conftest.py `new_store`."""
        if self._schemas_db is None:
            self._schemas_db = self.new_database()
        name = "s_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self._schemas_db, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self._schemas_db}&options=-csearch_path%3D{name}"

    def fresh_store(self):
        """A migrated PostgreSQL store holding nothing but what the migrations insert, for
        in-process tests (tests/conftest.py `new_store`). Its close() empties it again and
        keeps it for the next caller instead of closing: a new schema and its migrations
        take ~0.2 s, which the property tests would pay once per example; emptying ~2 ms."""
        if self._pool:
            store = self._pool.pop()
            store.claim_sole_writer()
            return store
        from server.storage import db

        store = PooledStore(self.new_schema(), self._pool)
        db.migrate(store)
        store.snapshot()
        store.claim_sole_writer()  # the test's kernel is the only writer of its schema
        return store

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class PooledStore(PostgresStore):
    """A PostgresStore whose close() empties its schema back to the migrated state and
    returns it to the pool (PgServer.fresh_store)."""

    def __init__(self, url: str, pool: list) -> None:
        super().__init__(url)
        self._pool = pool
        self._reset: list[tuple[str, tuple]] = []

    def snapshot(self) -> None:
        """Remember the migrated state: every table's rows (ledger_totals' one row)."""
        state = self.dump()
        self._reset = [(f"DELETE FROM {t}", ()) for t in state if t not in ("schema_version", "schema")]
        for table, rows in state.items():
            if table in ("schema_version", "schema"):
                continue
            for row in rows:
                self._reset.append((f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(row))})", row))

    def close(self) -> None:
        if self.conn.closed or self in self._pool:
            return
        try:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.execute("ROLLBACK")
            self._queued = []
            self._ended(committed=False)  # also drops the writer's view of the rows
            with self.conn.transaction():
                for sql, params in self._reset:
                    self.conn.execute(sql, params)
        except Exception:
            self.conn.close()
        else:
            self._pool.append(self)
