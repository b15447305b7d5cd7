"""What /metrics costs: server CPU per call and calls/s with Prometheus metrics on (scraped
every second) against the same server configuration without them, measured in one run.

    .venv/bin/python bench/bench_metrics.py [--duration 3] [--rounds 2] [--inflight 16]

Uses bench_tls's servers and closed-loop load (plaintext TCP on loopback). Server CPU is read
from /proc (utime + stime of the server process) over each point. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tls import World, point  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=16)
    a = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        work = Path(tmp)
        worlds = [World(work, "off", None, False), World(work, "on", None, False, ["--metrics", f"127.0.0.1:{port}"])]
        stop = threading.Event()
        scrapes = [0]

        def scraper() -> None:
            while not stop.wait(1.0):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                scrapes[0] += 1

        threading.Thread(target=scraper, daemon=True).start()
        best: dict[tuple, tuple[float, float]] = {}
        try:
            for _ in range(a.rounds):
                for op in ("GetState", "transfer"):
                    for w in worlds:
                        c0, t0 = cpu_seconds(w.proc.pid), time.monotonic()
                        rate, _p50 = asyncio.run(point(w, op, a.inflight, a.duration))
                        calls = rate * (time.monotonic() - t0)
                        per_call = (cpu_seconds(w.proc.pid) - c0) / max(calls, 1) * 1e6
                        key = (op, w.name)
                        if key not in best or rate > best[key][0]:
                            best[key] = (rate, per_call)
        finally:
            stop.set()
            for w in worlds:
                w.stop()
    print(f"/metrics cost ({a.inflight} in flight, best of {a.rounds} rounds of {a.duration:g} s, "
          f"{scrapes[0]} scrapes at 1/s)")
    for op in ("GetState", "transfer"):
        (r0, c0), (r1, c1) = best[(op, "off")], best[(op, "on")]
        print(f"{op:<9} off {r0:7.0f}/s {c0:6.0f} us CPU/call | on {r1:7.0f}/s {c1:6.0f} us CPU/call | "
              f"CPU per call {100 * (c1 / c0 - 1):+5.1f}%  calls/s {r1 / r0:4.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
