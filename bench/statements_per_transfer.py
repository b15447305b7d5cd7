"""Count the SQL statements one durable genesis_ledger.transfer runs on the writer
(SQLite trace callback), on the same path as InvokeArtifact: the executor's batch
(BEGIN, SAVEPOINT op, ..., RELEASE op, COMMIT), Kernel.idempotent (with a request id),
Kernel.with_work and Kernel.op_invoke. Not a test; prints the statements and their count.

    PYTHONPATH=. python bench/statements_per_transfer.py [--quiet]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from server import config
from server.kernel import invocation
from server.kernel.kernel import Kernel
from server.storage import db
from server.storage.executor import Executor


def main() -> int:
    quiet = "--quiet" in sys.argv
    cfg = config.build({"agents": {"endowment": 1000}})
    kernel = Kernel(cfg)
    with tempfile.TemporaryDirectory() as d:
        conn = db.connect(Path(d) / db.DB_FILE)
        db.migrate(conn)
        ex = Executor(conn)
        ex.run_blocking(kernel.bootstrap)
        for name in ("alice", "bob"):
            ex.run_blocking(lambda c, n=name: kernel.op_create_agent(c, n, "{}"))
        ex.start()

        async def transfer(i: int):
            def op(c):
                work = invocation.Work()
                return kernel.idempotent(c, "alice", f"req-{i}", "InvokeArtifact:genesis_ledger.transfer",
                                         lambda: kernel.with_work(c, "alice", work, lambda: kernel.op_invoke(
                                             c, "alice", "genesis_ledger", "transfer", {"to": "bob", "amount": 1},
                                             invocation.Chain(now=kernel.clock(), work=work), 0)))
            return await ex.run(op)

        asyncio.run(transfer(0))  # warm caches
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        asyncio.run(transfer(1))
        conn.set_trace_callback(None)
        ex.stop()
        conn.close()
    if not quiet:
        for s in seen:
            print("  " + " ".join(s.split())[:160])
    print(f"{len(seen)} statements per transfer (including BEGIN/SAVEPOINT/RELEASE/COMMIT of its batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
