"""Untrusted execution behind one interface: `Sandbox.call` runs a method of an
artifact's code in an isolated worker process and returns its JSON result; the kernel
answers the code's nested requests (invoke, pay) through `on_request`.

At isolation "none" (`auto` found no working bubblewrap) there is no worker pool at
all: `call` raises CodeError("SANDBOX_UNAVAILABLE") without running anything, and
`check` (the code check of a write) returns 0.0 without running anything, so a write of
code is stored but can never run. No silent fallback to unisolated execution."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.sandbox.notice import isolation_note
from server.sandbox.pool import SandboxSettings, WorkerError, WorkerPool, detect_isolation

__all__ = ["Sandbox", "SandboxSettings", "CodeError", "CallResult"]


class CodeError(Exception):
    """The code failed. `reason`: EXECUTION_ERROR, TIMEOUT, INVALID_ARGS (or a chain
    reason from a nested call), or SANDBOX_UNAVAILABLE: nothing ran (isolation "none")."""

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
        """Raises RuntimeError when sandbox.isolation = "bwrap" cannot be had."""
        self.settings = settings
        self.isolation = detect_isolation(settings.isolation, settings)
        self.pool = WorkerPool(settings, self.isolation) if self.isolation != "none" else None

    @staticmethod
    def unavailable(artifact_id: str) -> CodeError:
        """The refusal at isolation "none" (says how to get isolation)."""
        return CodeError("SANDBOX_UNAVAILABLE", f"{artifact_id} is user code; {isolation_note('none')}")

    @staticmethod
    def key(artifact_id: str, source: str, methods: list[str]) -> tuple[str, str]:
        """A worker is dedicated to one artifact version: its code AND the methods it was
        checked for (an interface-only change must load - and check - the code again)."""
        version = json.dumps([source, sorted(methods)])
        return (artifact_id, hashlib.sha256(version.encode()).hexdigest())

    def call(self, artifact_id: str, source: str, methods: list[str], method: str, args: dict,
             context: dict, deadline: float, on_request: Callable[[dict], dict]) -> CallResult:
        """Run `method(**args)`; raises CodeError. The worker is recycled on any fault."""
        if self.pool is None:
            raise self.unavailable(artifact_id)
        worker, fresh = self._acquire(artifact_id, source, methods)
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

    def _acquire(self, artifact_id: str, source: str, methods: list[str]):
        try:
            return self.pool.acquire(self.key(artifact_id, source, methods))
        except WorkerError as e:  # no worker could be started: nothing ran
            raise CodeError(e.reason, f"the sandbox could not start a worker: {e.message}") from None

    def check(self, artifact_id: str, source: str, methods: list[str], timeout: float) -> float:
        """Load the code once (compile + run its top level) and check every method exists.
        Returns the CPU seconds it used; CodeError carries them on failure. At "none"
        nothing runs (0.0): the code is stored unchecked, and refused when invoked."""
        if self.pool is None:
            return 0.0
        worker, fresh = self._acquire(artifact_id, source, methods)
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
        if self.pool is not None:
            self.pool.close()
