"""What observability costs the world server: CPU per call with the access log, /metrics
scraped every second and a dashboard open, against a server without them, in one run.

    .venv/bin/python bench/bench_observability.py [--agents 100] [--rounds 5] [--duration 6]
        [--steps-per-second 2] [--clients 4] [--profile DIR]

Two `ecology serve` processes on the same embedded defaults (their stderr, the JSON log,
goes to a file as with `ecology run`):

* baseline: `--log-level warning` (no per-call line), no `--metrics`, nobody watching;
* observed: `--log-level info` (the default: one access-log line per call), `--metrics`
  with a scraper GETting /metrics every second, and an `ecology dashboard --server ...`
  process with a real SSE client reading its /stream (the dashboard itself holds an
  Admin.WatchEventBatches stream, at most 4 messages/s, polls GetStats every second and
  ListAgents every 5 s, as with the World page open).

Both get the same load: `--agents` agent principals (one token and one channel each),
spread over `--clients` client processes, each agent paced at `--steps-per-second` steps,
a step being what the agent runtime does per action: GetState (observe), then a transfer
or a write (alternately; the act), then RecordDecision (its decision trace). Decision
traces are part of the load in both servers: an agent records them whether or not anyone
looks, so they are not an overhead one can switch off; `--no-traces` measures the load
without them, to show what they cost on their own.

Per round the baseline and the observed server are loaded for `--duration` seconds AT THE SAME
TIME (so both see the same background noise of a shared machine; with `--split` the baseline
is paired with each variant in turn); each one's CPU (utime + stime of the server process, plus children it waited
for, from /proc/PID/stat) over the window is divided by the calls the agents completed in
it. The dashboard's own calls are not counted as calls: everything they cost the server is
overhead. Prints per-round figures, then best (lowest) and median CPU per call, and the
ratio observed / baseline both as best against best and as the median of the per-round
(paired) ratios, with their spread. Asserts nothing. The machine may be shared: the spread across
rounds says how noisy the run was.

`--pin`: with `taskset`, both servers run on the first CPU and everything else of the
benchmark (load clients, the dashboard process, this process with the scraper and the SSE
reader) on the last, so the observers cannot take the servers' CPU: the observed server's
extra CPU per call is then its own work, not contention (other programs on the machine
are not pinned).

`--profile DIR`: run the observed server under cProfile (its pstats file is written when the
server stops) and print its top functions; the CPU figures of a profiled run are not
comparable with an unprofiled one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- the load (client processes)


async def client_main(sock: str, tokens: list[tuple[str, str]], peers: list[str], rate: float, traces: bool) -> None:
    """Agents paced at `rate` steps/s each; waits for 'go <seconds>' lines on stdin, then
    prints {"calls", "errors"} for that window."""
    import grpc
    from google.protobuf import struct_pb2

    from ecology.v1 import world_pb2, world_pb2_grpc

    agents = []
    for agent_id, token in tokens:
        channel = grpc.aio.insecure_channel(sock)
        stub = world_pb2_grpc.WorldStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        await stub.GetState(world_pb2.GetStateRequest(), metadata=md)  # connect before timing
        agents.append((agent_id, stub, md, channel))

    def struct(d: dict) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(d)
        return s

    async def agent(i: int, agent_id: str, stub, md, until: float, counts: dict) -> None:
        period = 1.0 / rate
        nxt = time.monotonic() + (i % 97) / 97 * period  # spread the agents over a period
        step = 0
        while True:
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if time.monotonic() >= until:
                return
            nxt += period
            step += 1
            try:
                state = await stub.GetState(world_pb2.GetStateRequest(), metadata=md)
                counts["calls"] += 1
                if step % 2:
                    to = peers[(hash(agent_id) + step) % len(peers)]
                    if to == agent_id:
                        to = peers[(hash(agent_id) + step + 1) % len(peers)]
                    action = {"action": "transfer", "to": to, "amount": 1}
                    await stub.InvokeArtifact(world_pb2.InvokeArtifactRequest(
                        artifact_id="genesis_ledger", method="transfer", args=struct({"to": to, "amount": 1}),
                        request_id=uuid.uuid4().hex), metadata=md)
                else:
                    action = {"action": "write", "artifact_id": f"{agent_id}.notes"}
                    await stub.WriteArtifact(world_pb2.WriteArtifactRequest(
                        artifact_id=f"{agent_id}.notes", content=f"step {step} of {agent_id}: " + "n" * 200,
                        request_id=uuid.uuid4().hex), metadata=md)
                counts["calls"] += 1
                if traces:
                    await stub.RecordDecision(world_pb2.RecordDecisionRequest(
                        step=step, observed=struct({"scrip": state.scrip, "last_event_seq": step}),
                        action=struct(action), outcome=struct({"ok": True})), metadata=md)
                    counts["calls"] += 1
            except grpc.aio.AioRpcError as e:
                counts["errors"][e.code().name] = counts["errors"].get(e.code().name, 0) + 1

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] != "go":
            break
        counts = {"calls": 0, "errors": {}}
        until = time.monotonic() + float(line[1])
        await asyncio.gather(*(agent(i, a, s, m, until, counts) for i, (a, s, m, _) in enumerate(agents)))
        print(json.dumps(counts), flush=True)
    for *_, channel in agents:
        await channel.close()


# ----------------------------------------------------------------- the servers


def pin(enabled: bool, which: int) -> list[str]:
    """`taskset -c N` argv prefix with --pin: the servers on the first CPU (which=0), the
    load clients, the dashboard and this process (scraper, SSE reader) on the second."""
    if not enabled:
        return []
    cpus = sorted(os.sched_getaffinity(0) if not PINNED else PINNED)
    return ["taskset", "-c", str(cpus[0] if which == 0 else cpus[-1])]


PINNED: set[int] = set()


VARIANTS = {  # name: (log level info, --metrics + scraper, dashboard + SSE reader)
    "baseline": (False, False, False),
    "observed": (True, True, True),
    "log": (True, False, False),
    "metrics": (False, True, False),
    "dashboard": (False, False, True),
    "logmetrics": (True, True, False),
}


class Served:
    def __init__(self, work: Path, name: str, args) -> None:
        log_info, metrics, dashboard = VARIANTS[name]
        observed = name == "observed"
        self.name, self.work, self.args = name, work, args
        self.data = work / name
        self.data.mkdir(parents=True)
        self.sock = f"unix:{work / (name + '.sock')}"
        self.admin_token = "adm_" + uuid.uuid4().hex
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": self.admin_token}
        argv = pin(args.pin, 0) + [sys.executable]
        if observed and args.profile:
            argv += ["-m", "cProfile", "-o", str(Path(args.profile) / "observed.pstats")]
        argv += ["-m", "server.cli", "serve", "--data-dir", str(self.data), "--listen", self.sock,
                 "--log-level", "info" if log_info else "warning"]
        self.metrics_port = None
        if metrics:
            self.metrics_port = free_port()
            argv += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.log = open(work / f"{name}.log", "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        ready = self.data / "server.json"
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name}: the server did not start; see {work / (name + '.log')}")
            time.sleep(0.05)
        from agent_runtime import AdminClient

        with AdminClient(self.sock, self.admin_token) as admin:
            self.tokens = [(f"agent{i:03d}", admin.create_agent(
                f"agent{i:03d}", endowment=1_000_000, compute_rate=1e6, compute_capacity=1e6).token)
                for i in range(args.agents)]
        self.dashboard = None
        self.threads: list[threading.Thread] = []
        self.stop_flag = threading.Event()
        self.scrapes = 0
        self.sse_bytes = 0
        self._watch(env, dashboard)

    def _watch(self, env, dashboard: bool) -> None:
        def scrape() -> None:
            while not self.stop_flag.wait(1.0):
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read()
                self.scrapes += 1

        if self.metrics_port:
            self.threads.append(threading.Thread(target=scrape, daemon=True))
        if not dashboard:
            for t in self.threads:
                t.start()
            return
        port = free_port()
        (self.work / f"{self.name}.admin").write_text(self.admin_token)
        self.dashboard = subprocess.Popen(
            pin(self.args.pin, 1) + [sys.executable, "-m", "server.cli", "dashboard", "--server", self.sock, "--admin-token-file",
             str(self.work / f"{self.name}.admin"), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(self.work / f"{self.name}-dashboard.log", "wb"))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                if self.dashboard.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not start; see dashboard.log")
                time.sleep(0.2)

        def sse() -> None:  # a browser's EventSource on the World page
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream", timeout=60) as r:
                while not self.stop_flag.is_set():
                    chunk = r.read1(65536)
                    if not chunk:
                        return
                    self.sse_bytes += len(chunk)

        self.threads.append(threading.Thread(target=sse, daemon=True))
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_flag.set()
        if self.dashboard is not None:
            self.dashboard.terminate()
            self.dashboard.wait(timeout=30)
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


class Load:
    """The client processes of one server."""

    def __init__(self, served: Served, args) -> None:
        peers = [a for a, _ in served.tokens]
        per = -(-len(served.tokens) // args.clients)
        self.procs = []
        for k in range(args.clients):
            mine = served.tokens[k * per:(k + 1) * per]
            if not mine:
                continue
            p = subprocess.Popen(pin(args.pin, 1) + [sys.executable, __file__, "--client", served.sock, json.dumps(mine),
                                  json.dumps(peers), str(args.steps_per_second), str(int(args.traces))],
                                 cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("a load client failed to start")

    def start(self, seconds: float) -> None:
        for p in self.procs:
            p.stdin.write(f"go {seconds}\n")
            p.stdin.flush()

    def finish(self) -> dict:
        total = {"calls": 0, "errors": {}}
        for p in self.procs:
            r = json.loads(p.stdout.readline())
            total["calls"] += r["calls"]
            for k, v in r["errors"].items():
                total["errors"][k] = total["errors"].get(k, 0) + v
        return total

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
            p.wait(timeout=30)


def print_profile(path: Path, top: int = 25) -> None:
    import pstats

    print(f"\nprofile of the observed server ({path}), top {top} by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of load per server per round")
    ap.add_argument("--steps-per-second", type=float, default=2.0, help="per agent (3 calls per step)")
    ap.add_argument("--clients", type=int, default=4, help="load client processes per server")
    ap.add_argument("--no-traces", dest="traces", action="store_false", help="steps without RecordDecision")
    ap.add_argument("--split", action="store_true",
                    help="also measure log only, metrics only and dashboard only (five servers)")
    ap.add_argument("--variants", metavar="A,B",
                    help="pair the baseline with these instead: observed, log, metrics, dashboard, "
                         "logmetrics (log + metrics, no dashboard)")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the observed server into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs, databases)")
    ap.add_argument("--pin", action="store_true",
                    help="taskset: both servers on one CPU, the clients, dashboard, scraper and SSE reader on another")
    args = ap.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        PINNED.update(cpus)
        os.sched_setaffinity(0, {cpus[-1]})  # this process: the scraper and the SSE reader
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-observability-"))
    names = ["baseline", "observed"] + (["log", "metrics", "dashboard"] if args.split else [])
    if args.variants:
        names = ["baseline"] + [v for v in args.variants.split(",") if v != "baseline"]
        if any(v not in VARIANTS for v in names):
            raise SystemExit(f"--variants: names among {', '.join(v for v in VARIANTS if v != 'baseline')}")
    servers = [Served(work, name, args) for name in names]
    loads = [Load(s, args) for s in servers]
    per_call: dict[str, list[float]] = {s.name: [] for s in servers}
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    errors: dict[str, dict] = {s.name: {} for s in servers}
    ratios: dict[str, list[float]] = {name: [] for name in names[1:]}
    dash_cpu = 0.0
    try:
        time.sleep(2)  # the dashboard's first polls, the servers settle
        by_name = dict(zip(names, zip(servers, loads)))
        for r in range(args.rounds):
            for name in names[1:]:
                pair = [by_name["baseline"], by_name[name]]  # loaded together: the same background noise
                c0 = [cpu_seconds(s.proc.pid) for s, _ in pair]
                d0 = [cpu_seconds(s.dashboard.pid) if s.dashboard else 0.0 for s, _ in pair]
                t0 = time.monotonic()
                for _, load in pair:
                    load.start(args.duration)
                got = [load.finish() for _, load in pair]
                wall = time.monotonic() - t0
                us = []
                for (s, _), g, c, d in zip(pair, got, c0, d0):
                    cpu = cpu_seconds(s.proc.pid) - c
                    if s.dashboard and s.name == "observed":
                        dash_cpu += cpu_seconds(s.dashboard.pid) - d
                    us.append(cpu / max(g["calls"], 1) * 1e6)
                    per_call[s.name].append(us[-1])
                    rates[s.name].append(g["calls"] / wall)
                    for k, v in g["errors"].items():
                        errors[s.name][k] = errors[s.name].get(k, 0) + v
                ratios[name].append(us[1] / us[0])
                print(f"round {r + 1} {name:<9} {got[1]['calls']:6d} calls {us[1]:6.0f} us/call | baseline "
                      f"{got[0]['calls']:6d} calls {us[0]:6.0f} us/call | ratio {us[1] / us[0]:.3f}"
                      f"  errors {got[0]['errors'] or '-'} {got[1]['errors'] or '-'}", flush=True)
    finally:
        for load in loads:
            load.close()
        observed = servers[1]
        for s in servers:
            s.stop()
    print(f"\n{args.agents} agents at {args.steps_per_second:g} steps/s each ({3 if args.traces else 2} calls per "
          f"step{', RecordDecision included' if args.traces else ', no traces'}), {args.clients} client processes "
          f"per server, {args.rounds} rounds of {args.duration:g} s; observed: log info + /metrics scraped "
          f"{observed.scrapes} times + dashboard with an SSE reader ({observed.sse_bytes} bytes read), "
          f"dashboard process CPU {dash_cpu / max(args.rounds, 1):.2f} s per round (not counted)")
    print(f"{'server':<10} {'calls/s':>8} {'best us/call':>13} {'median':>8} {'spread (min..max)':>20}")
    best = {}
    for name in per_call:
        xs = per_call[name]
        best[name] = min(xs)
        print(f"{name:<10} {statistics.median(rates[name]):8.0f} {min(xs):13.1f} {statistics.median(xs):8.1f} "
              f"{min(xs):9.1f}..{max(xs):<9.1f}  errors {errors[name] or '-'}")
    b = best["baseline"]
    for name in names[1:]:
        xs = sorted(ratios[name])
        print(f"{name} / baseline CPU per call: best of each {best[name] / b:.3f} ({100 * (best[name] / b - 1):+.1f}%); "
              f"paired rounds median {statistics.median(xs):.3f} ({100 * (statistics.median(xs) - 1):+.1f}%), "
              f"spread {xs[0]:.3f}..{xs[-1]:.3f}" + ("  (goal <= 1.05)" if name == "observed" else ""))
    if args.profile:
        print_profile(Path(args.profile) / "observed.pstats")
    if args.keep:
        print(f"working directory kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _, _, sock, tokens, peers, rate, traces = sys.argv
        asyncio.run(client_main(sock, [tuple(t) for t in json.loads(tokens)], json.loads(peers), float(rate),
                                traces == "1"))
        sys.exit(0)
    sys.exit(main())
