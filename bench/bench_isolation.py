"""Benchmark: does hostile user code slow a bystander down? (issue 8.3)

A bystander agent makes paced transfers (default 50/s) for `--duration` seconds, first
alone, then while attacker agents keep 20 looping user contracts (each guarding its own
target, each a distinct contract, each target read over and over) and 20 looping tools
(half spin, half call pay() in a loop) busy. Prints the bystander's throughput ratio
(goal >= 0.9x) and its p50/p99 latency (goal p99 < 50 ms), and what the attackers got.
No asserts: it reports figures.

    python bench/bench_isolation.py                 # one attacker agent, 8 s per phase
    python bench/bench_isolation.py --attackers 20  # the same 40 loops spread over 20 agents

Figures depend on the machine and on everything else running on it (see bench/README.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_runtime import AdminClient, EcologyError, WorldClient  # noqa: E402

CONFIG = """
[rate_limits]
principal_rate = 1000000.0
principal_burst = 1000000.0
max_in_flight_per_principal = 1024

[agents]
compute_rate = 1000000.0
compute_capacity = 1000000000.0
endowment = 1000000000

[sandbox]
timeout_seconds = 2.0
contract_timeout_seconds = 0.5
default_max_spend = 1000000000

[oracle]
enabled = false
"""
LOOPING_CONTRACT = """
def check_permission(artifact_id, action, requester_id, context):
    while True:  # contract %s
        pass
"""
SPIN_TOOL = "def f():\n    while True:  # tool %s\n        pass\n"
PAY_TOOL = ("def f():\n    while True:  # tool %s\n        try:\n            pay(%r, 1)\n"
            "        except RemoteError:\n            pass\n")


def start_server(tmp: Path) -> tuple[subprocess.Popen, str, str]:
    data = tmp / "world"
    data.mkdir()
    (tmp / "world.toml").write_text(CONFIG)
    token = "adm_bench_" + uuid.uuid4().hex
    sock = f"unix:{tmp / 'world.sock'}"
    log = open(tmp / "world.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data), "--listen", sock,
         "--config", str(tmp / "world.toml"), "--log-level", "warning"],
        env={**os.environ, "ECOLOGY_ADMIN_TOKEN": token, "PYTHONPATH": str(ROOT)},
        stdout=log, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not (data / "server.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start; see {tmp / 'world.log'}")
        time.sleep(0.05)
    return proc, sock, token


def agent(sock: str, token: str, name: str) -> WorldClient:
    with AdminClient(sock, token) as admin:
        created = admin.create_agent(name)
    c = WorldClient(sock, created.token)
    c.agent_id = created.agent_id
    return c


def paced_transfers(client: WorldClient, to: str, rate: float, duration: float) -> tuple[int, list[float], int]:
    """Transfers at `rate`/s for `duration` s: (done, latencies in s, errors)."""
    interval = 1.0 / rate
    start = time.monotonic()
    latencies, errors, n = [], 0, 0
    while True:
        due = start + n * interval
        now = time.monotonic()
        if due - start >= duration:
            break
        if due > now:
            time.sleep(due - now)
        t0 = time.monotonic()
        try:
            client.transfer(to, 1)
            latencies.append(time.monotonic() - t0)
        except EcologyError:
            errors += 1
        n += 1
    return len(latencies), latencies, errors


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    ap.add_argument("--rate", type=float, default=50.0, help="bystander transfers per second")
    ap.add_argument("--attackers", type=int, default=1, help="agents the 40 loops are spread over")
    ap.add_argument("--contracts", type=int, default=20)
    ap.add_argument("--tools", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_isolation_"))
    proc, sock, token = start_server(tmp)
    try:
        bystander = agent(sock, token, "bystander")
        agent(sock, token, "peer").close()
        attackers = [agent(sock, token, f"mallory{i}") for i in range(args.attackers)]
        jobs = []  # (client, kind, id)
        for i in range(args.contracts):
            owner = attackers[i % len(attackers)]
            cid, target = f"loop_contract_{i}", f"guarded_{i}"
            owner.write(cid, LOOPING_CONTRACT % i, can_execute=True, interface=[{"name": "check_permission"}])
            owner.write(target, "data", access_contract_id=cid)
            jobs.append((owner, "read", target))
        for i in range(args.tools):
            owner = attackers[i % len(attackers)]
            tid = f"loop_tool_{i}"
            src = (SPIN_TOOL % i) if i % 2 else (PAY_TOOL % (i, "peer"))
            owner.write(tid, src, can_execute=True, interface=[{"name": "f"}])
            jobs.append((owner, "invoke", tid))

        print(f"load average before: {os.getloadavg()[0]:.2f}")
        alone = paced_transfers(bystander, "peer", args.rate, args.duration)

        stop = threading.Event()
        outcomes: collections.Counter = collections.Counter()

        def attack(client: WorldClient, kind: str, aid: str) -> None:
            while not stop.is_set():
                try:
                    if kind == "read":
                        client.read(aid)
                    else:
                        client.invoke(aid, "f")
                    outcomes[(kind, "OK")] += 1
                except EcologyError as e:
                    outcomes[(kind, e.reason)] += 1
                    if e.retry_after:
                        stop.wait(min(e.retry_after, 1.0))

        threads = [threading.Thread(target=attack, args=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every loop is busy
        loaded = paced_transfers(bystander, "peer", args.rate, args.duration)
        stop.set()
        for t in threads:
            t.join(5)
        print(f"load average after:  {os.getloadavg()[0]:.2f}")

        def row(name, res):
            done, lat, err = res
            return (f"{name:>8}: {done / args.duration:6.1f} transfers/s  p50 {pct(lat, 50) * 1000:7.1f} ms  "
                    f"p99 {pct(lat, 99) * 1000:7.1f} ms  max {max(lat) * 1000 if lat else float('nan'):7.1f} ms  "
                    f"errors {err}")

        print(f"bystander paced at {args.rate:.0f}/s for {args.duration:.0f} s; attackers: {args.attackers} agent(s), "
              f"{args.contracts} looping contracts, {args.tools} looping tools")
        print(row("alone", alone))
        print(row("attacked", loaded))
        ratio = loaded[0] / alone[0] if alone[0] else float("nan")
        p99 = pct(loaded[1], 99) * 1000
        print(f"throughput ratio {ratio:.2f}x (goal >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}); "
              f"p99 under attack {p99:.1f} ms (goal < 50 ms: {'met' if p99 < 50 else 'NOT met'})")
        print("attacker outcomes: " + json.dumps({f"{k}:{r}": n for (k, r), n in sorted(outcomes.items())}))
        for c in [bystander, *attackers]:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
