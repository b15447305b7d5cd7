"""The README's examples run, as written, against a real server (doc tests): README and
behaviour cannot drift.

Marking. A fenced block preceded by the HTML comment `<!-- doctest: NAME -->` is a doc
test; NAME picks its checker in CHECKS below (an unknown NAME fails: a section that opts
in adds its checker here). ```sh blocks run under `bash` (`set -uo pipefail`), ```python
blocks under this interpreter; other languages (```json) are sample output that a
checker compares with the real one. Every ```sh / ```python block of the sections in
OWNED must be marked.

How a block runs: in a fresh view of the repository (a temporary directory of symlinks to
the checkout, where `.venv/bin/ecology` is this interpreter's `ecology` command) with
its own server whose data directory is `./data`, so commands run as they are written.
Only addresses and tokens are substituted: `127.0.0.1:50051` becomes the server's TCP
address and `/tmp/ecology.sock` its unix socket; under ECOLOGY_TEST_DATABASE=postgresql,
where the server keeps the world in PostgreSQL, `ecology export --data-dir ./data` is
given that database's address too (`--database URL`, as an operator would); `$TOKEN` / `$ECOLOGY_TOKEN` hold the
token of agent `alice` (created beforehand, with `bob`, where the block needs them) and
`$ECOLOGY_ADMIN_TOKEN` the admin token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server.config import DEFAULTS
from tests.buf_tool import ensure_buf
from tests.conftest import ROOT, ServerProcess

README = ROOT / "README.md"
MARK = re.compile(r"^<!-- doctest: ([\w-]+) -->\n+```(\w+)\n(.*?)^```$", re.M | re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
# Sections whose every sh/python example must run, and the operator-commands block.
OWNED = ("## Connect an agent (Python SDK)", "## Write your own client (any language)")
OPERATOR_BLOCK = ".venv/bin/ecology agent create alice"
PROXY_VARS = {"grpc_proxy", "http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def marked_blocks(text: str) -> dict[str, tuple[str, str]]:
    blocks: dict[str, tuple[str, str]] = {}
    for m in MARK.finditer(text):
        name, lang, code = m.groups()
        assert name not in blocks, f"two README blocks are marked doctest: {name}"
        blocks[name] = (lang, code)
    return blocks


def sections(text: str) -> dict[str, str]:
    """`## ` sections by heading line (subsections belong to their section)."""
    parts = re.split(r"^(?=## )", text, flags=re.M)
    return {p.splitlines()[0]: p for p in parts if p.startswith("## ")}


# ----------------------------------------------------------------- the harness


class View:
    """A throwaway view of the checkout with a `.venv/bin/ecology` and a server on ./data."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "repo"
        self.dir.mkdir()
        for entry in ROOT.iterdir():
            if entry.name not in (".venv", "data", ".git"):
                (self.dir / entry.name).symlink_to(entry)
        bin_dir = self.dir / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        ecology = bin_dir / "ecology"
        ecology.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m server.cli "$@"\n')
        ecology.chmod(0o755)
        self.server = ServerProcess(self.dir / "data").start()
        self.tokens: dict[str, str] = {}

    def agents(self, *names: str) -> None:
        for name in names:
            self.tokens[name] = self.server.agent(name).token

    def substitute(self, code: str) -> str:
        code = (code.replace("127.0.0.1:50051", self.server.tcp)
                .replace("/tmp/ecology.sock", self.server.socket.removeprefix("unix:")))
        if self.server.database:
            code = code.replace("ecology export --data-dir ./data",
                                f"ecology export --data-dir ./data --database '{self.server.database}'")
        return code

    def run(self, lang: str, code: str, timeout: float = 240) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ECOLOGY_") and k.lower() not in PROXY_VARS and k != "TOKEN"}
        env["ECOLOGY_ADMIN_TOKEN"] = self.server.admin_token
        env["PYTHONPATH"] = str(ROOT)
        if "alice" in self.tokens:
            env["TOKEN"] = env["ECOLOGY_TOKEN"] = self.tokens["alice"]
        code = self.substitute(code)
        if lang == "sh":
            argv = ["bash", "-c", "set -uo pipefail\n" + code]
        elif lang == "python":
            argv = [sys.executable, "-c", code]
        else:
            raise AssertionError(f"doctest blocks are sh or python, not {lang}")
        return subprocess.run(argv, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        self.server.kill()


def json_docs(text: str) -> list:
    """Consecutive JSON documents (buf curl prints indented ones) from `text`."""
    dec, docs, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        doc, i = dec.raw_decode(text, i)
        docs.append(doc)


def comment_of(code: str, needle: str) -> str:
    """The `# ...` comment on the line of `code` containing `needle`."""
    line = next(line for line in code.splitlines() if needle in line)
    return line.split("#", 1)[1].strip()


# ----------------------------------------------------------------- the checks


def check_operator_commands(view: View, code: str, blocks) -> None:
    out = view.run("sh", code)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    created = json.loads(lines[0])
    # The README's comment says what it prints ("..." stands for anything).
    pattern = re.escape(comment_of(code, "agent create").removeprefix("prints ")).replace(re.escape("..."), ".*")
    assert re.fullmatch(pattern, lines[0]), (pattern, lines[0])
    assert created["agent_id"] == "alice" and created["token"].startswith("eco_")
    assert json.loads(lines[1]) == {"agent_id": "alice", "scrip": 1000, "deleted": False}
    end = lines.index("}")  # the end of status's indented JSON object
    status = json.loads("\n".join(lines[2:end + 1]))
    assert status["agents"] == 1 and status["minted"] == 1000 == status["total_balances"]
    assert status["burned"] == 0 and status["ledger_invariant_holds"] is True
    assert status["sandbox_isolation"]
    defaults = tomllib.loads("\n".join(lines[end + 1:]))
    assert set(defaults) == set(DEFAULTS)


def check_python_sdk(view: View, code: str, blocks) -> None:
    view.agents("alice", "bob")
    out = view.run("python", code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == comment_of(code, "print(me.principal_id") == "alice 1000"
    assert lines[1] and lines[1] != "{"  # the handbook's first line, plain text
    event = json.loads(lines[2])
    assert event["type"] == "ledger.transfer" and isinstance(event["seq"], int)
    assert {"from": "alice", "to": "bob", "amount": 10}.items() <= event["data"].items(), event
    sample = json.loads(comment_of(code, '# {"seq"').replace(", ...}", "}"))
    assert sample["type"] == event["type"] and sample["data"].items() <= event["data"].items()
    assert lines[3] == comment_of(code, "print(e.code.name") == "FAILED_PRECONDITION INSUFFICIENT_FUNDS None"
    assert len(lines) == 4
    with view.server.client(view.tokens["bob"]) as bob:
        assert bob.get_state().scrip == 1010
        assert bob.read("notes.alice").content == "hello"


def check_buf_curl(view: View, code: str, blocks) -> None:
    ensure_buf()
    view.agents("alice", "bob")
    out = view.run("sh", code)
    assert out.returncode == 9 * 8, (out.returncode, out.stderr)  # the last command: FAILED_PRECONDITION
    lines = out.stdout.splitlines()
    assert lines[:5] == ["ecology.v1.Admin", "ecology.v1.World", "grpc.health.v1.Health",
                         "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    health, state, transfer = json_docs("\n".join(lines[5:]))
    assert health["statuses"][""] == {"status": "SERVING"}
    assert state["principalId"] == "alice" and state["scrip"] == "1000"
    assert transfer["result"]["to"] == "bob" and transfer["result"]["amount"] == 5
    error = json.loads(out.stderr)
    sample = json.loads(blocks["buf-curl-error"][1])  # the README's sample of this output
    assert error["code"] == sample["code"]
    assert [d["type"] for d in error["details"]] == [d["type"] for d in sample["details"]]
    assert error["details"][-1]["debug"] == sample["details"][-1]["debug"]
    assert error["details"][0]["value"] == sample["details"][0]["value"]  # the ErrorInfo, base64


def check_js_agent(view: View, code: str, blocks) -> None:
    view.agents("alice", "bob")
    out = view.run("sh", code, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    summaries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"ok"')]
    assert len(summaries) == 2, out.stdout
    first, second = summaries
    assert first["ok"] is True and first["principal_id"] == "alice"
    assert first["transfer"]["to"] == "bob" and first["transfer"]["amount"] == 5
    assert second["ok"] is True and second["invoked"]["artifact_id"] == "genesis_ledger"
    with view.server.client(view.tokens["bob"]) as bob:
        assert bob.get_state().scrip == 1005


def check_export(view: View, code: str, blocks) -> None:
    """The export command, then the DuckDB query of the block after it, over a world where
    alice paid bob 300 and 100: the printed Gini and top earners are computed here again
    from the server's own balances and journal."""
    view.agents("alice", "bob", "carol")
    with view.server.client(view.tokens["alice"]) as alice:
        alice.transfer("bob", 300)
        alice.transfer("bob", 100)
    out = view.run("sh", code)
    assert out.returncode == 0, out.stderr
    assert (view.dir / "export" / "agents.parquet").exists() and (view.dir / "export" / "manifest.json").exists()
    query = blocks["export-duckdb"][1]
    out = view.run("python", query)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    with view.server.admin() as admin:
        balances = [a.scrip for a in admin.list_agents() if not a.deleted]
    n, mean = len(balances), sum(balances) / len(balances)
    gini = sum(abs(x - y) for x in balances for y in balances) / (2 * n * n * mean)
    assert lines[0] == f"gini {gini:.3f} over {n} agents" == comment_of(query, "print(f\"gini")
    conn = view.server.db()
    try:
        earned = conn.execute("SELECT credit, SUM(amount), COUNT(*) FROM ledger_entries WHERE memo != 'endowment' "
                              "AND credit IN ('alice', 'bob', 'carol') GROUP BY credit ORDER BY 2 DESC").fetchall()
    finally:
        conn.close()
    assert lines[1:] == [f"{a} {e} {c}" for a, e, c in earned] == [comment_of(query, "print(agent_id")]


CHECKS = {
    "operator-commands": check_operator_commands,
    "python-sdk": check_python_sdk,
    "buf-curl": check_buf_curl,
    "js-agent": check_js_agent,
    "export": check_export,
}
# Sample output, or a follow-on example, used by the check of the block it belongs to.
OUTPUTS = {"buf-curl-error", "export-duckdb"}


# ----------------------------------------------------------------- the tests


def test_every_example_of_the_owned_sections_is_marked():
    text = README.read_text()
    marked = marked_blocks(text)
    assert set(marked) == set(CHECKS) | OUTPUTS, "every marked block needs a check (or is an output)"
    marked_code = {code for _, code in marked.values()}
    by_heading = sections(text)
    for heading in OWNED:
        assert heading in by_heading, f"README lost its section {heading!r}"
        for lang, code in FENCE.findall(by_heading[heading]):
            if lang in ("sh", "python"):
                assert code in marked_code, f"an unmarked {lang} example in {heading!r}:\n{code}"
    operator = [code for lang, code in FENCE.findall(text) if OPERATOR_BLOCK in code]
    assert len(operator) == 1 and marked["operator-commands"][1] == operator[0]


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_readme_example_runs(name, tmp_path):
    blocks = marked_blocks(README.read_text())
    lang, code = blocks[name]
    view = View(tmp_path)
    try:
        CHECKS[name](view, code, blocks)
    finally:
        view.close()
