"""Benchmark of the two storage backends in one run (prints figures; not a test).

    python bench/bench_storage.py [--duration SECONDS_PER_POINT] [--rounds N] [--quick]

Two world servers side by side, the same configuration (bench_server.py's RAISED_CONFIG:
limits that never throttle), one on SQLite in its data directory, one on PostgreSQL
(a real server started here by tests/pg.py: initdb, fsync on, synchronous_commit on, unix
socket). Measured over TCP 127.0.0.1 with bench_server.py's load processes: GetState and
durable genesis_ledger.transfer at 1, 16 and 64 in flight. The two backends are measured
back to back for every point, in alternating order, --rounds times; the report gives the
best round of each (background load only slows a point down) with the range over the
rounds, the ratio PostgreSQL / SQLite of the best rounds and the range of the per-round
ratios. Goals (issue 11): transfers on PostgreSQL >= 0.8x SQLite at every concurrency;
GetState unchanged (reads are served the same way on both, so ~1.0x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from bench_server import (  # noqa: E402
    CONCURRENCY, RAISED_CONFIG, Bench, Point, WorldProc, best, fmt_errors, print_table, world_specs)

GOAL = {"transfer (durable)": 0.8, "GetState": 0.8}
TICK = os.sysconf("SC_CLK_TCK")


def pg_cpu_seconds(data_dir: Path) -> float:
    """CPU time used so far by a PostgreSQL server: its postmaster and every process it
    started (the world server's sessions, the WAL writer, the checkpointer)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=None, help="seconds per point (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="1 s per point and 1 round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, interleaved (default 3; --quick 1)")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    ap.add_argument("--channels", type=int, default=4, help="channels (TCP connections) per load process")
    ap.add_argument("--agents", type=int, default=8, help="agents per world (default 8)")
    ap.add_argument("--log-level", default="info", help="world server log level (default info)")
    ap.add_argument("--database", metavar="URL", help="an existing PostgreSQL database to use (its tables must "
                    "not exist yet) instead of starting a PostgreSQL server here")
    args = ap.parse_args()
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.py_spy = None

    from tests.pg import PgServer

    workdir = Path(tempfile.mkdtemp(prefix="ecology-bench-storage-"))
    print(f"Agent Ecology storage benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"load from {args.procs} processes x up to {args.channels} channels; {args.duration:g} s per point, "
          f"{args.rounds} interleaved round(s); TCP 127.0.0.1")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (other work on the machine lowers the figures)")
    print(f"work directory: {workdir}\n", flush=True)
    pg = None if args.database else PgServer()
    url = args.database or pg.new_database()
    bench = Bench(args)
    worlds: dict[str, WorldProc] = {}
    try:
        worlds["SQLite"] = WorldProc("world-sqlite", workdir, RAISED_CONFIG, log_level=args.log_level)
        worlds["PostgreSQL"] = WorldProc("world-pg", workdir, RAISED_CONFIG, log_level=args.log_level,
                                         database=url)
        agents = {name: w.create_agents("bench_agent_", args.agents) for name, w in worlds.items()}
        workloads = [("GetState", ["get_state"]), ("transfer (durable)", ["transfer"])]
        raw: dict[tuple[str, str, int], list[Point]] = {}
        pg_us: dict[tuple[str, str, int], list[float]] = {}
        t0 = time.monotonic()
        for r in range(args.rounds):
            for c in CONCURRENCY:
                for label, ops in workloads:
                    order = list(worlds) if (r + c) % 2 == 0 else list(worlds)[::-1]
                    for name in order:
                        w = worlds[name]
                        cpu0, t0_point = (pg_cpu_seconds(pg.data), time.monotonic()) if pg else (0.0, 0.0)
                        p, _ = bench.measure(label, w.address, "world", world_specs(agents[name], c, ops), w.pid)
                        if pg:  # PostgreSQL's CPU over the whole point (warm-up included), per call
                            share = (pg_cpu_seconds(pg.data) - cpu0) / (time.monotonic() - t0_point)
                            pg_us.setdefault((name, label, c), []).append(share / p.rate * 1e6 if p.rate else 0.0)
                        raw.setdefault((name, label, c), []).append(p)
                    lite, post = raw[("SQLite", label, c)][-1], raw[("PostgreSQL", label, c)][-1]
                    pg_note = f"; PostgreSQL server CPU {pg_us[('PostgreSQL', label, c)][-1]:,.0f} us/call" if pg else ""
                    print(f"  round {r + 1}, {c:>2} in flight, {label}: SQLite {lite.rate:,.0f}/s, "
                          f"PostgreSQL {post.rate:,.0f}/s ({post.rate / lite.rate:.2f}x){pg_note}", flush=True)
        notes = {name: w.ledger_ok() for name, w in worlds.items()}

        print(f"\nBest round of {args.rounds} (range over rounds); ratio = PostgreSQL / SQLite "
              f"({time.monotonic() - t0:.0f} s)\n")
        rows = []
        for label, _ in workloads:
            for c in CONCURRENCY:
                lite_all, post_all = raw[("SQLite", label, c)], raw[("PostgreSQL", label, c)]
                lite, post = best(lite_all), best(post_all)
                ratio = post.rate / lite.rate
                per_round = [b.rate / a.rate for a, b in zip(lite_all, post_all)]
                goal = GOAL[label]

                def rng(ps):
                    return f"{min(p.rate for p in ps):,.0f}-{max(p.rate for p in ps):,.0f}"

                rows.append([label, str(c), f"{lite.rate:,.0f}", rng(lite_all), f"{post.rate:,.0f}", rng(post_all),
                             f"{ratio:.2f}", f"{min(per_round):.2f}-{max(per_round):.2f}",
                             f"{statistics.median(per_round):.2f}",
                             f"{lite.pct(0.5):.2f}/{post.pct(0.5):.2f}",
                             f"{lite.us_per_call:,.0f}/{post.us_per_call:,.0f}",
                             f"{statistics.median(pg_us[('PostgreSQL', label, c)]):,.0f}" if pg else "-",
                             f">={goal} {'ok' if ratio >= goal else 'MISS'}",
                             f"{fmt_errors(lite.errors)}/{fmt_errors(post.errors)}"])
        print_table(["workload", "in flight", "SQLite/s", "range", "PG/s", "range", "PG/SQLite", "per round",
                     "median", "p50 ms S/PG", "srv us/call S/PG", "PG us/call", "goal", "errors S/PG"], rows,
                    "lr" + "r" * 12)
        print()
        for name, note in notes.items():
            print(f"{name}: {note}")
        return 0
    finally:
        for w in worlds.values():
            w.stop()
        bench.close()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
