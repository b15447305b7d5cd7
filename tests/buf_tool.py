"""The pinned buf CLI (tools/buf: package.json + package-lock.json, `npm ci` there) for
tests that run `buf curl` against a real server. Missing node/npm is a failure naming
what to install, never a skip: generic-tool support is part of the product."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUF_DIR = ROOT / "tools" / "buf"
BUF = BUF_DIR / "node_modules" / ".bin" / "buf"
_STAMP = BUF_DIR / "node_modules" / ".ecology-lock.sha256"
INSTALL = "cd tools/buf && npm ci"


def ensure_buf() -> Path:
    """tools/buf/node_modules/.bin/buf, installed by `npm ci` when it is missing or the
    lock file changed (one install at a time across parallel sessions)."""
    npm = shutil.which("npm")
    if not (shutil.which("node") and npm):
        pytest.fail(f"buf curl needs Node.js and npm on PATH (node: {shutil.which('node') or 'missing'}, "
                    f"npm: {npm or 'missing'}): install them (Debian: apt-get install nodejs npm), "
                    f"then `{INSTALL}`", pytrace=False)
    lock_hash = hashlib.sha256((BUF_DIR / "package-lock.json").read_bytes()).hexdigest()
    lock_path = Path(tempfile.gettempdir()) / f"ecology-buf-{hashlib.sha1(str(BUF_DIR).encode()).hexdigest()[:12]}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (BUF.exists() and _STAMP.exists() and _STAMP.read_text().strip() == lock_hash):
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BUF_DIR, capture_output=True,
                               text=True, timeout=300)
            if r.returncode != 0:
                pytest.fail(f"`{INSTALL}` failed ({r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)
            _STAMP.write_text(lock_hash + "\n")
    r = subprocess.run([str(BUF), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{BUF} --version failed: {r.stderr}"
    return BUF
