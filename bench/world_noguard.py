"""Bench only: the world server WITHOUT the RpcGuard, for measuring what the guard costs
(bench_server.py, part 3). Never use this as a server: it has no rate
limits and its Admin service is open to anyone.

    python bench/world_noguard.py --data-dir D --listen ADDR [--config F] [--log-level L]

It is `ecology serve` (server.cli._serve) with two bench-only patches, applied in this
process only, no change to server/:

1. `RpcGuard.guarded(server)` returns the bare server, so the same
   `server.app.WorldServer` registers its handlers unwrapped (and, should a guard ever be
   passed as an interceptor again, `grpc.aio.server` is called with `interceptors=[]`).
2. The servicers still need to know the caller (they read the `CALLER` context variable
   that the guard sets). `WorldService.GetState` and `.InvokeArtifact` are wrapped in the
   minimum any server must do: take the bearer token from the metadata, look the
   principal up (`Credentials.principal_for`: one SHA-256 and a dict look-up), set
   `CALLER`. No rate limits, no in-flight accounting, no access log.

So "no interceptor" here means "authentication only": what the guard adds on top of it
(connection and principal buckets, in-flight slots, the access-log line, the context
proxy, the interceptor hop itself) is what part 3 measures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import sys
from pathlib import Path

import grpc


def _patch() -> None:
    from server.rpc import world
    from server.rpc.guard import CALLER, Caller, RpcGuard

    RpcGuard.guarded = lambda self, server: server

    original_server = grpc.aio.server

    def server_without_interceptors(*args, interceptors=None, **kwargs):
        return original_server(*args, interceptors=[], **kwargs)

    grpc.aio.server = server_without_interceptors

    def with_caller(fn):
        @functools.wraps(fn)
        async def wrapper(self, request, context):
            token = None
            for key, value in context.invocation_metadata():
                if key == "authorization":
                    token = value[7:].strip() if value[:7].lower() == "bearer " else None
                    break
            pid = self.rt.credentials.principal_for(token) if token else None
            if pid is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bench server: unknown token")
            reset = CALLER.set(Caller(pid, False))
            try:
                return await fn(self, request, context)
            finally:
                CALLER.reset(reset)

        return wrapper

    for name in ("GetState", "InvokeArtifact"):
        setattr(world.WorldService, name, with_caller(getattr(world.WorldService, name)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", action="append", required=True)
    p.add_argument("--config")
    p.add_argument("--log-level", default="info")
    args = p.parse_args()

    from server import logs
    from server.app import WorldServer
    from server.config import load

    logs.configure(args.log_level)
    config = load(args.config)
    _patch()

    async def run() -> int:
        server = WorldServer(config, args.data_dir, args.listen)
        await server.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "serving", "listen": server.addresses, "interceptors": 0,
                          "data_dir": str(Path(args.data_dir).resolve())}), flush=True)
        await stop.wait()
        await server.stop()
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
