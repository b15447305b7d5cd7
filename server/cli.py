"""The `ecology` command.

  ecology run [--agents N] [--duration S] [--backend auto|docker|bwrap|process|kubernetes] [--data-dir DIR]
              [--dashboard HOST:PORT | --no-dashboard]   (the dashboard is on by default at 127.0.0.1:8765)
  ecology serve --data-dir DIR [--listen ADDR ...] [--config FILE]
  ecology agent create NAME [--config-text JSON] [--endowment N]
  ecology agent list
  ecology agent stop NAME | ecology agent start NAME   (refuse / admit one agent's calls; durable)
  ecology agent run [--server ADDR] [--token-file F] [--brain B]   (one agent's loop; see agent_runtime/run.py)
  ecology mcp --server ADDR --token-file F [--expose ID ...]   (one agent's verbs as MCP tools on stdio)
  ecology agent manifest NAME --server ADDR --token-file F [--namespace NS] [--image IMG] ...
                                (Kubernetes YAML for one agent; see agent_runtime/launcher/kubernetes.py)
  ecology status
  ecology export --data-dir DIR | --database URL --format parquet|csv --out DIR [--force]   (server/export.py)
  ecology replay DATA_DIR --into NEW_DIR [--until SEQ]   (rebuild a world from its oplog; server/replay.py)
  ecology defaults

Operator commands (agent create, agent list, status) find the server with --server
(default $ECOLOGY_SERVER, else the address in <data-dir>/server.json, which a running
server writes) and the admin token with --admin-token-file (default $ECOLOGY_ADMIN_TOKEN,
else <data-dir>/admin.token). Any failure - no server on the data directory, the server
down, a wrong token, a refused call - is one line on stderr ("ecology: ...") and exit
status 1; stdout then stays empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

DEFAULT_DATA_DIR = "./data"
DEFAULT_DASHBOARD = "127.0.0.1:8765"
FENCED_GRACE_SECONDS = 2.0  # a fenced server (lost its writer session) still answers the calls in flight


def _serve(args) -> int:
    from server import logs
    from server.app import WorldServer
    from server.config import ConfigError, load

    logs.configure(args.log_level)
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"ecology: invalid configuration: {e}", file=sys.stderr)
        return 2
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, key, None):
            config.server[key] = str(Path(getattr(args, key)).resolve())
    if getattr(args, "insecure", False):
        config.server["insecure"] = True
    if getattr(args, "metrics", None):
        config.server["metrics_listen"] = args.metrics
    if getattr(args, "database", None):
        if not args.database.startswith(("postgresql://", "postgres://")):
            print("ecology: invalid configuration: --database takes postgresql://USER@HOST:PORT/DB", file=sys.stderr)
            return 2
        config.storage["url"] = args.database
    if getattr(args, "advertise", None):
        config.server["advertise"] = args.advertise

    async def main() -> int:
        server = WorldServer(config, args.data_dir, args.listen or None)
        try:
            await server.start()
        except (ConfigError, RuntimeError) as e:
            print(f"ecology: {e}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "serving" if server.active else "standby", "listen": server.addresses,
                          "data_dir": str(Path(args.data_dir).resolve())}), flush=True)
        stopped = asyncio.create_task(stop.wait())
        fenced = asyncio.create_task(server.fenced.wait())
        await asyncio.wait({stopped, fenced}, return_when=asyncio.FIRST_COMPLETED)
        if server.fenced.is_set():
            # server/standby.py: the writer lock is gone with the database session; exit
            # loudly so that a supervisor restarts this server, as a standby.
            print("ecology: lost the database session holding the writer lock; nothing more is "
                  "applied here; exiting with status 3", file=sys.stderr, flush=True)
            try:
                # A short grace, so that the calls in flight still get their answers
                # (OUTCOME_UNKNOWN, STANDBY) rather than a cut connection: nothing more can
                # be applied here, and the standby takes over meanwhile.
                await server.stop(FENCED_GRACE_SECONDS)
            except Exception:
                pass
            return 3
        await server.stop()
        return 0

    return asyncio.run(main())


def _run(args) -> int:
    from server.config import ConfigError, load
    from server.main_job import main

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"ecology: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.metrics:
        config.server["metrics_listen"] = args.metrics
    return main(args, config)


class OperatorError(Exception):
    """An operator command cannot do its job: printed as one line, exit status 1."""


def _server_address(args) -> str:
    """--server, else $ECOLOGY_SERVER, else the first address in <data-dir>/server.json
    (written by a running server). No guessing beyond that: a data directory without a
    server is an error, not a silent try of some default port."""
    if args.server:
        return args.server
    if os.environ.get("ECOLOGY_SERVER"):
        return os.environ["ECOLOGY_SERVER"]
    ready = Path(args.data_dir) / "server.json"
    try:
        listen = json.loads(ready.read_text())["listen"]
        return listen[0]
    except FileNotFoundError:
        raise OperatorError(f"no server is running on data directory {args.data_dir} ({ready} does not exist); "
                            "start one with `ecology serve`, or name one with --server or $ECOLOGY_SERVER") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise OperatorError(f"{ready} is unreadable ({e}); name the server with --server or $ECOLOGY_SERVER") from None


def _admin_token(args) -> str:
    if args.admin_token_file:
        path = Path(args.admin_token_file)
    elif os.environ.get("ECOLOGY_ADMIN_TOKEN"):
        return os.environ["ECOLOGY_ADMIN_TOKEN"].strip()
    else:
        path = Path(args.data_dir) / "admin.token"
        if not path.exists():
            raise OperatorError(f"no admin token: {path} does not exist "
                                "(use --admin-token-file or $ECOLOGY_ADMIN_TOKEN)")
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise OperatorError(f"cannot read the admin token file {path}: {e.strerror or e}") from None
    if not token:
        raise OperatorError(f"the admin token file {path} is empty")
    return token


def _describe_failure(address: str, err) -> str:
    """One line for a failed admin call: what went wrong, in operator terms."""
    import grpc

    detail = " ".join((err.message or "").split())
    if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and err.reason == err.code.name:
        return f"cannot reach the server at {address} (is it running?): {detail}"
    if err.reason in ("UNAUTHENTICATED", "ADMIN_ONLY"):
        return f"the server at {address} refused the admin token ({err.reason}): {detail}"
    return f"server at {address}: {err.reason}: {detail}"


def operator_command(fn):
    """Run an operator command: every failure (no server, server down, wrong token, a
    refused call) is one line on stderr and exit status 1, never a traceback."""
    import functools

    @functools.wraps(fn)
    def run(args) -> int:
        from agent_runtime.errors import EcologyError

        try:
            address = _server_address(args)
            token = _admin_token(args)
            from agent_runtime.client import AdminClient

            with AdminClient(address, token) as admin:
                return fn(args, admin)
        except OperatorError as e:
            print(f"ecology: {e}", file=sys.stderr)
            return 1
        except EcologyError as e:
            print(f"ecology: {_describe_failure(address, e)}", file=sys.stderr)
            return 1

    return run


@operator_command
def _agent_create(args, admin) -> int:
    created = admin.create_agent(args.name, config=args.config_text, endowment=args.endowment)
    out = {"agent_id": created.agent_id, "token": created.token}
    if args.client_cert:
        from server import tls

        try:
            out.update(tls.issue_agent_cert(Path(args.data_dir), created.agent_id))
        except FileNotFoundError as e:
            print(f"ecology: agent {created.agent_id} created, but no client certificate: {e}", file=sys.stderr)
            print(json.dumps(out))
            return 1
    print(json.dumps(out))
    return 0


def _tls_init(args) -> int:
    from server import tls

    files = tls.init(Path(args.data_dir), args.host)
    print(json.dumps(files, indent=2))
    return 0


@operator_command
def _agent_list(args, admin) -> int:
    # Fetched in full before printing: a failure never leaves half a list on stdout.
    for a in admin.list_agents():
        print(json.dumps({"agent_id": a.agent_id, "scrip": a.scrip, "deleted": a.deleted}))
    return 0


def _agent_run(args) -> int:
    from agent_runtime import run

    argv = []
    if args.server:
        argv += ["--server", args.server]
    if args.token_file:
        argv += ["--token-file", args.token_file]
    if args.brain:
        argv += ["--brain", args.brain]
    return run.main(argv)


def plain(msg) -> dict:
    """A message as JSON-ready data: every field in declaration order, zeros and empty
    lists included, with proto field names; 64-bit integers as numbers (protobuf's JSON mapping writes them
    as strings); timestamps as RFC 3339 strings."""
    from google.protobuf import json_format
    from google.protobuf.descriptor import FieldDescriptor as F

    ints = (F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64)

    def fix(desc, d: dict) -> dict:
        for field in desc.fields:
            if field.name not in d:
                continue
            value = d[field.name]
            if field.type in ints:
                d[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry \
                    and field.message_type.full_name.startswith("ecology."):
                if isinstance(value, list):
                    d[field.name] = [fix(field.message_type, v) for v in value]
                elif isinstance(value, dict):
                    d[field.name] = fix(field.message_type, value)
        return {f.name: d[f.name] for f in desc.fields if f.name in d}  # declaration order

    return fix(msg.DESCRIPTOR, json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))


@operator_command
def _status(args, admin) -> int:
    from server.sandbox.notice import isolation_note

    stats = admin.get_stats()
    d = plain(stats)
    d["ledger_invariant_holds"] = stats.total_balances == stats.minted - stats.burned
    d["sandbox_note"] = isolation_note(stats.sandbox_isolation)  # what runs, what is refused, how to fix
    print(json.dumps(d, indent=2))
    return 0


@operator_command
def _control(args, admin) -> int:
    """ecology pause | resume | step N | agent grant NAME | agent stop/start NAME: one JSON line."""
    if args.control in ("stop", "start"):
        r = (admin.stop_agent if args.control == "stop" else admin.start_agent)(args.name, memo=args.memo)
        print(json.dumps({"agent_id": r.agent_id, "stopped": r.stopped, "changed": r.changed}))
        return 0
    if args.control == "grant":
        r = admin.grant(args.name, scrip=args.scrip, llm_budget_micro_usd=args.llm_budget, memo=args.memo)
        print(json.dumps({"agent_id": args.name, "scrip": r.scrip, "llm_budget_micro_usd": r.llm_budget_micro_usd}))
        return 0
    r = {"pause": admin.pause, "resume": admin.resume, "step": lambda: admin.step(args.calls)}[args.control]()
    print(json.dumps({"paused": r.paused, "steps_left": r.steps_left}))
    return 0


def _mcp(args) -> int:
    from agent_runtime import mcp_bridge

    return mcp_bridge.run(args)


def _agent_manifest(args) -> int:
    """Print the NetworkPolicy, Secret and Pod of one agent as YAML (nothing is applied)."""
    from agent_runtime.launcher import kubernetes as k8s

    try:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"{args.token_file} is empty")
        limits = {"cpus": k8s.parse_cpu(args.cpu), "memory": args.memory}
        tls = {k: Path(f).read_text() for k, f in (("ca", args.ca_file), ("cert", args.cert_file),
                                                    ("key", args.key_file)) if f}
        objects = k8s.agent_manifests(
            args.name, token, args.server, limits, namespace=args.namespace, image=args.image,
            runtime_class=args.runtime_class, server_labels=k8s.parse_labels(args.server_pod_label) or None,
            restart_policy=args.restart_policy, tls=tls)
    except (OSError, ValueError) as e:
        print(f"ecology: {e}", file=sys.stderr)
        return 2
    print(k8s.to_yaml(objects), end="")
    return 0


@operator_command
def _decisions(args, admin) -> int:
    """ecology agent decisions NAME: one JSON line per decision, oldest first."""
    from google.protobuf import json_format

    after, shown, lines = args.after, 0, []
    while True:  # fetched in full before printing: a failure never leaves half a list
        page = admin.list_decisions(args.name, after_seq=after, limit=min(500, args.limit - shown))
        lines += [json.dumps(json_format.MessageToDict(d, preserving_proto_field_name=True)) for d in page.decisions]
        shown += len(page.decisions)
        if not page.next_after_seq or shown >= args.limit:
            break
        after = page.next_after_seq
    for line in lines:
        print(line)
    return 0


@operator_command
def _dashboard(args, admin) -> int:
    """The live web dashboard (server/dashboard): a client of the gRPC API only."""
    from server import dashboard

    try:
        admin.get_stats()  # fail now, in operator terms, if the server or the token is wrong
        host = args.listen.rpartition(":")[0].strip("[]")
        scheme_note = "" if dashboard.is_loopback(host) else " (admin token required: Bearer or ?token=)"
        print(f"dashboard: http://{args.listen}/{scheme_note}", flush=True)
        dashboard.serve(admin, _admin_token(args), args.listen)
    except ValueError as e:
        raise OperatorError(str(e)) from None
    except OSError as e:
        raise OperatorError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
    return 0


def _export(args) -> int:
    """Tables of the world as Parquet or CSV files (server/export.py): reads the database
    read-only, so it works with a server running on it or after a crash."""
    from server.export import ExportError, export

    try:
        manifest = export(args.data_dir, args.format, args.out, force=args.force, database=args.database)
    except ExportError as e:
        print(f"ecology: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ecology: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(Path(args.out).resolve()), "format": args.format,
                      "rows": {t: v["rows"] for t, v in manifest["tables"].items()}}))
    return 0


def _defaults(args) -> int:
    from server.config import defaults_toml

    print(defaults_toml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecology", description="Agent Ecology world server and tools")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the world server (daemon)")
    serve.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    serve.add_argument("--listen", action="append", help="host:port or unix:PATH (repeatable)")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--database", metavar="URL",
                       help="keep the world's state in PostgreSQL (postgresql://USER@HOST:PORT/DB) instead of "
                            "SQLite in the data directory ([storage] url)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--advertise", metavar="ADDR",
                       help="with --database: the address the active server gives clients and standbys "
                            "(default: its first --listen address)")
    serve.add_argument("--tls-cert", help="PEM certificate: TLS on every TCP listener")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="require client certificates from this CA (mutual TLS)")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics")
    serve.add_argument("--insecure", action="store_true",
                       help="allow plaintext TCP on non-loopback addresses (tokens cross the network in clear)")
    serve.set_defaults(fn=_serve)

    run = sub.add_parser("run", help="the main job: a world server and a population of agents")
    run.add_argument("--agents", type=int, default=4, help="number of agents (default 4)")
    run.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    run.add_argument("--backend", default="auto", choices=["auto", "docker", "bwrap", "process", "kubernetes"])
    run.add_argument("--brain", default="scripted", choices=["scripted", "llm"],
                     help="scripted (no LLM) or llm (through genesis_llm; offline model by default)")
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    run.add_argument("--listen", action="append", help="also listen on host:port (repeatable)")
    run.add_argument("--config", help="TOML configuration file")
    run.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics")
    run.add_argument("--dashboard", metavar="HOST:PORT", default=DEFAULT_DASHBOARD,
                     help=f"serve the live web dashboard at http://HOST:PORT/ (default {DEFAULT_DASHBOARD})")
    run.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    for flag, what in (("--ca-file", "the CA of the server's TLS certificate ($ECOLOGY_CA_FILE)"),
                       ("--cert-file", "the agents' client certificate for mutual TLS ($ECOLOGY_CERT_FILE)"),
                       ("--key-file", "its private key ($ECOLOGY_KEY_FILE)")):
        run.add_argument(flag, help=f"{what}; used by --backend kubernetes, whose Pods reach the server over TCP")
    run.set_defaults(fn=_run)

    def operator(sp):
        sp.add_argument("--server", help="server address (host:port or unix:PATH)")
        sp.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
        sp.add_argument("--admin-token-file")

    agent = sub.add_parser("agent", help="manage agents").add_subparsers(dest="agent_cmd", required=True)
    create = agent.add_parser("create", help="create an agent; prints its id and token")
    create.add_argument("name")
    create.add_argument("--config-text", default="{}", help="the agent's configuration (its content)")
    create.add_argument("--endowment", type=int, default=0, help="0: the configured default")
    operator(create)
    create.set_defaults(fn=_agent_create)
    create.add_argument("--client-cert", action="store_true",
                        help="also issue a client certificate for mutual TLS (needs `ecology tls init`)")
    lst = agent.add_parser("list", help="list agents")
    operator(lst)
    lst.set_defaults(fn=_agent_list)
    run = agent.add_parser("run", help="run one agent (inside its container): server and token from "
                                       "$ECOLOGY_SERVER and $ECOLOGY_TOKEN / $ECOLOGY_TOKEN_FILE")
    run.add_argument("--server", help="server address (default $ECOLOGY_SERVER)")
    run.add_argument("--token-file", help="file holding the agent's token")
    run.add_argument("--brain", choices=("scripted", "llm", "plan"), help="override the configured brain")
    run.set_defaults(fn=_agent_run)
    man = agent.add_parser("manifest", help="print one agent's Kubernetes objects (NetworkPolicy, Secret, Pod) "
                                            "as YAML for kubectl apply")
    man.add_argument("name", help="the agent id")
    man.add_argument("--server", required=True,
                     help="the world server as the Pod reaches it: IP:PORT or SERVICE[.NAMESPACE[.svc...]]:PORT")
    man.add_argument("--token-file", required=True, help="file holding the agent's token (goes into the Secret)")
    man.add_argument("--namespace", default="default")
    man.add_argument("--image", default="ecology-agent:latest")
    man.add_argument("--runtime-class", help="a RuntimeClass for a sandboxed runtime, e.g. gvisor")
    man.add_argument("--cpu", default="0.5", help="CPU limit: cores (0.5) or millicores (500m)")
    man.add_argument("--memory", default="256Mi", help="memory limit: 256Mi, 1Gi or bytes (binary units)")
    man.add_argument("--server-pod-label", action="append", default=[],
                     help="KEY=VALUE label of the server Pods, for an in-cluster server "
                          "(default app.kubernetes.io/name=ecology-server; repeatable)")
    man.add_argument("--restart-policy", default="OnFailure", choices=["OnFailure", "Always", "Never"],
                     help="OnFailure (default): the kubelet restarts the agent with its backoff")
    man.add_argument("--ca-file", help="TLS: the server's CA (PEM), put in the Secret")
    man.add_argument("--cert-file", help="mutual TLS: the agent's client certificate (PEM), put in the Secret")
    man.add_argument("--key-file", help="mutual TLS: its private key (PEM), put in the Secret")
    man.set_defaults(fn=_agent_manifest)

    decisions = agent.add_parser("decisions", help="an agent's decision traces (JSON lines, oldest first)")
    decisions.add_argument("name")
    decisions.add_argument("--after", type=int, default=0, help="only decisions after this seq")
    decisions.add_argument("--limit", type=int, default=100)
    operator(decisions)
    decisions.set_defaults(fn=_decisions)
    grant = agent.add_parser("grant", help="give an agent scrip (a recorded mint) and/or LLM budget")
    grant.add_argument("name")
    grant.add_argument("--scrip", type=int, default=0)
    grant.add_argument("--llm-budget", type=int, default=0, help="micro-dollars")
    grant.add_argument("--memo", default="")
    operator(grant)
    grant.set_defaults(fn=_control, control="grant")
    for name, text in (("stop", "stop one agent: its calls are refused AGENT_STOPPED, `ecology run` ends its "
                                "process and does not restart it (durable, until `agent start`)"),
                       ("start", "start a stopped agent again (`ecology run` launches it again)")):
        sp = agent.add_parser(name, help=text)
        sp.add_argument("name")
        sp.add_argument("--memo", default="", help="why (recorded in the agent.stopped/agent.started event)")
        operator(sp)
        sp.set_defaults(fn=_control, control=name)
    for name, text in (("pause", "pause the world: agents' writes, deletes and invokes wait; reads work"),
                       ("resume", "resume a paused world"),
                       ("step", "let the next N mutating calls through a paused world")):
        sp = sub.add_parser(name, help=text)
        if name == "step":
            sp.add_argument("calls", type=int, metavar="N")
        operator(sp)
        sp.set_defaults(fn=_control, control=name)
    mcp = sub.add_parser("mcp", help="serve one agent's verbs as Model Context Protocol tools over stdio "
                                     "(see agent_runtime/mcp_bridge.py)")
    from agent_runtime.mcp_bridge import add_arguments as mcp_arguments  # no MCP SDK import until it runs

    mcp_arguments(mcp)
    mcp.set_defaults(fn=_mcp)

    dash = sub.add_parser("dashboard", help="live web dashboard of a running world (a client of its API)")
    operator(dash)
    dash.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT",
                      help="default 127.0.0.1:8765; a non-loopback address requires the admin token of every request")
    dash.set_defaults(fn=_dashboard)

    status = sub.add_parser("status", help="server statistics and the ledger invariant")
    operator(status)
    status.set_defaults(fn=_status)

    exp = sub.add_parser("export", help="write the world's tables (ledger, events, artifacts, agents, "
                                        "decisions) as Parquet or CSV files")
    exp.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="the world's data directory (read-only)")
    exp.add_argument("--database", metavar="URL",
                     help="the world is on PostgreSQL (postgresql://USER@HOST:PORT/DB, as given to `ecology serve "
                          "--database`); --data-dir is then not read")
    exp.add_argument("--format", default="parquet", help="parquet (default) or csv")
    exp.add_argument("--out", required=True, help="directory for the files (created; must be empty)")
    exp.add_argument("--force", action="store_true", help="overwrite the files of a non-empty --out")
    exp.set_defaults(fn=_export)
    rep = sub.add_parser("replay", help="rebuild a world from its operation log and check it reaches the same state")
    rep.add_argument("data_dir", metavar="DATA_DIR", help="the recorded world's data directory (may be a killed server's)")
    rep.add_argument("--into", required=True, metavar="NEW_DIR", help="an empty (or new) directory for the rebuilt world")
    rep.add_argument("--until", type=int, metavar="SEQ",
                     help="stop once the world's events reach SEQ (events.seq), to inspect that moment")
    rep.add_argument("--database", metavar="URL",
                     help="the recorded world is on PostgreSQL (postgresql://...); it is rebuilt into a SQLite NEW_DIR")
    rep.set_defaults(fn=_replay)

    defaults = sub.add_parser("defaults", help="print every configuration key with its default (TOML)")
    defaults.set_defaults(fn=_defaults)

    tls_cmd = sub.add_parser("tls", help="TLS certificates").add_subparsers(dest="tls_cmd", required=True)
    tls_init = tls_cmd.add_parser("init", help="make a private CA, a server certificate for the given names "
                                               "and the operator's client certificate under <data-dir>/tls/")
    tls_init.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    tls_init.add_argument("--host", action="append", required=True,
                          help="a DNS name or IP address clients use to reach the server (repeatable)")
    tls_init.set_defaults(fn=_tls_init)
    return p


def _replay(args) -> int:
    """Exit 0: the replayed world equals the recorded one (or, with --until, the replay
    reached that moment). 1: a divergence or a different state (named on stderr). 2: the
    replay could not run."""
    from server.replay import ReplayError, replay

    try:
        res = replay(args.data_dir, args.into, args.until, database=args.database)
    except ReplayError as e:
        print(f"ecology: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a damaged database, an unreadable directory
        print(f"ecology: replay failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"replayed {res.ops} operations in {res.seconds:.2f}s into {args.into}")
    if res.divergence:
        print(f"ecology: replay diverged at {res.divergence}", file=sys.stderr)
        return 1
    if args.until is not None:
        if res.note:
            print(res.note)
        print(f"at event {res.stopped_at_event}: digest {res.replay_digest}")
        return 0
    print(f"recorded world: {res.source_digest}")
    print(f"replayed world: {res.replay_digest}")
    if not res.equal:
        print(f"ecology: the replayed world differs: {res.difference}", file=sys.stderr)
        return 1
    print("identical")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
