"""`ecology run`, the main job, end to end: a real server, real agent processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import storage_config

ROOT = Path(__file__).resolve().parent.parent


def run_job(data_dir: Path, *args: str, timeout: float = 120) -> dict:
    # Under ECOLOGY_TEST_DATABASE=postgresql the world lives in one PostgreSQL database per
    # data directory (the same again when the job is run a second time on it).
    storage = data_dir.parent / f"{data_dir.name}.storage.toml"
    if not storage.exists():
        storage.write_text(storage_config())
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "run", "--data-dir", str(data_dir), "--config", str(storage), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert lines, out.stdout
    assert "agents alive" in out.stdout  # live progress was shown
    return json.loads(lines[-1][len("SUMMARY "):])


def agent_processes(socket: Path) -> list[int]:
    """Live processes whose environment points at this world's socket."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(socket).encode() in environ and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids


def test_three_offline_agents_act_trade_and_stop_cleanly(tmp_path):
    data = tmp_path / "world"
    s = run_job(data, "--agents", "3", "--duration", "12", "--backend", "process")
    assert s["agents"] == 3 and s["backend"] == "process"
    assert s["events_by_type"].get("artifact.written", 0) > 0, s
    assert s["events_by_type"].get("ledger.transfer", 0) + s["events_by_type"].get("escrow.purchased", 0) > 0, s
    assert all(n > 0 for n in s["actions_by_agent"].values()), s["actions_by_agent"]
    # 3 endowments, plus whatever the mint created for artifacts the agents bid on.
    assert s["ledger_invariant_holds"] and s["ledger"]["minted"] >= 3 * 1000
    # Agents hold most scrip; accounts such as genesis_oracle (bids held) hold the rest.
    assert sum(s["scrip"].values()) <= s["ledger"]["total_balances"]
    assert s["agents_alive_at_end"] == 3 and s["agents_failed"] == {} and s["ok"]
    assert agent_processes(data / "sock" / "world.sock") == []

    # Running again on the same data directory continues the same world.
    again = run_job(data, "--agents", "3", "--duration", "6", "--backend", "process")
    assert "agent.created" not in again["events_by_type"]
    assert again["ledger"]["minted"] >= s["ledger"]["minted"]  # no new endowments, maybe mints
    assert again["ledger"]["entries"] > s["ledger"]["entries"] - 1
    assert again["artifacts"] >= s["artifacts"]
    assert agent_processes(data / "sock" / "world.sock") == []


def test_run_serves_metrics_while_agents_act(tmp_path):
    """`ecology run --metrics HOST:PORT`: the world's /metrics, scraped while its agents act."""
    import socket
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run", "--data-dir", str(tmp_path / "w"), "--agents", "2",
         "--duration", "20", "--backend", "process", "--metrics", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline, seen = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
                continue
            seen = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if not s.labels}
            if seen.get("ecology_agents_active", 0) == 2 and seen.get("ecology_agents") == 2:
                break
            time.sleep(0.5)
        assert seen.get("ecology_agents_active") == 2 and seen.get("ecology_scrip_supply", 0) >= 2000, seen
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert f"metrics: http://127.0.0.1:{port}/metrics" in out, out + err
