"""Assembly of the world server: storage, kernel, services, interceptor, listeners.

Lifecycle: `await server.start()` opens (and migrates) the data directory, creates the
genesis artifacts, starts the writer and the gRPC server; `await server.stop()` stops
accepting, drains in-flight calls (grace period), finishes queued writes and closes.
A data directory is used by one server at a time (an exclusive lock file).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import sys
import time
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2

from ecology.v1 import admin_pb2, admin_pb2_grpc, world_pb2, world_pb2_grpc
from server.config import Config, ConfigError
from server.errors import KernelError, Reason
from server.kernel.kernel import Kernel
from server.llm.backend import make_backend
from server.llm.gateway import LlmGateway
from server.oracle.runner import MintRunner
from server.oracle.scoring import LlmScorer
from server.rpc.admin import AdminService
from server.rpc.auth import Credentials
from server.rpc.guard import GuardLimits, RpcGuard
from server.rpc.pause import WorldGate
from server.rpc.reflection import add_health, add_reflection
from server.rpc.event_hub import EventHub
from server.rpc.outside import Outside
from server.rpc.world import WorldService
from server.sandbox import Sandbox, SandboxSettings
from server.sandbox.notice import isolation_note, isolation_warning
from server.storage import db, oplog
from server.standby import WATCHDOG_SECONDS, Lease
from server.storage.executor import Executor
from server.tls import TlsFiles, is_loopback

log = structlog.get_logger("server")

READY_FILE = "server.json"
HEALTH_NAMES = ("", "ecology.v1.World", "ecology.v1.Admin")
PURGE_INTERVAL_SECONDS = 60.0
# The interpreter's GIL switch interval while a server runs (CPython's default: 5 ms). The
# event loop, gRPC's poller thread and the writer thread take turns on one GIL; a thread
# that wants it waits up to this long for a busy holder to let go, and the writer asks for
# it again after each SQLite statement. At 0.5 ms durable transfers at 64 in flight ran
# ~10% faster on a 2-core machine (bench/bench_server.py, interleaved runs: medians
# 907-1,002/s against 800-814/s), with no change at 1 and 16 in flight or for GetState.
GIL_SWITCH_SECONDS = 0.0005


def resolve_admin_token(config: Config, data_dir: Path) -> str:
    """The admin credential: the configured environment variable, else the configured
    file, else <data-dir>/admin.token (created with a fresh token on first start)."""
    env_name = config.server["admin_token_env"]
    if env_name and os.environ.get(env_name):
        return os.environ[env_name].strip()
    configured = config.server["admin_token_file"]
    path = Path(configured) if configured else data_dir / "admin.token"
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise ConfigError(f"config key server.admin_token_file: {path} is empty")
        return token
    if configured:
        raise ConfigError(f"config key server.admin_token_file: {path} does not exist")
    token = "adm_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class WorldServer:
    def __init__(self, config: Config, data_dir: str | Path, listen: list[str] | None = None,
                 *, clock=time.time) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.listen = listen or list(config.server["listen"])
        self.clock = clock
        self.addresses: list[str] = []
        self.stopping = False
        self.agent_backend = ""  # set by `ecology run` once its launcher picked a backend
        self.started = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._loop = None

    async def start(self) -> None:
        """Listen, then become active at once (SQLite, or the writer lock of a PostgreSQL
        database is free), or stand by until the lock is free (server/standby.py). Returns
        once listening; `self.active` says which (`self.activated` is set on takeover)."""
        self._loop = asyncio.get_running_loop()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.data_dir / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"data directory {self.data_dir} is in use by another server") from None
        admin_token = resolve_admin_token(self.config, self.data_dir)
        self.llm_backend = make_backend(self.config.llm)  # a missing API key stops the start here

        self.db_path = path = self.config.storage["url"] or self.data_dir / db.DB_FILE  # a PostgreSQL URL or the SQLite file
        self.writer_conn = db.open_store(path)
        self.active = False
        self.activated = asyncio.Event()
        self.fenced = asyncio.Event()  # the writer lost its database session: `ecology serve` exits 3
        self.lease: Lease | None = None
        sb = self.config["sandbox"]
        # [sandbox] also holds kernel policy (max_depth, default_max_spend): pass on only
        # what the workers need. isolation = "bwrap" that cannot be had raises here.
        try:
            self.sandbox = Sandbox(SandboxSettings(**{k: sb[k] for k in SandboxSettings.__dataclass_fields__}))
        except RuntimeError:
            self.writer_conn.close()
            self._lock.close()
            raise
        warning = isolation_warning(self.sandbox.isolation)
        if warning is not None:  # "none" or "process": said at every start, in the log and on stderr
            log.warning("sandbox_isolation", sandbox_isolation=self.sandbox.isolation, sandbox_note=warning)
            print(f"ecology: {warning}", file=sys.stderr, flush=True)
        self.kernel = Kernel(self.config, clock=self.clock, sandbox=self.sandbox)
        self.executor = Executor(self.writer_conn, max_batch=self.config.server["max_batch"])
        self.executor.on_connection_lost = self._connection_lost_threadsafe
        # Ops that are not recorded commands are marked in the oplog (exact replay stops there).
        self.executor.on_unrecorded = oplog.append_unrecorded
        # User contracts, code checks and user code run here, never on the writer thread.
        self.outside = Outside(self.kernel, self.executor)
        self.credentials = Credentials(admin_token)  # loaded from the database on activation
        self.metrics_listen = self.config.server["metrics_listen"]
        if self.metrics_listen:
            from server.metrics import Metrics

            self.metrics = Metrics()
            self.metrics.watch(db_path=path, sandbox=self.sandbox)
            self.executor.on_batch = self.metrics.observe_batch
        else:
            self.metrics = None

        self.tls = self._tls_files()
        self.insecure_addresses: list[str] = []
        rl = self.config.rate_limits
        self.guard = RpcGuard(
            bind_client_certs=self.tls is not None and self.tls.client_ca is not None,
            authenticate=self.credentials.principal_for,
            is_admin_token=self.credentials.is_admin,
            limits=GuardLimits(
                principal_rate=rl["principal_rate"], principal_burst=rl["principal_burst"],
                connection_rate=rl["connection_rate"], connection_burst=rl["connection_burst"],
                max_in_flight=rl["max_in_flight_per_principal"],
                max_streams=rl["max_streams_per_principal"],
            ),
            per_principal_rate=self._rpc_override,
        )
        self.guard.standby = self._not_yet_active
        max_msg = self.config.server["max_message_bytes"]
        # The guard wraps every handler at registration (`guarded`), not as an interceptor.
        self.grpc_server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_msg),
                ("grpc.max_send_message_length", max_msg),
                ("grpc.so_reuseport", 0),
                # Bounds how many calls one connection can have open (and so how many
                # rejections the guard may have to hold for a flooder).
                ("grpc.max_concurrent_streams", 64),
            ],
        )
        if self.metrics is not None:
            self.guard.metrics = self.metrics
            self.metrics.watch(guard=self.guard)
        self.gate = WorldGate()
        self.guard.gate = self.gate.admit
        guarded = self.guard.guarded(self.grpc_server)
        world_pb2_grpc.add_WorldServicer_to_server(WorldService(self), guarded)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self), guarded)
        # Health (with List) and reflection v1 + v1alpha: server/rpc/reflection.py.
        self.health = add_health(guarded)
        add_reflection(guarded, (
            world_pb2.DESCRIPTOR.services_by_name["World"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health.SERVICE_NAME,
        ))
        for address in self.listen:
            self.addresses.append(self._bind(address))
        for address in self.insecure_addresses:
            warning = (f"WARNING: {address} is a plaintext TCP listener on a non-loopback address (--insecure): "
                       "bearer tokens cross the network in clear; use --tls-cert/--tls-key")
            log.warning("insecure_listener", listen=address, message=warning)
            print(warning, file=sys.stderr, flush=True)
        for name in HEALTH_NAMES:
            await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.start()
        for address in self.addresses:
            if address.startswith("unix:"):
                # Agents run as other users (containers, sandboxes); every call is
                # authenticated by its token, so anyone may connect.
                os.chmod(address[len("unix:"):], 0o666)
        self.metrics_address = ""
        if self.writer_conn.supports_lease:
            self.advertise = self.config.server.get("advertise") or self.addresses[0]
            self.lease = Lease(self.writer_conn, self.advertise)
            if not await asyncio.to_thread(self.lease.try_acquire):
                self.guard.standby = self.lease.refusal
                await asyncio.to_thread(self.lease.active_address)
                self._write_ready_file("standby")
                log.warning("standby", listen=self.addresses, active=self.lease.active_address() or None,
                            data_dir=str(self.data_dir))
                self._tasks.append(asyncio.create_task(self._stand_by()))
                return
        await self._activate()

    def _not_yet_active(self) -> KernelError:
        return KernelError(Reason.STANDBY, "this server is starting and not active yet", metadata={"active": ""})

    async def _stand_by(self) -> None:
        try:
            await self.lease.wait()
            log.warning("takeover", advertise=self.advertise)
            await self._activate()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("standby_failed")
            self.fenced.set()

    async def _activate(self) -> None:
        """What a restart does, then SERVING: the server becomes the world's writer."""
        path = self.db_path

        def recover() -> int:
            version = db.migrate(self.writer_conn)
            # The first op of every start (a recorded command, with the effective configuration):
            # bootstrap the genesis artifacts, and release the LLM reservations of calls a crash
            # interrupted (they hold budget nobody will settle).
            released = self.outside.commands.run_blocking("start", {"config": self.config.data})
            if released:
                log.warning("llm_reservations_released", count=released)
            return version

        self.schema_version = await asyncio.to_thread(recover)
        self.llm = LlmGateway(self.kernel, self.executor, self.llm_backend)
        oracle_cfg = self.config.oracle
        if oracle_cfg["scorer"] == "llm":
            self.kernel.genesis["genesis_oracle"].scorer = LlmScorer(
                self.kernel, self.executor, self.llm_backend, oracle_cfg["llm_model"])
        self.mint = MintRunner(self.kernel, self.executor)
        self.mint.is_paused = lambda: self.gate.paused
        self.reader = db.open_store(path, readonly=True)  # readers never write
        self.reader.follow(self.writer_conn)  # PostgreSQL: caller checks without a round trip
        self.credentials.load(self.reader)
        self.gate.stopped = self.reader.stopped_all()  # durable (Admin.StopAgent)
        self.hub = EventHub(self.reader)  # starts from the last event number in the database
        self.executor.on_commit(self.hub.notify)
        if self.metrics is not None:
            self.hub.listeners.append(self.metrics.observe_events)
        self.executor.start()
        self._tasks.append(asyncio.create_task(self._purge_loop()))
        if oracle_cfg["enabled"]:
            self._tasks.append(asyncio.create_task(self.mint.run_forever()))
        if self.lease is not None:
            self._tasks.append(asyncio.create_task(self._watchdog()))
        if self.metrics_listen:
            self.metrics_address = self.metrics.serve(self.metrics_listen)
        self.active = True
        self.guard.standby = None
        for name in HEALTH_NAMES:
            await self._set_health(name, health_pb2.HealthCheckResponse.SERVING)
        self._write_ready_file("active")
        self.activated.set()
        log.info("server_started", listen=self.addresses, metrics=self.metrics_address or None, data_dir=str(self.data_dir),
                 schema_version=self.schema_version, sandbox_isolation=self.sandbox.isolation,
                 sandbox_note=isolation_note(self.sandbox.isolation), llm_backend=self.llm.backend.name)

    async def _watchdog(self) -> None:
        """Finds a lost writer session while the world is idle (a busy one finds it at its
        next commit): one ping through the writer every WATCHDOG_SECONDS."""
        while not self.executor.fenced:
            await asyncio.sleep(WATCHDOG_SECONDS)
            try:
                await self.executor.run(lambda conn: conn.ping())
            except KernelError:
                pass
            except Exception:
                log.exception("watchdog_ping_failed")

    def _connection_lost_threadsafe(self) -> None:
        """The executor's writer thread saw the database session die (fenced already)."""
        try:
            self._loop.call_soon_threadsafe(self._fence)
        except RuntimeError:
            pass

    def _fence(self) -> None:
        if self.fenced.is_set():
            return
        self.active = False
        self.guard.standby = lambda: KernelError(
            Reason.STANDBY, "this server lost its database session and with it the writer lock; it is exiting",
            metadata={"active": ""})
        for name in HEALTH_NAMES:
            result = self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)
        log.critical("writer_lock_lost", message="the database session holding the writer lock is gone; "
                     "nothing more is applied here; exiting (status 3)")
        self.fenced.set()

    def _rpc_override(self, principal_id: str) -> tuple[float, float] | None:
        override = self.credentials.rpc_limits(principal_id)
        if override is None:
            return None
        rate, burst = override
        rl = self.config.rate_limits
        return (rate or rl["principal_rate"], burst or rl["principal_burst"])

    def _tls_files(self) -> TlsFiles | None:
        srv = self.config.server
        if not srv["tls_cert"] and not srv["tls_key"]:
            if srv["tls_client_ca"]:
                raise ConfigError("config key server.tls_client_ca needs server.tls_cert and server.tls_key")
            return None
        if not (srv["tls_cert"] and srv["tls_key"]):
            raise ConfigError("TLS needs both server.tls_cert and server.tls_key (--tls-cert, --tls-key)")
        for key in ("tls_cert", "tls_key", "tls_client_ca"):
            if srv[key] and not os.access(srv[key], os.R_OK):
                raise ConfigError(f"config key server.{key}: cannot read {srv[key]}")
        return TlsFiles(srv["tls_cert"], srv["tls_key"], srv["tls_client_ca"] or None)

    def _bind(self, address: str) -> str:
        if address.startswith("unix:"):
            sock = Path(address[len("unix:"):])
            if sock.exists():
                sock.unlink()
            self.grpc_server.add_insecure_port(address)
            return address
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"listen address {address!r}: expected host:port or unix:PATH")
        if self.tls is not None:
            bound = self.grpc_server.add_secure_port(address, self.tls.server_credentials())
            if bound == 0:
                raise RuntimeError(f"could not listen on {address}")
            return f"{host}:{bound}"
        if not is_loopback(host):
            if not self.config.server["insecure"]:
                raise ConfigError(
                    f"listen address {address}: a TCP listener on a non-loopback address needs TLS "
                    "(--tls-cert/--tls-key; `ecology tls init` makes them) or --insecure")
            self.insecure_addresses.append(address)
        bound = self.grpc_server.add_insecure_port(address)
        if bound == 0:
            raise RuntimeError(f"could not listen on {address}")
        return f"{host}:{bound}"

    def _write_ready_file(self, role: str) -> None:
        """<data-dir>/server.json: pid, listen addresses, role ("active" or "standby")."""
        info = {"pid": os.getpid(), "listen": self.addresses, "role": role}
        if self.metrics_address:
            info["metrics"] = f"http://{self.metrics_address}/metrics"
        tmp = self.data_dir / (READY_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.data_dir / READY_FILE)

    async def _set_health(self, name: str, status) -> None:
        result = self.health.set(name, status)
        if asyncio.iscoroutine(result):
            await result

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL_SECONDS)
            try:
                await self.outside.commands.run("purge_idempotency", {})
            except Exception:
                log.exception("idempotency_purge_failed")

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new calls, drain in-flight ones, commit, close."""
        if self.stopping:
            return
        self.stopping = True
        grace = self.config.server["shutdown_grace_seconds"] if grace is None else grace
        for name in HEALTH_NAMES:
            await self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        active = self.activated.is_set()
        if active:
            self.hub.notify()
        for t in self._tasks:
            t.cancel()
        await self.grpc_server.stop(grace)
        if active:
            await self.llm.aclose()  # queues the release of calls cut short, before the writer stops
            self.executor.stop()
            self.outside.close()
        self.sandbox.close()
        if self.metrics is not None:
            self.metrics.close()
        for store in (getattr(self, "reader", None), self.writer_conn):
            if store is not None:
                try:
                    store.close()
                except Exception:  # a session already gone (fenced)
                    pass
        (self.data_dir / READY_FILE).unlink(missing_ok=True)
        for address in self.addresses:
            if address.startswith("unix:"):
                Path(address[5:]).unlink(missing_ok=True)
        self._lock.close()
        log.info("server_stopped")

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()
