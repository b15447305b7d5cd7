"""No silent fallback to unisolated execution (issue 8.1).

A real server started with a PATH that has no `bwrap` (sandbox.isolation = "auto", the
default): it reports isolation "none", refuses every hostile tool of
tests/test_sandbox_hostile.py with SANDBOX_UNAVAILABLE without starting any process,
stores writes of code unchecked, and refuses every verb on an artifact whose access
contract is user code. isolation = "bwrap" without bubblewrap does not start at all;
"process" runs unisolated code only because it is named, and warns at every start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from agent_runtime import EcologyError
from server.sandbox.notice import INSTALL_HINT, isolation_note
from tests.conftest import ROOT, ServerProcess, check_ledger, fails
from tests.test_sandbox_hostile import CONTRACTS, PAYLOADS

# Only the interpreter's own directory: `ecology serve` is started by absolute path, and
# shutil.which("bwrap") finds nothing.
NO_BWRAP_PATH = str(Path(sys.executable).parent)
NO_BWRAP_ENV = {"PATH": NO_BWRAP_PATH}
# The module's agents make many calls in a few seconds.
CONFIG = "[rate_limits]\nprincipal_rate = 10000.0\nprincipal_burst = 10000.0\n"
ALLOW_ALL = "def check_permission(artifact_id, action, requester_id, context):\n    return {'allowed': True}\n"


def log_events(text: str) -> list[dict]:
    """The structured (JSON) lines of a server log."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return [e for e in out if isinstance(e, dict)]


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (children of every thread)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    assert shutil.which("bwrap", path=NO_BWRAP_PATH) is None, "the test PATH must not hold bwrap"
    s = ServerProcess(tmp_path_factory.mktemp("nobwrap") / "world", CONFIG, env=NO_BWRAP_ENV).start()
    s.owner = s.agent("owner")
    s.other = s.agent("other")
    yield s
    s.kill()


def refused(fn) -> EcologyError:
    with pytest.raises(EcologyError) as e:
        fn()
    err = e.value
    assert (err.code, err.reason) == (grpc.StatusCode.UNIMPLEMENTED, "SANDBOX_UNAVAILABLE"), err
    assert INSTALL_HINT in err.message, err.message  # says how to get isolation
    return err


def assert_no_trace(world) -> None:
    assert world.proc.poll() is None
    assert descendants(world.proc.pid) == [], "a process was started for user code"
    check_ledger(world)
    stats = world.admin().get_stats()
    assert stats.total_balances == stats.minted - stats.burned


def test_isolation_is_none_and_said_at_startup(bare):
    assert bare.admin().get_stats().sandbox_isolation == "none"
    log = Path(bare.log.name).read_text()
    assert f"ecology: {isolation_note('none')}" in log.splitlines()  # a plain line on stderr
    assert any(e.get("event") == "sandbox_isolation" and e.get("sandbox_isolation") == "none"
               and e.get("level") == "warning" for e in log_events(log))  # and the structured warning
    assert INSTALL_HINT in isolation_note("none") and "SANDBOX_UNAVAILABLE" in isolation_note("none")


def test_ecology_status_reports_none(bare):
    r = subprocess.run([sys.executable, "-m", "server.cli", "status", "--server", bare.socket],
                       env={**os.environ, "ECOLOGY_ADMIN_TOKEN": bare.admin_token, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["sandbox_isolation"] == "none"
    assert status["sandbox_note"] == isolation_note("none")


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_hostile_tool_is_stored_and_refused(bare, name):
    aid = f"hostile_{name}_{uuid.uuid4().hex[:8]}"
    before = bare.owner.get_state().scrip
    # The code check is skipped (nothing may run): even code that loops at load is stored.
    bare.owner.write(aid, PAYLOADS[name], can_execute=True, interface=[{"name": "f"}])
    assert bare.owner.read(aid).content == PAYLOADS[name]
    err = refused(lambda: bare.owner.invoke(aid, "f"))
    assert aid in err.message
    assert bare.owner.get_state().scrip == before
    assert_no_trace(bare)


def test_a_huge_file_writer_writes_nothing(bare):
    name = "eco-nobwrap-" + uuid.uuid4().hex
    aid = "writer_" + uuid.uuid4().hex[:8]
    bare.owner.write(aid, PAYLOADS["write_huge_files"], can_execute=True,
                     interface=[{"name": "f", "input_schema": {"type": "object", "properties": {"name": {}}}}])
    refused(lambda: bare.owner.invoke(aid, "f", name=name))
    assert not any(p.name.startswith(name) for p in Path("/tmp").iterdir())
    assert not any(p.name.startswith(name) for p in bare.data_dir.iterdir())
    assert_no_trace(bare)


@pytest.mark.parametrize("kind", sorted(CONTRACTS) + ["allow_all"])
def test_user_contract_refuses_every_verb(bare, kind):
    owner, other = bare.owner, bare.other
    cid = f"contract_{kind}_{uuid.uuid4().hex[:8]}"
    source = ALLOW_ALL if kind == "allow_all" else f"THIEF = {owner.agent_id!r}\n" + CONTRACTS[kind]
    owner.write(cid, source, can_execute=True, interface=[{"name": "check_permission"}])
    target = "guarded_" + uuid.uuid4().hex[:8]
    owner.write(target, "def f():\n    return 1\n", access_contract_id=cid, can_execute=True,
                interface=[{"name": "f"}], state={"note": "original"})
    scrip = {c.agent_id: c.get_state().scrip for c in (owner, other)}
    for client in (owner, other):
        refused(lambda: client.read(target))
        refused(lambda: client.write(target, "changed", state={"note": "changed"}))
        refused(lambda: client.write(target, "x", access_contract_id="genesis_freeware"))  # "transfer"
        refused(lambda: client.invoke(target, "f"))
        refused(lambda: client.transfer_control(target, other.agent_id))
        refused(lambda: client.escrow_list(target, 5))
        if client is owner:
            refused(lambda: client.bid(target, 1))
        else:  # only the controller may bid: the oracle refuses before any contract is asked
            fails(lambda: client.bid(target, 1), grpc.StatusCode.PERMISSION_DENIED, "ACCESS_DENIED")
        refused(lambda: client.delete(target))
    assert {c.agent_id: c.get_state().scrip for c in (owner, other)} == scrip
    meta = owner.get_metadata(target)  # metadata is public: no contract is consulted
    assert meta["version"] == 1 and not meta["deleted"]
    assert meta["state"] == {"controller": owner.agent_id}  # listings show only the controller of a state
    assert_no_trace(bare)


def test_genesis_and_plain_data_still_work(bare):
    """Only user code is refused: data under built-in contracts and genesis calls work."""
    aid = "note_" + uuid.uuid4().hex[:8]
    bare.owner.write(aid, "hello")
    assert bare.owner.read(aid).content == "hello"
    bare.owner.transfer(bare.other.agent_id, 3)
    assert_no_trace(bare)


def _start_failure(tmp_path, config: str, env: dict) -> str:
    s = ServerProcess(tmp_path / "world", config, env=env)
    with pytest.raises(RuntimeError, match="server exited"):
        s.start()
    assert s.proc.returncode == 2
    return Path(s.log.name).read_text()


def test_bwrap_requested_but_missing_refuses_to_start(tmp_path):
    log = _start_failure(tmp_path, '[sandbox]\nisolation = "bwrap"\n', NO_BWRAP_ENV)
    lines = [line for line in log.splitlines() if line.startswith("ecology:")]
    assert len(lines) == 1, log
    assert "bubblewrap" in lines[0] and INSTALL_HINT in lines[0], lines[0]
    assert not (tmp_path / "world" / "server.json").exists()


# isolation = "process" on purpose: this test checks that the unisolated mode, named
# explicitly, runs code and warns at every start (log line and plain stderr line).
def test_process_isolation_only_by_name_and_warned_at_every_start(tmp_path):
    s = ServerProcess(tmp_path / "world", '[sandbox]\nisolation = "process"\nspare_workers = 1\n',
                      env=NO_BWRAP_ENV)
    try:
        for start in range(2):
            (s.start() if start == 0 else s.restart())
            assert s.admin().get_stats().sandbox_isolation == "process"
            a = s.agent(f"dev{start}")
            a.write(f"tool{start}", "def f():\n    return 42\n", can_execute=True, interface=[{"name": "f"}])
            assert a.invoke(f"tool{start}", "f") == 42
        log = Path(s.log.name).read_text()
        assert log.splitlines().count(f"ecology: {isolation_note('process')}") == 2, log
        assert sum(e.get("event") == "sandbox_isolation" and e.get("sandbox_isolation") == "process"
                   and e.get("level") == "warning" for e in log_events(log)) == 2
    finally:
        s.kill()
