"""The README's error table and configuration claims cannot drift from the code."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from server.config import DEFAULTS, build
from server.errors import REASON_HELP, Reason

ROOT = Path(__file__).resolve().parent.parent


def test_readme_error_table_lists_every_reason_with_its_code():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([A-Z_]+) \|", readme, flags=re.M))
    assert rows == {r.value: r.code.name for r in Reason}
    assert set(REASON_HELP) == set(Reason)


def test_ecology_defaults_prints_a_config_the_server_accepts():
    out = subprocess.run([sys.executable, "-m", "server.cli", "defaults"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    parsed = tomllib.loads(out)
    assert build(parsed).data == build().data
    assert set(parsed) == set(DEFAULTS)
