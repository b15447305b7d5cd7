"""Benchmark of the agents (prints figures; not a test). See bench/README.md.

    python bench/bench_agents.py [--quick] [--starts N] [--levels 10,50,100] [--window S]

With the offline brains (no LLM), against one world server (`python -m server.cli serve` on
a unix socket, as `ecology run` serves its agents) in a fresh temporary data directory:

  1. agent start time per backend (process, bwrap, docker): from `Launcher.start` to the
     agent's first call seen by the server (its access-log line) and to its first action
     in the world (its first event), p50 over --starts starts, scripted brain;
  2. idle memory per agent (the same agents, idle after their first action, waiting for a
     configuration change on a Subscribe stream): RSS / PSS / USS of the agent's processes
     from /proc, and for docker the container's memory as `docker stats` counts it;
  3. scale: 10, 50, 100 agents (process backend), every one acting continuously (brain
     "plan", repeating transfer / write, loop.min_interval 0.2 s): actions per second in
     total and the p50/p99 of the action latency each agent measures around the action's
     RPC (its "action" log lines), plus the server's own view (access log duration_ms),
     CPU of the server and of the agents. Goal: 100 agents with p99 < 1 s. Then (--scripted)
     100 agents with the scripted brain at the same pace, for a realistic mix.

Docker: when no engine answers, scripts/ensure_docker.sh is run (it starts dockerd as root)
and `python -m agent_runtime.launcher.image ensure` builds the images; a dockerd the bench
started is stopped at the end (--keep-dockerd keeps it). Without an engine the docker rows
are skipped with the reason. Every process the bench started is stopped at the end; the
last line says whether anything was left over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from bench_server import print_table, summarize_profile, verdict  # noqa: E402

BACKENDS = ("process", "bwrap", "docker")
# As `ecology run` launches its agents (server/main_job.py AGENT_LIMITS).
AGENT_LIMITS = {"memory_mb": 256, "cpus": 0.5, "pids": 64}
# Parts 1-2: the scripted brain; after one acting action (its first memory note) the loop
# idles until its configuration changes (max_actions), i.e. sleeps on its Subscribe stream.
START_CONFIG = json.dumps({"brain": "scripted", "personality": "builder", "loop": {"max_actions": 1}})
# Part 3: compute raised so that debt never paces an agent (the default 10 units/s is
# exactly what transfer+write at 5 steps/s spends); rate limits stay at their defaults.
SCALE_OVERRIDES = dict(compute_rate=1000.0, compute_capacity=1000.0)
GOAL_AGENTS = 100
GOAL_P99_MS = 1000.0
DOCKER_PID_FILE = Path("/var/run/docker.pid")


def table(headers: list[str], rows: list[list[str]], align: str) -> None:
    if rows:
        print_table(headers, rows, align)
    else:
        print("(nothing measured)")


def ts_of(text: str) -> float:
    """Epoch seconds of an ISO timestamp ("...Z"), as the server and the agents log them."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt_ms(v: float) -> str:
    return "-" if v != v else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


# ===================================================================== /proc

def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads), seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)          # idle + iowait
    return sum(f) - idle, sum(f)


def children_cpu(pid: int) -> float:
    """CPU seconds of a process's descendants: those alive now, plus those it has reaped
    (cutime + cstime). The sandbox workers of the server."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0
    return reaped + sum(proc_cpu(p) for p in proc_tree(pid)[1:])


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(d))
    return out


def proc_tree(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = kids if kids is not None else children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def proc_mem(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) of one process, MiB."""
    out = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            kb = rest.split()
            if not kb or not kb[0].isdigit():
                continue
            v = int(kb[0]) / 1024
            if key == "Rss":
                out["rss"] = v
            elif key == "Pss":
                out["pss"] = v
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += v
    except OSError:
        pass
    return out


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def leftover_pids(marker: str) -> list[int]:
    """Processes whose command line or environment mentions `marker` (the work directory)."""
    me = os.getpid()
    found = []
    m = marker.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        for f in ("cmdline", "environ"):
            try:
                if m in Path(f"/proc/{d}/{f}").read_bytes():
                    found.append(int(d))
                    break
            except OSError:
                pass
    return found


# ===================================================================== the world server

class World:
    """`python -m server.cli serve` on a unix socket in `workdir`, access log to server.log."""

    def __init__(self, workdir: Path, log_level: str) -> None:
        self.data = workdir / "data"
        (self.data / "sock").mkdir(parents=True)
        self.socket = self.data / "sock" / "world.sock"
        self.address = f"unix:{self.socket}"
        cfg = workdir / "server.toml"
        cfg.write_text("")                                   # the embedded defaults
        self.admin_token = "adm_bench_" + uuid.uuid4().hex
        self.log_path = self.data / "server.log"
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "ECOLOGY_ADMIN_TOKEN": self.admin_token,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        ready = self.data / "server.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(self.data), "--listen", self.address,
             "--config", str(cfg), "--log-level", log_level],
            env=env, cwd=ROOT, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start; see {self.log_path}")
            time.sleep(0.02)
        from agent_runtime import AdminClient
        from server.storage import db

        self.admin = AdminClient(self.address, self.admin_token)
        self.db: sqlite3.Connection = db.connect(self.data / db.DB_FILE, readonly=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def create_agent(self, name: str, config: str, **overrides) -> tuple[str, str]:
        created = self.admin.create_agent(name, config, **overrides)
        return created.agent_id, created.token

    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def first_event_at(self, principal: str, after_seq: int) -> float | None:
        row = self.db.execute("SELECT MIN(at) FROM events WHERE seq > ? AND principal_id = ?",
                              (after_seq, principal)).fetchone()
        return row[0]

    def actors_since(self, after_seq: int, principals: list[str]) -> int:
        marks = ",".join("?" * len(principals))
        return self.db.execute(f"SELECT COUNT(DISTINCT principal_id) FROM events WHERE seq > ? "
                               f"AND principal_id IN ({marks})", (after_seq, *principals)).fetchone()[0]

    def ledger_ok(self) -> str:
        s = self.admin.get_stats()
        holds = s.total_balances == s.minted - s.burned
        return f"ledger: sum(balances) == minted - burned: {'yes' if holds else 'NO'}"

    def stop(self) -> None:
        for c in (self.admin, self.db):
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class LogTail:
    """Reads a JSON-lines file incrementally (complete lines only)."""

    def __init__(self, path: Path, needle: bytes = b"") -> None:
        self.path = path
        self.needle = needle
        self.offset = 0
        self._rest = b""

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._rest = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            if self.needle and self.needle not in line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


# ===================================================================== docker

def docker_engine_up() -> bool:
    try:
        import docker

        c = docker.from_env(timeout=5)
        try:
            c.ping()
            return True
        finally:
            c.close()
    except Exception:  # noqa: BLE001
        return False


def prepare_docker(args) -> tuple[bool, str, int | None]:
    """(usable, note, pid of a dockerd this bench started)."""
    started_pid = None
    t0 = time.monotonic()
    if not docker_engine_up():
        if args.no_docker_setup:
            return False, "no Docker engine answers (--no-docker-setup)", None
        r = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_docker.sh")], capture_output=True, text=True,
                           timeout=240)
        if r.returncode != 0 or not docker_engine_up():
            msg = (r.stderr or r.stdout).strip().splitlines()
            return False, f"no Docker engine ({msg[-1] if msg else 'ensure_docker.sh failed'})", None
        if "starting dockerd" in r.stdout and DOCKER_PID_FILE.exists():
            try:
                started_pid = int(DOCKER_PID_FILE.read_text().strip())
            except ValueError:
                started_pid = None
    how = f"engine started by scripts/ensure_docker.sh in {time.monotonic() - t0:.1f}s" if started_pid \
        else "engine already running"
    t1 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agent_runtime.launcher.image", "ensure"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()
        return False, f"{how}; image ensure failed: {tail[-1] if tail else r.returncode}", started_pid
    return True, f"{how}; `image ensure` {time.monotonic() - t1:.1f}s", started_pid


def stop_dockerd(pid: int) -> str:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "dockerd already gone"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break                       # exited; its parent (not us) reaps it
        except OSError:
            break                           # gone
        time.sleep(0.2)
    else:
        return f"dockerd {pid} (started by this bench) did not stop within 30 s"
    return "dockerd (started by this bench) stopped"


# ===================================================================== parts 1-2

def wait_first(world: World, tail: LogTail, seen_rpc: dict, agent: str, after_seq: int, t0: float,
               timeout: float) -> tuple[float | None, float | None]:
    """Seconds from t0 to the agent's first access-log line and to its first event."""
    first_event = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in tail.read():
            p = rec.get("principal")
            if p and p not in seen_rpc:
                seen_rpc[p] = ts_of(rec["timestamp"])
        if first_event is None:
            first_event = world.first_event_at(agent, after_seq)
        if agent in seen_rpc and first_event is not None:
            break
        time.sleep(0.01)
    rpc = seen_rpc.get(agent)
    return (None if rpc is None else rpc - t0), (None if first_event is None else first_event - t0)


def memory_of(backend: str, inst_info: dict, instance) -> dict:
    """Per agent: the agent's Python process, the whole process tree the backend started,
    and (docker) the container's memory as `docker stats` shows it."""
    out: dict = {}
    kids = children_map()
    if backend == "docker":
        c = instance.container
        c.reload()
        pid = int(c.attrs["State"]["Pid"])
        tree = proc_tree(pid, kids)
        try:
            st = c.stats(stream=False, one_shot=True)
        except TypeError:
            st = c.stats(stream=False)
        ms = st.get("memory_stats") or {}
        stats = ms.get("stats") or {}
        cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
        if ms.get("usage") is not None:
            out["cgroup"] = (ms["usage"] - cache) / 2 ** 20
    else:
        pid = int(inst_info.get("pid") or 0)
        top = int(inst_info.get("bwrap_pid") or pid)
        tree = proc_tree(top, kids)
        cg = inst_info.get("cgroup")
        if cg:
            for f in ("memory.current", "memory.usage_in_bytes"):
                p = Path(cg) / f
                if p.exists():
                    try:
                        out["cgroup"] = int(p.read_text()) / 2 ** 20
                    except (OSError, ValueError):
                        pass
                    break
    agent = proc_mem(pid)
    out.update({"pid": pid, "rss": agent["rss"], "pss": agent["pss"], "uss": agent["uss"],
                "tree_n": len(tree), "tree_names": sorted({proc_name(p) for p in tree}),
                "tree_rss": sum(proc_mem(p)["rss"] for p in tree),
                "tree_pss": sum(proc_mem(p)["pss"] for p in tree)})
    try:
        out["threads"] = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                  if line.startswith("Threads:")))
    except (OSError, StopIteration):
        out["threads"] = 0
    return out


def bench_backend(backend: str, world: World, workdir: Path, n: int, idle_wait: float) -> dict:
    from agent_runtime.launcher import Launcher

    launcher = Launcher(backend, world.address, state_dir=workdir / f"launcher-{backend}", build_image=False)
    res: dict = {"backend": launcher.backend.describe(), "spawn": [], "rpc": [], "event": [], "mem": [],
                 "failed": 0}
    tail = LogTail(world.log_path, b'"rpc"')
    tail.skip_to_end()
    seen: dict = {}
    try:
        agents = []
        for i in range(n):
            aid, tok = world.create_agent(f"start-{backend}-{i}-{uuid.uuid4().hex[:4]}", START_CONFIG)
            seq = world.last_seq()
            tail.read()                                    # drop what came before
            t0 = time.time()
            launcher.start(aid, tok, AGENT_LIMITS)
            res["spawn"].append(time.time() - t0)
            rpc, ev = wait_first(world, tail, seen, aid, seq, t0, timeout=60)
            if rpc is None or ev is None:
                res["failed"] += 1
                h = launcher.handle(aid)
                res.setdefault("why", (h.instance.output_tail(5) if h.instance else h.last_exit) or "no output")
            else:
                res["rpc"].append(rpc)
                res["event"].append(ev)
            agents.append(aid)
        time.sleep(idle_wait)      # past the first action: every agent idles (max_actions reached)
        for aid in agents:
            h = launcher.handle(aid)
            if h.instance is not None and h.instance.poll() is None:
                res["mem"].append(memory_of(backend, h.instance.info(), h.instance))
    finally:
        res["backend"] = launcher.backend.describe()      # knows by now whether cgroups were usable
        launcher.close(10.0)
    return res


# ===================================================================== part 3

class Pace:
    """One scale level's measurement."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.window = 0.0
        self.actions = 0
        self.failed: dict[str, int] = {}
        self.ms: list[float] = []
        self.by_action: dict[str, list[float]] = {}
        self.acted: set[str] = set()
        self.srv: dict[str, list[float]] = {}
        self.srv_codes: dict[str, int] = {}
        self.srv_calls = 0
        self.srv_cpu = 0.0
        self.sandbox_cpu = 0.0
        self.agents_cpu = 0.0
        self.bench_cpu = 0.0
        self.events = 0
        self.srv_rss = 0.0
        self.alive = 0
        self.load = 0.0
        self.host = 0.0
        self.brain = "plan"
        self.ready_s = 0.0


def make_agents(world: World, brain: str, n: int, interval: float) -> list[tuple[str, str]]:
    """n agents for part 3. plan: each pays 1 scrip to the next one and rewrites its own
    scratch artifact, in turn, for ever. scripted: the built-in personalities (by id)."""
    prefix = "scale" if brain == "plan" else "scripted"
    names = [f"{prefix}-{i:03d}" for i in range(n)]
    out = []
    for i, name in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        if brain == "plan":
            cfg = {"brain": "plan", "repeat": True, "loop": {"min_interval": interval},
                   "plan": [{"action": "transfer", "to": nxt, "amount": 1, "memo": "bench"},
                            {"action": "write", "artifact_id": f"{name}.scratch",
                             "content": "scratch " + "x" * 200, "metadata": {"kind": "bench"}}]}
        else:
            cfg = {"brain": "scripted", "loop": {"min_interval": interval},
                   "partners": [names[(i + k) % len(names)] for k in (1, 2, 3)]}
        out.append(world.create_agent(name, json.dumps(cfg), **SCALE_OVERRIDES))
    return out


def scale(world: World, workdir: Path, levels: list[tuple[int, str]], args, ACTING) -> tuple[list[Pace], str]:
    from agent_runtime.launcher import Launcher

    logs = workdir / "agent-logs"
    logs.mkdir()
    groups = {brain: make_agents(world, brain, max(n for n, b in levels if b == brain), args.interval)
              for brain in {b for _, b in levels}}
    # The agent's JSON log lines (stderr) go to a file per agent: its "action" lines carry
    # the latency the agent measured around the action's RPC ("ms").
    command = ["/bin/sh", "-c", 'exec "$0" -m agent_runtime.run 2>>"$BENCH_AGENT_LOG"', sys.executable]
    launcher = Launcher("process", world.address, state_dir=workdir / "launcher-scale", command=command)
    backend_note = launcher.backend.describe()
    results: list[Pace] = []
    tails: dict[str, LogTail] = {}
    srv_tail = LogTail(world.log_path, b'"rpc"')
    running, brain_running = 0, None
    try:
        for n, brain in levels:
            if brain != brain_running and running:
                t0 = time.monotonic()
                launcher.stop_all(10.0)
                print(f"  stopped {running} {brain_running} agents in {time.monotonic() - t0:.1f}s", flush=True)
                running = 0
            brain_running = brain
            agents = groups[brain]
            seq0 = world.last_seq()
            t_start = time.monotonic()
            for aid, tok in agents[running:n]:
                path = logs / f"{aid}.log"
                tails[aid] = LogTail(path, b'"action"')
                launcher.start(aid, tok, AGENT_LIMITS, env={"BENCH_AGENT_LOG": str(path)})
            running = n
            ids = [a for a, _ in agents[:n]]
            while world.actors_since(seq0, ids) < n and time.monotonic() - t_start < 90:
                time.sleep(0.2)
            ready_s = time.monotonic() - t_start
            time.sleep(args.warmup)
            pids = [launcher.handle(a).instance.info().get("pid") for a in ids]
            for t in tails.values():
                t.read()
            srv_tail.skip_to_end()
            p = Pace(n)
            p.brain = brain
            c_srv, c_ag, c_me = proc_cpu(world.pid), sum(proc_cpu(x) for x in pids if x), time.process_time()
            c_sbx = children_cpu(world.pid)
            e0 = world.last_seq()
            h0 = host_busy()
            t_a = time.time()
            time.sleep(args.window)
            t_b = time.time()
            p.window = t_b - t_a
            p.srv_cpu = (proc_cpu(world.pid) - c_srv) / p.window
            p.sandbox_cpu = (children_cpu(world.pid) - c_sbx) / p.window
            p.agents_cpu = (sum(proc_cpu(x) for x in pids if x) - c_ag) / p.window
            p.bench_cpu = (time.process_time() - c_me) / p.window
            h1 = host_busy()
            p.host = (h1[0] - h0[0]) / max(1, h1[1] - h0[1]) * (os.cpu_count() or 1)
            p.events = world.last_seq() - e0
            p.srv_rss = proc_mem(world.pid)["rss"]
            p.load = os.getloadavg()[0]
            p.alive = sum(1 for s in launcher.status() if s["alive"])
            p.ready_s = ready_s
            for aid in ids:
                for rec in tails[aid].read():
                    if rec.get("event") != "action" or rec.get("action") not in ACTING:
                        continue
                    if not t_a <= ts_of(rec["ts"]) <= t_b:
                        continue
                    if rec.get("ok"):
                        p.actions += 1
                        p.acted.add(aid)
                        p.ms.append(float(rec["ms"]))
                        p.by_action.setdefault(rec["action"], []).append(float(rec["ms"]))
                    else:
                        key = f"{rec['action']}:{rec.get('reason', '?')}"
                        p.failed[key] = p.failed.get(key, 0) + 1
            for rec in srv_tail.read():
                if not t_a <= ts_of(rec["timestamp"]) <= t_b or rec.get("principal") in (None, "<admin>"):
                    continue
                m = rec.get("method", "?").rsplit("/", 1)[-1]
                if m == "Subscribe":
                    continue
                p.srv_calls += 1
                p.srv.setdefault(m, []).append(float(rec["duration_ms"]))
                if rec.get("code") != "OK":
                    key = f"{m}:{rec.get('code')}"
                    p.srv_codes[key] = p.srv_codes.get(key, 0) + 1
            results.append(p)
            print(f"  {n:>3} {brain} agents: all acting after {ready_s:.1f}s; {p.actions / p.window:,.0f} actions/s, "
                  f"p99 {fmt_ms(pct(p.ms, 0.99))} ms, server {p.srv_cpu:.2f} cores, "
                  f"agents {p.agents_cpu:.2f} cores", flush=True)
            if args.py_spy and n == GOAL_AGENTS and brain == "plan":
                profile_server(world.pid, Path(args.py_spy), f"server-{n}-{brain}-agents", args.spy_seconds)
    finally:
        t0 = time.monotonic()
        launcher.close(10.0)
        print(f"  stopped {running} {brain_running} agents in {time.monotonic() - t0:.1f}s", flush=True)
    return results, backend_note


def profile_server(pid: int, outdir: Path, name: str, seconds: float) -> None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{name}.txt"
    cmd = [exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200", "-f", "raw", "-F",
           "--nonblocking", "-t", "-o", str(out)]
    print(f"  profiling the server for {seconds:g}s with py-spy (agents still running) ...", flush=True)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 60)
    PROFILES.append((name, out))


PROFILES: list[tuple[str, Path]] = []


# ===================================================================== main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 1 minute: 3 starts per backend, 6 s windows")
    ap.add_argument("--starts", type=int, help="starts per backend in parts 1-2 (default 7; quick 3)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="backends of parts 1-2 (default all)")
    ap.add_argument("--levels", default="10,50,100", help="agent counts of part 3, brain plan (the goal's figure)")
    ap.add_argument("--scripted", type=int, help="then this many agents with the scripted brain (the built-in "
                    "personalities, incl. sandboxed tool calls and their sleeps), 0 for none (default 100; quick 0)")
    ap.add_argument("--window", type=float, help="measuring window per level, s (default 20; quick 6)")
    ap.add_argument("--warmup", type=float, help="after every agent of a level has acted, s (default 3; quick 1.5)")
    ap.add_argument("--interval", type=float, default=0.2, help="loop.min_interval of the part 3 agents")
    ap.add_argument("--log-level", default="info",
                    help="server log level (default info, as `ecology serve`: the access log part 1 and "
                         "the server-side latencies of part 3 read)")
    ap.add_argument("--py-spy", metavar="DIR", help="after the last level's window, profile the server with "
                    "py-spy while the agents keep going; raw stacks go to DIR, a summary is printed")
    ap.add_argument("--spy-seconds", type=float, default=6.0, help="py-spy duration (default 6)")
    ap.add_argument("--no-docker-setup", action="store_true",
                    help="do not start dockerd / build images when no engine answers (skip docker)")
    ap.add_argument("--keep-dockerd", action="store_true", help="leave a dockerd this bench started running")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    args = ap.parse_args()
    args.starts = args.starts or (3 if args.quick else 7)
    args.window = args.window or (6.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.5 if args.quick else 3.0)
    if args.scripted is None:
        args.scripted = 0 if args.quick else 100
    levels = [(n, "plan") for n in sorted({int(x) for x in args.levels.split(",") if x.strip()})]
    if args.scripted:
        levels.append((args.scripted, "scripted"))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.log_level == "info":
        print("note: --log-level other than info turns off the access log that part 1 and part 3's "
              "server-side figures read", file=sys.stderr)

    import grpc

    from agent_runtime.actions import ACTING
    from server import logs as server_logs

    workdir = Path(tempfile.mkdtemp(prefix="ecology-bench-agents-"))
    # The launcher's own structured log lines go to a file, not into the report.
    launcher_log = open(workdir / "launcher.log", "ab")
    server_logs.configure("info", file=launcher_log)
    t_run = time.monotonic()
    print(f"Agent Ecology agents benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"grpcio {grpc.__version__}; offline brains; one server (`python -m server.cli serve`, "
          f"log {args.log_level}) on a unix socket")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (other work on the machine changes the figures)")
    print(f"work directory: {workdir}\n", flush=True)

    world = None
    dockerd_pid = None
    start_rows: list[list[str]] = []
    mem_rows: list[list[str]] = []
    notes: list[str] = []
    start_p50: dict[str, float] = {}
    paces: list[Pace] = []
    scale_backend = ""
    ledger_note = ""
    containers = 0
    try:
        try:
            world = World(workdir, args.log_level)
            # ------------------------------------------------------- 1-2. start time, memory
            for backend in backends:
                if backend == "docker":
                    ok, note, dockerd_pid = prepare_docker(args)
                    notes.append(f"docker: {note}")
                    if not ok:
                        start_rows.append(["docker", "skipped", "-", "-", "-", "-", "-", note])
                        print(f"  docker: skipped ({note})", flush=True)
                        continue
                elif backend == "bwrap":
                    from agent_runtime.launcher import bwrap

                    ok, why = bwrap.available()
                    if not ok:
                        start_rows.append(["bwrap", "skipped", "-", "-", "-", "-", "-", why])
                        continue
                t0 = time.monotonic()
                try:
                    r = bench_backend(backend, world, workdir, args.starts, idle_wait=2.0)
                except Exception as e:  # noqa: BLE001 - report, continue with the others
                    start_rows.append([backend, "failed", "-", "-", "-", "-", "-", f"{type(e).__name__}: {e}"[:120]])
                    print(f"  {backend}: failed: {e!r}", flush=True)
                    continue
                ok_n = len(r["rpc"])
                start_p50[backend] = statistics.median(r["event"]) if r["event"] else float("nan")
                start_rows.append([
                    backend, f"{ok_n}/{args.starts}",
                    fmt_ms(statistics.median(r["spawn"]) * 1000),
                    fmt_ms(statistics.median(r["rpc"]) * 1000) if ok_n else "-",
                    fmt_ms(statistics.median(r["event"]) * 1000) if ok_n else "-",
                    fmt_ms(min(r["event"]) * 1000) if ok_n else "-",
                    fmt_ms(max(r["event"]) * 1000) if ok_n else "-",
                    r["backend"] + (f"; {r['failed']} failed: {r.get('why', '')[:80]}" if r["failed"] else ""),
                ])
                if r["mem"]:
                    m = r["mem"]

                    def med(key: str) -> str:
                        vals = [x[key] for x in m if key in x]
                        return f"{statistics.median(vals):.1f}" if vals else "-"

                    mem_rows.append([backend, str(len(m)), med("rss"), med("pss"), med("uss"),
                                     med("threads").split(".")[0],
                                     f"{m[0]['tree_n']} ({', '.join(m[0]['tree_names'])})",
                                     med("tree_rss"), med("tree_pss"), med("cgroup")])
                print(f"  {backend}: {ok_n}/{args.starts} started, first event p50 "
                      f"{fmt_ms(start_p50[backend] * 1000)} ms ({time.monotonic() - t0:.0f}s)", flush=True)

            # ------------------------------------------------------------------ 3. scale
            if levels:
                paces, scale_backend = scale(world, workdir, levels, args, ACTING)
            ledger_note = world.ledger_ok()
        finally:
            if world is not None:
                world.stop()
            if "docker" in backends and docker_engine_up():
                try:
                    import docker

                    c = docker.from_env(timeout=10)
                    containers = len(c.containers.list(all=True, filters={"label": "ecology.agent"}))
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
            if dockerd_pid and not args.keep_dockerd:
                notes.append(stop_dockerd(dockerd_pid))
            launcher_log.close()

        # ================================================================== report
        bar = "=" * 100
        print("\n" + bar)
        print(f"1. Agent start time: Launcher.start -> first call seen by the server / first action in the world "
              f"(its first event); {args.starts} starts per backend, one at a time, scripted brain")
        print(bar)
        table(["backend", "started", "start() ms", "first call ms p50", "first event ms p50", "min", "max",
               "backend / notes"], start_rows, "lrrrrrrl")
        print("(start() = the Launcher.start call itself (process: fork+exec; bwrap: + namespaces and cgroup; "
              "docker: container create+start through the API); first call = the agent's first GetState, "
              "taken from the timestamp of its access-log line; first event = its first action committed "
              "(the scripted brain's opening memory note, a write): both from the same wall clock as the start)")

        print("\n" + bar)
        print("2. Idle memory per agent (after its first action, waiting on its Subscribe stream), MiB, median")
        print(bar)
        if mem_rows:
            table(["backend", "agents", "RSS", "PSS", "USS", "threads", "processes per agent", "tree RSS",
                   "tree PSS", "cgroup"], mem_rows, "lrrrrrlrrr")
            print("(RSS/PSS/USS of the agent's Python process from /proc/PID/smaps_rollup; PSS shares the pages "
                  "common to all agents (interpreter, libraries) among them, USS is what one more agent costs at "
                  "least; tree = every process the backend runs for the agent (bwrap: its monitor process too); "
                  "cgroup = bwrap: the agent cgroup's memory.usage_in_bytes (incl. page cache); docker: usage "
                  "minus inactive file pages, as `docker stats` shows it)")
        else:
            print("(no agent measured)")

        print("\n" + bar)
        print(f"3. Scale: N agents on one server, every one acting continuously ({scale_backend}); "
              f"loop.min_interval {args.interval:g}s (at most {1 / args.interval:g} steps/s per agent, each = "
              f"GetState + one action); {args.window:g}s window per level")
        print(bar)
        rows = []
        for p in paces:
            target = p.n / args.interval
            rate = p.actions / p.window if p.window else 0.0
            fails = sum(p.failed.values())
            rows.append([str(p.n), p.brain, f"{p.alive}/{len(p.acted)}", f"{rate:,.0f}", f"{rate / target:.2f}",
                         fmt_ms(pct(p.ms, 0.5)), fmt_ms(pct(p.ms, 0.99)), fmt_ms(max(p.ms) if p.ms else float("nan")),
                         f"{p.srv_calls / p.window:,.0f}",
                         fmt_ms(pct([v for vs in p.srv.values() for v in vs], 0.99)),
                         f"{p.srv_cpu:.2f}", f"{p.sandbox_cpu:.2f}", f"{p.agents_cpu:.2f}", f"{p.host:.2f}",
                         f"{p.events / p.window:,.0f}",
                         str(fails) if not fails else ", ".join(f"{k}={v}" for k, v in sorted(p.failed.items()))])
        table(["agents", "brain", "alive/acted", "actions/s", "x pace", "p50 ms", "p99 ms", "max ms", "srv calls/s",
               "srv p99 ms", "srv CPU", "sandbox CPU", "agents CPU", "host CPU", "events/s", "failed actions"],
              rows, "rlrrrrrrrrrrrrrl")
        print("(brain plan = repeating [transfer 1 scrip to the next agent (genesis_ledger.transfer), rewrite its "
              "own artifact (WriteArtifact)]: both durable writes; brain scripted = the built-in personalities "
              "(builder/trader/tester/coordinator by id: writes tools and invokes them in the sandbox, escrow, "
              "transfers, notes, and sleeps between some steps: x pace < 1 by design). "
              "alive/acted = agent processes alive at the end / agents with an action completed in the window; "
              "actions/s = acting actions (not sleeps) completed OK in the window, from the agents' own "
              "\"action\" log lines; x pace = that / (agents / min_interval); p50/p99/max = latency of one "
              "action measured by the agent around its RPC (Python SDK call, incl. any RetryInfo wait); "
              "srv calls/s and srv p99 = the agents' unary calls in the server's access log and their "
              "server-side duration_ms; srv CPU = cores used by the server process (all threads); sandbox CPU = "
              "by its sandbox workers (artifact code); agents CPU = by all agent processes together; host CPU = "
              "cores busy on the whole machine (/proc/stat), other work included; events/s = world events "
              "committed)")
        for p in paces:
            per = ", ".join(f"{m} {len(v) / p.window:,.0f}/s p50 {fmt_ms(pct(v, 0.5))} p99 {fmt_ms(pct(v, 0.99))}"
                            for m, v in sorted(p.by_action.items()))
            srv = ", ".join(f"{m} {len(v) / p.window:,.0f}/s p50 {fmt_ms(pct(v, 0.5))} p99 {fmt_ms(pct(v, 0.99))}"
                            for m, v in sorted(p.srv.items()))
            codes = ", ".join(f"{k}={v}" for k, v in sorted(p.srv_codes.items())) or "none"
            print(f"  {p.n:>3} {p.brain}: all acting {p.ready_s:.1f}s after the start of the level's agents; "
                  f"server RSS {p.srv_rss:.0f} MiB; bench process {p.bench_cpu:.2f} cores; "
                  f"load average {p.load:.1f}")
            print(f"      agent-side (ms): {per}")
            print(f"      server-side (ms): {srv}; non-OK: {codes}")
        print(f"({ledger_note}; agents' compute raised to {SCALE_OVERRIDES['compute_rate']:g}/s so that debt "
              f"never paces them; rate limits at their defaults)")

        print("\n" + bar)
        print("Goals")
        print(bar)
        goal_p = next((p for p in paces if p.n == GOAL_AGENTS and p.brain == "plan"), None)
        if goal_p is None:
            goals = [[f"{GOAL_AGENTS} concurrent agents, p99 action latency < {GOAL_P99_MS / 1000:g} s",
                      f"not measured (levels {args.levels})", "NOT MEASURED"]]
        else:
            p99 = pct(goal_p.ms, 0.99)
            ok = p99 < GOAL_P99_MS and len(goal_p.acted) == GOAL_AGENTS and goal_p.alive == GOAL_AGENTS
            goals = [[f"{GOAL_AGENTS} concurrent agents acting, p99 action latency < {GOAL_P99_MS / 1000:g} s",
                      f"p99 {fmt_ms(p99)} ms; {len(goal_p.acted)}/{GOAL_AGENTS} acted, {goal_p.alive} alive; "
                      f"{goal_p.actions / goal_p.window:,.0f} actions/s "
                      f"({goal_p.actions / goal_p.window / (GOAL_AGENTS / args.interval):.2f}x the configured pace)",
                      verdict(ok)]]
        table(["goal", "measured", "verdict"], goals, "lll")
        for n in notes:
            print(f"note: {n}")

        for name, out in PROFILES:
            summarize_profile(name, out)

    finally:
        # ------------------------------------------------------------------ leftovers
        time.sleep(0.5)
        left = leftover_pids(str(workdir))
        for pid in left:              # should not happen; never leave anything behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"\ntotal run time {time.monotonic() - t_run:.0f} s; load average now {os.getloadavg()[0]:.2f}; "
              f"leftover processes: {len(left)}{' (killed: ' + str(left) + ')' if left else ''}; "
              f"leftover agent containers: {containers}")
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
