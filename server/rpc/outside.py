"""Sandbox work for RPC calls, done outside the writer thread.

The writer thread never runs user code (DESIGN.md, Isolation). Kernel operations that
need it raise `contracts.NeedWork` (a user contract's decision, a code check); this layer
does that work in a worker thread of its own pool and runs the operation again with the
result, at most `MAX_ROUNDS` times (then CONFLICT with a RetryInfo). Invocations of user
code go through `invocation.Planner` (two phases: the code runs here, its effects apply
atomically in one writer operation).

Per-principal cap: a principal may have at most `sandbox.max_in_flight_per_principal`
pieces of sandbox work running at once (a call's user code with all its nested calls, a
contract check, a code check). Over it the call fails at once with RATE_LIMITED and a
RetryInfo - it does not wait, so it holds no worker thread and no writer time - and one
agent can never occupy every worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server.errors import KernelError, Reason
from server.kernel import contracts, invocation

MAX_ROUNDS = 4
RATE_LIMIT_RETRY_SECONDS = 0.1
SUBMIT_TIMEOUT_SECONDS = 60.0


class Outside:
    def __init__(self, kernel, executor, *, threads: int = 32) -> None:
        self.kernel = kernel
        self.executor = executor
        from server.kernel.commands import Commands

        self.commands = Commands(kernel, executor)
        self.cap = int(kernel.config["sandbox"]["max_in_flight_per_principal"])
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox-work")
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def in_flight(self, principal: str) -> int:
        with self._lock:
            return self._in_flight.get(principal, 0)

    def acquire(self, principal: str) -> None:
        """Take one of `principal`'s sandbox slots, or fail RATE_LIMITED."""
        with self._lock:
            n = self._in_flight.get(principal, 0)
            if n >= self.cap:
                raise KernelError(
                    Reason.RATE_LIMITED,
                    f"{principal} already has {n} calls running in the sandbox "
                    f"(sandbox.max_in_flight_per_principal = {self.cap}); retry when one ends",
                    retry_after=RATE_LIMIT_RETRY_SECONDS)
            self._in_flight[principal] = n + 1

    def release(self, principal: str) -> None:
        with self._lock:
            left = self._in_flight[principal] - 1
            if left:
                self._in_flight[principal] = left
            else:
                del self._in_flight[principal]

    def do_work(self, item, work: invocation.Work) -> None:
        """The sandbox work one NeedWork asks for; runs in a worker thread."""
        if isinstance(item, contracts.Evaluation):
            evaluator = self.kernel.contract_evaluator
            if evaluator is None:
                raise KernelError(Reason.SANDBOX_UNAVAILABLE, "user contracts need a sandbox")
            decision, cpu = evaluator.check_with_cpu(item.contract, item.artifact_id, item.action,
                                                     item.requester_id, item.context)
            work.decisions[item.key] = decision
            work.cpu_seconds += cpu
        elif isinstance(item, contracts.CodeCheck):
            self.kernel.precheck_code(item.artifact_id, item.content, item.interface)
        else:  # pragma: no cover - a kernel bug
            raise KernelError(Reason.INTERNAL, "unknown sandbox work")

    async def off_writer(self, principal: str, fn: Callable, *args) -> Any:
        """Run `fn(*args)` in a worker thread on one of `principal`'s sandbox slots. The
        slot is given back when the thread is done - not when the RPC is cancelled, so a
        caller cannot dodge the cap by giving up on its calls."""
        self.acquire(principal)

        def work():
            try:
                return fn(*args)
            finally:
                self.release(principal)

        try:
            future = self.pool.submit(work)
        except BaseException:
            self.release(principal)
            raise
        return await asyncio.wrap_future(future)

    async def run(self, principal: str, command: str, inputs: dict) -> Any:
        """Run the command (server/kernel/commands.py) with `inputs` plus the sandbox work
        done for it (`work`, which the command wraps its body in Kernel.with_work with),
        doing the sandbox work it asks for between rounds."""
        work = invocation.Work()
        for _ in range(MAX_ROUNDS):
            try:
                return await self.commands.run(command, {**inputs, "work": work})
            except contracts.NeedWork as need:
                await self.off_writer(principal, self.do_work, need.item, work)
        raise KernelError(Reason.CONFLICT, "what this call depends on kept changing; retry", retry_after=0.1)

    async def invoke(self, caller: str, artifact_id: str, method: str, args: dict, *,
                     request_id: str = "", max_spend: int = 0) -> Any:
        """InvokeArtifact: a genesis method runs as one operation; user code runs in two
        phases (invocation.Planner) in a worker thread."""
        kernel = self.kernel
        inputs = {"caller": caller, "request_id": request_id, "artifact_id": artifact_id, "method": method,
                  "args": args, "max_spend": max_spend}

        def op(chain: invocation.Chain):
            return self.commands.op("invoke", {**inputs, "chain": chain})

        if artifact_id in kernel.genesis or kernel.sandbox is None:
            work = invocation.Work()
            for _ in range(MAX_ROUNDS):
                try:
                    return await self.executor.run(op(invocation.Chain(now=kernel.clock(), work=work)))
                except contracts.NeedWork as need:
                    await self.off_writer(caller, self.do_work, need.item, work)
            raise KernelError(Reason.CONFLICT, "what this call depends on kept changing; retry", retry_after=0.1)
        loop = asyncio.get_running_loop()

        def submit(chain: invocation.Chain) -> Any:
            future = asyncio.run_coroutine_threadsafe(self.executor.run(op(chain)), loop)
            return future.result(timeout=SUBMIT_TIMEOUT_SECONDS)  # the server is stopping if it takes this long

        return await self.off_writer(caller, invocation.Planner(kernel, submit, self.do_work, caller, max_spend).run)
