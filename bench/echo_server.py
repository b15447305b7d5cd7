"""The ceiling: a bare grpc.aio echo server, for bench_server.py.

One generic unary handler (`/bench.Echo/Echo`) that returns its request bytes; no
interceptor, no (de)serialisation, same server options and event loop as the world
server. Runs until SIGTERM/SIGINT.

    python bench/echo_server.py --listen 127.0.0.1:0 --ready-file PATH

When it is serving it writes {"pid": ..., "listen": ["host:port"]} to PATH (atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

import grpc

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context) -> bytes:
    return request


class EchoHandler(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        # No serializers: the handler sees and returns raw bytes.
        self._handler = grpc.unary_unary_rpc_method_handler(_echo)

    def service(self, handler_call_details):
        if handler_call_details.method == METHOD:
            return self._handler
        return None


async def serve(listen: str, ready_file: Path) -> None:
    max_msg = 4 * 1024 * 1024  # the world server's default max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_msg),
        ("grpc.max_send_message_length", max_msg),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((EchoHandler(),))
    host = listen.rpartition(":")[0]
    port = server.add_insecure_port(listen)
    await server.start()
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "listen": [f"{host}:{port}"]}))
    tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--ready-file", required=True, type=Path)
    args = p.parse_args()
    asyncio.run(serve(args.listen, args.ready_file))


if __name__ == "__main__":
    main()
