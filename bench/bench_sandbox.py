"""Benchmark of sandboxed invocation (prints figures; not a test).

    python bench/bench_sandbox.py [--calls N] [--cold N] [--rounds N]

Starts a real world server (`python -m server.cli serve`, compute and rate limits raised
so that neither ever interferes) and measures, one call in flight, over TCP 127.0.0.1:

  * GetState                       - the RPC floor (a read, no writer, no sandbox);
  * invoke genesis_ledger.balance  - the invoke path without user code (the writer's
                                     transaction and commit included);
  * invoke a trivial artifact      - the full path into a WARM sandbox worker;
  * a fresh sandboxed process per call - what each invocation would cost without the
    warm pool: a new worker (same isolation as the server, bubblewrap where available)
    started, the code loaded, the method called, the worker killed. Measured directly
    on server.sandbox.pool.Worker (no RPC), and shown added to the RPC floor.

The RPC series are interleaved in blocks over --rounds rounds so drift on a busy
machine hits them alike. Goal: warm invocation adds <= 5 ms p50 over the RPC floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_runtime import AdminClient, WorldClient  # noqa: E402
from server.sandbox.pool import SandboxSettings, Worker, detect_isolation  # noqa: E402

CONFIG = """
[rate_limits]
principal_rate = 1e9
principal_burst = 1e9
connection_rate = 1e9
connection_burst = 1e9

[agents]
compute_rate = 1e9
compute_capacity = 1e12
"""
TRIVIAL = "def ping(x):\n    return x\n"


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str, str, Path]:
    data = tmp / "world"
    data.mkdir()
    (tmp / "world.toml").write_text(CONFIG)
    token = "adm_bench_" + uuid.uuid4().hex
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0",
         "--config", str(tmp / "world.toml"), "--log-level", "warning"],
        env={**os.environ, "ECOLOGY_ADMIN_TOKEN": token, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log, cwd=ROOT)
    ready = data / "server.json"
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start; see {tmp / 'server.log'}")
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())["listen"][0], token, tmp / "server.log"


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def fresh_worker_call(settings: SandboxSettings, isolation: str) -> tuple[float, float]:
    """(start ms, start+load+call+kill ms) of one fresh sandboxed worker."""
    t0 = time.perf_counter()
    w = Worker(settings, isolation)
    t1 = time.perf_counter()
    try:
        deadline = time.monotonic() + 10
        never = lambda msg: {"type": "error", "reason": "EXECUTION_ERROR", "message": "no nested calls"}  # noqa: E731
        assert w.exchange({"type": "load", "source": TRIVIAL, "methods": ["ping"]}, deadline, never)["type"] == "loaded"
        reply = w.exchange({"type": "call", "method": "ping", "args": {"x": 1}, "context": {}}, deadline, never)
        assert reply == {"type": "done", "value": 1}, reply
    finally:
        w.kill()
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=600, help="calls per RPC series (split over the rounds)")
    ap.add_argument("--cold", type=int, default=40, help="fresh sandboxed processes to start")
    ap.add_argument("--rounds", type=int, default=6)
    opts = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ecology-bench-sandbox-"))
    proc, address, token, log = start_server(tmp)
    try:
        with AdminClient(address, token) as admin:
            isolation = admin.get_stats().sandbox_isolation
            created = admin.create_agent("bench")
        world = WorldClient(address, created.token)
        world.write("ping", TRIVIAL, can_execute=True,
                    interface=[{"name": "ping", "input_schema": {"type": "object", "properties": {"x": {}}}}])
        assert world.invoke("ping", "ping", x=1) == 1

        series = {
            "GetState (RPC floor)": world.get_state,
            "invoke genesis_ledger.balance": lambda: world.invoke("genesis_ledger", "balance"),
            "invoke trivial artifact (warm)": lambda: world.invoke("ping", "ping", x=1),
        }
        samples: dict[str, list[float]] = {k: [] for k in series}
        for fn in series.values():  # warm-up
            timed(fn, 50)
        per_block = max(1, opts.calls // opts.rounds)
        for _ in range(opts.rounds):
            for name, fn in series.items():
                samples[name] += timed(fn, per_block)

        # A fresh sandboxed process per call, with the server's own settings.
        settings = SandboxSettings()
        iso = detect_isolation(settings.isolation)
        starts, colds = [], []
        for _ in range(opts.cold):
            s, c = fresh_worker_call(settings, iso)
            starts.append(s)
            colds.append(c)
        world.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    floor50, floor99 = pct(samples["GetState (RPC floor)"], 50), pct(samples["GetState (RPC floor)"], 99)
    rows = [(name, pct(v, 50), pct(v, 99), len(v)) for name, v in samples.items()]
    rows.append(("fresh sandboxed process: start only", pct(starts, 50), pct(starts, 99), len(starts)))
    rows.append(("fresh sandboxed process: start+load+call+kill", pct(colds, 50), pct(colds, 99), len(colds)))
    rows.append(("  = RPC floor + fresh process per call (est.)", floor50 + pct(colds, 50),
                 floor99 + pct(colds, 99), len(colds)))

    print(f"sandbox isolation: server {isolation!r}, fresh workers {iso!r}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    print(f"{'path':50} {'p50 ms':>8} {'p99 ms':>8} {'p50-floor':>10} {'p50/floor':>9} {'n':>5}")
    for name, p50, p99, n in rows:
        print(f"{name:50} {p50:8.2f} {p99:8.2f} {p50 - floor50:+10.2f} {p50 / floor50:9.1f}x {n:5d}")
    warm50 = pct(samples["invoke trivial artifact (warm)"], 50)
    genesis50 = pct(samples["invoke genesis_ledger.balance"], 50)
    print()
    print(f"warm invocation adds {warm50 - floor50:.2f} ms p50 over the RPC floor "
          f"({warm50 - genesis50:.2f} ms of it is the sandbox round trip, the rest the invoke path's "
          f"transaction) - goal <= 5 ms: {'MET' if warm50 - floor50 <= 5 else 'NOT MET'}")
    print(f"a fresh sandboxed process per call would cost {pct(colds, 50):.1f} ms p50 more than the floor: "
          f"{pct(colds, 50) / max(warm50 - floor50, 1e-9):.0f}x the warm pool's overhead")


if __name__ == "__main__":
    main()
