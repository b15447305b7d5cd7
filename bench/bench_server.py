"""Benchmark of the world server (prints figures; not a test). See bench/README.md.

    python bench/bench_server.py [--duration SECONDS_PER_POINT] [--quick]

Measures, on this machine, over TCP 127.0.0.1 for every server:
  1. the ceiling: a bare grpc.aio echo server (bench/echo_server.py) at 1/16/64 in flight;
  2. the world server (`python -m server.cli serve`, limits raised so they do not
     throttle): GetState and durable genesis_ledger.transfer at 1/16/64 in flight, and
     their ratio to the ceiling at the same concurrency;
  3. the RpcGuard interceptor's cost: GetState throughput of the real server (default
     rate limits, enough agents and connections that nothing is refused) against the same
     WorldServer with no interceptor (bench/world_noguard.py), interleaved rounds;
  4. noisy neighbour: 4 well-behaved agents alone, then while one agent with the default
     limits floods from its own process.

The load comes from separate worker processes (multiprocessing, spawn), each with its own
asyncio loop and several grpc.aio channels (one TCP connection each), started once and
reused for every point. Every point runs a short warm-up, then counts the calls that
complete inside a window of --duration seconds; latencies are per call, measured in the
client. CPU use of the server process and of the load processes over the window is shown
(in cores) so one can see who the bottleneck is, and the server's CPU per call. Every part
runs --rounds times, interleaved, and the best round of each point is reported.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
CONCURRENCY = (1, 16, 64)
ECHO_METHOD = "/bench.Echo/Echo"
ECHO_PAYLOAD = bytes(range(64)) * 2  # 128 bytes, about a GetState response
HOP_LABEL = "echo via thread hop"

# Limits raised so that they never throttle parts 1-2 (rate limits and compute).
RAISED_CONFIG = """
[rate_limits]
principal_rate = 1e9
principal_burst = 1e9
connection_rate = 1e9
connection_burst = 1e9
max_in_flight_per_principal = 1024

[agents]
endowment = 1000000000000
compute_rate = 1e12
compute_capacity = 1e12
"""

# Parts 3 and 4 run with the configured defaults (empty config file).
DEFAULT_CONFIG = ""

# Per-agent overrides (CreateAgent) for agents whose own limits are not the subject:
# part 4's well-behaved agents. The flooder gets none: config defaults.
UNTHROTTLED_AGENT = dict(endowment=10**12, rpc_rate=1e8, rpc_burst=1e8,
                         compute_rate=1e8, compute_capacity=1e8)


# ===================================================================== load workers

@dataclass
class Job:
    """What one worker process runs for one point."""

    target: str
    kind: str  # "echo" | "world"
    tasks: list  # per task: dict(ops=[...], token=..., to=...)
    channels: int
    record_from: float  # time.monotonic() (system-wide on Linux)
    record_to: float
    stop_at: float  # stop issuing calls
    flood: bool = False  # ignore errors, re-send at once
    drain_timeout: float = 30.0
    interval: float = 0.0  # > 0: open loop, each task starts a call every `interval` s


def _worker_main(conn) -> None:
    """A load process: runs Jobs sent over `conn`, one at a time, on one event loop."""
    import grpc  # noqa: F401  (import once, outside the measured window)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while True:
        job = conn.recv()
        if job is None:
            break
        try:
            result = loop.run_until_complete(_run_job(job))
        except Exception as e:  # report, don't hang the parent
            result = {"error": repr(e)}
        conn.send(result)
    loop.close()


async def _run_job(job: Job) -> dict:
    import grpc

    from google.protobuf import struct_pb2

    from ecology.v1 import world_pb2, world_pb2_grpc

    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ]
    channels = [grpc.aio.insecure_channel(job.target, options=options + [("bench.channel", i)])
                for i in range(max(1, job.channels))]
    await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 20) for ch in channels))

    ok = 0
    errors: dict[str, int] = {}
    lat = array.array("d")
    by_op: dict[str, int] = {}
    clock = time.monotonic
    rec_from, rec_to, stop_at = job.record_from, job.record_to, job.stop_at

    def make_call(spec: dict, channel):
        """A zero-argument coroutine function doing one call of each op in turn."""
        if job.kind == "echo":
            mc = channel.unary_unary(ECHO_METHOD)
            return itertools.cycle([("echo", lambda: mc(ECHO_PAYLOAD, timeout=30))])
        stub = world_pb2_grpc.WorldStub(channel)
        md = (("authorization", f"Bearer {spec['token']}"),)
        gs_req = world_pb2.GetStateRequest()
        prefix = uuid.uuid4().hex[:16] + "-"
        counter = itertools.count()
        args = struct_pb2.Struct()
        args.update({"to": spec.get("to") or "", "amount": 1})

        def get_state():
            return stub.GetState(gs_req, metadata=md, timeout=30)

        def transfer():
            # As the SDK does it (WorldClient.transfer): with a fresh idempotency key.
            req = world_pb2.InvokeArtifactRequest(
                artifact_id="genesis_ledger", method="transfer", args=args,
                request_id=prefix + str(next(counter)))
            return stub.InvokeArtifact(req, metadata=md, timeout=30)

        table = {"get_state": get_state, "transfer": transfer}
        return itertools.cycle([(op, table[op]) for op in spec["ops"]])

    async def loop_task(spec: dict, channel, offset: float) -> None:
        nonlocal ok
        calls = make_call(spec, channel)
        next_at = clock() + offset
        while True:
            if job.interval:
                # Open loop at a fixed rate; a task that falls behind skips, never bursts.
                now = clock()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at = max(next_at + job.interval, clock())
            t0 = clock()
            if t0 >= stop_at:
                return
            op, fn = next(calls)
            try:
                await fn()
            except grpc.aio.AioRpcError as e:
                t1 = clock()
                if rec_from <= t1 <= rec_to:
                    name = f"{op}:{_reason(e)}"
                    errors[name] = errors.get(name, 0) + 1
                if not job.flood:
                    await asyncio.sleep(0.01)  # polite: a well-behaved client backs off
                continue
            t1 = clock()
            if rec_from <= t1 <= rec_to:
                ok += 1
                lat.append(t1 - t0)
                by_op[op] = by_op.get(op, 0) + 1

    cpu: list[float] = []

    async def sample_cpu() -> None:
        for t in (rec_from, rec_to):
            await asyncio.sleep(max(0.0, t - clock()))
            cpu.append(time.process_time())

    sampler = asyncio.create_task(sample_cpu())
    n = len(job.tasks)
    tasks = [asyncio.create_task(loop_task(spec, channels[i % len(channels)], job.interval * i / n))
             for i, spec in enumerate(job.tasks)]
    await sampler
    _done, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_at - clock()) + job.drain_timeout)
    for t in pending:
        t.cancel()
    for ch in channels:
        await ch.close(grace=None)
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"ok": ok, "errors": errors, "lat": lat, "by_op": by_op,
            "cpu": (cpu[1] - cpu[0]) if len(cpu) == 2 else 0.0,
            "window": rec_to - rec_from}


def _reason(err) -> str:
    """ErrorInfo.reason of a failed call (google.rpc.Status details), else the code name."""
    try:
        from google.rpc import error_details_pb2, status_pb2

        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                for d in status_pb2.Status.FromString(value).details:
                    if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                        info = error_details_pb2.ErrorInfo()
                        d.Unpack(info)
                        return info.reason
    except Exception:
        pass
    return err.code().name


class Pool:
    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.workers = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            proc.start()
            self.workers.append((proc, parent))

    def run(self, jobs: dict[int, Job], server_pid: int | None, record_from: float,
            record_to: float) -> tuple[list[dict], float]:
        """Run the jobs (worker index -> Job) at once; returns their results and the
        server's CPU use over the window, in cores."""
        for i, job in jobs.items():
            self.workers[i][1].send(job)
        srv = 0.0
        if server_pid:
            time.sleep(max(0.0, record_from - time.monotonic()))
            c0 = _proc_cpu(server_pid)
            time.sleep(max(0.0, record_to - time.monotonic()))
            srv = (_proc_cpu(server_pid) - c0) / (record_to - record_from)
        results = [self.workers[i][1].recv() for i in jobs]
        for r in results:
            if "error" in r:
                raise RuntimeError(f"load worker failed: {r['error']}")
        return results, srv

    def close(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, _ in self.workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ===================================================================== servers

class Server:
    """A server subprocess that writes a ready file with its addresses."""

    def __init__(self, name: str, workdir: Path, argv: list[str], ready: Path, env: dict) -> None:
        self.name = name
        self.ready = ready
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start; see {self.log_path}")
            time.sleep(0.02)
        self.address = json.loads(ready.read_text())["listen"][0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class WorldProc(Server):
    def __init__(self, name: str, workdir: Path, config: str, *, noguard: bool = False,
                 log_level: str = "info", database: str = "") -> None:
        data = workdir / name
        data.mkdir(parents=True, exist_ok=True)
        cfg = workdir / f"{name}.toml"
        cfg.write_text(config)
        self.admin_token = "adm_bench_" + uuid.uuid4().hex
        env = {**os.environ, "ECOLOGY_ADMIN_TOKEN": self.admin_token,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if noguard:
            argv = [sys.executable, str(BENCH / "world_noguard.py")]
        else:
            argv = [sys.executable, "-m", "server.cli", "serve"]
        argv += ["--data-dir", str(data), "--listen", "127.0.0.1:0", "--config", str(cfg),
                 "--log-level", log_level, *(["--database", database] if database else [])]
        super().__init__(name, workdir, argv, data / "server.json", env)

    def create_agents(self, prefix: str, n: int, **overrides) -> list[tuple[str, str]]:
        from agent_runtime import AdminClient

        out = []
        with AdminClient(self.address, self.admin_token) as admin:
            for i in range(n):
                created = admin.create_agent(f"{prefix}{i}", **overrides)
                out.append((created.agent_id, created.token))
        return out

    def ledger_ok(self) -> str:
        from agent_runtime import AdminClient

        with AdminClient(self.address, self.admin_token) as admin:
            s = admin.get_stats()
        holds = s.total_balances == s.minted - s.burned
        return (f"ledger entries {s.ledger_entries}, sum(balances) == minted - burned: "
                f"{'yes' if holds else 'NO'}")


def start_echo(workdir: Path, *, hop: bool = False) -> Server:
    name = "echo-hop" if hop else "echo"
    ready = workdir / f"{name}.json"
    return Server(name, workdir, [sys.executable, str(BENCH / "echo_server.py"),
                                  "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                                  *(["--hop"] if hop else [])],
                  ready, dict(os.environ))


# ===================================================================== measurement

@dataclass
class Point:
    label: str
    inflight: int
    calls: int = 0
    seconds: float = 1.0
    lat: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    by_op: dict = field(default_factory=dict)
    srv_cpu: float = 0.0
    gen_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def us_per_call(self) -> float:
        """Server CPU per completed call, microseconds: unlike calls/s, hardly changed by
        other work on the machine (that takes CPU away, it does not add CPU per call)."""
        return self.srv_cpu * self.seconds / self.calls * 1e6 if self.calls else float("nan")

    def pct(self, q: float) -> float:
        if not self.lat:
            return float("nan")
        return self.lat[min(len(self.lat) - 1, int(q * len(self.lat)))] * 1000.0


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.duration = args.duration
        self.warmup = 0.3 if args.quick else 0.7
        self.procs = args.procs
        self.channels = args.channels
        # workers 0..procs-1: load; worker `procs`: the flooder (part 4).
        self.pool = Pool(self.procs + 1)
        self.profiles: list = []

    def split(self, specs: list[dict], nprocs: int | None = None) -> list[list[dict]]:
        """Spread task specs over the load processes (round robin)."""
        n = min(nprocs or self.procs, len(specs))
        return [specs[i::n] for i in range(n)]

    def measure(self, label: str, target: str, kind: str, specs: list[dict], server_pid: int,
                *, extra: dict[int, Job] | None = None, extra_lead: float = 0.0,
                rate: float = 0.0) -> tuple[Point, list[dict]]:
        """Run `specs` (one per in-flight call) against `target`; returns the point
        (load workers only) and the raw results of `extra` jobs (e.g. the flooder).
        rate > 0: open loop, `rate` calls/s in total instead of as fast as possible."""
        now = time.monotonic()
        rec_from = now + self.warmup + extra_lead + 0.3  # 0.3 s: channel set-up in workers
        rec_to = rec_from + self.duration
        jobs: dict[int, Job] = {}
        for i, part in enumerate(self.split(specs)):
            jobs[i] = Job(target, kind, part, min(self.channels, len(part)), rec_from, rec_to, rec_to,
                          interval=len(specs) / rate if rate else 0.0)
        for i, job in (extra or {}).items():
            job.record_from, job.record_to = rec_from, rec_to
            job.stop_at = rec_to + 0.2
            jobs[i] = job
        results, srv = self.pool.run(jobs, server_pid, rec_from, rec_to)
        p = Point(label, len(specs), seconds=self.duration, srv_cpu=srv)
        load = [r for i, r in zip(jobs, results) if i < self.procs]
        others = [r for i, r in zip(jobs, results) if i >= self.procs]
        lat: list[float] = []
        for r in load:
            p.calls += r["ok"]
            lat.extend(r["lat"])
            p.gen_cpu += r["cpu"] / r["window"]
            for k, v in r["errors"].items():
                p.errors[k] = p.errors.get(k, 0) + v
            for k, v in r["by_op"].items():
                p.by_op[k] = p.by_op.get(k, 0) + v
        lat.sort()
        p.lat = lat
        return p, others

    def spy(self, pid: int, name: str, lead: float = 0.0):
        """Profile `pid` with py-spy during the measuring window of the next point (see
        --py-spy; call just before `measure`, with the same extra_lead); None when disabled."""
        if not self.args.py_spy or pid is None:
            return None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = Path(self.args.py_spy) / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        # The window opens warmup + lead + 0.3 s after measure() starts; start 0.3 s early
        # (py-spy takes a moment to attach) so the profile does not run into the next point.
        delay = self.warmup + lead
        cmd = [exe, "record", "-p", str(pid), "-d", str(max(1, int(self.duration))), "-r", "250",
               "-f", "raw", "-F", "--nonblocking", "-t", "-o", str(out)]
        proc = subprocess.Popen(["sh", "-c", f'sleep {delay:.2f}; exec "$@"', "py-spy", *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.profiles.append((name, out, proc))
        return proc

    def close(self) -> None:
        for _name, _out, proc in self.profiles:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.pool.close()


def world_specs(agents: list[tuple[str, str]], n: int, ops: list[str]) -> list[dict]:
    """n task specs, agents round robin; agent i transfers to agent i+1."""
    specs = []
    for i in range(n):
        a = i % len(agents)
        specs.append({"ops": ops, "token": agents[a][1], "to": agents[(a + 1) % len(agents)][0]})
    return specs


# ===================================================================== report

def fmt_errors(errors: dict) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{k}={v}" for k, v in sorted(errors.items()))


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align))

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def point_row(p: Point, ceiling: Point | None, goal: float | None) -> list[str]:
    ratio = p.rate / ceiling.rate if ceiling and ceiling.rate else None
    return [
        p.label, str(p.inflight), f"{p.rate:,.0f}", f"{p.pct(0.50):.2f}", f"{p.pct(0.99):.2f}",
        f"{p.srv_cpu:.2f}", f"{p.us_per_call:,.0f}", f"{p.gen_cpu:.2f}",
        f"{ratio:.2f}" if ratio is not None else "-",
        (f">={goal:.1f} {'ok' if ratio >= goal else 'MISS'}" if goal is not None and ratio is not None else ""),
        fmt_errors(p.errors),
    ]


def summarize_profile(name: str, path: Path, top: int = 15) -> None:
    """Print where a py-spy raw (collapsed stacks) profile spends its samples: per thread,
    then the functions with the most inclusive and the most self samples."""
    if not path.exists():
        print(f"\n[py-spy {name}: no profile written]")
        return
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(c for _, c in stacks) or 1
    threads: dict[str, int] = {}
    incl: dict[str, int] = {}
    self_: dict[str, int] = {}

    def short(frame: str) -> str:
        return frame.replace(str(ROOT) + "/", "")

    boring = ("<frozen runpy>", "asyncio/runners.py", "asyncio/base_events.py", "threading.py:",
              "server/cli.py", "<module>", "bench/world_noguard.py")

    for frames, count in stacks:
        threads[frames[0]] = threads.get(frames[0], 0) + count
        seen = set()
        for f in frames[1:]:
            f = short(f)
            if any(b in f for b in boring):
                continue
            if f not in seen:
                seen.add(f)
                incl[f] = incl.get(f, 0) + count
        if len(frames) > 1:
            leaf = short(frames[-1])
            self_[leaf] = self_.get(leaf, 0) + count
    print("\n" + "=" * 100)
    print(f"py-spy profile {name}: {total} samples (non-idle), {path}")
    print("=" * 100)
    for t, c in sorted(threads.items(), key=lambda kv: -kv[1]):
        print(f"  {c / total * 100:5.1f}%  {t}")
    print("  -- inclusive (without event-loop/thread boilerplate) --")
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {c / total * 100:5.1f}%  {f}")
    print("  -- self (Handle._run: native grpc/Cython code run by the event loop; "
          "EpollSelector.select: waiting for I/O) --")
    for f, c in sorted(self_.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {c / total * 100:5.1f}%  {f}")


# ===================================================================== the run

def best(points: list[Point]) -> Point:
    """The round with the highest throughput: background load only ever slows a point
    down, so the best round is the closest to what this machine itself can do."""
    return max(points, key=lambda p: p.rate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=None, help="seconds per point (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="1 s per point and 1 round")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of every part, interleaved; the best round is reported (default 2; --quick 1)")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    ap.add_argument("--channels", type=int, default=4, help="channels (TCP connections) per load process")
    ap.add_argument("--agents", type=int, default=8, help="agents in part 2 (default 8)")
    ap.add_argument("--guard-inflight", type=int, default=64, help="calls in flight in part 3")
    ap.add_argument("--guard-agents", type=int, default=32,
                    help="agents in part 3: enough that the default 200 calls/s per principal never binds")
    ap.add_argument("--guard-rate", type=float, default=0.0,
                    help="offered calls/s for part 3's CPU comparison (default: half the slowest variant's best)")
    ap.add_argument("--neighbours", type=int, default=4, help="well-behaved agents in part 4")
    ap.add_argument("--neighbour-inflight", type=int, default=4, help="calls in flight per well-behaved agent")
    ap.add_argument("--flood-inflight", type=int, default=256, help="the flooder's calls in flight")
    ap.add_argument("--log-level", default="info", help="world server log level (default info, as `ecology serve`)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    ap.add_argument("--py-spy", metavar="DIR", help="profile the world server with py-spy during the "
                    "64-in-flight points of part 2 and a flood point of part 4 (first round); raw stacks "
                    "go to DIR and a summary is printed (the profiler perturbs that run's figures)")
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2

    import grpc

    workdir = Path(tempfile.mkdtemp(prefix="ecology-bench-"))
    t_start = time.monotonic()
    print(f"Agent Ecology server benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"grpcio {grpc.__version__}; load from {args.procs} processes x up to {args.channels} channels; "
          f"{args.duration:g} s per point, best of {args.rounds} interleaved round(s); TCP 127.0.0.1")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} "
          f"(other work on the machine lowers the figures)")
    print(f"work directory: {workdir}\n", flush=True)

    bench = Bench(args)
    servers: list[Server] = []
    try:
        # ------------------------------------------------- 1-2. ceiling and world server
        # Both servers run side by side (an idle one costs nothing) so that the echo point
        # and the world points at the same concurrency are measured back to back.
        echo = start_echo(workdir)
        servers.append(echo)
        # A second reference: the echo answered from another thread, as the writer thread
        # answers a transfer (echo_server.py --hop). Not a goal's ceiling; it shows what the
        # hop to a thread costs by itself.
        echo_hop = start_echo(workdir, hop=True)
        servers.append(echo_hop)
        world = WorldProc("world-raised", workdir, RAISED_CONFIG, log_level=args.log_level)
        servers.append(world)
        agents = world.create_agents("bench_agent_", args.agents)
        workloads = [("echo (ceiling)", None), (HOP_LABEL, None), ("GetState", ["get_state"]),
                     ("transfer (durable)", ["transfer"])]
        echoes = {"echo (ceiling)": echo, HOP_LABEL: echo_hop}
        raw12: dict[tuple[str, int], list[Point]] = {}
        for r in range(args.rounds):
            for c in CONCURRENCY:
                order = workloads if r % 2 == 0 else workloads[::-1]
                for label, ops in order:
                    if ops is None:
                        e = echoes[label]
                        p, _ = bench.measure(label, e.address, "echo", [{"ops": ["echo"]}] * c, e.pid)
                    else:
                        if r == 0 and c == max(CONCURRENCY):
                            bench.spy(world.pid, f"world-{ops[0]}-{c}")
                        p, _ = bench.measure(label, world.address, "world", world_specs(agents, c, ops),
                                             world.pid)
                    raw12.setdefault((label, c), []).append(p)
                print(f"  round {r + 1}, {c:>2} in flight: "
                      + ", ".join(f"{label} {raw12[(label, c)][-1].rate:,.0f}/s" for label, _ in workloads),
                      flush=True)
        ledger_note = world.ledger_ok()
        for s in (echo, echo_hop, world):
            s.stop()
            servers.remove(s)
        pts = {k: best(v) for k, v in raw12.items()}

        # ---------------------------------------------------------- 3. interceptor cost
        variants = [
            ("no interceptor (auth only)", dict(noguard=True, log_level=args.log_level)),
            (f"RpcGuard, default limits, log {args.log_level}", dict(log_level=args.log_level)),
        ]
        if args.log_level != "warning":
            variants.append(("RpcGuard, default limits, log warning", dict(log_level="warning")))
        vprocs = []
        for i, (_label, kw) in enumerate(variants):
            w = WorldProc(f"world-v{i}", workdir, DEFAULT_CONFIG, **kw)
            servers.append(w)
            vprocs.append((w, w.create_agents("guard_agent_", args.guard_agents)))
        rounds3: list[list[Point]] = [[] for _ in variants]
        for r in range(args.rounds):
            order = list(range(len(variants)))
            if r % 2:
                order.reverse()  # ABC CBA ...: drift in background load hits all alike
            for i in order:
                w, ags = vprocs[i]
                p, _ = bench.measure(variants[i][0], w.address, "world",
                                     world_specs(ags, args.guard_inflight, ["get_state"]), w.pid)
                rounds3[i].append(p)
            print(f"  round {r + 1}, interceptor, saturated: "
                  + ", ".join(f"{rounds3[i][-1].rate:,.0f}/s" for i in range(len(variants))), flush=True)
        # The same offered load for every variant (open loop, below what any of them
        # reached): the difference in server CPU per call is then the interceptor's cost,
        # free of the batching effects of different throughputs and little disturbed by
        # other work on the machine.
        fixed_rate = args.guard_rate or max(100.0, round(0.5 * min(best(v).rate for v in rounds3), -1))
        fixed3: list[list[Point]] = [[] for _ in variants]
        for r in range(args.rounds):
            order = list(range(len(variants)))
            if r % 2 == 0:
                order.reverse()
            for i in order:
                w, ags = vprocs[i]
                p, _ = bench.measure(variants[i][0], w.address, "world",
                                     world_specs(ags, args.guard_inflight, ["get_state"]), w.pid, rate=fixed_rate)
                fixed3[i].append(p)
            print(f"  round {r + 1}, interceptor, {fixed_rate:,.0f} calls/s offered: server us/call "
                  + ", ".join(f"{fixed3[i][-1].us_per_call:,.0f}" for i in range(len(variants))), flush=True)
        for w, _ in vprocs:
            w.stop()
            servers.remove(w)

        # ---------------------------------------------------------- 4. noisy neighbour
        nn = WorldProc("world-default", workdir, DEFAULT_CONFIG, log_level=args.log_level)
        servers.append(nn)
        good = nn.create_agents("neighbour_", args.neighbours, **UNTHROTTLED_AGENT)
        flooder = nn.create_agents("flooder_", 1)[0]  # the configured defaults for everything
        good_specs = world_specs(good, args.neighbours * args.neighbour_inflight, ["get_state", "transfer"])
        flood_specs = [{"ops": ["get_state", "transfer"] if i % 2 == 0 else ["transfer", "get_state"],
                        "token": flooder[1], "to": good[0][0]} for i in range(args.flood_inflight)]
        alone_pts: list[Point] = []
        flood_pts: list[tuple[Point, dict]] = []
        for r in range(args.rounds):
            p, _ = bench.measure("well-behaved, alone", nn.address, "world", good_specs, nn.pid)
            alone_pts.append(p)
            if r == 0:
                bench.spy(nn.pid, "world-flood", lead=0.5)
            flood_job = Job(nn.address, "world", flood_specs, args.channels, 0, 0, 0, flood=True,
                            drain_timeout=0.1)
            p, fl = bench.measure("well-behaved, with flooder", nn.address, "world", good_specs, nn.pid,
                                  extra={args.procs: flood_job}, extra_lead=0.5)
            flood_pts.append((p, fl[0]))
            print(f"  round {r + 1}, neighbours: alone {alone_pts[-1].rate:,.0f}/s, "
                  f"under flood {p.rate:,.0f}/s", flush=True)
        nn_ledger = nn.ledger_ok()
        nn.stop()
        servers.remove(nn)
    finally:
        for s in servers:
            s.stop()
        bench.close()

    # ================================================================== report
    elapsed = time.monotonic() - t_start
    bar = "=" * 100
    print("\n" + bar)
    print("1-2. Throughput and latency: best of the rounds (client-measured latency; srv / gen CPU = "
          "cores used by the server process / by the load processes; srv us/call = server CPU per call)")
    print(bar)
    headers = ["workload", "in flight", "calls/s", "p50 ms", "p99 ms", "srv CPU", "srv us/call", "gen CPU",
               "x ceiling", "goal", "errors"]
    rows = [point_row(pts[("echo (ceiling)", c)], None, None) for c in CONCURRENCY]
    rows += [point_row(pts[(HOP_LABEL, c)], pts[("echo (ceiling)", c)], None) for c in CONCURRENCY]
    for label, goal in (("GetState", 0.7), ("transfer (durable)", 0.5)):
        rows += [point_row(pts[(label, c)], pts[("echo (ceiling)", c)], goal) for c in CONCURRENCY]
    print_table(headers, rows, "lrrrrrrrrll")
    print("(echo via thread hop: the echo server answering every call from another thread, as the "
          "writer answers a transfer; its x ceiling is what the hop alone costs)")
    print(f"(world server via `python -m server.cli serve`, log level {args.log_level}, {args.agents} agents, "
          f"rate limits and compute raised; a transfer is InvokeArtifact genesis_ledger.transfer with a "
          f"request id, each committed with synchronous=FULL before the reply; {ledger_note})")

    print("\n" + bar)
    print(f"3. Interceptor cost: GetState, {args.guard_inflight} in flight over {args.guard_agents} agents, "
          f"default rate limits")
    print(bar)
    base = best(rounds3[0]).rate
    rows = []
    costs = []
    for i, (label, _kw) in enumerate(variants):
        b = best(rounds3[i])
        cost = 1 - b.rate / base if base else float("nan")
        costs.append(cost)
        errs: dict = {}
        for p in rounds3[i]:
            for k, v in p.errors.items():
                errs[k] = errs.get(k, 0) + v
        rows.append([label, *(f"{p.rate:,.0f}" for p in rounds3[i]), f"{b.rate:,.0f}", f"{b.pct(0.5):.2f}",
                     f"{b.srv_cpu:.2f}", f"{b.us_per_call:,.0f}", "-" if i == 0 else f"{cost * 100:+.1f}%",
                     fmt_errors(errs)])
    print("a) saturated (closed loop): calls/s per round, the best round's figures")
    print_table(["server", *(f"round {r + 1}" for r in range(args.rounds)), "best", "p50 ms", "srv CPU",
                 "srv us/call", "cost", "errors"], rows, "l" + "r" * (args.rounds + 5) + "l")
    base_cpu = statistics.median(p.us_per_call for p in fixed3[0])
    rows = []
    cpu_costs = []
    for i, (label, _kw) in enumerate(variants):
        cpu = statistics.median(p.us_per_call for p in fixed3[i])
        cpu_cost = cpu / base_cpu - 1 if base_cpu else float("nan")
        cpu_costs.append(cpu_cost)
        errs = {}
        for p in fixed3[i]:
            for k, v in p.errors.items():
                errs[k] = errs.get(k, 0) + v
        rows.append([label, *(f"{p.us_per_call:,.0f}" for p in fixed3[i]),
                     f"{statistics.median(p.rate for p in fixed3[i]):,.0f}",
                     f"{statistics.median(p.srv_cpu for p in fixed3[i]):.2f}", f"{cpu:,.0f}",
                     "-" if i == 0 else f"{cpu_cost * 100:+.1f}%", fmt_errors(errs)])
    print(f"b) the same offered load for all, {fixed_rate:,.0f} calls/s (open loop): server CPU per call, us")
    print_table(["server", *(f"round {r + 1}" for r in range(args.rounds)), "calls/s", "srv CPU",
                 "median us/call", "cost", "errors"], rows, "l" + "r" * (args.rounds + 4) + "l")
    print("(cost in a) = 1 - best guard round / best no-interceptor round; in b) = extra server CPU per call. "
          "b) is the measure of the goal: at equal load it is little disturbed by other work on the machine. "
          "The no-interceptor server is the same WorldServer with interceptors=[] and inline "
          "authentication: bench/world_noguard.py)")

    print("\n" + bar)
    print(f"4. Noisy neighbour: {args.neighbours} well-behaved agents x {args.neighbour_inflight} in flight "
          f"(GetState and transfer alternately; their own limits raised) vs one flooder with the "
          f"configured defaults, {args.flood_inflight} in flight from its own process, ignoring RetryInfo")
    print(bar)
    alone = best(alone_pts)
    flooded, f = max(flood_pts, key=lambda pf: pf[0].rate)
    rows = []
    for r in range(args.rounds):
        for p in (alone_pts[r], flood_pts[r][0]):
            rows.append([f"round {r + 1}: {p.label}", f"{p.rate:,.0f}", f"{p.pct(0.5):.2f}", f"{p.pct(0.99):.2f}",
                         f"{p.srv_cpu:.2f}", f"{p.gen_cpu:.2f}", fmt_errors(p.errors)])
    print_table(["well-behaved agents", "calls/s", "p50 ms", "p99 ms", "srv CPU", "gen CPU", "errors"],
                rows, "lrrrrrl")
    fw = f["window"]
    print(f"flooder (best flood round): {f['ok'] / fw:,.0f} calls/s answered OK, "
          f"{sum(f['errors'].values()) / fw:,.0f}/s refused "
          f"({', '.join(f'{k} {v / fw:,.0f}/s' for k, v in sorted(f['errors'].items()))}); "
          f"flooder process CPU {f['cpu'] / fw:.2f} cores")
    answered = flooded.rate + (f["ok"] + sum(f["errors"].values())) / fw
    print(f"server answered {answered:,.0f} calls/s in total during that flood round (well-behaved + flooder, "
          f"OK or refused) vs {alone.rate:,.0f} calls/s alone")
    print(f"({nn_ledger})")
    nn_ratio = flooded.rate / alone.rate if alone.rate else float("nan")
    print(f"best under flood / best alone = {flooded.rate:,.0f} / {alone.rate:,.0f} = {nn_ratio:.2f}")

    print("\n" + bar)
    print("Goals")
    print(bar)
    gs = {c: pts[("GetState", c)].rate / pts[("echo (ceiling)", c)].rate for c in CONCURRENCY}
    tr = {c: pts[("transfer (durable)", c)].rate / pts[("echo (ceiling)", c)].rate for c in CONCURRENCY}

    def per_c(d: dict, goal: float) -> str:
        return ", ".join(f"{c}: {d[c]:.2f}{'' if d[c] >= goal else ' (miss)'}" for c in CONCURRENCY)

    goals = [
        ("GetState >= 0.7x ceiling (in flight 1/16/64)", per_c(gs, 0.7), all(v >= 0.7 for v in gs.values())),
        ("durable transfer >= 0.5x ceiling", per_c(tr, 0.5), all(v >= 0.5 for v in tr.values())),
        ("rate-limit interceptor costs <= 5% (CPU/call)",
         f"{cpu_costs[1] * 100:+.1f}% (log {args.log_level})"
         + (f", {cpu_costs[2] * 100:+.1f}% (log warning)" if len(cpu_costs) > 2 else "")
         + f"; saturated calls/s {costs[1] * 100:+.1f}%", cpu_costs[1] <= 0.05),
        ("well-behaved agents >= 0.8x under a flood", f"{nn_ratio:.2f}", nn_ratio >= 0.8),
    ]
    print_table(["goal", "measured", "verdict"], [[g, m, verdict(ok)] for g, m, ok in goals], "lll")

    for name, out, _proc in bench.profiles:
        summarize_profile(name, out)
    print(f"\ntotal run time {elapsed:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
