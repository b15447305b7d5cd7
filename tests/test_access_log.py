"""The access log's fast writer (server/logs.py access_writer) writes exactly the line the
structlog pipeline writes, and a real server at the default level writes one per call."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
import structlog

from server import logs
from tests.conftest import ROOT, database_args


@pytest.fixture
def restore_logging():
    """logs.configure changes process-wide state: put it back for the other tests."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook, dict(logs._STATE))
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    sys.excepthook, threading.excepthook = saved[2], saved[3]
    logs._STATE.clear()
    logs._STATE.update(saved[4])
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_the_fast_line_is_structlogs_line_field_for_field(restore_logging):
    out = io.BytesIO()
    logs.configure("info", file=out)
    log = structlog.get_logger("rpc").bind()
    write = logs.access_writer()
    for rid in (None, "req-1"):
        extra = {} if rid is None else {"request_id": rid}
        log.info("rpc", principal="alice", method="/ecology.v1.World/GetState", code="OK", duration_ms=0.25, **extra)
        write("alice", "/ecology.v1.World/GetState", "OK", 0.25, rid)
    slow1, fast1, slow2, fast2 = [json.loads(line) for line in out.getvalue().splitlines()]
    for slow, fast in ((slow1, fast1), (slow2, fast2)):
        assert list(fast) == list(slow)  # same keys in the same order
        assert {k: v for k, v in fast.items() if k != "timestamp"} == {k: v for k, v in slow.items() if k != "timestamp"}
        assert fast["timestamp"].endswith("Z") and len(fast["timestamp"]) == len(slow["timestamp"])
        at = datetime.fromisoformat(fast["timestamp"].replace("Z", "+00:00"))
        assert abs(at.timestamp() - time.time()) < 60
    assert "request_id" not in fast1 and fast2["request_id"] == "req-1"
    logs.configure("warning", file=io.BytesIO())
    assert logs.access_writer() is None  # filtered out: no writer, no cost


def test_timestamps_match_datetime_isoformat_including_whole_seconds():
    stamp = logs._iso_timestamps()
    for t in (1_796_130_882.0, 1_796_130_882.5, 1_796_130_882.000001, 1_796_130_882.9999996, 0.123456):
        expected = datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
        assert stamp(t) == expected, t


def test_a_server_at_the_default_level_logs_each_call_once(tmp_path):
    from agent_runtime import AdminClient, WorldClient

    data, sock = tmp_path / "w", tmp_path / "w.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": "adm_test_access"}
    with open(tmp_path / "w.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data),
                                 "--listen", f"unix:{sock}", *database_args()], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not (data / "server.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "w.log").read_text()
            time.sleep(0.05)
        with AdminClient(f"unix:{sock}", "adm_test_access") as admin:
            token = admin.create_agent("alice").token
        with WorldClient(f"unix:{sock}", token) as alice:
            alice.get_state()
            alice.write("alice.note", "hi", request_id="write-1")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in (tmp_path / "w.log").read_text().splitlines()]
    rpc = [line for line in lines if line.get("event") == "rpc"]
    assert [(r["principal"], r["method"].rsplit("/", 1)[1], r["code"]) for r in rpc] == [
        ("<admin>", "CreateAgent", "OK"), ("alice", "GetState", "OK"), ("alice", "WriteArtifact", "OK")]
    assert rpc[2]["request_id"] == "write-1" and "request_id" not in rpc[1]
    assert all(r["level"] == "info" and r["duration_ms"] >= 0 for r in rpc)
