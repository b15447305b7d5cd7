"""The kernel and its store alone, without gRPC (prints figures; not a test).

    PYTHONPATH=. python bench/bench_kernel.py [--duration SECONDS] [--postgresql]

Durable genesis_ledger.transfer operations submitted in process, on one asyncio loop, to
the writer thread (server/storage/executor.py) exactly as server/rpc/outside.py submits
them (the "invoke" command with a request id, its oplog row, group commit), at 1, 16 and
64 in flight, on a fresh SQLite file (synchronous=FULL, as the server) or, with
--postgresql, on a PostgreSQL server started here by tests/pg.py. Per point: transfers per
second, the CPU of this process per transfer (the loop and the writer, both on one GIL)
and the mean batch size. Set beside bench_server.py's transfer figures, it says how much
of a transfer's server CPU is the kernel and the store, and how much the RPC layer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from server import config  # noqa: E402
from server.kernel import invocation  # noqa: E402
from server.kernel.commands import Commands  # noqa: E402
from server.kernel.kernel import Kernel  # noqa: E402
from server.storage import db  # noqa: E402
from server.storage.executor import Executor  # noqa: E402

CONCURRENCY = (1, 16, 64)


def open_world(directory: str, agents: dict, *, postgresql: bool = False):
    """A kernel with `alice` and `bob` on a fresh store (SQLite under `directory`, or a
    database on a PostgreSQL server started here, the store holding the writer lock as the
    server's does), and its writer thread started: (kernel, store, executor, pg or None)."""
    kernel = Kernel(config.build({"agents": agents}))
    pg = None
    if postgresql:
        from tests.pg import PgServer

        pg = PgServer()
        conn = db.open_store(pg.new_database())
    else:
        conn = db.connect(Path(directory) / db.DB_FILE)
    db.migrate(conn)
    if postgresql:
        assert conn.lease_try()  # as the server does: the only writer from now on
    ex = Executor(conn)
    ex.run_blocking(kernel.bootstrap)
    for name in ("alice", "bob"):
        ex.run_blocking(lambda c, n=name: kernel.op_create_agent(c, n, "{}"))
    return kernel, conn, ex, pg


def transfer_op(kernel: Kernel, commands: Commands, request_id: str):
    """alice pays bob 1, as server/rpc/outside.py submits a genesis method: the "invoke"
    command, recorded in the oplog."""
    chain = invocation.Chain(now=kernel.clock(), work=invocation.Work())
    return commands.op("invoke", {
        "caller": "alice", "request_id": request_id, "artifact_id": "genesis_ledger", "method": "transfer",
        "args": {"to": "bob", "amount": 1}, "max_spend": 0, "chain": chain})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per point (default 3)")
    ap.add_argument("--postgresql", action="store_true", help="on PostgreSQL (tests/pg.py starts a server)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        kernel, conn, ex, pg = open_world(
            d, {"endowment": 10**12, "compute_rate": 1e12, "compute_capacity": 1e12}, postgresql=args.postgresql)
        sizes: list[int] = []
        ex.on_batch = lambda n, _seconds: sizes.append(n)
        ex.start()
        commands = Commands(kernel, ex)
        ids = iter(range(10**12))

        def op():
            return transfer_op(kernel, commands, f"req-{next(ids)}")

        async def point(inflight: int, seconds: float) -> tuple[int, float]:
            done = 0
            stop = time.perf_counter() + seconds

            async def caller() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    await ex.run(op())
                    done += 1

            cpu = time.process_time()
            await asyncio.gather(*(caller() for _ in range(inflight)))
            return done, time.process_time() - cpu

        backend = "PostgreSQL" if args.postgresql else "SQLite"
        print(f"Kernel + {backend} store in process, no gRPC: durable transfers, {args.duration:g} s per point")
        print(f"{'in flight':>9}  {'transfers/s':>11}  {'CPU us/transfer':>15}  {'mean batch':>10}")
        asyncio.run(point(4, 0.5))  # warm up: statement caches, prepared statements
        failed = False
        for inflight in CONCURRENCY:
            sizes.clear()
            done, cpu = asyncio.run(point(inflight, args.duration))
            if not done:
                failed = True
            print(f"{inflight:>9}  {done / args.duration:>11,.0f}  {cpu / max(done, 1) * 1e6:>15,.0f}  "
                  f"{sum(sizes) / max(len(sizes), 1):>10.1f}", flush=True)
        ex.stop()
        conn.close()
        if pg is not None:
            pg.stop()
    if failed:
        print("bench_kernel: a point completed no transfer", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
