"""Untrusted execution behind one interface: `Sandbox.call` runs a method of an
artifact's code in an isolated worker process and returns its JSON result; the kernel
answers the code's nested requests (invoke, pay) through `on_request`."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.sandbox.pool import SandboxSettings, WorkerError, WorkerPool

__all__ = ["Sandbox", "SandboxSettings", "CodeError", "CallResult"]


class CodeError(Exception):
    """The code failed. `reason`: EXECUTION_ERROR, TIMEOUT or INVALID_ARGS."""

    def __init__(self, reason: str, message: str, cpu_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.cpu_seconds = cpu_seconds  # used before failing: still charged


@dataclass
class CallResult:
    value: object
    cpu_seconds: float


class Sandbox:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.pool = WorkerPool(settings)

    @property
    def isolation(self) -> str:
        return self.pool.isolation

    @staticmethod
    def key(artifact_id: str, source: str, methods: list[str]) -> tuple[str, str]:
        """A worker is dedicated to one artifact version: its code AND the methods it was
        checked for (an interface-only change must load - and check - the code again)."""
        version = json.dumps([source, sorted(methods)])
        return (artifact_id, hashlib.sha256(version.encode()).hexdigest())

    def call(self, artifact_id: str, source: str, methods: list[str], method: str, args: dict,
             context: dict, deadline: float, on_request: Callable[[dict], dict]) -> CallResult:
        """Run `method(**args)`; raises CodeError. The worker is recycled on any fault."""
        worker, fresh = self.pool.acquire(self.key(artifact_id, source, methods))
        healthy = False
        cpu_before = worker.cpu_seconds()
        try:
            if fresh:
                reply = worker.exchange({"type": "load", "source": source, "methods": methods},
                                        deadline, on_request)
                if reply.get("type") != "loaded":
                    raise CodeError(str(reply.get("reason", "EXECUTION_ERROR")),
                                    str(reply.get("message", "the code failed to load")))
            reply = worker.exchange({"type": "call", "method": method, "args": args, "context": context},
                                    deadline, on_request)
            if reply.get("type") == "done":
                healthy = True
                return CallResult(reply.get("value"), max(0.0, worker.cpu_seconds() - cpu_before))
            if reply.get("type") == "error":
                healthy = True  # the code raised; the process itself is fine
                raise CodeError(str(reply.get("reason", "EXECUTION_ERROR")), str(reply.get("message", "")))
            raise CodeError("EXECUTION_ERROR", "the code's process sent an unexpected reply")
        except CodeError as e:
            e.cpu_seconds = max(0.0, worker.cpu_seconds() - cpu_before)
            raise
        except WorkerError as e:
            raise CodeError(e.reason, e.message, max(0.0, worker.cpu_seconds() - cpu_before)) from None
        finally:
            self.pool.release(worker, healthy)

    def check(self, artifact_id: str, source: str, methods: list[str], timeout: float) -> float:
        """Load the code once (compile + run its top level) and check every method exists.
        Returns the CPU seconds it used; CodeError carries them on failure."""
        worker, fresh = self.pool.acquire(self.key(artifact_id, source, methods))
        healthy = False
        cpu_before = worker.cpu_seconds()
        try:
            if not fresh:
                healthy = True
                return 0.0
            reply = worker.exchange({"type": "load", "source": source, "methods": methods},
                                    time.monotonic() + timeout, lambda m: {"type": "error", "reason": "EXECUTION_ERROR",
                                                                           "message": "no invoke or pay while loading"})
            if reply.get("type") != "loaded":
                raise CodeError(str(reply.get("reason", "EXECUTION_ERROR")), str(reply.get("message", "")),
                                max(0.0, worker.cpu_seconds() - cpu_before))
            healthy = True
            return max(0.0, worker.cpu_seconds() - cpu_before)
        except WorkerError as e:
            raise CodeError(e.reason, e.message, max(0.0, worker.cpu_seconds() - cpu_before)) from None
        finally:
            self.pool.release(worker, healthy)

    def close(self) -> None:
        self.pool.close()
