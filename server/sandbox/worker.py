"""The sandbox worker: runs untrusted artifact code, one call at a time.

This file runs INSIDE the sandbox (bubblewrap: no network, read-only interpreter, empty
tmpfs, no server files, seccomp forbidding new processes and threads). It uses only the
standard library. It talks to the server over fds 0 (requests) and 1 (replies) with
length-prefixed JSON frames; stderr is discarded by the server.

A worker is dedicated to one artifact version: the first `load` frame gives it the
source, which is executed once into a fresh module namespace. Then each `call` frame
runs one method. While a call runs, the code may call `invoke(...)` and `pay(...)`;
each becomes a request frame to the server, which alone decides who is calling, checks
permissions and moves money - nothing the code writes to the pipe can change identity.

Limits (address space, file size, open files, core dumps) are set before any untrusted
code runs, soft and hard, so the code cannot raise them.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import struct
import sys
import traceback

_HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024


def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    buf = _HEADER.pack(len(data)) + data
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, need = [], n
    while need:
        chunk = os.read(fd, need)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int):
    (size,) = _HEADER.unpack(_read_exact(fd, 4))
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    return json.loads(_read_exact(fd, size))


class RemoteError(Exception):
    """An error the server returned for a nested invoke or pay; artifact code may catch it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _request(kind: str, **payload):
    write_frame(1, {"type": kind, **payload})
    reply = read_frame(0)
    if reply.get("type") == "error":
        raise RemoteError(reply.get("reason", "EXECUTION_ERROR"), reply.get("message", ""))
    return reply.get("value")


def invoke(artifact_id: str, method: str, /, **args):
    """Invoke a method of any artifact. The server checks permissions and charges the
    account paying for this call (or this artifact, if it has standing). The first two
    parameters are positional-only, so `args` may hold any name - `artifact_id` and
    `method` included (e.g. invoke("genesis_escrow", "purchase", artifact_id="x"))."""
    return _request("invoke", artifact_id=artifact_id, method=method, args=args)


def pay(to: str, amount: int, /):
    """Pay scrip from the account paying for this call."""
    return _request("pay", to=to, amount=amount)


def _set_limits(limits: dict) -> None:
    for name, value in (
        ("RLIMIT_AS", limits.get("memory_bytes")),
        ("RLIMIT_FSIZE", limits.get("file_bytes")),
        ("RLIMIT_NOFILE", limits.get("open_files")),
        ("RLIMIT_NPROC", limits.get("processes")),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_CPU", limits.get("cpu_seconds_total")),
    ):
        if value is not None and hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (int(value), int(value)))


# Failures of a whole call chain: when the code lets such a RemoteError escape, the
# reason travels up unchanged, so the top-level caller sees CALL_DEPTH_EXCEEDED or
# CALL_CYCLE rather than a generic EXECUTION_ERROR.
_CHAIN_REASONS = ("CALL_DEPTH_EXCEEDED", "CALL_CYCLE", "TIMEOUT")


def _describe(exc: BaseException) -> dict:
    # Only the artifact's own frames (filename "<artifact>") are shown: no worker internals.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<artifact>"]
    where = f" (line {frames[-1].lineno})" if frames else ""
    reason = exc.reason if isinstance(exc, RemoteError) and exc.reason in _CHAIN_REASONS else "EXECUTION_ERROR"
    return {"type": "error", "reason": reason,
            "message": f"{type(exc).__name__}: {exc}{where}"[:2000], "exc_type": type(exc).__name__}


def _load(source: str, methods: list[str]) -> tuple[dict | None, dict]:
    namespace = {"__name__": "artifact", "invoke": invoke, "pay": pay, "RemoteError": RemoteError}
    try:
        code = compile(source, "<artifact>", "exec")
        exec(code, namespace)
    except SyntaxError as e:
        return None, {"type": "error", "reason": "INVALID_ARGS",
                      "message": f"code does not compile: {e.msg} (line {e.lineno})"}
    except BaseException as e:  # noqa: BLE001 - report anything the code raised
        return None, _describe(e)
    missing = [m for m in methods if not callable(namespace.get(m))]
    if missing:
        return None, {"type": "error", "reason": "INVALID_ARGS",
                      "message": f"code defines no function for method(s): {', '.join(missing)}"}
    return namespace, {"type": "loaded"}


_ITIMERS = tuple(getattr(signal, n) for n in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF") if hasattr(signal, n))
# Bound now, before any user code runs: the code shares these modules and could rebind
# their attributes.
_settrace, _setprofile, _gc_callbacks, _set_threshold = sys.settrace, sys.setprofile, gc.callbacks, gc.set_threshold
_gc_enable, _gc_disable, _setitimer, _getsignal, _signal = gc.enable, gc.disable, signal.setitimer, \
    signal.getsignal, signal.signal


def _baseline() -> dict:
    """The interpreter state a call may change and that could run code later."""
    handlers = {}
    for sig in signal.valid_signals():
        try:
            handlers[sig] = signal.getsignal(sig)
        except (OSError, ValueError):
            pass
    return {"handlers": handlers, "gc_threshold": gc.get_threshold(), "gc_enabled": gc.isenabled()}


def _quiesce(baseline: dict) -> None:
    """Before a call's reply is sent: undo what would let its code run after it returns
    (trace/profile hooks, gc callbacks, signal handlers, interval timers). Defence in
    depth: seccomp already refuses timers under bubblewrap, and the pool kills a worker
    whose CPU grows while it is idle (what no reset can undo, e.g. a spinning finalizer)."""
    _settrace(None)
    _setprofile(None)
    _gc_callbacks.clear()
    _set_threshold(*baseline["gc_threshold"])
    (_gc_enable if baseline["gc_enabled"] else _gc_disable)()
    for which in _ITIMERS:
        try:
            _setitimer(which, 0)
        except OSError:  # refused by seccomp: nothing could have been armed
            pass
    for sig, handler in baseline["handlers"].items():
        try:
            if _getsignal(sig) is not handler:
                _signal(sig, handler)
        except (OSError, ValueError, TypeError):
            pass


def main() -> None:
    # Protocol fds are 0 and 1; anything the code prints goes to stderr (discarded).
    sys.stdout = sys.stderr
    hello = read_frame(0)
    _set_limits(hello.get("limits", {}))
    baseline = _baseline()
    write_frame(1, {"type": "ready", "pid": os.getpid()})
    namespace = None
    while True:
        try:
            msg = read_frame(0)
        except EOFError:
            return
        kind = msg.get("type")
        if kind == "load":
            namespace, reply = _load(msg["source"], msg.get("methods", []))
            _quiesce(baseline)  # the top level is user code too
            write_frame(1, reply)
        elif kind == "call":
            if namespace is None:
                write_frame(1, {"type": "error", "reason": "EXECUTION_ERROR", "message": "no code loaded"})
                continue
            namespace["context"] = msg.get("context", {})
            try:
                result = namespace[msg["method"]](**msg.get("args", {}))
            except BaseException as e:  # noqa: BLE001 - RecursionError included
                _quiesce(baseline)
                write_frame(1, _describe(e))
                continue
            _quiesce(baseline)
            try:
                write_frame(1, {"type": "done", "value": result})
            except (TypeError, ValueError) as e:
                write_frame(1, {"type": "error", "reason": "INVALID_ARGS",
                                "message": f"result is not plain JSON: {e}"[:500]})
        else:
            write_frame(1, {"type": "error", "reason": "EXECUTION_ERROR", "message": f"unknown frame {kind!r}"})


if __name__ == "__main__":
    main()
