"""Prometheus metrics of one world server (`ecology serve --metrics HOST:PORT`, or
`[server] metrics_listen`), served as text at `/metrics` by prometheus_client.

Names follow the gRPC ecosystem's conventions (go-grpc-prometheus / py-grpc-prometheus)
for the per-RPC series, and `ecology_*` for the rest:

  grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}   calls answered
  grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}          latency histogram
  ecology_guard_rejections_total{reason}       calls the guard refused (rate limits, auth...)
  ecology_writer_batch_size / ecology_writer_commit_seconds    group commit: ops per batch, latency
  ecology_sandbox_workers{state}               warm | idle (dedicated to an artifact version)
  ecology_sandbox_workers_started_total, ecology_sandbox_workers_killed_total{why}
  ecology_llm_tokens_total{kind}, ecology_llm_cost_micro_usd_total    from llm.completed events
  ecology_events_total{type}                   committed events, by type
  ecology_scrip_supply                         minted - burned (the ledger's invariant total)
  ecology_agents, ecology_agents_active        agents in the world; agents that called in the last 60 s

Everything is read from the server's own state (its committed events, the guard, the pool):
nothing here touches another server's database. The registry is per server, never the
process-global one, so two servers in one process do not mix.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Latency buckets for a server whose calls take 0.3 ms .. a few seconds.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ACTIVE_SECONDS = 60.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.handling = Histogram("grpc_server_handling_seconds",
                                  "Response latency of RPCs handled by the server, seconds.",
                                  ["grpc_type", "grpc_service", "grpc_method"], buckets=RPC_BUCKETS, registry=r)
        self.rejections = Counter("ecology_guard_rejections", "Calls refused by the RPC guard, by reason.",
                                  ["reason"], registry=r)
        self.batch_size = Histogram("ecology_writer_batch_size", "Operations committed per transaction.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.commit_seconds = Histogram("ecology_writer_commit_seconds",
                                        "Time from BEGIN to COMMIT of one group-commit batch, seconds.",
                                        buckets=RPC_BUCKETS, registry=r)
        self.events = Counter("ecology_events", "Committed events, by type.", ["type"], registry=r)
        self.llm_tokens = Counter("ecology_llm_tokens", "LLM tokens used through genesis_llm.", ["kind"], registry=r)
        self.llm_cost = Counter("ecology_llm_cost_micro_usd", "LLM cost charged through genesis_llm, micro-dollars.",
                                registry=r)
        # per (method, code): the label children, looked up once
        self._rpc: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._event_children: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}
        self._state = _StateCollector(self._sources)
        self.registry.register(self._state)
        self._http = None

    # -- feeding ---------------------------------------------------------------------

    def observe_rpc(self, method: str, code: str, seconds: float, streaming: bool) -> None:
        """One answered call; `method` is the full gRPC path /pkg.Service/Method."""
        key = (method, code, "s" if streaming else "u")
        children = self._rpc.get(key)
        if children is None:
            service, _, name = method.lstrip("/").rpartition("/")
            kind = "server_stream" if streaming else "unary"
            children = (self.handled.labels(kind, service, name, code), self.handling.labels(kind, service, name))
            if len(self._rpc) < 10_000:  # method names come from registered handlers only
                self._rpc[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_rejection(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def observe_events(self, new: list[dict]) -> None:
        children = self._event_children
        for ev in new:
            child = children.get(ev["type"])
            if child is None:
                child = self.events.labels(ev["type"])
                if len(children) < 1000:  # event types are the kernel's own, a few dozen
                    children[ev["type"]] = child
            child.inc()
            if ev["type"] == "llm.completed":
                data = ev.get("data") or {}
                self.llm_tokens.labels("prompt").inc(int(data.get("prompt_tokens") or 0))
                self.llm_tokens.labels("completion").inc(int(data.get("completion_tokens") or 0))
                self.llm_cost.inc(int(data.get("cost_micro_usd") or 0))

    def watch(self, *, db_path=None, guard=None, sandbox=None) -> None:
        """State read at scrape time: the ledger totals and agent count (a read-only
        connection of the scrape thread's own to `db_path`), the guard's principals, the
        sandbox pool."""
        self._sources.update({k: v for k, v in (("db_path", db_path), ("guard", guard), ("sandbox", sandbox))
                              if v is not None})

    # -- serving ---------------------------------------------------------------------

    def serve(self, address: str) -> str:
        """Serve /metrics on host:port (port 0 picks one); returns the bound address."""
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"metrics address {address!r}: expected host:port")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
        self._http = server
        return f"{host}:{server.server_port}"

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self._state.close()  # after the HTTP server: no scrape is running any more


class _StateCollector:
    """Gauges computed when Prometheus scrapes."""

    def __init__(self, sources: dict) -> None:
        self.sources = sources
        self._reader = None

    def _read(self):
        if self._reader is None and self.sources.get("db_path") is not None:
            from server.storage import db

            self._reader = db.open_store(self.sources["db_path"], readonly=True)
        return self._reader

    def close(self) -> None:
        """Close the scraper's read connection (a SQLite reader left open keeps the -wal file)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def describe(self):
        return []

    def collect(self):
        reader = self._read()
        if reader is not None:
            minted, burned = reader.ledger_issued()
            yield GaugeMetricFamily("ecology_scrip_supply", "Scrip in existence: minted - burned.",
                                    value=minted - burned)
            agents = reader.artifact_counts()[2]
            yield GaugeMetricFamily("ecology_agents", "Agents in the world (not deleted).", value=agents)
        guard = self.sources.get("guard")
        if guard is not None:
            yield GaugeMetricFamily("ecology_agents_active",
                                    f"Agents that made a call in the last {ACTIVE_SECONDS:g} s or hold one open.",
                                    value=guard.active_principals(ACTIVE_SECONDS))
        sandbox = self.sources.get("sandbox")
        if sandbox is not None:
            # isolation "none" has no pool: no worker ever starts
            st = sandbox.pool.stats() if sandbox.pool is not None else {
                "warm": 0, "idle": 0, "started": 0, "killed_spinning": 0}
            workers = GaugeMetricFamily("ecology_sandbox_workers", "Sandbox worker processes, by state.",
                                        labels=["state"])
            workers.add_metric(["warm"], st["warm"])
            workers.add_metric(["idle"], st["idle"])
            yield workers
            yield CounterMetricFamily("ecology_sandbox_workers_started", "Sandbox workers started.",
                                      value=st["started"])
            killed = CounterMetricFamily("ecology_sandbox_workers_killed", "Sandbox workers killed, by why.",
                                         labels=["why"])
            killed.add_metric(["spinning_while_idle"], st["killed_spinning"])
            yield killed
