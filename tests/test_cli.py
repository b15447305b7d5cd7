"""The `ecology` command as an operator runs it: subprocesses against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime import WorldClient
from tests.conftest import ROOT


def ecology(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECOLOGY_")}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture
def admin_file(server, tmp_path):
    path = tmp_path / "admin.token"
    path.write_text(server.admin_token + "\n")
    return str(path)


def test_agent_create_prints_id_and_a_working_token(server, admin_file):
    out = ecology("agent", "create", "carol", "--server", server.socket, "--admin-token-file", admin_file,
                  "--config-text", '{"prompt": "hi"}', "--endowment", "250")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["agent_id"] == "carol" and created["token"]
    with WorldClient(server.socket, created["token"]) as carol:
        st = carol.get_state()
        assert (st.principal_id, st.scrip) == ("carol", 250)
        assert carol.read("carol").content == '{"prompt": "hi"}'
    # The same name again fails, with a message, and nothing is printed on stdout.
    again = ecology("agent", "create", "carol", "--server", server.socket, "--admin-token-file", admin_file)
    assert again.returncode != 0 and again.stdout == "" and "carol" in again.stderr
    # The agent shows up in `agent list` (the token, from the environment this time).
    listed = ecology("agent", "list", "--server", server.socket, env={"ECOLOGY_ADMIN_TOKEN": server.admin_token})
    assert listed.returncode == 0, listed.stderr
    assert {"agent_id": "carol", "scrip": 250, "deleted": False} in [json.loads(x) for x in listed.stdout.splitlines()]


def test_agent_create_with_a_wrong_admin_token_fails(server, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-admin-token")
    out = ecology("agent", "create", "mallory", "--server", server.socket, "--admin-token-file", str(bad))
    assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr
    assert [a.agent_id for a in server.admin().list_agents()] == []


def test_status_reports_stats_and_the_ledger_invariant(server, admin_file):
    server.agent("alice").transfer("genesis_escrow", 5)
    server.agent("bob")
    out = ecology("status", "--server", server.socket, "--admin-token-file", admin_file)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["ledger_invariant_holds"] is True
    # Every field of GetStatsResponse, in declaration order, zeros included; integers are numbers.
    from ecology.v1 import admin_pb2

    fields = [f.name for f in admin_pb2.GetStatsResponse.DESCRIPTOR.fields]
    assert list(stats) == fields + ["ledger_invariant_holds", "sandbox_note"]
    assert stats["agents"] == 2 and stats["minted"] == 2000 == stats["total_balances"]
    assert stats["burned"] == 0 and stats["tombstones"] == 0 and stats["agent_backend"] == ""
    for name in ("agents", "artifacts", "tombstones", "minted", "burned", "total_balances", "last_event_seq",
                 "ledger_entries", "schema_version"):
        assert type(stats[name]) is int, (name, stats[name])
    assert stats["last_event_seq"] >= 5 and stats["schema_version"] >= 1
    assert server.socket in stats["listen"]
    # `status` finds the server and the token from the data directory too.
    out = ecology("status", "--data-dir", str(server.data_dir), env={"ECOLOGY_ADMIN_TOKEN": server.admin_token})
    assert out.returncode == 0 and json.loads(out.stdout)["ledger_invariant_holds"] is True


# Every operator command, each with what it needs besides the server and the token.
OPERATOR_COMMANDS = [("agent", "create", "dave"), ("agent", "list"), ("status",)]


def one_line_failure(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The command failed as an operator tool should: exit status 1, nothing on stdout,
    exactly one line on stderr, no traceback; the line says `expected`."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecology: "), out.stderr
    assert "Traceback" not in out.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_operator_commands_with_no_server_on_the_data_directory(tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ecology(*command, "--data-dir", str(empty), env={"ECOLOGY_ADMIN_TOKEN": "adm_whatever"})
    one_line_failure(out, "no server is running", str(empty / "server.json"))
    # Without a token either: the missing server is named first.
    one_line_failure(ecology(*command, "--data-dir", str(empty)), "no server is running")
    # A server given but no token anywhere.
    one_line_failure(ecology(*command, "--data-dir", str(empty), "--server", "unix:/nonexistent.sock"),
                     "no admin token", str(empty / "admin.token"))


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_operator_commands_with_the_server_down(make_server, tmp_path, command):
    server = make_server()
    server.kill()  # SIGKILL: server.json stays behind, pointing at nothing
    assert (server.data_dir / "server.json").exists()
    env = {"ECOLOGY_ADMIN_TOKEN": server.admin_token}
    line = one_line_failure(ecology(*command, "--data-dir", str(server.data_dir), env=env), "cannot reach the server")
    assert server.socket in line
    one_line_failure(ecology(*command, "--server", server.tcp, env=env), "cannot reach the server", server.tcp)


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_operator_commands_with_a_wrong_token(server, tmp_path, command):
    bad = tmp_path / "bad.token"
    bad.write_text("adm_not_the_token\n")
    one_line_failure(ecology(*command, "--server", server.socket, "--admin-token-file", str(bad)),
                     "refused the admin token", "UNAUTHENTICATED")
    # An agent's token is not an admin token either.
    agent_token = server.agent("erin").token
    one_line_failure(ecology(*command, "--server", server.socket, env={"ECOLOGY_ADMIN_TOKEN": agent_token}),
                     "refused the admin token", "ADMIN_ONLY")
    # A token file that does not exist, or is empty.
    one_line_failure(ecology(*command, "--server", server.socket, "--admin-token-file", str(tmp_path / "nope")),
                     "cannot read the admin token file")
    (tmp_path / "empty.token").write_text("\n")
    one_line_failure(ecology(*command, "--server", server.socket, "--admin-token-file", str(tmp_path / "empty.token")),
                     "is empty")
    assert "dave" not in [a.agent_id for a in server.admin().list_agents()]


BAD_CONFIGS = [
    ("[agents]\nbogus = 1\n", "agents.bogus"),
    ("[agents]\nendowment = \"lots\"\n", "agents.endowment"),
    ("[agents]\ncompute_rate = true\n", "agents.compute_rate"),
    ("[rate_limits]\nprincipal_rate = -5.0\n", "rate_limits.principal_rate"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ("[server]\nlisten = \"127.0.0.1:1\"\n", "server.listen"),
    ("[costs]\nwrite = \"cheap\"\n", "costs.write"),
]


def serve_all(tmp_path, configs: list[Path]) -> list[subprocess.CompletedProcess]:
    """`ecology serve --config C` for each C, all at once (each must exit by itself)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECOLOGY_")}
    procs = []
    for i, cfg in enumerate(configs):
        args = [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path / f"data{i}"),
                "--listen", f"unix:{tmp_path / f's{i}.sock'}", "--config", str(cfg)]
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**base, "PYTHONPATH": str(ROOT)}))
    out = []
    for p, cfg in zip(procs, configs):
        try:
            stdout, stderr = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail(f"serve with {cfg} did not exit")
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_invalid_config_makes_serve_exit_naming_the_key(tmp_path):
    paths = []
    for i, (config, _) in enumerate(BAD_CONFIGS):
        paths.append(tmp_path / f"bad{i}.toml")
        paths[-1].write_text(config)
    for i, ((config, key), out) in enumerate(zip(BAD_CONFIGS, serve_all(tmp_path, paths))):
        assert out.returncode != 0, config
        assert key in out.stderr and "invalid configuration" in out.stderr, (config, out.stderr)
        assert not (tmp_path / f"data{i}" / "server.json").exists()


def test_unparsable_or_missing_config_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[agents\nendowment = 1\n")
    missing = tmp_path / "missing.toml"
    for cfg, out in zip((broken, missing), serve_all(tmp_path, [broken, missing])):
        assert out.returncode != 0 and str(cfg) in out.stderr, out.stderr
