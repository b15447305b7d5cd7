"""Entry point of one agent process (what runs inside an agent's container):

    python -m agent_runtime.run            (or: ecology agent run)

Environment:
    ECOLOGY_SERVER      the world server: "host:port" or "unix:PATH" (required)
    ECOLOGY_CA_FILE     TLS: the CA of the server's certificate (TCP addresses only)
    ECOLOGY_CERT_FILE, ECOLOGY_KEY_FILE   mutual TLS: this agent's client certificate and key
    ECOLOGY_TOKEN       the agent's bearer token, or
    ECOLOGY_TOKEN_FILE  a file holding it (e.g. a mounted secret); ECOLOGY_TOKEN wins
    ECOLOGY_BRAIN       optional: force the brain ("scripted", "llm" or "plan") whatever
                        the agent's configuration says
    ECOLOGY_LOG_LEVEL   optional: debug, info (default), warning, error
Options --server, --token-file, --brain override the environment.

The agent's identity comes from its token; its configuration is its own artifact (see
config.py). Logs are JSON lines on stderr. The process runs until SIGTERM or SIGINT.

Exit codes:
    0  stopped by SIGTERM/SIGINT, or by the operator (a call refused AGENT_STOPPED: ecology
       agent stop); clean, and a supervisor does not restart it
    1  unexpected crash (a bug; restarting is reasonable)
    2  usage: no server address, no token given, or the token file cannot be read (the
       message names the file)
    3  the server does not know the token (UNAUTHENTICATED): restarting will not help
    4  the agent's artifact was deleted: restarting will not help
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_UNAUTHENTICATED, EXIT_DELETED = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecology agent run", description="Run one autonomous agent")
    p.add_argument("--server", help="server address (default $ECOLOGY_SERVER)")
    p.add_argument("--token-file", help="file holding the agent's token (default $ECOLOGY_TOKEN / $ECOLOGY_TOKEN_FILE)")
    p.add_argument("--ca-file", help="TLS: the CA of the server's certificate (default $ECOLOGY_CA_FILE)")
    p.add_argument("--cert-file", help="mutual TLS: this agent's certificate (default $ECOLOGY_CERT_FILE)")
    p.add_argument("--key-file", help="mutual TLS: its private key (default $ECOLOGY_KEY_FILE)")
    p.add_argument("--brain", choices=("scripted", "llm", "plan"), help="override the configured brain "
                                                                        "(default $ECOLOGY_BRAIN)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agent_runtime.log import Logger

    log = Logger(level=os.environ.get("ECOLOGY_LOG_LEVEL", "info"))
    server = args.server or os.environ.get("ECOLOGY_SERVER", "")
    if not server:
        log.error("usage", message="no server address: set ECOLOGY_SERVER (host:port or unix:PATH)")
        return EXIT_USAGE
    from agent_runtime.client import RetryPolicy, TokenError, WorldClient, load_token

    try:
        token = load_token(args.token_file)
    except TokenError as e:
        log.error("usage", message=str(e))
        return EXIT_USAGE
    brain = args.brain or os.environ.get("ECOLOGY_BRAIN", "")
    from agent_runtime.client import TlsOptions
    from agent_runtime.errors import EcologyError
    from agent_runtime.loop import AgentLoop

    try:  # TLS from $ECOLOGY_CA_FILE, $ECOLOGY_CERT_FILE, $ECOLOGY_KEY_FILE
        env = {**os.environ, **{name: value for name, value in (
            ("ECOLOGY_CA_FILE", args.ca_file), ("ECOLOGY_CERT_FILE", args.cert_file),
            ("ECOLOGY_KEY_FILE", args.key_file)) if value}}
        client = WorldClient(server, token, retry=RetryPolicy(), tls=TlsOptions.from_env(env))
    except EcologyError as e:
        log.error("usage", message=str(e))
        return EXIT_USAGE
    loop = AgentLoop(client, brain_override=brain, log=log)
    outcome: dict = {}

    def body() -> None:
        try:
            outcome["code"] = loop.run()
        except BaseException as e:  # noqa: BLE001
            if loop.stopping:
                outcome["code"] = EXIT_OK
            else:
                log.error("crashed", error=repr(e), traceback=traceback.format_exc()[-2000:])
                outcome["code"] = EXIT_CRASH

    signals: list[int] = []

    def on_signal(signum, frame) -> None:
        signals.append(signum)   # only a flag: the main thread does the rest

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=body, name="agent-loop", daemon=True)
    log.info("starting", server=server, brain_override=brain or None, pid=os.getpid())
    worker.start()
    try:
        while worker.is_alive() and not signals:
            worker.join(0.2)
        if signals:
            log.info("signal", signal=signal.Signals(signals[0]).name)
            loop.stop()
            worker.join(5.0)
            if worker.is_alive():
                log.warning("stop_timeout", message="the loop did not end within 5 s; exiting anyway")
            return EXIT_OK
        return outcome.get("code", EXIT_CRASH)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The loop thread is a daemon; grpc threads must not delay the exit.
    os._exit(code)
