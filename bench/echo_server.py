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
import queue
import signal
import threading
from pathlib import Path

import grpc

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context) -> bytes:
    return request


class _Hop:
    """--hop: every call is answered by another thread, as the world server's writer
    answers an operation (server/storage/executor.py): the call's future goes through a
    queue to that thread, which takes every queued item at once and hands the results
    back to the event loop with one call_soon_threadsafe per batch. No other work."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="hop", daemon=True).start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            loop = batch[0][2]
            loop.call_soon_threadsafe(self._deliver, batch)

    @staticmethod
    def _deliver(batch) -> None:
        for future, request, _loop in batch:
            if not future.done():
                future.set_result(request)

    async def echo(self, request: bytes, context) -> bytes:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((future, request, loop))
        return await future


class EchoHandler(grpc.GenericRpcHandler):
    def __init__(self, hop: bool = False) -> None:
        # No serializers: the handler sees and returns raw bytes.
        self._handler = grpc.unary_unary_rpc_method_handler(_Hop().echo if hop else _echo)

    def service(self, handler_call_details):
        if handler_call_details.method == METHOD:
            return self._handler
        return None


async def serve(listen: str, ready_file: Path, hop: bool = False) -> None:
    max_msg = 4 * 1024 * 1024  # the world server's default max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_msg),
        ("grpc.max_send_message_length", max_msg),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((EchoHandler(hop),))
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
    p.add_argument("--hop", action="store_true",
                   help="answer every call from another thread, as the world server's writer does")
    args = p.parse_args()
    asyncio.run(serve(args.listen, args.ready_file, args.hop))


if __name__ == "__main__":
    main()
