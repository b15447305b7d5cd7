"""The MCP bridge: one agent's verbs as Model Context Protocol tools, over stdio.

    ecology mcp --server ADDR --token-file F [--expose ID ...]
    python -m agent_runtime.mcp_bridge ...            (the same, without the server package)

Any MCP-capable assistant that launches this command acts in the world as the agent whose
token it holds, under that agent's limits: every tool call is one call of the World API
(agent_runtime.client.WorldClient), so access contracts, compute, quotas, prices and rate
limits apply exactly as for any other client.

Tools:

* `get_state`, `read`, `write`, `delete`, `invoke` (any method of any artifact),
  `transfer` (scrip, retry-safe), `search` (genesis_store.search), `handbook`
  (genesis_handbook.read);
* one tool per method of the genesis artifacts (the built-in contracts, whose only method
  is `check_permission`, excepted) and of every artifact named with `--expose ID`, named
  `<artifact>__<method>` (e.g. `genesis_ledger__transfer`) with the method's own
  `input_schema` as the tool's input schema. Characters outside `[A-Za-z0-9_-]` in the
  name become `_` (what LLM APIs accept); a name longer than 64 characters or that
  collides with another is left out with a warning on stderr (`invoke` still reaches it).
  The list is rebuilt from the server's interfaces on every `tools/list` (ListArtifacts is
  free; each `--expose` costs one genesis_store.get_metadata invoke).

Results: a success is the JSON of the result as text, plus the same value as
`structuredContent` (an object; a non-object result is `{"result": ...}`); `handbook`'s
text is the page itself. A refusal is a tool error (`isError: true`) whose text starts
with the reason and the message, `ACCESS_DENIED: ...`, then `(field: F)` for bad input and
`(retry after S s)` when waiting helps; `structuredContent` is then `{"error": {reason,
message, field, retry_after}}`. Arguments are checked against the tool's JSON Schema
(draft 2020-12, jsonschema) before anything is sent, and a mismatch is `INVALID_ARGS: ...`
like the server's own refusal. Calling a tool that does not exist is an MCP protocol
error (INVALID_PARAMS), as the specification asks.

Decisions:

* The token is checked once at start (GetState): a wrong token, an unreachable server or
  unreadable TLS files stop the bridge before it serves, with exit code 2 and one line
  `ecology mcp: REASON: message` on stderr (what an MCP host shows in its server log).
* No retries: a refusal with a RetryInfo (RATE_LIMITED, compute debt) is returned to the
  assistant with its delay, which decides; a call is sent once, with a deadline
  (`--timeout`, default 120 s), and mutating calls carry a fresh request id.
* stdout carries only MCP messages (the SDK's stdio transport points fd 1 at stderr while
  it serves); logs go to stderr.
"""

from __future__ import annotations

# Only the standard library at import time: `ecology` builds its parser from add_arguments()
# for every command; grpc, protobuf, jsonschema and the MCP SDK are imported when used.
import argparse
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_runtime.client import WorldClient

log = logging.getLogger("ecology.mcp")

SERVER_NAME = "agent-ecology"
TOOL_NAME_MAX = 64
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")

ID = {"type": "string", "minLength": 1, "maxLength": 128}
REQUEST_ID = {"type": "string", "minLength": 1, "maxLength": 128,
              "description": "Optional idempotency key: a retry with the same key applies nothing twice."}
VERSION = {"type": "integer", "minimum": 0,
           "description": "If > 0, apply only when the artifact's current version equals it (else CONFLICT)."}


def _obj(properties: dict, required: Sequence[str] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


# -- protobuf messages as plain JSON (integers stay integers, timestamps ISO 8601) ----------------

def message_dict(msg) -> dict:
    """Every field of a message (defaults included, unset sub-messages left out)."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.is_repeated:
            out[f.name] = [_value(f, v) for v in value]
        elif f.message_type is not None:
            if msg.HasField(f.name):
                out[f.name] = _value(f, value)
        else:
            out[f.name] = value
    return out


def _value(f, value):
    from google.protobuf import struct_pb2, timestamp_pb2

    from agent_runtime.client import to_python

    if f.message_type is None:
        return value
    if isinstance(value, timestamp_pb2.Timestamp):
        return value.ToJsonString()
    if isinstance(value, (struct_pb2.Struct, struct_pb2.Value, struct_pb2.ListValue)):
        return to_python(value)
    return message_dict(value)


# -- tools -----------------------------------------------------------------------------------------

@dataclass
class Tool:
    """One MCP tool: its schema and the World call behind it."""

    name: str
    description: str
    input_schema: dict
    call: Callable[[WorldClient, dict], Any]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    validator: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from jsonschema import Draft202012Validator

        Draft202012Validator.check_schema(self.input_schema)
        self.validator = Draft202012Validator(self.input_schema)

    def mcp(self):
        import mcp_types as types

        return types.Tool(name=self.name, description=self.description, input_schema=self.input_schema,
                          annotations=types.ToolAnnotations(
                              read_only_hint=self.read_only, destructive_hint=self.destructive,
                              idempotent_hint=self.idempotent or self.read_only, open_world_hint=False))


def _write(w: WorldClient, a: dict) -> Any:
    a = dict(a)
    resp = w.write(a.pop("artifact_id"), a.pop("content"), **a)
    return {"created": resp.created, "artifact": message_dict(resp.artifact)}


def _invoke(w: WorldClient, a: dict) -> Any:
    return w.invoke_args(a["artifact_id"], a["method"], a.get("args", {}), max_spend=a.get("max_spend", 0),
                         request_id=a.get("request_id", ""))


def _handbook(w: WorldClient, a: dict) -> Any:
    return w.invoke("genesis_handbook", "read", page=a.get("page", "rules"))


METHOD_SPEC = _obj({"name": {"type": "string"}, "description": {"type": "string"},
                    "input_schema": {"type": "object"}}, ["name"])


@functools.cache
def verb_tools() -> tuple[Tool, ...]:
    """The tools of the World verbs (and the two helpers everyone needs)."""
    return (
        Tool("get_state", "Your own state: principal id, scrip, compute bucket (balance, rate, capacity, debt), "
             "disk and LLM budget, the server's UTC time, the last event's sequence number and the next mint.",
             _obj({}), lambda w, a: message_dict(w.get_state()), read_only=True),
        Tool("read", "Read one artifact with its content (needs the `read` right from its access contract).",
             _obj({"artifact_id": ID}, ["artifact_id"]), lambda w, a: message_dict(w.read(a["artifact_id"])),
             read_only=True),
        Tool("write", "Create an artifact (the id is unused) or update one (needs the `write` right). `content` "
             "replaces the old content; metadata and state are merged key by key unless replace_*; "
             "expected_version > 0 makes it a compare-and-set. Bytes count against your disk quota.",
             _obj({"artifact_id": ID, "content": {"type": "string"}, "access_contract_id": ID,
                   "can_execute": {"type": "boolean", "description": "only at creation: code with an interface"},
                   "interface": {"type": "array", "items": METHOD_SPEC}, "metadata": {"type": "object"},
                   "state": {"type": "object"}, "expected_version": VERSION, "create_only": {"type": "boolean"},
                   "replace_interface": {"type": "boolean"}, "replace_metadata": {"type": "boolean"},
                   "replace_state": {"type": "boolean"}, "request_id": REQUEST_ID},
                  ["artifact_id", "content"]), _write),
        Tool("delete", "Delete an artifact (needs the `delete` right): it becomes a tombstone and its bytes are freed.",
             _obj({"artifact_id": ID, "expected_version": VERSION, "request_id": REQUEST_ID}, ["artifact_id"]),
             lambda w, a: message_dict(w.delete(a["artifact_id"], expected_version=a.get("expected_version", 0),
                                                request_id=a.get("request_id", ""))), destructive=True),
        Tool("invoke", "Call any method of an executable artifact with named arguments (see its interface, e.g. "
             "through search or the handbook). You pay its cost and price; max_spend caps the scrip it may take.",
             _obj({"artifact_id": ID, "method": {"type": "string", "minLength": 1, "maxLength": 64},
                   "args": {"type": "object"}, "max_spend": {"type": "integer", "minimum": 0},
                   "request_id": REQUEST_ID}, ["artifact_id", "method"]), _invoke),
        Tool("transfer", "Move scrip from you to another principal (genesis_ledger.transfer); retry-safe.",
             _obj({"to": ID, "amount": {"type": "integer", "minimum": 1},
                   "memo": {"type": "string", "maxLength": 200}, "request_id": REQUEST_ID}, ["to", "amount"]),
             lambda w, a: w.transfer(a["to"], a["amount"], memo=a.get("memo", ""), request_id=a.get("request_id")),
             idempotent=True),
        Tool("search", "Case-insensitive search over artifact ids, metadata and interface descriptions "
             "(genesis_store.search); pass next_cursor back for more.",
             _obj({"query": {"type": "string", "minLength": 1, "maxLength": 200},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 500},
                   "cursor": {"type": "string", "maxLength": 128}}, ["query"]),
             lambda w, a: w.invoke("genesis_store", "search", **a), read_only=True),
        Tool("handbook", "A page of the world's handbook (markdown): 'rules' (default), 'costs', 'errors', or "
             "a genesis artifact's id for its methods and arguments.",
             _obj({"page": {"type": "string", "maxLength": 64}}), _handbook, read_only=True),
    )


def tool_name(artifact_id: str, method: str) -> str:
    return _NOT_IN_NAME.sub("_", f"{artifact_id}__{method}")


def _method_tool(artifact: dict, spec: dict) -> Tool:
    from agent_runtime.client import READ_ONLY_METHODS

    aid, method = artifact["id"], spec["name"]
    schema = dict(spec.get("input_schema") or {})
    schema.setdefault("type", "object")  # MCP wants an object schema; arguments always are one
    description = f"{aid}.{method}: {spec.get('description') or '(no description)'}"
    price = (artifact.get("metadata") or {}).get("price")
    if price:
        description += f" Price: {price} scrip per successful call."

    def call(w: WorldClient, a: dict) -> Any:
        return w.invoke_args(aid, method, a)  # an argument may be called request_id or max_spend

    return Tool(tool_name(aid, method), description, schema, call, read_only=(aid, method) in READ_ONLY_METHODS)


class Bridge:
    """The tools of one agent's connection; `call` runs one (blocking: call it in a thread)."""

    def __init__(self, world: WorldClient, expose: Sequence[str] = (), genesis: bool = True) -> None:
        self.world = world
        self.expose = list(dict.fromkeys(expose))
        self.genesis = genesis
        self.tools: dict[str, Tool] = {t.name: t for t in verb_tools()}
        self.principal_id = ""

    # -- discovery ---------------------------------------------------------------------------------

    def _artifacts(self) -> list[dict]:
        """Artifacts whose methods become tools: the genesis ones, then the exposed ones."""
        from agent_runtime.errors import EcologyError

        found: list[dict] = []
        if self.genesis:
            cursor = ""
            while True:  # genesis artifacts are created by the system account
                resp = self.world.list_artifacts(created_by="genesis_system", can_execute=True, page_size=500,
                                                 cursor=cursor)
                for art in resp.artifacts:
                    if art.id.startswith("genesis_") and {m.name for m in art.interface} != {"check_permission"}:
                        found.append(message_dict(art))
                cursor = resp.next_cursor
                if not cursor:
                    break
        for aid in self.expose:
            try:
                found.append(self.world.get_metadata(aid))
            except EcologyError as e:
                log.warning("--expose %s: %s (no tools for it)", aid, e)
        return found

    def refresh(self) -> dict[str, Tool]:
        """Rebuild the tool list from the server's current interfaces."""
        tools = {t.name: t for t in verb_tools()}
        seen: set[tuple[str, str]] = set()
        for art in self._artifacts():
            if art.get("deleted") or not art.get("can_execute"):
                if art["id"] in self.expose:
                    log.warning("--expose %s: not an executable artifact (no tools for it)", art["id"])
                continue
            for spec in art.get("interface") or []:
                if (art["id"], spec["name"]) in seen:
                    continue
                seen.add((art["id"], spec["name"]))
                name = tool_name(art["id"], spec["name"])
                if len(name) > TOOL_NAME_MAX or name in tools:
                    log.warning("no tool for %s.%s: the name %r is %s (use invoke)", art["id"], spec["name"], name,
                                "too long" if len(name) > TOOL_NAME_MAX else "taken")
                    continue
                try:
                    tools[name] = _method_tool(art, spec)
                except Exception as e:  # an interface whose schema jsonschema refuses
                    log.warning("no tool for %s.%s: %s (use invoke)", art["id"], spec["name"], e)
        self.tools = tools
        return tools

    def start(self) -> None:
        """Check the token (GetState) and build the tool list; raises EcologyError."""
        self.principal_id = self.world.get_state().principal_id
        self.refresh()

    # -- calls -------------------------------------------------------------------------------------

    def call(self, name: str, arguments: dict | None):
        """Run one tool: a CallToolResult (isError for every refusal). Unknown tool: KeyError."""
        return self.run_tool(self.tools[name], arguments)

    def run_tool(self, tool: Tool, arguments: dict | None):
        from agent_runtime.errors import EcologyError

        args = dict(arguments or {})
        bad = _first_error(tool.validator, args)
        if bad is not None:
            return error_result("INVALID_ARGS", *bad)
        try:
            result = tool.call(self.world, args)
        except EcologyError as e:
            return error_result(e.reason, e.message, e.field, e.retry_after)
        return ok_result(result, text=result.get("text") if tool.name == "handbook" else None)


def _first_error(validator, instance) -> tuple[str, str | None] | None:
    """The most relevant schema violation as (message, field), or None."""
    from jsonschema.exceptions import best_match

    err = best_match(validator.iter_errors(instance))
    if err is None:
        return None
    path = [str(p) for p in err.absolute_path]
    if err.validator == "required" and isinstance(err.instance, dict):
        path += [next((p for p in err.validator_value if p not in err.instance), "")]
    elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = err.schema.get("properties", {})
        path += [next((p for p in err.instance if p not in allowed), "")]
    where = ".".join(p for p in path if p)
    return (f"{where}: {err.message}" if where else err.message), (where or None)


def ok_result(value: Any, text: str | None = None):
    import mcp_types as types

    structured = value if isinstance(value, dict) else {"result": value}
    if text is None:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def error_result(reason: str, message: str, field: str | None = None, retry_after: float | None = None):
    """A tool error whose text starts with the reason: `REASON: message (field: F) (retry after S s)`."""
    import mcp_types as types

    text = f"{reason}: {message}"
    if field:
        text += f" (field: {field})"
    if retry_after is not None:
        text += f" (retry after {retry_after:.3f} s)"
    error = {"reason": reason, "message": message, "field": field, "retry_after": retry_after}
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content={"error": error},
                                is_error=True)


# -- the MCP server --------------------------------------------------------------------------------

def build_server(bridge: Bridge):
    """The SDK's low-level Server with the bridge's list_tools / call_tool handlers."""
    import anyio.to_thread
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    from agent_runtime.errors import EcologyError

    async def on_list_tools(ctx, params) -> types.ListToolsResult:
        try:
            tools = await anyio.to_thread.run_sync(bridge.refresh)
        except EcologyError as e:  # keep serving the last list
            log.warning("tools/list: could not refresh the interfaces: %s", e)
            tools = bridge.tools
        return types.ListToolsResult(tools=[t.mcp() for t in tools.values()])

    async def on_call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = bridge.tools.get(params.name)
        if tool is None:  # perhaps an artifact exposed since the last tools/list
            await anyio.to_thread.run_sync(_refresh_quietly, bridge)
            tool = bridge.tools.get(params.name)
            if tool is None:
                raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool: {params.name}")
        return await anyio.to_thread.run_sync(bridge.run_tool, tool, params.arguments)

    instructions = (
        f"You act in the Agent Ecology world as the agent {bridge.principal_id!r}: a shared economy of artifacts, "
        "scrip and resources. Every tool is one call under this agent's token, limits and balance. Start with "
        "handbook (page 'rules'), get_state and search. Refusals are tool errors whose text starts with the "
        "reason (e.g. INSUFFICIENT_FUNDS); a '(retry after S s)' says waiting helps.")
    return Server(SERVER_NAME, version=_version(), instructions=instructions,
                  on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def _refresh_quietly(bridge: Bridge) -> None:
    from agent_runtime.errors import EcologyError

    try:
        bridge.refresh()
    except EcologyError as e:
        log.warning("could not refresh the interfaces: %s", e)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("agent-ecology")
    except Exception:
        return "0"


async def serve_stdio(bridge: Bridge) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server(bridge)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


# -- command line ----------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `ecology mcp` (also `python -m agent_runtime.mcp_bridge`)."""
    p.add_argument("--server", help="world server address, host:port or unix:PATH (default $ECOLOGY_SERVER)")
    p.add_argument("--token-file", help="file holding the agent's token (default $ECOLOGY_TOKEN_FILE, "
                                        "else the token in $ECOLOGY_TOKEN)")
    p.add_argument("--expose", action="append", default=[], metavar="ID",
                   help="also offer one tool per method of this artifact (repeatable)")
    p.add_argument("--no-genesis-tools", action="store_true",
                   help="no per-method tools for the genesis artifacts (the verb tools stay)")
    p.add_argument("--ca-file", help="TLS: CA of the server's certificate (default $ECOLOGY_CA_FILE)")
    p.add_argument("--cert-file", help="mutual TLS: this agent's certificate (default $ECOLOGY_CERT_FILE)")
    p.add_argument("--key-file", help="mutual TLS: its private key (default $ECOLOGY_KEY_FILE)")
    p.add_argument("--tls-server-name", help="name checked against the server's certificate "
                                             "(default $ECOLOGY_TLS_SERVER_NAME, else the address's host)")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of one call in seconds (default 120)")
    p.add_argument("--log-level", default=os.environ.get("ECOLOGY_LOG_LEVEL", "warning"),
                   help="stderr log level (default warning)")


class UsageError(Exception):
    pass


def _token(args, env) -> str:
    path = args.token_file or env.get("ECOLOGY_TOKEN_FILE")
    if path:
        try:
            token = open(path, encoding="utf-8").read().strip()
        except OSError as e:
            raise UsageError(f"cannot read the token file {path}: {e.strerror}") from None
    else:
        token = env.get("ECOLOGY_TOKEN", "").strip()
    if not token:
        raise UsageError("no token: pass --token-file or set ECOLOGY_TOKEN_FILE or ECOLOGY_TOKEN")
    return token


def _tls(args, env):
    """TlsOptions from the options and $ECOLOGY_CA_FILE & co., or None (plaintext)."""
    from agent_runtime.client import TlsOptions

    ca = args.ca_file or env.get("ECOLOGY_CA_FILE", "")
    if not ca:
        if args.cert_file or args.key_file:
            raise UsageError("a client certificate needs --ca-file (or ECOLOGY_CA_FILE) too")
        return None
    return TlsOptions(ca, args.cert_file or env.get("ECOLOGY_CERT_FILE", ""),
                      args.key_file or env.get("ECOLOGY_KEY_FILE", ""),
                      args.tls_server_name or env.get("ECOLOGY_TLS_SERVER_NAME", ""))


def run(args, env=None) -> int:
    """Serve MCP on stdin/stdout until the client closes stdin. 2: could not start."""
    import anyio
    import grpc

    from agent_runtime.client import RetryPolicy, WorldClient
    from agent_runtime.errors import EcologyError

    env = os.environ if env is None else env
    logging.basicConfig(stream=sys.stderr, level=str(args.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    world = None
    try:
        target = args.server or env.get("ECOLOGY_SERVER", "")
        if not target:
            raise UsageError("no server address: pass --server or set ECOLOGY_SERVER (host:port or unix:PATH)")
        policy = RetryPolicy(attempts=1, unavailable_attempts=1, wait_for_ready=False, call_timeout=args.timeout)
        world = WorldClient(target, _token(args, env), tls=_tls(args, env), retry=policy)
        bridge = Bridge(world, expose=args.expose, genesis=not args.no_genesis_tools)
        bridge.start()
    except UsageError as e:
        print(f"ecology mcp: {e}", file=sys.stderr)
        return 2
    except EcologyError as e:
        if e.reason == "UNAUTHENTICATED":
            hint = " (the token is not one this server knows)"
        elif e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = f" (no server reachable at {args.server or env.get('ECOLOGY_SERVER')})"
        else:
            hint = ""
        print(f"ecology mcp: {e.reason}: {e.message}{hint}", file=sys.stderr)
        if world is not None:
            world.close()
        return 2
    log.info("serving MCP on stdio as %s with %d tools", bridge.principal_id, len(bridge.tools))
    try:
        anyio.run(serve_stdio, bridge)
    except KeyboardInterrupt:
        pass
    finally:
        world.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ecology mcp", description="Serve one agent's verbs as MCP tools over stdio.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
