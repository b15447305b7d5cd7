"""What TLS costs: GetState and durable transfers over plaintext TCP, TLS and mutual TLS,
measured in one run against three world servers started here (same configuration, loopback).

    .venv/bin/python bench/bench_tls.py [--duration 3] [--rounds 2] [--inflight 1,16]

Each point is a closed loop of N calls in flight over 2 channels from one load process; the
rounds are interleaved (plaintext, TLS, mTLS, plaintext, ...) and the best round of each is
reported, with its ratio to plaintext measured in the same run. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecology.v1 import world_pb2, world_pb2_grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

CONFIG = """
[rate_limits]
principal_rate = 1000000.0
principal_burst = 1000000.0
connection_rate = 1000000.0
connection_burst = 1000000.0
max_in_flight_per_principal = 100000
[agents]
compute_rate = 1000000.0
compute_capacity = 1000000.0
endowment = 1000000000
[oracle]
enabled = false
"""


def ecology(*args: str, env: dict | None = None) -> str:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], check=True, capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}).stdout


class World:
    def __init__(self, work: Path, name: str, tls: dict | None, mutual: bool, extra: list[str] = ()) -> None:
        self.name = name
        self.data = work / name
        self.data.mkdir(parents=True)
        (work / f"{name}.toml").write_text(CONFIG)
        self.admin_token = "adm_" + uuid.uuid4().hex
        self.sock = work / f"{name}.sock"
        argv = [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(self.data), "--config",
                str(work / f"{name}.toml"), "--listen", "127.0.0.1:0", "--listen", f"unix:{self.sock}",
                "--log-level", "warning", *extra]
        if tls:
            argv += ["--tls-cert", tls["cert_file"], "--tls-key", tls["key_file"]]
            if mutual:
                argv += ["--tls-client-ca", tls["ca_file"]]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                           "ECOLOGY_ADMIN_TOKEN": self.admin_token},
                                     stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb"))
        ready = self.data / "server.json"
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name}: the server did not start; see {work / (name + '.log')}")
            time.sleep(0.05)
        self.tcp = json.loads(ready.read_text())["listen"][0]
        self.tls, self.mutual = tls, mutual
        env = {"ECOLOGY_ADMIN_TOKEN": self.admin_token}
        extra = ["--client-cert", "--data-dir", str(tls_home(tls))] if mutual else []
        self.agents = [json.loads(ecology("agent", "create", f"a{i}", "--server", f"unix:{self.sock}", *extra,
                                          env=env)) for i in range(2)]

    def channel(self, agent: dict) -> grpc.aio.Channel:
        if not self.tls:
            return grpc.aio.insecure_channel(self.tcp)
        read = lambda p: Path(p).read_bytes()  # noqa: E731
        creds = grpc.ssl_channel_credentials(
            read(self.tls["ca_file"]),
            read(agent["key_file"]) if self.mutual else None,
            read(agent["cert_file"]) if self.mutual else None)
        return grpc.aio.secure_channel(self.tcp, creds)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def tls_home(tls: dict) -> Path:
    return Path(tls["ca_file"]).parent.parent  # <data-dir>/tls/ca.pem -> <data-dir>


async def point(world: World, op: str, inflight: int, duration: float) -> tuple[float, float]:
    """(calls/s, p50 ms) of `op` with `inflight` calls in flight over 2 channels."""
    payer, payee = world.agents
    channels = [world.channel(payer) for _ in range(2)]
    stubs = [world_pb2_grpc.WorldStub(c) for c in channels]
    md = (("authorization", f"Bearer {payer['token']}"),)
    args = struct_pb2.Struct()
    args.update({"to": payee["agent_id"], "amount": 1})
    for s in stubs:  # connect and handshake before timing
        await s.GetState(world_pb2.GetStateRequest(), metadata=md)
    latencies: list[float] = []
    stop_at = time.monotonic() + duration

    async def loop(stub) -> None:
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            if op == "GetState":
                await stub.GetState(world_pb2.GetStateRequest(), metadata=md)
            else:
                await stub.InvokeArtifact(world_pb2.InvokeArtifactRequest(
                    artifact_id="genesis_ledger", method="transfer", args=args), metadata=md)
            latencies.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    await asyncio.gather(*(loop(stubs[i % 2]) for i in range(inflight)))
    elapsed = time.monotonic() - t0
    for c in channels:
        await c.close()
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is reported")
    ap.add_argument("--inflight", default="1,16", help="calls in flight, comma-separated")
    a = ap.parse_args()
    inflights = [int(x) for x in a.inflight.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        tls = json.loads(ecology("tls", "init", "--data-dir", str(work / "certs"), "--host", "127.0.0.1"))
        worlds = [World(work, "plaintext", None, False), World(work, "tls", tls, False),
                  World(work, "mtls", tls, True)]
        best: dict[tuple, tuple[float, float]] = {}
        try:
            for _ in range(a.rounds):
                for op in ("GetState", "transfer"):
                    for n in inflights:
                        for w in worlds:
                            rate, p50 = asyncio.run(point(w, op, n, a.duration))
                            key = (op, n, w.name)
                            if key not in best or rate > best[key][0]:
                                best[key] = (rate, p50)
        finally:
            for w in worlds:
                w.stop()
    print(f"TLS cost (loopback, best of {a.rounds} rounds of {a.duration:g} s; ratio = calls/s against plaintext)")
    print(f"{'operation':<10} {'in flight':>9} | {'plaintext':>23} | {'TLS':>29} | {'mutual TLS':>29}")
    for op in ("GetState", "transfer"):
        for n in inflights:
            base = best[(op, n, "plaintext")]
            cells = [f"{base[0]:7.0f}/s p50 {base[1]:5.2f}ms"]
            for name in ("tls", "mtls"):
                r, p = best[(op, n, name)]
                cells.append(f"{r:7.0f}/s p50 {p:5.2f}ms {r / base[0]:4.2f}x")
            print(f"{op:<10} {n:>9} | {cells[0]:>23} | {cells[1]:>29} | {cells[2]:>29}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
