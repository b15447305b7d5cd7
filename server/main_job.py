"""`ecology run`: the main job. A world server on embedded defaults plus a population of
autonomous agents, each in its own isolated process, until Ctrl-C or --duration.

    ecology run [--agents N] [--duration S] [--backend auto|docker|bwrap|process|kubernetes]
                [--data-dir DIR] [--brain scripted|llm] [--listen ADDR]

The server runs in this process; agents are started and supervised by
agent_runtime.launcher (the strongest isolation available, named in the output). Agents
reach the server only through its unix socket (<data-dir>/sock/world.sock). Their tokens
are kept in <data-dir>/agents/ (mode 0600), so running again on the same data directory
continues the same world with the same agents (and adds agents if N grew).
Live progress every few seconds; a summary at the end (also as a JSON line).

Spawned agents: an agent may create another (genesis_store.create_agent); it starts with
nothing. Every few seconds the progress loop starts each agent created by another agent
(created_by is not genesis_system: the operator's population is started from --agents)
that is live and has a compute rate > 0 and that this launcher does not know yet: a token
is issued for it (kernel.op_issue_token, kept in <data-dir>/agents/ like the others) and
it is launched with no brain override - its creator's configuration chooses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import statistics
import sys
import time
from pathlib import Path

from server import logs
from server.app import WorldServer
from server.config import Config
from server.kernel import artifacts, ledger
from server.kernel.artifacts import SYSTEM_ACCOUNT

PERSONALITIES = ("builder", "trader", "tester", "coordinator")
PROGRESS_SECONDS = 3.0
AGENT_LIMITS = {"memory_mb": 256, "cpus": 0.5, "pids": 64}
MAX_AGENT_MEMORY, MAX_AGENT_CPUS, MAX_AGENT_PIDS = 1024 * 1024 * 1024, 1.0, 256


def _names(n: int) -> list[str]:
    return [f"{PERSONALITIES[i % 4]}-{i // 4 + 1}" for i in range(n)]


def _agent_config(name: str, names: list[str], brain: str) -> str:
    personality = name.rsplit("-", 1)[0]
    return json.dumps({"brain": brain, "personality": personality,
                       "partners": [o for o in names if o != name][:6],
                       "limits": AGENT_LIMITS})


class MainJob:
    def __init__(self, config: Config, data_dir: Path, *, agents: int, duration: float | None,
                 backend: str, brain: str, listen: list[str], out=sys.stdout) -> None:
        self.config = config
        self.data_dir = data_dir
        self.n = agents
        self.duration = duration
        self.backend = backend
        self.brain = brain
        self.listen = listen
        self.out = out
        self.tokens_dir = data_dir / "agents"
        self.spawned: list[str] = []
        self.socket = data_dir / "sock" / "world.sock"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> dict:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(exist_ok=True)
        self.tokens_dir.mkdir(exist_ok=True)
        os.chmod(self.tokens_dir, 0o700)
        log_file = open(self.data_dir / "server.log", "ab")
        logs.configure("warning", file=log_file)
        server = WorldServer(self.config, self.data_dir, [f"unix:{self.socket}", *self.listen])
        await server.start()
        self.server = server
        self.say(f"world server: {', '.join(server.addresses)} (data {self.data_dir}, "
                 f"sandbox {server.sandbox.isolation}, logs {self.data_dir / 'server.log'})")
        start_stats = server.kernel.stats(server.reader)
        names = _names(self.n)
        tokens = await self._ensure_agents(names)

        from agent_runtime.launcher import Launcher

        launcher = await asyncio.to_thread(
            Launcher, self.backend, agent_server_address(self.backend, self.socket),
            state_dir=self.data_dir / "launcher")
        server.agent_backend = launcher.backend_name
        self.say(f"agents: {len(tokens)} on backend '{launcher.backend_name}' ({launcher.backend.describe()})")
        t0 = time.monotonic()
        try:
            for name in names:
                await asyncio.to_thread(launcher.start, name, tokens[name], self.limits_of(name),
                                        env={"ECOLOGY_BRAIN": self.brain})
            self.say(f"started {len(names)} agents in {time.monotonic() - t0:.1f}s; Ctrl-C stops")
            await self._progress(launcher, names)
        finally:
            self.say("stopping agents ...")
            await asyncio.to_thread(launcher.close, 10.0)
            status = launcher.status()
            summary = self._summary(names, start_stats, time.monotonic() - t0, launcher, status)
            await server.stop()
            log_file.close()
        return summary

    def limits_of(self, agent_id: str) -> dict:
        """Memory/CPU/pids limits from the agent's own configuration (its artifact's
        `limits`), else the defaults - so whoever controls the agent sets them."""
        art = artifacts.get(self.server.reader, agent_id)
        try:
            limits = json.loads(art.content).get("limits") if art is not None else None
        except (ValueError, AttributeError):
            limits = None
        if not isinstance(limits, dict):
            return dict(AGENT_LIMITS)
        from agent_runtime.launcher.base import AgentLimits

        try:
            parsed = AgentLimits.from_config(limits)
        except (TypeError, ValueError):
            return dict(AGENT_LIMITS)
        if parsed.memory_bytes > MAX_AGENT_MEMORY or parsed.cpus > MAX_AGENT_CPUS or parsed.pids > MAX_AGENT_PIDS:
            return dict(AGENT_LIMITS)  # an agent cannot grant itself more than the operator allows
        return limits

    async def _ensure_agents(self, names: list[str]) -> dict[str, str]:
        """Create the agents that do not exist yet; read the tokens of those that do."""
        tokens = {}
        for name in names:
            path = self.tokens_dir / f"{name}.token"
            if path.exists():
                tokens[name] = path.read_text().strip()
                continue
            kernel = self.server.kernel
            d = await self.server.executor.run(lambda conn, name=name: kernel.op_create_agent(
                conn, name, _agent_config(name, names, self.brain), metadata={"personality": name.rsplit("-", 1)[0]}))
            self.server.credentials.add(d["token"], d["agent_id"])
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(d["token"])
            tokens[name] = d["token"]
        return tokens

    async def _progress(self, launcher, names: list[str]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        deadline = None if self.duration is None else time.monotonic() + self.duration
        last_seq = self.server.kernel.stats(self.server.reader)["last_event_seq"]
        last_t = time.monotonic()
        try:
            while not stop.is_set():
                timeout = PROGRESS_SECONDS if deadline is None else min(PROGRESS_SECONDS, deadline - time.monotonic())
                if timeout <= 0:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                stats = self.server.kernel.stats(self.server.reader)
                now = time.monotonic()
                rate = (stats["last_event_seq"] - last_seq) / max(now - last_t, 1e-6)
                last_seq, last_t = stats["last_event_seq"], now
                try:
                    for agent_id in await self.launch_spawned(launcher):
                        self.say(f"spawned agent {agent_id} started")
                except Exception as e:  # noqa: BLE001 - never let the check end the run
                    self.say(f"spawn check failed: {e!r}")
                alive = sum(1 for s in launcher.status() if s["alive"])
                scrip = _balances(self.server.reader, names)
                self.say(f"[{time.strftime('%H:%M:%S')}] agents alive {alive}/{len(names) + len(self.spawned)} | "
                         f"actions {rate:5.1f}/s (world events) | artifacts {stats['artifacts']} | "
                         f"scrip min/median/max {_dist(scrip)} | total {stats['total_balances']}")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def launch_spawned(self, launcher) -> list[str]:
        """Start the spawned agents that are ready (see the module docstring). Returns
        the ids started now."""
        known = {s["agent_id"] for s in launcher.status()}
        rows = self.server.reader.execute(
            "SELECT a.id FROM artifacts a JOIN flow f ON f.principal_id = a.id AND f.resource = 'compute' "
            "WHERE a.has_standing = 1 AND a.can_execute = 1 AND a.deleted = 0 "
            "AND substr(a.id, 1, 8) != 'genesis_' AND a.created_by != ? AND f.rate > 0 ORDER BY a.id",
            (SYSTEM_ACCOUNT,)).fetchall()
        started = []
        for (agent_id,) in rows:
            if agent_id in known:
                continue
            token = await self._token_for(agent_id)
            await asyncio.to_thread(launcher.start, agent_id, token, self.limits_of(agent_id))
            if agent_id not in self.spawned:
                self.spawned.append(agent_id)
            started.append(agent_id)
        return started

    async def _token_for(self, agent_id: str) -> str:
        path = self.tokens_dir / f"{agent_id}.token"
        if path.exists():
            return path.read_text().strip()
        kernel = self.server.kernel
        token = await self.server.executor.run(lambda conn: kernel.op_issue_token(conn, agent_id))
        self.server.credentials.add(token, agent_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token

    def _summary(self, names, start_stats, elapsed, launcher, status) -> dict:
        reader = self.server.reader
        stats = self.server.kernel.stats(reader)
        invariant = ledger.check_invariants(reader)
        counts = dict(reader.execute(
            "SELECT type, COUNT(*) FROM events WHERE seq > ? GROUP BY type", (start_stats["last_event_seq"],)))
        per_agent = dict(reader.execute(
            "SELECT principal_id, COUNT(*) FROM events WHERE seq > ? GROUP BY principal_id",
            (start_stats["last_event_seq"],)))
        scrip = _balances(reader, names)
        summary = {
            "seconds": round(elapsed, 1),
            "backend": launcher.backend_name,
            "agents": len(names),
            "agents_spawned": list(self.spawned),
            "agents_alive_at_end": sum(1 for s in status if s["alive"]),
            "restarts": sum(s["restarts"] for s in status),
            "events": stats["last_event_seq"] - start_stats["last_event_seq"],
            "events_by_type": counts,
            "actions_by_agent": {n: per_agent.get(n, 0) for n in names},
            "artifacts": stats["artifacts"],
            "artifacts_created": stats["artifacts"] - start_stats["artifacts"],
            "scrip": scrip,
            "ledger": invariant,
            "ledger_invariant_holds": invariant["total_balances"] == invariant["minted"] - invariant["burned"],
        }
        self.say("")
        self.say(f"summary: {summary['seconds']}s, {summary['agents']} agents on {summary['backend']}, "
                 f"{summary['events']} events ({counts.get('artifact.written', 0)} writes, "
                 f"{counts.get('ledger.transfer', 0)} transfers, {counts.get('escrow.purchased', 0)} purchases), "
                 f"{summary['artifacts_created']} artifacts created, restarts {summary['restarts']}")
        self.say(f"scrip: {_dist(scrip)} (min/median/max); ledger invariant "
                 f"{'holds' if summary['ledger_invariant_holds'] else 'BROKEN'}: "
                 f"sum {invariant['total_balances']} == minted {invariant['minted']} - burned {invariant['burned']}")
        self.say("SUMMARY " + json.dumps(summary, sort_keys=True))
        return summary


def agent_server_address(backend: str, socket: Path) -> str:
    """Where the agents reach the server: its unix socket, except on the kubernetes backend,
    whose Pods reach it over TCP at $ECOLOGY_K8S_SERVER (IP:PORT or an in-cluster Service; the
    server must also --listen there, with TLS or server.insecure)."""
    if backend != "kubernetes":
        return f"unix:{socket}"
    address = os.environ.get("ECOLOGY_K8S_SERVER", "").strip()
    if not address:
        raise ValueError("--backend kubernetes needs ECOLOGY_K8S_SERVER=IP:PORT: the address the agents' "
                         "Pods reach this server at (and --listen on it)")
    from agent_runtime.launcher.kubernetes import server_peer

    server_peer(address, "default")       # ValueError for a unix socket or an address no NetworkPolicy can allow
    return address


def _balances(reader: sqlite3.Connection, names: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(names))
    return dict(reader.execute(f"SELECT principal_id, scrip FROM balances WHERE principal_id IN ({marks})", names))


def _dist(scrip: dict[str, int]) -> str:
    if not scrip:
        return "-"
    values = sorted(scrip.values())
    return f"{values[0]}/{int(statistics.median(values))}/{values[-1]}"


def main(args, config: Config) -> int:
    try:
        agent_server_address(args.backend, Path(args.data_dir))
    except ValueError as e:
        print(f"ecology: {e}", file=sys.stderr)
        return 2
    job = MainJob(config, Path(args.data_dir), agents=args.agents, duration=args.duration,
                  backend=args.backend, brain=args.brain, listen=args.listen or [])
    summary = asyncio.run(job.run())
    return 0 if summary["ledger_invariant_holds"] else 1
