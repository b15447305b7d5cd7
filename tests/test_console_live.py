"""The live console of `ecology run` on a terminal (a real pseudo-terminal): one status block
redrawn in place, no appended progress lines, a final table and the SUMMARY line."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_on_a_terminal(cwd: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "run", "--no-dashboard", *args], cwd=cwd,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"})
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: the terminal's last writer is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    rc = proc.wait(30)
    return rc, b"".join(chunks).decode(errors="replace")


def test_live_block_is_redrawn_in_place(tmp_path):
    rc, out = run_on_a_terminal(tmp_path, "--agents", "2", "--duration", "8", "--backend", "process",
                                "--data-dir", "data")
    assert rc == 0, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    # The block: a panel titled with the clock and the alive count, the agents' table.
    assert re.search(r"Agent Ecology - \d\d:\d\d:\d\d - agents alive \d/2 - ends in", plain), plain
    for column in ("agent", "state", "scrip", "compute", "actions", "last action", "outcome"):
        assert column in plain
    assert "next mint in" in plain and "scrip supply" in plain
    assert plain.count("Agent Ecology - ") >= 3                      # redrawn several times ...
    assert "\x1b[2K" in out and re.search(r"\x1b\[\d*A", out)        # ... in place (cursor up, erase line)
    assert not re.search(r"\] agents alive \d+/\d+ \| actions", plain)   # no appended progress lines
    assert "agents at the end (2/2 alive)" in plain
    summary = json.loads(next(ln for ln in plain.splitlines() if ln.startswith("SUMMARY "))[8:])
    assert summary["ok"] and summary["agents_alive_at_end"] == 2
