"""The storage seam (server/storage/store.py): no SQL outside server/storage.

Scans every module of server/ outside server/storage: no database driver is imported, no
`execute`-style call is made, and no string literal reads like SQL. A new query belongs in a
Store method (and in every backend), not in the kernel's rules or the RPC layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server"
STORAGE = SERVER / "storage"

DRIVERS = {"sqlite3", "psycopg", "psycopg2", "asyncpg", "psycopg_pool"}
CALLS = {"execute", "executemany", "executescript", "fetchone", "fetchall", "cursor"}
SQL = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX)\b"
    r"|DROP\s+TABLE\b|ALTER\s+TABLE\b|SAVEPOINT\s+\w|ROLLBACK\b|RELEASE\s+\w|BEGIN\s+(IMMEDIATE|TRANSACTION)\b"
    r"|PRAGMA\s+\w|json_extract\s*\(|COALESCE\s*\()")

# (module relative to the repository, exact text of the string literal's line) allowed, and why.
# Empty: nothing outside server/storage needs SQL. Keep it that way.
ALLOWED: set[tuple[str, str]] = set()


def _modules() -> list[Path]:
    return sorted(p for p in SERVER.rglob("*.py") if STORAGE not in p.parents)


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = str(path.relative_to(ROOT)) if ROOT in path.parents else path.name
    lines = path.read_text().splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        for name in names:
            if name in DRIVERS:
                out.append(f"{rel}:{node.lineno}: imports the database driver {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CALLS:
            out.append(f"{rel}:{node.lineno}: calls .{node.func.attr}()")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            if (rel, lines[node.lineno - 1].strip()) not in ALLOWED:
                out.append(f"{rel}:{node.lineno}: SQL in a string: {node.value[:80]!r}")
    return out


def test_no_sql_outside_server_storage():
    found = [f for p in _modules() for f in _findings(p)]
    assert not found, "SQL outside server/storage (move it behind a Store method):\n" + "\n".join(found)


@pytest.mark.parametrize("source, why", [
    ("import sqlite3\n", "driver"),
    ("def f(conn):\n    return conn.execute('x')\n", "execute"),
    ("Q = 'SELECT scrip FROM balances WHERE principal_id = ?'\n", "select"),
    ("Q = f'UPDATE balances SET scrip = {x}'\n", "update in an f-string"),
    ("Q = ('DELETE FROM ' 'events')\n", "delete"),
    ("def f(c):\n    c.cursor()\n", "cursor"),
    ("Q = \"json_extract(state, '$.x')\"\n", "dialect function"),
])
def test_the_scan_catches_sql(tmp_path, source, why):
    """The scan is not vacuous: each of these would be reported."""
    p = tmp_path / "probe.py"
    p.write_text(source)
    assert _findings(p), why


def test_prose_is_not_sql():
    """Words like 'select' in messages and docstrings are fine (lower case, no SQL shape)."""
    assert not SQL.search("select an agent, then update its config; delete from the list")


def test_every_store_method_is_implemented_by_sqlite():
    from server.storage.sqlite import SqliteStore
    from server.storage.store import Store

    missing = [name for name, fn in vars(Store).items()
               if callable(fn) and not name.startswith("_") and getattr(SqliteStore, name) is fn]
    assert not missing, f"SqliteStore does not implement: {missing}"


def test_postgres_migrations_match_sqlite():
    """Every schema version exists on both backends (a new db.MIGRATIONS entry needs its
    PostgreSQL twin in server/storage/postgres.py PG_MIGRATIONS)."""
    from server.storage import db
    from server.storage.postgres import PG_MIGRATIONS

    assert len(PG_MIGRATIONS) == len(db.MIGRATIONS)


def test_every_store_method_is_implemented_by_postgres():
    from server.storage.postgres import PostgresStore
    from server.storage.store import Store

    missing = [name for name, fn in vars(Store).items()
               if callable(fn) and not name.startswith("_") and getattr(PostgresStore, name) is fn]
    assert not missing, f"PostgresStore does not implement: {missing}"
