"""Count the SQL statements one durable genesis_ledger.transfer runs on the writer
(SQLite trace callback), on the same path as InvokeArtifact: the executor's batch
(BEGIN, SAVEPOINT op, ..., RELEASE op, COMMIT), the "invoke" command and its oplog row
(server/kernel/commands.py), Kernel.idempotent (with a request id), Kernel.with_work and
Kernel.op_invoke. Not a test; prints the statements and their count.

    PYTHONPATH=. python bench/statements_per_transfer.py [--quiet] [--postgresql]

--postgresql: the same on a PostgreSQL store (a server started here by tests/pg.py, the
store holding the writer lock as the server's does), counting round trips: every query
string sent, with the statements it carries (held-back writes and savepoint commands
travel in front of the next statement, postgres.py).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from bench_kernel import open_world, transfer_op
from server.kernel.commands import Commands


def main() -> int:
    quiet = "--quiet" in sys.argv
    postgresql = "--postgresql" in sys.argv
    with tempfile.TemporaryDirectory() as d:
        kernel, conn, ex, pg = open_world(d, {"endowment": 1000}, postgresql=postgresql)
        ex.start()
        commands = Commands(kernel, ex)

        async def transfer(i: int):
            return await ex.run(transfer_op(kernel, commands, f"req-{i}"))

        for i in range(5):  # warm caches (and prepare statements, postgres.py)
            asyncio.run(transfer(100 + i))
        seen: list[str] = []
        if postgresql:
            trips = _count_round_trips(conn, seen)
            asyncio.run(transfer(1))
            trips.stop()
        else:
            conn.set_trace_callback(seen.append)
            asyncio.run(transfer(1))
            conn.set_trace_callback(None)
        ex.stop()
        conn.close()
        if pg is not None:
            pg.stop()
    if not quiet:
        for s in seen:
            print("  " + " ".join(s.split())[:160])
    if postgresql:
        statements = sum(s.count("; ") + 1 for s in seen)
        print(f"{len(seen)} round trip{'' if len(seen) == 1 else 's'} per transfer, carrying {statements} statements "
              "(including BEGIN/SAVEPOINT/RELEASE/COMMIT of its batch)")
    else:
        print(f"{len(seen)} statements per transfer (including BEGIN/SAVEPOINT/RELEASE/COMMIT of its batch)")
    return 0


class _count_round_trips:
    """Records every query string the store's connection sends (psycopg's execute on the
    connection and on its client-side cursors)."""

    def __init__(self, store, seen: list[str]) -> None:
        import psycopg

        self._patched = []
        for cls in (psycopg.Connection, psycopg.ClientCursor, psycopg.Cursor):
            original = cls.execute

            def execute(obj, query, params=None, *args, _original=original, **kw):
                seen.append(query.decode() if isinstance(query, bytes) else query if isinstance(query, str) else str(query))
                return _original(obj, query, params, *args, **kw)

            cls.execute = execute
            self._patched.append((cls, original))

    def stop(self) -> None:
        for cls, original in self._patched:
            cls.execute = original


if __name__ == "__main__":
    sys.exit(main())
