"""Shared fixtures: a real world server in its own process, on a real unix socket and a
real TCP port, with a real SQLite data directory."""

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
import pytest

from agent_runtime import AdminClient, EcologyError, WorldClient
from server.storage import db

ROOT = Path(__file__).resolve().parent.parent

# ECOLOGY_TEST_DATABASE=postgresql: every ServerProcess keeps its state in its own database
# of one real PostgreSQL server started for the session (tests/pg.py); default: SQLite.
TEST_DATABASE = os.environ.get("ECOLOGY_TEST_DATABASE", "sqlite")
_pg_server = None


def pg_server():
    """The session's PostgreSQL server, started on first use."""
    global _pg_server
    if _pg_server is None:
        from tests.pg import PgServer

        _pg_server = PgServer()
    return _pg_server


_open_stores: list = []


def new_store(path: Path | None = None, *, migrate: bool = True):
    """A fresh store for in-process tests (a kernel on its own database, no server):
    SQLite at `path` (in memory when None), or under ECOLOGY_TEST_DATABASE=postgresql a
    PostgreSQL store on a fresh schema of the session's server. Migrated unless told not
    to; closed at the end of the test if the test did not close it."""
    if TEST_DATABASE == "postgresql":
        store = pg_server().fresh_store() if migrate else db.open_store(pg_server().new_schema())
    else:
        store = db.connect(path or Path(":memory:"))
        if migrate:
            db.migrate(store)
    _open_stores.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_new_stores():
    yield
    while _open_stores:
        try:
            _open_stores.pop().close()
        except Exception:
            pass


def database_args() -> list[str]:
    """`--database URL` of a fresh PostgreSQL database under ECOLOGY_TEST_DATABASE=postgresql
    (for tests that start `ecology serve` themselves), else nothing: SQLite in the data dir."""
    return ["--database", pg_server().new_database()] if TEST_DATABASE == "postgresql" else []


def storage_config() -> str:
    """A `[storage]` TOML section for tests that start `ecology run` (or serve) with their
    own --config: a fresh PostgreSQL database under ECOLOGY_TEST_DATABASE=postgresql, else ""."""
    if TEST_DATABASE != "postgresql":
        return ""
    return f'[storage]\nurl = "{pg_server().new_database()}"\n'


def storage_overrides() -> dict:
    """Config overrides (server.config.build) for tests that build a WorldServer in process:
    a fresh PostgreSQL database under ECOLOGY_TEST_DATABASE=postgresql, else none (SQLite)."""
    return {"storage": {"url": pg_server().new_database()}} if TEST_DATABASE == "postgresql" else {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sqlite_only: checks the SQLite file itself (its PRAGMAs) or reads or tampers with "
        "it directly; not collected (deselected, not skipped) under ECOLOGY_TEST_DATABASE=postgresql")


def pytest_report_header(config):
    return f"ecology storage backend: {TEST_DATABASE} (ECOLOGY_TEST_DATABASE)"


def pytest_collection_modifyitems(config, items):
    if TEST_DATABASE != "postgresql":
        return
    kept = [i for i in items if i.get_closest_marker("sqlite_only") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    if _pg_server is not None:
        _pg_server.stop()


class ServerProcess:
    """`ecology serve` as a child process. `config` is TOML text; `env` overrides
    variables of the server's environment (e.g. a PATH without bwrap)."""

    def __init__(self, data_dir: Path, config: str = "", env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = "adm_test_" + uuid.uuid4().hex
        self.config_path = data_dir.parent / f"{data_dir.name}.toml"
        self.config_path.write_text(config)
        self.socket = f"unix:{data_dir.parent / (data_dir.name + '.sock')}"
        self.proc: subprocess.Popen | None = None
        self.tcp: str | None = None
        self._clients: list = []
        self.database = pg_server().new_database() if TEST_DATABASE == "postgresql" else ""

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        ready = self.data_dir / "server.json"
        ready.unlink(missing_ok=True)
        env = {**os.environ, **self.env, "ECOLOGY_ADMIN_TOKEN": self.admin_token, "PYTHONPATH": str(ROOT)}
        self.log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(self.data_dir),
             "--listen", self.socket, "--listen", "127.0.0.1:0", "--config", str(self.config_path),
             "--log-level", "warning", *(["--database", self.database] if self.database else [])],
            env=env, stdout=self.log, stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        self.tcp = json.loads(ready.read_text())["listen"][1]
        return self

    @property
    def address(self) -> str:
        return self.socket

    def admin(self) -> AdminClient:
        c = AdminClient(self.socket, self.admin_token)
        self._clients.append(c)
        return c

    def client(self, token: str, tcp: bool = False) -> WorldClient:
        c = WorldClient(self.tcp if tcp else self.socket, token)
        self._clients.append(c)
        return c

    def agent(self, name: str, **overrides) -> WorldClient:
        """Create an agent and return a client authenticated as it (.token, .agent_id set)."""
        with AdminClient(self.socket, self.admin_token) as admin:
            created = admin.create_agent(name, **overrides)
        c = self.client(created.token)
        c.token = created.token
        c.agent_id = created.agent_id
        return c

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_clients()

    def stop(self) -> int:
        """SIGTERM: graceful drain. Returns the exit code."""
        code = 0
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=30)
        self._close_clients()
        return code

    def restart(self) -> "ServerProcess":
        self.stop()
        return self.start()

    def _close_clients(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()

    def db(self):
        """A read-only store on the server's database (SQLite file or PostgreSQL)."""
        if self.database:
            return db.open_store(self.database, readonly=True)
        return db.connect(self.data_dir / db.DB_FILE, readonly=True)


@pytest.fixture
def make_server(tmp_path):
    servers: list[ServerProcess] = []

    def factory(config: str = "", name: str = "world") -> ServerProcess:
        s = ServerProcess(tmp_path / name, config)
        servers.append(s)
        return s.start()

    yield factory
    for s in servers:
        s.kill()


@pytest.fixture
def server(make_server) -> ServerProcess:
    return make_server()


def check_ledger(server: ServerProcess) -> dict:
    """Assert the ledger invariants on the server's database file."""
    from server.kernel import ledger

    conn = server.db()
    try:
        return ledger.check_invariants(conn)
    finally:
        conn.close()


def uid(prefix: str) -> str:
    """A fresh id, so tests sharing one server never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fails(fn, code: grpc.StatusCode, reason: str, field: str | None = None) -> EcologyError:
    """Call fn, expect an EcologyError with this gRPC code and reason (and field)."""
    with pytest.raises(EcologyError) as info:
        fn()
    err = info.value
    assert (err.code, err.reason) == (code, reason), f"{err.code} {err.reason}: {err.message}"
    if field is not None:
        assert err.field == field, err
    return err


def wait_until(fn, timeout: float, what: str, every: float = 0.05):
    """Poll fn until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def plan_config(agent_id: str) -> str:
    """An agent configuration for the plan brain: write <id>.tick, sleep, repeat."""
    return json.dumps({"brain": "plan", "repeat": True, "loop": {"min_interval": 0.1},
                       "plan": [{"action": "write", "artifact_id": f"{agent_id}.tick", "content": "tick"},
                                {"action": "sleep", "seconds": 0.2}]})


def tick_version(client, aid: str) -> int:
    """The version of an agent's tick artifact (0 before its first write)."""
    try:
        return client.read(aid).version
    except EcologyError:
        return 0
