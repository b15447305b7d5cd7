"""Exact replay (`ecology replay`, server/replay.py): a world rebuilt from its oplog by
re-executing the kernel reaches the identical state - after `ecology run`, after a SIGKILL
in the middle of a recording, at any past event (`--until`) - and a tampered oplog is
caught."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_runtime import EcologyError, WorldClient
from tests.conftest import ROOT, ServerProcess, uid

PY = sys.executable

# These tests read and tamper with the recorded SQLite files directly, so under
# ECOLOGY_TEST_DATABASE=postgresql they are not collected (deselected, not skipped). Replay of a
# world recorded on PostgreSQL is covered in every run by
# test_a_world_on_postgresql_replays_into_sqlite_to_the_same_digest, whose server is always on
# the tests' PostgreSQL server.
pytestmark = pytest.mark.sqlite_only

CONFIG = """
[agents]
endowment = 100000
compute_rate = 1000000.0
compute_capacity = 1000000000.0
[rate_limits]
principal_rate = 100000.0
principal_burst = 100000.0
connection_rate = 100000.0
connection_burst = 100000.0
[oracle]
interval_seconds = 2.0
"""

TOOL_SRC = """
def run(n=1, to=None):
    if to:
        pay(to, 1)
    return {"n": n * 2, "sum": sum(range(int(n) * 100))}
"""

CONTRACT_SRC = (ROOT / "examples" / "contracts" / "allow_list.py").read_text()


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def replay(data_dir: Path, into: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("replay", str(data_dir), "--into", str(into), *extra)


def assert_identical(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines["recorded world"] == lines["replayed world"]
    assert "identical" in out.stdout
    return lines["replayed world"]


def burst(address: str, token: str, me: str, peers: list[str], tool: str, secret: str, log_path: str,
          seconds: float) -> None:
    """Client process: a mix of transfers, writes, sandboxed invokes (nested pay), reads
    through a user contract, LLM completions and decision records, until the server goes."""
    rng = random.Random(me)
    client = WorldClient(address, token)
    deadline = time.monotonic() + seconds
    with open(log_path, "a", buffering=1) as log:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            kind = rng.choice(["transfer", "transfer", "write", "invoke", "read", "llm", "decision"])
            try:
                if kind == "transfer":
                    client.transfer(rng.choice(peers), rng.randint(1, 9), memo=f"{me}-{i}")
                elif kind == "write":
                    client.write(f"{me}-note-{i % 5}", f"note {i}", metadata={"i": i})
                elif kind == "invoke":
                    client.invoke(tool, "run", n=rng.randint(1, 50), to=rng.choice(peers))
                elif kind == "read":
                    try:
                        client.read(secret)
                    except EcologyError as err:
                        if err.reason != "ACCESS_DENIED":
                            raise
                elif kind == "llm":
                    client.complete([{"role": "user", "content": f"say {i}"}], max_tokens=16)
                else:
                    client.record_decision(step=i, observed={"i": i}, action={"kind": kind},
                                           outcome={"ok": True})
            except EcologyError as err:
                log.write(f"err {kind} {err.reason}\n")
                if err.reason in ("UNAVAILABLE", "INTERNAL") or "UNAVAILABLE" in str(err):
                    return
                continue
            log.write(f"ack {kind}\n")
    client.close()


def acks(path: Path) -> int:
    return path.read_text().count("ack ") if path.exists() else 0


def start_world(tmp_path: Path) -> tuple[ServerProcess, dict]:
    server = ServerProcess(tmp_path / "world", CONFIG).start()
    clients = [server.agent(uid(f"p{i}")) for i in range(3)]
    owner = clients[0]
    tool = uid("tool")
    owner.write(tool, TOOL_SRC, can_execute=True, metadata={"price": 2},
                interface=[{"name": "run", "input_schema": {"type": "object", "properties": {
                    "n": {"type": "integer"}, "to": {"type": "string"}}}}])
    contract = uid("contract")
    owner.write(contract, CONTRACT_SRC, can_execute=True,
                interface=[{"name": "check_permission", "input_schema": {}}])
    secret = uid("secret")
    owner.write(secret, "only for friends", access_contract_id=contract,
                state={"allowed": [clients[1].agent_id]})
    return server, {"clients": clients, "tool": tool, "secret": secret}


def run_bursts(server: ServerProcess, world: dict, tmp_path: Path, tag: str, seconds: float,
               kill_after_acks: int | None = None) -> None:
    clients = world["clients"]
    ids = [c.agent_id for c in clients]
    logs = {c.agent_id: tmp_path / f"{tag}-{c.agent_id}.log" for c in clients}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=burst, args=(server.address, c.token, c.agent_id,
                                             [x for x in ids if x != c.agent_id], world["tool"],
                                             world["secret"], str(logs[c.agent_id]), seconds))
             for c in clients]
    for p in procs:
        p.start()
    try:
        if kill_after_acks is not None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and sum(acks(p) for p in logs.values()) < kill_after_acks:
                time.sleep(0.05)
            server.kill()  # SIGKILL in the middle of the bursts
        for p in procs:
            p.join(timeout=seconds + 30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert sum(acks(p) for p in logs.values()) > 20, "the burst never got going"


def oplog_commands(data_dir: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{data_dir / 'world.sqlite3'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT command, COUNT(*) FROM oplog GROUP BY command").fetchall())
    finally:
        conn.close()


# -- (a) ecology run -------------------------------------------------------------------------------

def test_recorded_ecology_run_replays_to_the_same_digest(tmp_path):
    data = tmp_path / "run"
    # Builder, trader and tester with the scripted brain, then (a restart) the same agents
    # and a coordinator with the offline LLM brain.
    for agents, brain, seconds in ((3, "scripted", "20"), (4, "llm", "14")):
        out = cli("run", "--agents", str(agents), "--duration", seconds, "--backend", "process",
                  "--brain", brain, "--data-dir", str(data), "--dashboard", "127.0.0.1:0", timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    commands = oplog_commands(data)
    assert commands["start"] == 2
    for name in ("create_agent", "write", "invoke", "llm_reserve", "llm_settle", "decision"):
        assert commands.get(name, 0) > 0, (name, commands)
    assert "unrecorded" not in commands
    into = tmp_path / "replayed"
    assert_identical(replay(data, into))
    # The replayed world is a data directory like any other.
    conn = sqlite3.connect(into / "world.sqlite3")
    try:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE type = 'llm.completed'").fetchone()[0] > 0
        assert conn.execute("SELECT COUNT(*) FROM events WHERE type = 'artifact.invoked'").fetchone()[0] > 0
    finally:
        conn.close()


# -- (b) SIGKILL in the middle of a recording, (c) --until, (d) tampering --------------------------

@pytest.fixture(scope="module")
def killed_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    server, world = start_world(tmp)
    try:
        run_bursts(server, world, tmp, "before", 20.0, kill_after_acks=150)
        assert server.proc.returncode == -9
        server.start()
        run_bursts(server, world, tmp, "after", 4.0)
        server.kill()  # the world is replayed as a SIGKILLed server left it
    finally:
        server.kill()
    return server.data_dir


def test_replay_after_sigkill_reaches_the_same_digest(killed_world, tmp_path):
    commands = oplog_commands(killed_world)
    assert commands["start"] == 2
    for name in ("invoke", "write", "read", "llm_reserve", "llm_settle", "decision", "create_agent"):
        assert commands.get(name, 0) > 0, (name, commands)
    assert "unrecorded" not in commands
    digest = assert_identical(replay(killed_world, tmp_path / "r1"))
    # Deterministic: a second replay gives the same digest again.
    assert assert_identical(replay(killed_world, tmp_path / "r2")) == digest


def _rows(db: Path, sql: str, *params):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_until_stops_before_an_operation_that_would_go_past_the_event(killed_world, tmp_path):
    """A paid invocation writes the tool's pay(), its price transfer and artifact.invoked
    together: --until the price transfer stops before that operation and says so."""
    src = killed_world / "world.sqlite3"
    first = _rows(src, "SELECT seq FROM events WHERE type = 'ledger.transfer' AND seq + 1 IN "
                       "(SELECT seq FROM events WHERE type = 'artifact.invoked') ORDER BY seq LIMIT 1 OFFSET 5")[0][0]
    into = tmp_path / "until"
    out = replay(killed_world, into, "--until", str(first))
    assert out.returncode == 0, out.stdout + out.stderr
    last = _rows(into / "world.sqlite3", "SELECT MAX(seq) FROM events")[0][0]
    assert last < first
    assert f"together; stopped before it, at event {last}" in out.stdout
    assert f"at event {last}: digest " in out.stdout


def test_until_gives_the_world_at_that_event(killed_world, tmp_path):
    src = killed_world / "world.sqlite3"
    # An LLM call's settling operation writes one event: a moment between operations.
    completed = [r[0] for r in _rows(src, "SELECT seq FROM events WHERE type = 'llm.completed' ORDER BY seq")]
    seq = completed[len(completed) // 2]
    into = tmp_path / "until"
    out = replay(killed_world, into, "--until", str(seq))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"at event {seq}: digest " in out.stdout
    dst = into / "world.sqlite3"
    assert _rows(dst, "SELECT MAX(seq) FROM events")[0][0] == seq
    assert _rows(dst, "SELECT * FROM events ORDER BY seq") == _rows(src, "SELECT * FROM events WHERE seq <= ? "
                                                                        "ORDER BY seq", seq)
    last_entry = _rows(dst, "SELECT MAX(seq) FROM ledger_entries")[0][0]
    assert _rows(dst, "SELECT * FROM ledger_entries ORDER BY seq") == _rows(
        src, "SELECT * FROM ledger_entries WHERE seq <= ? ORDER BY seq", last_entry)
    # Balances at that moment equal those rebuilt from the ledger up to it.
    rebuilt: dict[str, int] = {}
    for debit, credit, amount in _rows(src, "SELECT debit, credit, amount FROM ledger_entries WHERE seq <= ?",
                                       last_entry):
        rebuilt[debit] = rebuilt.get(debit, 0) - amount
        rebuilt[credit] = rebuilt.get(credit, 0) + amount
    balances = dict(_rows(dst, "SELECT principal_id, scrip FROM balances"))
    assert {k: v for k, v in balances.items() if v} == {k: v for k, v in rebuilt.items()
                                                        if v and k != "genesis_system"}
    # The same moment twice gives the same digest.
    again = replay(killed_world, tmp_path / "until2", "--until", str(seq))
    assert again.stdout.splitlines()[-1] == out.stdout.splitlines()[-1]


def _tamper(data_dir: Path, copy: Path, command: str, change) -> int:
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("lock", "*.sock"))
    conn = sqlite3.connect(copy / "world.sqlite3")
    try:
        for seq, inputs, record in conn.execute("SELECT seq, inputs, record FROM oplog WHERE command = ? "
                                                "ORDER BY seq DESC", (command,)).fetchall():
            inputs, record = json.loads(inputs), json.loads(record)
            if change(inputs, record):
                conn.execute("UPDATE oplog SET inputs = ?, record = ? WHERE seq = ?",
                             (json.dumps(inputs), json.dumps(record), seq))
                conn.commit()
                return seq
    finally:
        conn.close()
    raise AssertionError(f"no {command} row to tamper with")


def _llm_answer(inputs, record):
    inputs["answer"]["content"] += " (forged)"
    return True


def _sandbox_cpu(inputs, record):
    root = inputs["chain"]["root"]
    if root is None or root["cpu"] <= 0:
        return False
    # Enough CPU to put the payer deep into compute debt (this world's buckets refill at
    # 10^6/s up to 10^9): its later calls (committed when recorded) now fail, or - if it
    # made none - its compute bucket differs.
    root["cpu"] += 1e7
    return True


def _clock(inputs, record):
    if not record["t"]:
        return False
    record["t"][0] += 1.5
    return True


def _extra_reading(inputs, record):
    record["t"].append(record["t"][-1] if record["t"] else 0.0)
    return True


@pytest.mark.parametrize("command,change,expect", [
    ("llm_settle", _llm_answer, ("differs: table llm_exchanges",)),
    ("invoke", _sandbox_cpu, ("differs: table flow", "failed INSUFFICIENT_RESOURCES")),
    ("write", _clock, ("differs: table",)),
    ("decision", _extra_reading, ("diverged at oplog seq",)),
])
def test_a_tampered_oplog_is_detected(killed_world, tmp_path, command, change, expect):
    seq = _tamper(killed_world, tmp_path / "tampered", command, change)
    out = replay(tmp_path / "tampered", tmp_path / "into")
    assert out.returncode == 1, out.stdout + out.stderr
    assert any(e in out.stderr for e in expect), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    if "diverged" in out.stderr:
        assert "recorded" in out.stderr
        if command == "decision":
            assert f"oplog seq {seq} ({command})" in out.stderr


# -- the command line --------------------------------------------------------------------------------

def test_replay_refuses_bad_directories(killed_world, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    out = replay(killed_world, busy)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"ecology: --into {busy} is not an empty directory; "
                                               "replay writes a new world there"]
    out = replay(tmp_path / "nothing", tmp_path / "new")
    assert out.returncode == 2 and "is not a world's data directory" in out.stderr
    out = replay(killed_world, tmp_path / "new2", "--until", "0")
    assert out.returncode == 2 and "--until" in out.stderr


def test_an_operation_that_is_no_command_stops_the_replay(tmp_path):
    """The safety net: a state change submitted as a plain op (not a command) is marked in
    the oplog, and replay stops there, naming it."""
    import asyncio

    from server.app import WorldServer
    from server.config import load

    data = tmp_path / "w"

    async def main():
        server = WorldServer(load(None), data, [f"unix:{tmp_path / 's.sock'}"])
        await server.start()
        try:
            await server.executor.run(lambda conn: conn.execute(
                "INSERT INTO balances VALUES ('ghost', 0)"))
        finally:
            await server.stop()

    asyncio.run(main())
    out = replay(data, tmp_path / "into")
    assert out.returncode == 1
    assert "(unrecorded)" in out.stderr and "not a command" in out.stderr


# -- a world on PostgreSQL ------------------------------------------------------------------------

def test_a_world_on_postgresql_replays_into_sqlite_to_the_same_digest(tmp_path):
    """`ecology serve --database postgresql://...` records the same oplog; `ecology replay
    --database URL` rebuilds it (into SQLite) and the two backends' digests agree."""
    from tests.conftest import pg_server

    data = tmp_path / "pgworld"
    server = ServerProcess(data, CONFIG)
    server.database = server.database or pg_server().new_database()
    server.start()
    try:
        clients = [server.agent(uid(f"q{i}")) for i in range(3)]
        owner = clients[0]
        tool = uid("tool")
        owner.write(tool, TOOL_SRC, can_execute=True, metadata={"price": 2},
                    interface=[{"name": "run", "input_schema": {"type": "object", "properties": {
                        "n": {"type": "integer"}, "to": {"type": "string"}}}}])
        world = {"clients": clients, "tool": tool, "secret": tool}
        run_bursts(server, world, tmp_path, "pg", 12.0, kill_after_acks=80)
        server.start()
        run_bursts(server, world, tmp_path, "pg2", 3.0)
    finally:
        server.kill()
    assert not (data / "world.sqlite3").exists()
    out = cli("replay", str(data), "--database", server.database, "--into", str(tmp_path / "r"))
    assert_identical(out)


def test_operator_controls_are_recorded_commands(tmp_path):
    """Pause, grant, stop/start one agent and the dashboard's genesis queries are commands:
    the oplog has no `unrecorded` row and the replay is identical."""
    server = ServerProcess(tmp_path / "ops", CONFIG).start()
    try:
        a, b = server.agent(uid("c")), server.agent(uid("d"))
        admin = server.admin()
        a.transfer(b.agent_id, 5, request_id="x1")
        admin.pause()
        admin.resume()
        admin.grant(b.agent_id, scrip=7, llm_budget_micro_usd=11, memo="thanks")
        admin.stop_agent(a.agent_id, memo="misbehaving")
        with pytest.raises(EcologyError) as e:
            a.transfer(b.agent_id, 1)
        assert e.value.reason == "AGENT_STOPPED"
        admin.start_agent(a.agent_id)
        a.transfer(b.agent_id, 2)
        admin.query_genesis("genesis_ledger", "balance", principal_id=b.agent_id)
    finally:
        server.kill()
    commands = oplog_commands(server.data_dir)
    assert commands.get("agent_control") == 2 and commands.get("grant") == 1, commands
    assert "unrecorded" not in commands
    assert_identical(replay(server.data_dir, tmp_path / "r"))
