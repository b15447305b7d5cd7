"""The economy end to end: `ecology run` with autonomous offline agents and a short mint
interval. The builder bids on its tools, the mint resolves on schedule, scrip is minted
and the auction's proceeds are paid out as basic income - and the ledger invariant holds
after every single event of the stream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from agent_runtime import AdminClient, WorldClient
from tests.conftest import storage_config
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[oracle]
interval_seconds = 4.0
"""


def test_agents_bid_the_mint_mints_income_is_paid_and_the_invariant_holds(tmp_path):
    data = tmp_path / "world"
    config = tmp_path / "world.toml"
    config.write_text(CONFIG + storage_config())  # PostgreSQL under ECOLOGY_TEST_DATABASE=postgresql
    admin_token = "adm_e2e_" + os.urandom(8).hex()
    job = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run", "--no-dashboard", "--agents", "4", "--duration", "45",
         "--backend", "process", "--data-dir", str(data), "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ECOLOGY_ADMIN_TOKEN": admin_token})
    try:
        socket = data / "sock" / "world.sock"
        token_file = data / "agents" / "tester-1.token"
        deadline = time.monotonic() + 60
        while not (socket.exists() and token_file.exists()):
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "the main job did not start"
            time.sleep(0.1)
        address = f"unix:{socket}"
        resolutions, checked = [], 0
        with WorldClient(address, token_file.read_text().strip()) as watcher, \
                AdminClient(address, admin_token) as admin:
            for event in watcher.subscribe(0, timeout=50):
                stats = admin.get_stats()
                assert stats.total_balances == stats.minted - stats.burned, (event.type, stats)
                checked += 1
                if event.type == "oracle.resolved":
                    resolutions.append(json_format.MessageToDict(event.data))
                if any(r["minted"] > 0 and r["income"]["paid"] > 0 for r in resolutions):
                    break
        assert checked > 10
        minted = [r for r in resolutions if r["minted"] > 0]
        assert minted, f"no resolution minted scrip in {len(resolutions)} rounds: {resolutions[-3:]}"
        paid = [r for r in resolutions if r["income"]["paid"] > 0]
        assert paid and all(r["income"]["agents"] == 4 for r in paid), paid
    finally:
        out, _ = job.communicate(timeout=120)
    assert job.returncode == 0, out
    assert "ledger invariant holds" in out, out
