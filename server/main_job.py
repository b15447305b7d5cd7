"""`ecology run`: the main job. A world server on embedded defaults plus a population of
autonomous agents, each in its own isolated process, until Ctrl-C or --duration.

    ecology run [--agents N] [--duration S] [--backend auto|docker|bwrap|process|kubernetes]
                [--data-dir DIR] [--brain scripted|llm] [--listen ADDR]
                [--dashboard HOST:PORT | --no-dashboard]

The web dashboard (server/dashboard) is served by default at http://127.0.0.1:8765/, its
address printed first; a port that is taken ends the run at once (exit 1, one line naming
the port and both flags) rather than running without it.

Stopped agents (Admin.StopAgent, `ecology agent stop`): the progress loop ends the process
of an agent the operator stopped and never restarts it (an agent stopped before the run,
the flag being durable, is not launched); when the operator starts it again it is launched
again (sync_stopped). The console shows it as `stopped`.

The server runs in this process; agents are started and supervised by
agent_runtime.launcher (the strongest isolation available, named in the output). Agents
reach the server only through its unix socket (<data-dir>/sock/world.sock). Their tokens
are kept in <data-dir>/agents/ (mode 0600), so running again on the same data directory
continues the same world with the same agents (and adds agents if N grew).
data_dir is resolved to an absolute path once, in the constructor: token files and socket
paths handed to agents and containers must not depend on anyone's working directory.

The console (server/console.py: what it shows, read through the server's API) names the
sandbox isolation and the agent backend, with the command for a stronger one; then live
status (a redrawn block on a terminal, plain lines otherwise). Launcher events (an agent
died, failed for good) are printed as they happen. When no agent is alive and none can be
restarted, the run stops at once. A final table and a summary (also as a JSON line); the
exit status (see main()) is non-zero when no agent acted, the run stopped early, or the
ledger invariant is broken.

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
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

# This process forks agents (bwrap's preexec) while gRPC threads (the server, the console's
# clients) run. gRPC's fork handlers then log "skipping fork() handlers" over the console
# and the child could abort in a poller before exec. Children exec at once and never use
# gRPC: no fork support is needed. Read when grpc is first imported (just below).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from server import logs  # noqa: E402
from server.app import WorldServer, resolve_admin_token  # noqa: E402
from server.config import Config  # noqa: E402
from server.kernel import artifacts, invocation, ledger  # noqa: E402
from server.kernel.artifacts import SYSTEM_ACCOUNT  # noqa: E402

PERSONALITIES = ("builder", "trader", "tester", "coordinator")
PROGRESS_SECONDS = 3.0
MAX_FAILURES = 5            # crashes in a row (none lasting a minute) before an agent is given up
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
                 backend: str, brain: str, listen: list[str], out=sys.stdout, live: bool | None = None,
                 tls_files: dict[str, str] | None = None, dashboard: str | None = None) -> None:
        self.config = config
        # {"ca", "cert", "key"}: PEM files the agents need to reach a TLS listener. Only the
        # kubernetes backend uses them (its Pods reach the server over TCP; they go into each
        # agent's Secret); local agents use the unix socket, which is plaintext by design.
        self.tls_files = {k: str(Path(v).resolve()) for k, v in (tls_files or {}).items() if v}
        # Resolved once, here: every path handed to an agent (token files) or a container
        # (bind mounts of the socket directory) must be absolute; agents run elsewhere.
        self.data_dir = Path(data_dir).resolve()
        self.n = agents
        self.duration = duration
        self.backend = backend
        self.brain = brain
        self.listen = listen
        self.out = out
        self.live = live
        self.tokens_dir = self.data_dir / "agents"
        self.spawned: list[str] = []
        self.socket = self.data_dir / "sock" / "world.sock"
        self.tokens: dict[str, str] = {}
        self.dashboard = dashboard  # HOST:PORT of the web dashboard (server/dashboard), or None
        # Agents stopped by the operator (Admin.StopAgent) whose process this job ended or
        # never started: launched again when the operator starts them (sync_stopped).
        self.held: set[str] = set()

    def say(self, text: str) -> None:
        console = getattr(self, "console", None)
        if console is not None:
            console.say(text)
        else:
            print(text, file=self.out, flush=True)

    async def run(self) -> dict:
        from server.console import Console

        self.console = Console(self.out, self.live)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(exist_ok=True)
        self.tokens_dir.mkdir(exist_ok=True)
        os.chmod(self.tokens_dir, 0o700)
        log_file = open(self.data_dir / "server.log", "ab")
        logs.configure("warning", file=log_file)
        server = WorldServer(self.config, self.data_dir, [f"unix:{self.socket}", *self.listen])
        await server.start()
        if not server.active:  # a standby on a shared PostgreSQL database (server/standby.py)
            self.say("standby: another server holds this database's writer lock; waiting to take over")
            await server.activated.wait()
        self.server = server
        try:
            return await self._run(server)
        finally:
            await server.stop()
            log_file.close()

    async def _run(self, server) -> dict:
        from server.console import WorldView

        address = f"unix:{self.socket}"
        view = WorldView(address, resolve_admin_token(self.config, self.data_dir), 0)
        dash = None
        try:
            if self.dashboard:  # a client of this job's own socket, in its own thread and loop
                dash = await asyncio.to_thread(self._start_dashboard, address)
            stats = await asyncio.to_thread(view.admin.get_stats)
            view.start_seq = view.seen_seq = stats.last_event_seq
            self._start_artifacts = stats.artifacts
            self._header_server(server, stats)
            names = _names(self.n)
            self.tokens = tokens = await self._ensure_agents(names)

            from agent_runtime.launcher import Launcher

            try:
                launcher = await asyncio.to_thread(
                    Launcher, self.backend, agent_server_address(self.backend, self.socket),
                    state_dir=self.data_dir / "launcher", max_failures=MAX_FAILURES,
                    backend_options={"tls_files": self.tls_files} if self.backend == "kubernetes" else None)
            except RuntimeError as e:       # the backend asked for is not available
                return self._setup_failed(str(e))
            server.agent_backend = launcher.backend_name
            await asyncio.to_thread(self._header_agents, launcher, len(tokens))
            for name in names:
                view.add_token(name, tokens[name])
            t0 = time.monotonic()
            alive_at_end: list[dict] = []
            try:
                held = [n for n in names if n in server.gate.stopped]
                for name in names:
                    if name in held:   # stopped by the operator (durable): launched on `agent start`
                        self.held.add(name)
                        continue
                    await asyncio.to_thread(launcher.start, name, tokens[name], self.limits_of(name),
                                            env=self._env_of(name))
                self.say(f"started {len(names) - len(held)} agents in {time.monotonic() - t0:.1f}s; Ctrl-C stops"
                         + (f" ({len(held)} stopped by the operator: {', '.join(held)}; "
                            "`ecology agent start NAME` launches one)" if held else ""))
                self.console.header[1] = (f"agents: {len(tokens)} on backend '{launcher.backend_name}' "
                                          f"({launcher.backend.describe()})")   # now it knows its limits
                stopped_early = await self._progress(launcher, names, view, t0)
                alive_at_end = launcher.status()
            finally:
                self.console.stop_live()
                self.say("stopping agents ...")
                await asyncio.to_thread(launcher.close, 10.0)
                for ev in launcher.drain_events():
                    if ev["kind"] != "exited":
                        self.console.warn(_event_line(ev))
            return await self._summary(names, time.monotonic() - t0, launcher, view, alive_at_end,
                                       stopped_early)
        finally:
            if dash is not None:
                await asyncio.to_thread(dash.stop)
            await asyncio.to_thread(view.close)

    def _start_dashboard(self, address: str):
        from agent_runtime.client import AdminClient
        from server.dashboard.app import Background

        token = resolve_admin_token(self.config, self.data_dir)
        dash = Background(AdminClient(address, token), token, self.dashboard)
        self.say(f"dashboard: http://{self.dashboard}/")
        return dash

    def _header_server(self, server, stats) -> None:
        from server.sandbox.notice import INSTALL_HINT, isolation_note, isolation_warning

        self.say(f"world server: {', '.join(server.addresses)} (data {self.data_dir}, "
                 f"logs {self.data_dir / 'server.log'})")
        if server.metrics_address:
            self.say(f"metrics: http://{server.metrics_address}/metrics")
        level = stats.sandbox_isolation
        line = f"sandbox: {level} - {isolation_note(level)}"
        if isolation_warning(level) and INSTALL_HINT not in line:
            line += ("; stronger: bwrap, to get it: " + (
                f"{INSTALL_HINT}, then restart" if shutil.which("bwrap") is None
                else 'set sandbox.isolation = "auto" (bubblewrap is installed)'))
        (self.console.warn if isolation_warning(level) else self.say)(line)
        self.console.header.append(line)

    def _header_agents(self, launcher, n: int) -> None:
        line = f"agents: {n} on backend '{launcher.backend_name}' ({launcher.backend.describe()})"
        (self.say if launcher.isolated else self.console.warn)(line)
        self.console.header.append(line)
        for s in launcher.stronger():
            hint = f"  stronger agent isolation: {s['backend']} - {s['why']}; to get it: {s['fix']}"
            self.say(hint)
            self.console.header.append(hint)

    def _setup_failed(self, why: str) -> dict:
        from agent_runtime.launcher.supervisor import fix_for

        fix = fix_for(self.backend, why)
        problem = f"{why}" + (f"; to get it: {fix}" if fix else "")
        self.console.warn(f"FAILED: {problem}")
        print(f"ecology run: FAILED: {problem}", file=sys.stderr, flush=True)
        return {"ok": False, "problems": [problem], "exit_code": 2}

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
            d = await self.server.outside.commands.run("create_agent", {
                "name": name, "config": _agent_config(name, names, self.brain),
                "metadata": {"personality": name.rsplit("-", 1)[0]}, "overrides": None, "access_contract_id": "",
                "interface": None, "work": invocation.Work()})
            self.server.credentials.add(d["token"], d["agent_id"])
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(d["token"])
            tokens[name] = d["token"]
        return tokens

    async def _progress(self, launcher, names: list[str], view, t0: float) -> bool:
        """Events at once, the status every console interval, until Ctrl-C, --duration, or
        no agent can run any more. Returns True in the last case (stopped early)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        deadline = None if self.duration is None else t0 + self.duration
        last_actions, last_t = 0, t0
        next_show = next_spawn = time.monotonic()
        self.console.footer = (f"Ctrl-C stops | server log {self.data_dir / 'server.log'} | "
                               f"agents' failures are printed above this block")
        self.console.start_live()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                for ev in launcher.drain_events():
                    (self.console.warn if ev["kind"] in ("failed", "died", "start_failed") else self.say)(
                        _event_line(ev))
                try:
                    await self.sync_stopped(launcher)
                except Exception as e:  # noqa: BLE001 - never let the check end the run
                    self.say(f"stop/start check failed: {e!r}")
                if names and not launcher.can_run() and not self.held:
                    self.console.stop_live()
                    self.console.warn("no agent is alive and none can be restarted: stopping now")
                    return True
                if now >= next_spawn:
                    next_spawn = now + PROGRESS_SECONDS
                    try:
                        for agent_id in await self.launch_spawned(launcher):
                            view.add_token(agent_id, self.tokens[agent_id])
                            self.say(f"spawned agent {agent_id} started")
                    except Exception as e:  # noqa: BLE001 - never let the check end the run
                        self.say(f"spawn check failed: {e!r}")
                if now >= next_show:
                    next_show = now + self.console.interval
                    try:
                        snap = await asyncio.to_thread(self._snapshot, launcher, names, view,
                                                       last_actions, last_t, deadline)
                    except Exception as e:  # noqa: BLE001 - the display must not end the run
                        self.say(f"status unavailable: {e!r}")
                    else:
                        last_actions, last_t = snap.actions, time.monotonic()
                        self.console.show(snap)
                wake = min(0.5, next_show - time.monotonic())
                if deadline is not None:
                    wake = min(wake, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(stop.wait(), max(wake, 0.01))
                except asyncio.TimeoutError:
                    pass
            return False
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _snapshot(self, launcher, names, view, last_actions: int, last_t: float, deadline, status=None):
        """The console's figures (API + launcher); runs in a worker thread."""
        from server.console import STATES, Snapshot, last_action

        polled = view.poll()
        stats, agents = polled["stats"], polled["agents"]
        status = {r["agent_id"]: r for r in (status if status is not None else launcher.status())}
        ids = list(names) + [a for a in self.spawned if a not in names]
        actions = view.actions(ids)
        rows = []
        for agent_id in ids:
            st = status.get(agent_id, {})
            a = agents.get(agent_id, {})
            compute = a.get("compute")
            try:
                last = last_action(launcher.output_tail(agent_id, 80)) if st else None
            except KeyError:
                last = None
            rows.append({
                "agent_id": agent_id,
                "state": "stopped" if agent_id in self.server.gate.stopped
                else STATES.get(st.get("state", ""), st.get("state", "-")),
                "restarts": st.get("restarts", 0),
                "scrip": a.get("scrip", 0),
                "compute": f"{compute[0]:.0f}/{compute[1]:.0f}" if compute else "-",
                "actions": actions[agent_id],
                "last_action": last[0] if last else view.last_event.get(agent_id, "-"),
                "outcome": st["failed"] if st.get("failed") else last[1] if last else "-",
                "failed": st.get("failed"),
            })
        total = sum(actions.values())
        now = time.monotonic()
        return Snapshot(
            clock=time.strftime("%H:%M:%S"), rows=rows,
            alive=sum(1 for r in status.values() if r["alive"]), total=len(ids), actions=total,
            rate=(total - last_actions) / max(now - last_t, 1e-6), artifacts=stats.artifacts,
            supply=stats.total_balances, next_mint_in=polled["next_mint_in"],
            scrip={r["agent_id"]: r["scrip"] for r in rows},
            remaining=None if deadline is None else max(0.0, deadline - now))

    def _env_of(self, agent_id: str) -> dict | None:
        """The operator's population gets --brain; spawned agents their creator's choice."""
        return {"ECOLOGY_BRAIN": self.brain} if agent_id in _names(self.n) else None

    async def sync_stopped(self, launcher) -> None:
        """Follow Admin.StopAgent / StartAgent (server.gate.stopped): end the process of an
        agent the operator stopped (it would exit 0 on its next call anyway, AGENT_STOPPED;
        this also ends one asleep) and never restart it; launch again one that was started."""
        stopped = set(self.server.gate.stopped)
        for row in launcher.status():
            agent_id = row["agent_id"]
            if agent_id in stopped and agent_id not in self.held:
                self.held.add(agent_id)
                if row["state"] not in ("stopped", "failed"):
                    await asyncio.to_thread(launcher.stop, agent_id, 10.0)
                self.say(f"agent {agent_id} stopped by the operator (not restarted; `ecology agent start "
                         f"{agent_id}` launches it again)")
        for agent_id in sorted(self.held - stopped):
            self.held.discard(agent_id)
            token = self.tokens.get(agent_id) or await self._token_for(agent_id)
            await asyncio.to_thread(launcher.start, agent_id, token, self.limits_of(agent_id),
                                    env=self._env_of(agent_id))
            self.say(f"agent {agent_id} started by the operator")

    async def launch_spawned(self, launcher) -> list[str]:
        """Start the spawned agents that are ready (see the module docstring). Returns
        the ids started now."""
        known = {s["agent_id"] for s in launcher.status()}
        rows = self.server.reader.agents_with_compute_rate(not_created_by=SYSTEM_ACCOUNT)
        started = []
        for agent_id in rows:
            if agent_id in known or agent_id in self.server.gate.stopped:
                continue
            token = self.tokens[agent_id] = await self._token_for(agent_id)
            await asyncio.to_thread(launcher.start, agent_id, token, self.limits_of(agent_id))
            if agent_id not in self.spawned:
                self.spawned.append(agent_id)
            started.append(agent_id)
        return started

    async def _token_for(self, agent_id: str) -> str:
        path = self.tokens_dir / f"{agent_id}.token"
        if path.exists():
            return path.read_text().strip()
        token = await self.server.outside.commands.run("issue_token", {"agent_id": agent_id})
        self.server.credentials.add(token, agent_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token

    async def _summary(self, names, elapsed, launcher, view, alive_at_end, stopped_early) -> dict:
        stats = await asyncio.to_thread(view.admin.get_stats)
        caught_up = await asyncio.to_thread(view.wait_caught_up, stats.last_event_seq, 10.0)
        snap = await asyncio.to_thread(self._snapshot, launcher, names, view, 0, time.monotonic() - elapsed,
                                       None, alive_at_end)
        try:
            invariant = ledger.check_invariants(self.server.reader)   # the full audit (I1-I4)
            holds, broken = True, ""
        except AssertionError as e:
            invariant = ledger.totals(self.server.reader)
            holds, broken = False, str(e)
        actions_by_agent = {r["agent_id"]: r["actions"] for r in snap.rows}
        failed = {r["agent_id"]: r["failed"] for r in snap.rows if r["failed"]}
        problems = []
        if stopped_early:
            problems.append("no agent is alive and none can be restarted: "
                            + "; ".join(f"{a}: {why}" for a, why in failed.items()))
        if snap.actions == 0:
            problems.append(f"no agent acted in {elapsed:.0f}s (see the agent lines above and "
                            f"{self.data_dir / 'server.log'})")
        if not holds:
            problems.append(f"ledger invariant BROKEN: {broken}")
        if not caught_up:
            problems.append("the event stream did not catch up: action counts may be short")
        counts = dict(view.by_type)
        summary = {
            "seconds": round(elapsed, 1),
            "backend": launcher.backend_name,
            "sandbox_isolation": stats.sandbox_isolation,
            "agents": len(names),
            "agents_spawned": list(self.spawned),
            "agents_alive_at_end": snap.alive,
            "agents_failed": failed,
            "restarts": sum(r["restarts"] for r in snap.rows),
            "events": stats.last_event_seq - view.start_seq,
            "events_by_type": counts,
            "actions": snap.actions,
            "actions_by_agent": actions_by_agent,
            "artifacts": stats.artifacts,
            "artifacts_created": stats.artifacts - self._start_artifacts,
            "scrip": {a: s for a, s in snap.scrip.items() if a in names},
            "ledger": invariant,
            "ledger_invariant_holds": holds,
            "stopped_early": stopped_early,
            "ok": not problems,
            "problems": problems,
        }
        self.say("")
        self.console.final(snap)
        self.say(f"summary: {summary['seconds']}s, {summary['agents']} agents on {summary['backend']}, "
                 f"{summary['actions']} actions by agents, {summary['events']} events "
                 f"({counts.get('artifact.written', 0)} writes, {counts.get('ledger.transfer', 0)} transfers, "
                 f"{counts.get('escrow.purchased', 0)} purchases), {summary['artifacts_created']} artifacts "
                 f"created, restarts {summary['restarts']}, alive at the end {snap.alive}/{snap.total}")
        self.say(f"scrip: {_dist(summary['scrip'])} (min/median/max); ledger invariant "
                 f"{'holds' if holds else 'BROKEN'}: "
                 f"sum {invariant['total_balances']} == minted {invariant['minted']} - burned {invariant['burned']}")
        for p in problems:
            self.console.warn(f"FAILED: {p}")
            print(f"ecology run: FAILED: {p}", file=sys.stderr, flush=True)
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


def dashboard_port_problem(listen: str) -> str | None:
    """Why the dashboard cannot listen on HOST:PORT (one line naming the port and both
    flags), or None. Checked before the world starts: a run never goes on silently without
    the dashboard it was asked for (the default included)."""
    import socket

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return f"--dashboard must be HOST:PORT, not {listen!r}"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        return (f"the dashboard cannot listen on {listen} (port {port}: {e.strerror or e}); "
                f"choose another with --dashboard HOST:PORT, or run without it: --no-dashboard")
    return None


def _dist(scrip: dict[str, int]) -> str:
    if not scrip:
        return "-"
    values = sorted(scrip.values())
    return f"{values[0]}/{int(statistics.median(values))}/{values[-1]}"


def _event_line(ev: dict) -> str:
    from server.console import event_line

    return event_line(ev)


def main(args, config: Config) -> int:
    """Exit status: 0 when agents acted and the ledger invariant holds; 1 when no agent
    acted, every agent ended before the run did (stopped early), or the invariant is
    broken; 2 when the run could not start (e.g. the backend asked for is unavailable)."""
    try:
        agent_server_address(args.backend, Path(args.data_dir))
    except ValueError as e:
        print(f"ecology: {e}", file=sys.stderr)
        return 2
    dashboard = None if getattr(args, "no_dashboard", False) else getattr(args, "dashboard", None)
    if dashboard:
        problem = dashboard_port_problem(dashboard)
        if problem:
            print(f"ecology run: {problem}", file=sys.stderr, flush=True)
            return 1
    job = MainJob(config, Path(args.data_dir), agents=args.agents, duration=args.duration,
                  backend=args.backend, brain=args.brain, listen=args.listen or [],
                  dashboard=dashboard,
                  tls_files={"ca": args.ca_file or os.environ.get("ECOLOGY_CA_FILE", ""),
                             "cert": args.cert_file or os.environ.get("ECOLOGY_CERT_FILE", ""),
                             "key": args.key_file or os.environ.get("ECOLOGY_KEY_FILE", "")})
    summary = asyncio.run(job.run())
    return 0 if summary["ok"] else summary.get("exit_code", 1)
