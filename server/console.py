"""The console of `ecology run`: what the operator watches while the main job runs.

Data comes only through the server's API, as any operator tool would see it:
  * Admin.GetStats     artifacts, scrip supply (total_balances), ledger totals, last event,
                       sandbox isolation, agent backend;
  * Admin.ListAgents   each agent's scrip and compute bucket;
  * World.Subscribe    every event since the run started, counted by the principal that
                       caused it: an agent's *actions* are the events it caused (writes,
                       transfers, purchases, bids ...), so mint rounds (caused by
                       genesis_oracle / the system) are not actions;
  * World.GetState     next_mint_at (the mint countdown).
The World service takes an agent credential only (the admin token is not a principal), so
the two World calls use one of the run's own agents' tokens (the first the server accepts;
another one if that one stops working). That costs the agent one stream slot and one
GetState every few seconds of its rate limit, nothing else. Each agent's last action and
its outcome come from the agent's own log (its `action` lines), as the launcher keeps them.

Two renderings (`Console`):
  * on a terminal, one status block redrawn in place (rich.live.Live): a table of agents
    (state alive/restarting/dead, restarts, scrip, compute, actions, last action, outcome),
    the world's rates and the mint countdown; event lines (an agent died ...) scroll above;
  * otherwise plain lines, one every PROGRESS_SECONDS, each starting "[HH:MM:SS] agents
    alive A/N | actions R/s ..." (greppable; tests read them), plus the same event lines.
Both end with a final table of the agents.
"""

from __future__ import annotations

import collections
import json
import statistics
import threading
import time
from dataclasses import dataclass, field

from agent_runtime.client import AdminClient, WorldClient
from agent_runtime.errors import EcologyError

PROGRESS_SECONDS = 3.0      # plain lines
LIVE_SECONDS = 1.0          # redraws of the live block
STATES = {"running": "alive", "starting": "restarting", "backoff": "restarting", "failed": "dead",
          "stopped": "stopped"}


class WorldView:
    """The figures of the world, through the API (see the module docstring)."""

    def __init__(self, address: str, admin_token: str, start_seq: int) -> None:
        self.address = address
        self.admin = AdminClient(address, admin_token)
        self.start_seq = start_seq
        self.seen_seq = start_seq
        self.by_principal: collections.Counter[str] = collections.Counter()
        self.by_type: collections.Counter[str] = collections.Counter()
        self.last_event: dict[str, str] = {}
        self.observer: str | None = None        # whose token the World calls use
        self._tokens: list[tuple[str, str]] = []
        self._refused: set[str] = set()
        self._world: WorldClient | None = None
        self._sub = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_token(self, agent_id: str, token: str) -> None:
        with self._lock:
            if all(a != agent_id for a, _ in self._tokens):
                self._tokens.append((agent_id, token))
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="console-subscribe", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                candidates = [(a, t) for a, t in self._tokens if a not in self._refused]
            for agent_id, token in candidates:
                if self._stop.is_set():
                    return
                world = WorldClient(self.address, token)
                refused = False
                try:
                    world.get_state(timeout=10)
                    self._world, self.observer = world, agent_id
                    self._sub = world.subscribe(self.seen_seq)
                    for ev in self._sub:
                        self._record(ev)
                except EcologyError as e:
                    refused = e.reason == "UNAUTHENTICATED"
                    if refused:
                        self._refused.add(agent_id)
                finally:
                    if self._world is world:
                        self._world, self.observer = None, None
                    world.close()
                if not refused:
                    break           # the stream ended otherwise: start over, first accepted token
            self._stop.wait(1.0)

    def _record(self, ev) -> None:
        with self._lock:
            self.by_principal[ev.principal_id] += 1
            self.by_type[ev.type] += 1
            self.last_event[ev.principal_id] = ev.type + (f" {ev.artifact_id}" if ev.artifact_id else "")
            self.seen_seq = ev.seq

    def poll(self) -> dict:
        """GetStats, ListAgents, and (when an agent token works) next_mint_at."""
        stats = self.admin.get_stats()
        agents = {}
        for a in self.admin.list_agents():
            compute = next((f for f in a.flow if f.name == "compute"), None)
            agents[a.agent_id] = {"scrip": a.scrip, "deleted": a.deleted,
                                  "compute": (compute.balance, compute.capacity) if compute else None}
        next_mint: float | str = "unknown"       # no agent token accepted (yet)
        world = self._world
        if world is not None:
            try:
                st = world.get_state(timeout=5)
                if st.HasField("next_mint_at"):
                    next_mint = st.next_mint_at.seconds + st.next_mint_at.nanos / 1e9 - (
                        st.now.seconds + st.now.nanos / 1e9)
                else:
                    next_mint = "off"
            except EcologyError:
                pass
        return {"stats": stats, "agents": agents, "next_mint_in": next_mint, "at": time.monotonic()}

    def actions(self, agent_ids) -> dict[str, int]:
        with self._lock:
            return {a: self.by_principal.get(a, 0) for a in agent_ids}

    def wait_caught_up(self, last_seq: int, timeout: float) -> bool:
        """Wait until the stream delivered every event up to `last_seq`."""
        deadline = time.monotonic() + timeout
        while self.seen_seq < last_seq and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.seen_seq >= last_seq

    def close(self) -> None:
        self._stop.set()
        sub, world = self._sub, self._world
        if sub is not None:
            sub.close()
        if world is not None:
            world.close()
        if self._thread is not None:
            self._thread.join(5)
        self.admin.close()


# -- what the agents' logs say -------------------------------------------------------------

def _records(output: str) -> list[dict | str]:
    out: list[dict | str] = []
    for line in output.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        out.append(rec if isinstance(rec, dict) else line)
    return out


def last_action(output: str) -> tuple[str, str] | None:
    """(action, outcome) of the agent's last `action` log line, e.g. ("write notes.x", "ok")
    or ("transfer bob", "INSUFFICIENT_FUNDS")."""
    for rec in reversed(_records(output)):
        if isinstance(rec, dict) and rec.get("event") == "action":
            target = next((str(rec[k]) for k in ("artifact_id", "to", "query", "seconds") if k in rec), "")
            what = f"{rec.get('action', '?')} {target}".strip()
            if rec.get("method"):
                what += f".{rec['method']}"
            outcome = "ok" if rec.get("ok") else str(rec.get("reason") or "failed")
            return what, outcome
    return None


def output_summary(output: str, lines: int = 3, width: int = 300) -> str:
    """The last lines of an agent's output, each JSON log line shortened to what it says."""
    shown = []
    for rec in _records(output)[-lines:]:
        if isinstance(rec, dict):
            parts = [str(rec.get("event", ""))]
            for k in ("reason", "message", "error"):
                if rec.get(k):
                    parts.append(str(rec[k]))
            text = ": ".join(p for p in parts if p)
        else:
            text = rec
        shown.append(text[:width])
    return " | ".join(shown) if shown else "(no output)"


def event_line(ev: dict) -> str:
    """One line for a launcher event (see Launcher.drain_events)."""
    clock = time.strftime("%H:%M:%S", time.localtime(ev["at"]))
    agent, reason, kind = ev["agent_id"], ev["reason"], ev["kind"]
    tail = output_summary(ev.get("output", ""))
    if kind == "failed":
        return f"[{clock}] agent {agent} FAILED, not restarted: {reason}; last output: {tail}"
    if kind == "died":
        return f"[{clock}] agent {agent} died ({reason}), restarting in {ev['restart_in']:.1f}s; last output: {tail}"
    if kind == "start_failed":
        return f"[{clock}] agent {agent} could not be started ({reason}), retrying in {ev['restart_in']:.1f}s"
    return f"[{clock}] agent {agent} ended on its own ({reason}); last output: {tail}"


# -- the snapshot and its two renderings -----------------------------------------------------

@dataclass
class Snapshot:
    clock: str
    rows: list[dict]
    alive: int
    total: int
    actions: int
    rate: float
    artifacts: int
    supply: int
    next_mint_in: float | str          # seconds, "off" (mint disabled) or "unknown"
    scrip: dict[str, int] = field(default_factory=dict)
    remaining: float | None = None


def dist(values) -> str:
    values = sorted(values)
    if not values:
        return "-"
    return f"{values[0]}/{int(statistics.median(values))}/{values[-1]}"


def countdown(seconds: float | str | None) -> str:
    if seconds is None or isinstance(seconds, str):
        return seconds or "-"
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}"


def plain_line(s: Snapshot) -> str:
    return (f"[{s.clock}] agents alive {s.alive}/{s.total} | actions {s.rate:5.1f}/s ({s.actions} total) | "
            f"artifacts {s.artifacts} | scrip supply {s.supply}, agents min/median/max {dist(s.scrip.values())} | "
            f"next mint in {countdown(s.next_mint_in)}")


def agents_table(s: Snapshot, title: str | None = None):
    from rich.table import Table

    table = Table(title=title, expand=False, header_style="bold")
    for name, justify in (("agent", "left"), ("state", "left"), ("restarts", "right"), ("scrip", "right"),
                          ("compute", "right"), ("actions", "right"), ("last action", "left"),
                          ("outcome", "left")):
        table.add_column(name, justify=justify, no_wrap=name not in ("last action", "outcome"),
                         overflow="ellipsis", max_width={"last action": 36, "outcome": 40}.get(name))
    colors = {"alive": "green", "restarting": "yellow", "dead": "bold red", "stopped": "dim"}
    for r in s.rows:
        state = r["state"]
        outcome = r["outcome"]
        table.add_row(r["agent_id"], f"[{colors.get(state, '')}]{state}[/]" if state in colors else state,
                      str(r["restarts"]), str(r["scrip"]), r["compute"], str(r["actions"]), r["last_action"],
                      f"[green]{outcome}[/]" if outcome == "ok" else f"[red]{outcome}[/]" if outcome != "-" else "-")
    return table


class Console:
    """Prints the job's lines; on a terminal also redraws the live block."""

    def __init__(self, out, live: bool | None = None) -> None:
        from rich.console import Console as RichConsole

        self.out = out
        self.live_mode = out.isatty() if live is None else live
        self.rich = RichConsole(file=out, width=None if self.live_mode else 160,
                                force_terminal=self.live_mode or None, highlight=False)
        self._live = None
        self.header: list[str] = []
        self.footer = ""

    @property
    def interval(self) -> float:
        return LIVE_SECONDS if self.live_mode else PROGRESS_SECONDS

    def say(self, text: str, style: str | None = None) -> None:
        if self._live is not None:
            self._live.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
        elif self.live_mode:
            self.rich.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        self.say(text, style="bold red")

    def start_live(self) -> None:
        if not self.live_mode:
            return
        from rich.live import Live

        self._live = Live(console=self.rich, refresh_per_second=4, transient=True, auto_refresh=True)
        self._live.start()

    def show(self, s: Snapshot) -> None:
        if self._live is None:
            print(plain_line(s), file=self.out, flush=True)
            return
        self._live.update(self._block(s))

    def _block(self, s: Snapshot):
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        world = Text.assemble(
            ("actions ", "bold"), f"{s.rate:.1f}/s ({s.actions} total)   ",
            ("artifacts ", "bold"), f"{s.artifacts}   ",
            ("scrip supply ", "bold"), f"{s.supply} (agents min/median/max {dist(s.scrip.values())})   ",
            ("next mint in ", "bold"), countdown(s.next_mint_in))
        ends = "until Ctrl-C" if s.remaining is None else f"ends in {countdown(s.remaining)}"
        title = f"Agent Ecology - {s.clock} - agents alive {s.alive}/{s.total} - {ends}"
        body = Group(*(Text(h) for h in self.header), agents_table(s), world, Text(self.footer, style="dim"))
        return Panel(body, title=title, title_align="left")

    def stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def final(self, s: Snapshot) -> None:
        self.rich.print(agents_table(s, title=f"agents at the end ({s.alive}/{s.total} alive)"))
