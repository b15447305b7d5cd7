"""Several `ecology serve` processes on one PostgreSQL database (server/standby.py), for
tests/test_failover.py and bench/bench_failover.py: start them, find the active one,
SIGKILL it and time the takeover (from the kill until another node's health says
SERVING), and a transfer load from client processes that record what was acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


class Node:
    """One `ecology serve --database URL` process with its own data directory."""

    def __init__(self, root: Path, name: str, url: str, admin_token: str, config: str = "") -> None:
        self.name = name
        self.url = url
        self.admin_token = admin_token
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = root / f"{name}.toml"
        self.config_path.write_text(config)
        self.socket = f"unix:{root / (name + '.sock')}"
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Node":
        ready = self.data_dir / "server.json"
        ready.unlink(missing_ok=True)
        env = {**os.environ, "ECOLOGY_ADMIN_TOKEN": self.admin_token, "PYTHONPATH": str(ROOT)}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(self.data_dir), "--listen", self.socket,
             "--config", str(self.config_path), "--log-level", "warning", "--database", self.url],
            env=env, stdout=log, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start")
            time.sleep(0.02)
        return self

    def role(self) -> str:
        try:
            return json.loads((self.data_dir / "server.json").read_text())["role"]
        except (OSError, ValueError, KeyError):
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self, service: str = "") -> int:
        """The health status (health_pb2.HealthCheckResponse.*), or -1 when unreachable."""
        with grpc.insecure_channel(self.socket) as ch:
            try:
                return health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0).status
            except grpc.RpcError:
                return -1

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=30)
        return self.proc.returncode if self.proc else None


class Cluster:
    def __init__(self, root: Path, url: str, n: int = 3, config: str = "") -> None:
        self.url = url
        self.admin_token = "adm_failover_" + uuid.uuid4().hex
        self.nodes = [Node(root, f"node{i}", url, self.admin_token, config) for i in range(n)]

    @property
    def targets(self) -> str:
        return ",".join(n.socket for n in self.nodes)

    def start(self) -> "Cluster":
        self.nodes[0].start()  # the first is active: the others then find the lock taken
        for node in self.nodes[1:]:
            node.start()
        return self

    def active(self, timeout: float = 15.0) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.alive() and node.health() == health_pb2.HealthCheckResponse.SERVING:
                    return node
            time.sleep(0.01)
        raise TimeoutError("no node is SERVING")

    def kill_active(self, timeout: float = 30.0) -> tuple[Node, Node, float]:
        """SIGKILL the active node; returns (killed, new active, seconds from the kill until
        the new one's health says SERVING). The killed node is started again, as a standby."""
        old = self.active()
        others = [n for n in self.nodes if n is not old]
        old.proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        new = None
        while new is None:
            for node in others:
                if node.alive() and node.health() == health_pb2.HealthCheckResponse.SERVING:
                    new = node
                    break
            else:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError("no standby took over")
                time.sleep(0.005)
        took = time.monotonic() - t0
        old.proc.wait()
        old.start()
        return old, new, took

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                node.kill()


# A client process: transfers of 1 scrip to `peer`, each with its own request id (also its
# memo), through every node's address (the SDK fails over); each acknowledged id is written
# to `out` at once. Ends when `stop` exists. At the end, every acknowledged id is sent once
# more: the answer must be the first outcome (same ledger entry), not a second transfer.
CLIENT = r"""
import json, os, sys, time
from agent_runtime.client import RetryPolicy, WorldClient
targets, token, peer, name, out, stop = sys.argv[1:7]
policy = RetryPolicy(failover_seconds=60.0)
acked = []
with WorldClient(targets, token, retry=policy) as c, open(out, "a") as f:
    i = 0
    while not os.path.exists(stop):
        rid = f"{name}-{i}"
        r = c.transfer(peer, 1, memo=rid, request_id=rid)
        acked.append((rid, r))
        f.write(json.dumps({"rid": rid, "seq": r.get("seq"), "entry": r}) + "\n")
        f.flush()
        i += 1
    again = [c.transfer(peer, 1, memo=rid, request_id=rid) for rid, _ in acked]
    same = sum(1 for (rid, r), r2 in zip(acked, again) if r == r2)
    f.write(json.dumps({"done": True, "sent": i, "retried": len(again), "same": same,
                        "failovers": c.failovers}) + "\n")
"""


def start_client(targets: str, token: str, peer: str, name: str, out: Path, stop: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CLIENT, targets, token, peer, name, str(out), str(stop)],
                            env=env, cwd=ROOT, stderr=open(str(out) + ".err", "ab"))
