"""Failover time of standby servers on one PostgreSQL database (server/standby.py).

Three `ecology serve --database` processes on a PostgreSQL server of their own
(tests/pg.py); one client process sends transfers throughout. The active server is
SIGKILLed `--kills` times (default 10); each time, the time from the kill until another
server's health says SERVING is measured. Prints p50 and max.

    PYTHONPATH=. python bench/bench_failover.py [--kills 10] [--nodes 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_runtime.client import AdminClient  # noqa: E402
from tests.failover_cluster import Cluster, start_client  # noqa: E402
from tests.pg import PgServer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args()
    pg = PgServer()
    root = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    cluster = Cluster(root, pg.new_database(), args.nodes).start()
    client = None
    try:
        with AdminClient(cluster.targets, cluster.admin_token) as admin:
            a, b = admin.create_agent("bench_a", endowment=10**9), admin.create_agent("bench_b")
        client = start_client(cluster.targets, a.token, b.agent_id, "bench", root / "client.jsonl", root / "stop")
        times = []
        for i in range(args.kills):
            time.sleep(1.0)
            old, new, took = cluster.kill_active()
            times.append(took)
            print(f"kill {i + 1}: {old.name} -> {new.name} in {took * 1000:.0f} ms", flush=True)
        (root / "stop").touch()
        client.wait(timeout=120)
        acked = sum(1 for line in (root / "client.jsonl").read_text().splitlines() if '"rid"' in line)
        print(f"failover (kill -> SERVING) over {len(times)} kills: p50 {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms; {acked} transfers acknowledged meanwhile")
    finally:
        (root / "stop").touch()
        if client is not None and client.poll() is None:
            client.kill()
        cluster.stop()
        pg.stop()


if __name__ == "__main__":
    main()
