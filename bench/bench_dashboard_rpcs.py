"""What the dashboard asks of the world server, and what each of its calls costs the server.

    .venv/bin/python bench/bench_dashboard_rpcs.py [--agents 100] [--calls 300] [--seconds 10]

One `ecology serve --metrics` with `--agents` agents (the load of bench_observability.py
runs first for `--warm` seconds, so the ledger, events and decisions are not empty):

1. Server CPU per call of each Admin RPC the dashboard makes (GetStats, ListAgents; and
   ListEvents, which its Agent/Artifact pages use when opened), `--calls` calls in a loop
   from one client; the idle CPU over the same time is subtracted.
2. Server CPU per delivered event of an Admin.WatchEvents stream (one message per event)
   and of an Admin.WatchEventBatches stream (200 a message) catching up inside the hub's
   in-memory window (`--events` events; the cost of sending, not of reading them).
3. With the load running, an `ecology dashboard` process with one SSE reader: the
   dashboard's calls per second by method (from the server's `grpc_server_handled_total`,
   the load's own methods left out), the events its stream received, and the CPU of the
   dashboard process itself (which the server does not pay, but which shares the cores).

Prints a table; asserts nothing. CPU from /proc/PID/stat (utime + stime).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_observability import Load, cpu_seconds, free_port  # noqa: E402


def scrape(port: int) -> dict[tuple[str, str], float]:
    """(service, method) -> handled calls, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "grpc_server_handled":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    key = (s.labels["grpc_service"].rsplit(".", 1)[-1], s.labels["grpc_method"])
                    out[key] = out.get(key, 0) + s.value
    return out


def per_call(pid: int, fn, n: int, idle_per_s: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    for _ in range(n):
        fn()
    cpu, wall = cpu_seconds(pid) - c0, time.monotonic() - t0
    return max(0.0, cpu - idle_per_s * wall) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--events", type=int, default=8000)
    ap.add_argument("--warm", type=float, default=15.0, help="seconds of agent load before measuring")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of the dashboard count")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-rpcs-"))
    token = "adm_" + uuid.uuid4().hex
    (work / "admin").write_text(token)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": token}
    sock = f"unix:{work / 'server.sock'}"
    mport = free_port()
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(work / "data"),
                             "--listen", sock, "--log-level", "warning", "--metrics", f"127.0.0.1:{mport}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    while not (work / "data" / "server.json").exists():
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start; see {work / 'server.log'}")
        time.sleep(0.05)
    from agent_runtime import AdminClient

    dash = None
    stop = threading.Event()
    try:
        admin = AdminClient(sock, token)
        served = types.SimpleNamespace(sock=sock, tokens=[(f"agent{i:03d}", admin.create_agent(
            f"agent{i:03d}", endowment=1_000_000, compute_rate=1e6, compute_capacity=1e6).token)
            for i in range(args.agents)])
        load_args = types.SimpleNamespace(clients=4, steps_per_second=2.0, traces=True)
        load = Load(served, load_args)
        load.start(args.warm)
        warm = load.finish()
        stats = admin.get_stats()
        print(f"{args.agents} agents; warm-up load {warm['calls']} calls; {stats.last_event_seq} events, "
              f"{stats.ledger_entries} ledger entries")
        time.sleep(1)
        c0 = cpu_seconds(proc.pid)
        time.sleep(3)
        idle = (cpu_seconds(proc.pid) - c0) / 3
        print(f"idle server CPU {idle * 1e3:.2f} ms/s")
        admin.get_stats(), admin.list_agents()  # warm
        rows = [
            ("GetStats", per_call(proc.pid, admin.get_stats, args.calls, idle)),
            ("ListAgents (all pages)", per_call(proc.pid, admin.list_agents, args.calls, idle)),
            ("ListEvents limit 100", per_call(proc.pid, lambda: admin.list_events(
                after_seq=max(0, stats.last_event_seq - 100), limit=100), args.calls // 3, idle)),
        ]
        n = min(args.events, stats.last_event_seq - 1)
        def per_event(sub) -> float:
            """Server CPU (us) per event while `sub` catches up on the last n events."""
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            got = 0
            for _ in sub:
                got += 1
                if got >= n:
                    break
            cpu, wall = cpu_seconds(proc.pid) - c0, time.monotonic() - t0
            sub.close()
            return max(0.0, cpu - idle * wall) / max(got, 1) * 1e6

        rows.append(("WatchEvents, per event (catch-up)",
                     per_event(admin.watch_events(after_seq=stats.last_event_seq - n))))
        rows.append(("WatchEventBatches of 200, per event",
                     per_event(admin.watch_event_batches(after_seq=stats.last_event_seq - n, max_events=200))))
        print(f"\n{'server CPU per call':<36} {'us':>8}")
        for name, us in rows:
            print(f"{name:<36} {us:8.1f}")

        # 3. the dashboard's own calls while the load runs
        port = free_port()
        dash = subprocess.Popen([sys.executable, "-m", "server.cli", "dashboard", "--server", sock,
                                 "--admin-token-file", str(work / "admin"), "--listen", f"127.0.0.1:{port}"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(work / "dashboard.log", "wb"))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                if dash.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the dashboard did not start; see {work / 'dashboard.log'}")
                time.sleep(0.2)
        sse_bytes = [0]

        def sse() -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream", timeout=60) as r:
                while not stop.is_set():
                    chunk = r.read1(65536)
                    if not chunk:
                        return
                    sse_bytes[0] += len(chunk)

        threading.Thread(target=sse, daemon=True).start()
        time.sleep(2)
        before, e0 = scrape(mport), admin.get_stats().last_event_seq
        d0, s0, t0 = cpu_seconds(dash.pid), cpu_seconds(proc.pid), time.monotonic()
        load.start(args.seconds)
        got = load.finish()
        wall = time.monotonic() - t0
        dcpu, scpu = cpu_seconds(dash.pid) - d0, cpu_seconds(proc.pid) - s0
        after, e1 = scrape(mport), admin.get_stats().last_event_seq
        print(f"\nwith the load ({got['calls'] / wall:.0f} calls/s, {(e1 - e0) / wall:.0f} events/s) and "
              f"the dashboard open for {wall:.1f} s: the dashboard's calls per second")
        load_methods = {"GetState", "InvokeArtifact", "WriteArtifact", "RecordDecision"}
        for key in sorted(after):
            if key[1] in load_methods:
                continue
            rate = (after[key] - before.get(key, 0)) / wall
            if rate:
                print(f"  {key[0]}.{key[1]:<24} {rate:7.2f}/s")
        print(f"  stream events to the dashboard       {(e1 - e0) / wall:7.0f}/s (WatchEventBatches: at most 4 "
              "messages/s)")
        print(f"server CPU {scpu / wall * 1e3:.0f} ms/s ({scpu / max(got['calls'], 1) * 1e6:.0f} us per agent call); "
              f"dashboard process CPU {dcpu / wall * 1e3:.0f} ms/s; SSE bytes {sse_bytes[0]}")
        load.close()
        admin.close()
    finally:
        stop.set()
        if dash is not None:
            dash.terminate()
            dash.wait(timeout=30)
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
