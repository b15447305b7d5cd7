"""`ecology mcp`: the MCP bridge as an assistant uses it - the MCP SDK's own client
(stdio_client + ClientSession) launches `ecology mcp` as a subprocess, which speaks to a
real world server; balances and artifacts are checked through the Python SDK."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tests.conftest import ROOT
from tests.test_tls import create_with_cert, tls_server  # noqa: F401  (tls_server: a mutual-TLS server)

VERBS = ["get_state", "read", "write", "delete", "invoke", "transfer", "search", "handbook"]
NO_MINT = "[oracle]\nenabled = false\n"


def _env(extra: dict | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECOLOGY_")}
    return {**base, "PYTHONPATH": str(ROOT), **(extra or {})}


def _params(*args: str, env: dict | None = None) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "server.cli", "mcp", *args],
                                 env=_env(env), cwd=str(ROOT))


@asynccontextmanager
async def mcp_session(server, agent, *args: str, tmp_path: Path, env: dict | None = None):
    """An initialized MCP session with `ecology mcp` acting as `agent`."""
    token_file = tmp_path / f"{agent.agent_id}.token"
    token_file.write_text(agent.token + "\n")
    params = _params("--server", server.socket, "--token-file", str(token_file), *args, env=env)
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def run(coro):
    return asyncio.run(coro)


def text(result) -> str:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


def ok(result) -> dict:
    assert not result.is_error, text(result)
    assert json.loads(text(result)) == result.structured_content
    return result.structured_content


def refused(result, reason: str) -> str:
    """The tool error's text, which starts with the reason."""
    assert result.is_error, text(result)
    assert text(result).startswith(f"{reason}: "), text(result)
    assert result.structured_content["error"]["reason"] == reason
    return text(result)


@pytest.fixture
def world(make_server):
    s = make_server(NO_MINT)
    s.alice, s.bob = s.agent("alice"), s.agent("bob")
    return s


GREETER = ("def greet(name, times=1):\n    return {'greeting': ' '.join(['hello ' + name] * times)}\n"
           "def echo(request_id, max_spend):\n    return {'request_id': request_id, 'max_spend': max_spend}\n")
# Argument names that are also invoke()'s own options: they must reach the method as arguments.
ECHO_SCHEMA = {"type": "object", "properties": {"request_id": {"type": "string"}, "max_spend": {"type": "integer"}},
               "required": ["request_id", "max_spend"]}
GREET_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "minLength": 1},
                                                 "times": {"type": "integer", "minimum": 1, "maximum": 3}},
                "required": ["name"], "additionalProperties": False}


def test_lists_the_verbs_and_one_tool_per_genesis_and_exposed_method(world, tmp_path):
    world.alice.write("alice.greeter", GREETER, can_execute=True,
                      interface=[{"name": "greet", "description": "Greets.", "input_schema": GREET_SCHEMA},
                                 {"name": "echo", "description": "Echoes.", "input_schema": ECHO_SCHEMA}])

    async def body():
        async with mcp_session(world, world.alice, "--expose", "alice.greeter", tmp_path=tmp_path) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            called = await s.call_tool("alice_greeter__greet", {"name": "bob", "times": 2})
            bad = await s.call_tool("alice_greeter__greet", {"name": "bob", "times": 9})
            echo = await s.call_tool("alice_greeter__echo", {"request_id": "r-1", "max_spend": 7})
            return tools, called, bad, echo

    tools, called, bad, echo = run(body())
    assert list(tools)[:len(VERBS)] == VERBS
    # Every genesis method has its tool, with the method's own schema; contracts have none.
    interfaces = {aid: world.alice.get_metadata(aid)["interface"] for aid in
                  ("genesis_ledger", "genesis_store", "genesis_escrow", "genesis_debt", "genesis_handbook",
                   "genesis_event_log", "genesis_rights_registry", "genesis_llm", "genesis_oracle")}
    expected = {f"{aid}__{m['name']}": m for aid, methods in interfaces.items() for m in methods}
    expected["alice_greeter__greet"] = {"input_schema": GREET_SCHEMA, "description": "Greets."}
    expected["alice_greeter__echo"] = {"input_schema": ECHO_SCHEMA, "description": "Echoes."}
    assert set(tools) == set(VERBS) | set(expected)
    for name, spec in expected.items():
        assert tools[name].input_schema == spec["input_schema"], name
        assert spec["description"] in tools[name].description
    assert not any("check_permission" in n for n in tools)
    assert tools["genesis_ledger__transfer"].input_schema["required"] == ["to", "amount"]
    # The verbs' own schemas.
    assert tools["transfer"].input_schema["required"] == ["to", "amount"]
    assert tools["write"].input_schema["required"] == ["artifact_id", "content"]
    assert tools["invoke"].input_schema["properties"]["args"] == {"type": "object"}
    assert tools["get_state"].input_schema == {"type": "object", "properties": {}, "required": [],
                                               "additionalProperties": False}
    assert tools["read"].annotations.read_only_hint and tools["genesis_ledger__balance"].annotations.read_only_hint
    assert not tools["genesis_ledger__transfer"].annotations.read_only_hint
    assert tools["delete"].annotations.destructive_hint
    # The exposed tool runs the artifact's code (in the sandbox) and checks its schema first.
    assert ok(called) == {"greeting": "hello bob hello bob"}
    assert "times" in refused(bad, "INVALID_ARGS")
    assert ok(echo) == {"request_id": "r-1", "max_spend": 7}


def test_get_state_is_the_agents_own(world, tmp_path):
    async def body():
        async with mcp_session(world, world.alice, tmp_path=tmp_path) as s:
            return await s.call_tool("get_state", {})

    state = ok(run(body()))
    sdk = world.alice.get_state()
    assert (state["principal_id"], state["scrip"]) == ("alice", sdk.scrip) == ("alice", 1000)
    assert {f["name"] for f in state["flow"]} == {"compute"}
    assert {s["name"] for s in state["stock"]} == {"disk_bytes", "llm_budget"}
    assert isinstance(state["last_event_seq"], int) and state["now"].endswith("Z")


def test_transfer_moves_scrip_and_a_genesis_method_runs_through_its_own_tool(world, tmp_path):
    async def body():
        async with mcp_session(world, world.alice, tmp_path=tmp_path) as s:
            moved = await s.call_tool("transfer", {"to": "bob", "amount": 7, "memo": "via mcp"})
            direct = await s.call_tool("genesis_ledger__transfer", {"to": "bob", "amount": 3})
            balance = await s.call_tool("genesis_ledger__balance", {"principal_id": "bob"})
            return moved, direct, balance

    moved, direct, balance = run(body())
    assert ok(moved)["amount"] == 7 and ok(direct)["amount"] == 3
    assert (world.alice.balance(), world.bob.balance()) == (990, 1010)
    assert ok(balance) == {"principal_id": "bob", "scrip": 1010}
    memos = [e for e in world.bob.history() if e.get("memo") == "via mcp"]
    assert len(memos) == 1 and memos[0]["amount"] == 7


def test_write_read_search_handbook_and_delete(world, tmp_path):
    async def body():
        async with mcp_session(world, world.alice, tmp_path=tmp_path) as s:
            out = {"written": await s.call_tool("write", {"artifact_id": "notes.alice", "content": "hello",
                                                          "metadata": {"tag": "mcp-notes"}})}
            out["read"] = await s.call_tool("read", {"artifact_id": "notes.alice"})
            out["stale"] = await s.call_tool("write", {"artifact_id": "notes.alice", "content": "x",
                                                       "expected_version": 7})
            out["search"] = await s.call_tool("search", {"query": "mcp-notes"})
            out["handbook"] = await s.call_tool("handbook", {"page": "genesis_ledger"})
            out["deleted"] = await s.call_tool("delete", {"artifact_id": "notes.alice"})
            out["gone"] = await s.call_tool("read", {"artifact_id": "notes.alice"})
            return out

    out = run(body())
    written = ok(out["written"])
    assert written["created"] is True and written["artifact"]["version"] == 1
    art = ok(out["read"])
    assert (art["content"], art["created_by"], art["metadata"], art["version"]) == \
        ("hello", "alice", {"tag": "mcp-notes"}, 1)
    assert refused(out["stale"], "CONFLICT")
    assert [a["id"] for a in ok(out["search"])["artifacts"]] == ["notes.alice"]
    page = out["handbook"]
    assert not page.is_error and text(page).startswith("# genesis_ledger") and "transfer(" in text(page)
    assert ok(out["deleted"])["deleted"] is True
    refused(out["gone"], "DELETED")
    assert world.alice.get_metadata("notes.alice")["deleted"] is True


def test_refusals_are_tool_errors_that_start_with_the_reason(world, tmp_path):
    world.bob.write("bob.private", "mine")

    async def body():
        async with mcp_session(world, world.alice, tmp_path=tmp_path) as s:
            return {
                "funds": await s.call_tool("transfer", {"to": "bob", "amount": 5000}),
                "denied": await s.call_tool("write", {"artifact_id": "bob.private", "content": "alice was here"}),
                "missing": await s.call_tool("genesis_ledger__balance", {"principal_id": "nobody"}),
                "server_args": await s.call_tool("invoke", {"artifact_id": "genesis_ledger", "method": "transfer",
                                                            "args": {"to": "bob", "amount": -1}}),
            }

    out = run(body())
    assert "needs 5000" in refused(out["funds"], "INSUFFICIENT_FUNDS")
    refused(out["denied"], "ACCESS_DENIED")
    refused(out["missing"], "NOT_FOUND")
    # The server's own schema check, through the generic invoke (no schema of its own for args).
    assert "(field: args.amount)" in refused(out["server_args"], "INVALID_ARGS")
    assert (world.alice.balance(), world.bob.balance()) == (1000, 1000)
    assert world.bob.read("bob.private").content == "mine"


def test_input_that_fails_the_tools_schema_is_invalid_args_and_sends_nothing(world, tmp_path):
    async def body():
        async with mcp_session(world, world.alice, tmp_path=tmp_path) as s:
            seq = (await s.call_tool("get_state", {})).structured_content["last_event_seq"]
            out = {
                "type": await s.call_tool("transfer", {"to": "bob", "amount": "ten"}),
                "required": await s.call_tool("genesis_ledger__transfer", {"to": "bob"}),
                "extra": await s.call_tool("genesis_ledger__transfer", {"to": "bob", "amount": 1, "as": "bob"}),
                "range": await s.call_tool("genesis_ledger__transfer", {"to": "bob", "amount": 0}),
                "nested": await s.call_tool("write", {"artifact_id": "t", "content": "", "interface": [{}]}),
            }
            after = (await s.call_tool("get_state", {})).structured_content["last_event_seq"]
            try:
                await s.call_tool("no_such_tool", {})
            except MCPError as e:
                out["unknown"] = e
            return seq, after, out

    seq, after, out = run(body())
    assert "(field: amount)" in refused(out["type"], "INVALID_ARGS")
    assert out["type"].structured_content["error"]["field"] == "amount"
    assert "'amount' is a required property (field: amount)" in refused(out["required"], "INVALID_ARGS")
    assert "(field: as)" in refused(out["extra"], "INVALID_ARGS")
    assert "(field: amount)" in refused(out["range"], "INVALID_ARGS")
    assert "(field: interface.0.name)" in refused(out["nested"], "INVALID_ARGS")
    assert after == seq and (world.alice.balance(), world.bob.balance()) == (1000, 1000)
    assert "unknown tool: no_such_tool" in out["unknown"].message


def test_a_wrong_token_stops_the_bridge_with_a_clear_error(world, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("eco_not-a-token\n")
    r = subprocess.run([sys.executable, "-m", "server.cli", "mcp", "--server", world.socket, "--token-file", str(bad)],
                       input="", capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("ecology mcp: UNAUTHENTICATED: ") and "not one this server knows" in r.stderr

    # What an MCP client sees: the server ends before answering initialize.
    async def body():
        with tempfile.TemporaryFile("w+") as errlog:
            async with stdio_client(_params("--server", world.socket, "--token-file", str(bad)), errlog=errlog) \
                    as (read, write):
                async with ClientSession(read, write) as session:
                    with pytest.raises(MCPError, match="Connection closed"):
                        await session.initialize()
            errlog.seek(0)
            return errlog.read()

    assert "ecology mcp: UNAUTHENTICATED" in run(body())
    # No token at all, no server: usage errors, exit 2.
    none = subprocess.run([sys.executable, "-m", "server.cli", "mcp", "--server", world.socket], input="",
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=60)
    assert none.returncode == 2 and none.stdout == "" and "no token" in none.stderr
    away = subprocess.run([sys.executable, "-m", "server.cli", "mcp", "--server", f"unix:{tmp_path}/none.sock",
                           "--token-file", str(bad)], input="", capture_output=True, text=True, cwd=ROOT, env=_env(),
                          timeout=60)
    assert away.returncode == 2 and away.stdout == "" and "ecology mcp: UNAVAILABLE" in away.stderr


def test_stdout_carries_only_protocol_messages_and_the_environment_gives_the_defaults(world):
    """Raw JSON-RPC over the pipes, configured by $ECOLOGY_SERVER and $ECOLOGY_TOKEN alone, with
    debug logging on: every stdout line is a JSON-RPC message; the logs went to stderr."""
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_state", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "transfer", "arguments": {"to": "bob", "amount": 1_000_000}}},
    ]
    errlog = tempfile.TemporaryFile("w+")  # a file, not a pipe: debug logs cannot block the bridge
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "mcp", "--log-level", "debug"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True,
                            cwd=ROOT, env=_env({"ECOLOGY_SERVER": world.socket, "ECOLOGY_TOKEN": world.alice.token}))
    replies: dict = {}
    try:
        for m in messages:
            proc.stdin.write(json.dumps(m) + "\n")
            proc.stdin.flush()
            while "id" in m and m["id"] not in replies:
                line = proc.stdout.readline()
                assert line, "the bridge closed stdout"
                msg = json.loads(line)
                assert msg["jsonrpc"] == "2.0"
                replies[msg.get("id")] = msg
        proc.stdin.close()  # the client is done: the bridge exits
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    errlog.seek(0)
    err = errlog.read()
    assert proc.returncode == 0
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert "serving MCP on stdio as alice" in err
    assert replies[1]["result"]["serverInfo"]["name"] == "agent-ecology"
    assert "get_state" in {t["name"] for t in replies[2]["result"]["tools"]}
    assert replies[3]["result"]["structuredContent"]["principal_id"] == "alice"
    assert replies[4]["result"]["isError"] is True
    assert replies[4]["result"]["content"][0]["text"].startswith("INSUFFICIENT_FUNDS: ")


def test_the_bridge_reaches_a_server_over_mutual_tls(tls_server, tmp_path):  # noqa: F811
    alice = create_with_cert(tls_server, "alice")
    token = tmp_path / "alice.token"
    token.write_text(alice["token"])
    tls = ["--ca-file", alice["ca_file"], "--cert-file", alice["cert_file"], "--key-file", alice["key_file"]]

    async def body(args, env=None):
        async with stdio_client(_params("--server", tls_server.tcp, "--token-file", str(token), *args, env=env)) \
                as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                return await s.call_tool("get_state", {})

    assert ok(run(body(tls)))["principal_id"] == "alice"
    env = {"ECOLOGY_CA_FILE": alice["ca_file"], "ECOLOGY_CERT_FILE": alice["cert_file"],
           "ECOLOGY_KEY_FILE": alice["key_file"]}
    assert ok(run(body([], env)))["principal_id"] == "alice"
    # Without the client certificate the server refuses the TLS handshake: the bridge does not start.
    r = subprocess.run([sys.executable, "-m", "server.cli", "mcp", "--server", tls_server.tcp, "--token-file",
                        str(token), "--ca-file", alice["ca_file"]], input="", capture_output=True, text=True,
                       cwd=ROOT, env=_env(), timeout=60)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("ecology mcp: UNAVAILABLE")


def test_the_sdks_high_level_client_on_the_newest_protocol(world, tmp_path):
    """mcp.Client negotiates the 2026 era (server/discover, no handshake): the same tools."""
    from mcp import Client

    token = tmp_path / "alice.token"
    token.write_text(world.alice.token)

    async def body():
        async with Client(_params("--server", world.socket, "--token-file", str(token))) as c:
            version = c.protocol_version
            names = [t.name for t in (await c.list_tools()).tools]
            return version, names, await c.call_tool("genesis_ledger__transfer", {"to": "bob", "amount": 5}), \
                await c.call_tool("transfer", {"to": "bob", "amount": 5000})

    version, names, moved, refusal = run(body())
    assert version >= "2026" and names[:len(VERBS)] == VERBS
    assert ok(moved)["balance"] == 995 and world.bob.balance() == 1005
    refused(refusal, "INSUFFICIENT_FUNDS")
