"""The three steps of `genesis_llm.complete` (see server/llm/__init__.py): reserve in the
writer thread, await the backend on the event loop, reconcile in the writer thread.

Idempotency, as for every other mutating call (Kernel.idempotent): a call with a
request_id keeps its first outcome under that id - an answer, or a failure - and a retry
with the same id gets it back without being sent or charged again. Failures that waiting
could fix (retry_after set: the world's tokens-per-minute, an endpoint that said when to
come back, a call still in flight) are not remembered, so the same id runs once it can.
A refusal before the call (budget, arguments) is remembered in the reserving op; a
failure of the model in the op that releases the reservation. A call whose caller went
away (cancelled) has no outcome and is not remembered. A second call with the same id
while the first is still in flight fails CONFLICT with a retry delay.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from server.errors import KernelError, Reason, invalid
from server.genesis.llm import ID, LlmArtifact, Plan
from server.kernel import events, invocation, traces
from server.llm import reservations
from server.llm.backend import Backend, BackendError, Completion, Request
from server.storage.executor import Failed

log = structlog.get_logger("llm")

METHOD = "complete"
IDEMPOTENCY_KEY = f"InvokeArtifact:{ID}.{METHOD}"  # as server/rpc/world.py names invocations
IN_FLIGHT_RETRY_SECONDS = 1.0


class LlmGateway:
    def __init__(self, kernel, executor, backend: Backend) -> None:
        self.kernel = kernel
        self.executor = executor
        self.backend = backend
        self.artifact: LlmArtifact = kernel.genesis[ID]
        self._cleanup: set[asyncio.Task] = set()
        self._pending: dict[int, dict] = {}  # reservation id -> reserved, while the backend works
        self._closed = False
        from server.kernel.commands import Commands

        self.commands = Commands(kernel, executor, llm=self)

    async def complete(self, caller: str, args: dict, request_id: str = "") -> dict:
        reserving = asyncio.ensure_future(self.commands.run("llm_reserve", {"caller": caller, "args": args, "request_id": request_id}))
        try:
            # Shielded: once queued, the op runs even if this call is cancelled; then
            # whatever it reserved is released at once.
            reserved = await asyncio.shield(reserving)
        except asyncio.CancelledError:
            reserving.add_done_callback(self._release_if_reserved)
            raise
        if "replay" in reserved:
            return reserved["replay"]
        self._pending[reserved["id"]] = reserved
        try:
            return await self._call(caller, reserved, request_id)
        finally:
            self._pending.pop(reserved["id"], None)

    async def _call(self, caller: str, reserved: dict, request_id: str) -> dict:
        plan: Plan = reserved["plan"]
        request = Request(model=plan.model, messages=plan.messages, max_tokens=plan.max_tokens,
                          response_format=plan.response_format)
        started = time.monotonic()
        try:
            answer = await self.backend.complete(request)
        except asyncio.CancelledError:  # the caller went away, or the server is stopping
            self._release_soon(reserved)
            raise
        except BackendError as e:
            err = KernelError(Reason.LLM_UNAVAILABLE, f"LLM backend ({self.backend.name}): {e.message}; "
                              "nothing was charged", retry_after=e.retry_after)
            await self._release_cmd([reserved], caller, request_id, err)
            log.warning("llm_failed", principal=caller, model=plan.model, error=e.message,
                        retry_after=e.retry_after)
            raise err from None
        except Exception as e:  # a fault in a backend: contain it
            log.exception("llm_backend_fault", principal=caller, error=repr(e))
            err = KernelError(Reason.LLM_UNAVAILABLE,
                              f"LLM backend ({self.backend.name}) failed unexpectedly; nothing was charged")
            await self._release_cmd([reserved], caller, request_id, err)
            raise err from None
        try:
            return await self.commands.run("llm_settle", {
                "caller": caller, "reserved": reserved, "answer": answer, "request_id": request_id,
                "seconds": time.monotonic() - started})
        except KernelError:
            try:
                await self._release_cmd([reserved])
            except KernelError:
                log.exception("llm_release_failed", reservation=reserved["id"])
            raise

    async def aclose(self) -> None:
        """At shutdown, after the RPC server stopped and before the writer does: release
        the reservations of calls still waiting for the backend (their handlers may be
        cancelled only later). What still slips through is released at the next start."""
        self._closed = True
        pending = list(self._pending.values())
        self._pending.clear()
        if pending:
            await self._release_cmd(pending)
        if self._cleanup:
            await asyncio.gather(*self._cleanup, return_exceptions=True)
        await self.backend.aclose()

    def _release_cmd(self, reserved: list[dict], caller: str = "", request_id: str = "",
                     failure: KernelError | None = None):
        return self.commands.run("llm_release", {"reserved": reserved, "caller": caller, "request_id": request_id,
                                                 "failure": failure})

    # -- ops (writer thread; commands llm_*, server/kernel/commands.py) -------------------

    def _reserve(self, conn, caller: str, args: dict, request_id: str) -> dict | Failed:
        now = self.kernel.clock()
        if request_id:
            if len(request_id) > 128:
                raise invalid("request_id", "at most 128 characters")
            first = self.kernel.first_outcome(conn, caller, request_id, IDEMPOTENCY_KEY)
            if first is not None:
                return {"replay": first()}  # or raises the remembered failure
            if conn.reservation_exists(caller, request_id):
                raise KernelError(Reason.CONFLICT, f"a call with request_id {request_id!r} is still in flight",
                                  field="request_id", retry_after=IN_FLIGHT_RETRY_SECONDS)
            conn.savepoint("llm_reserve")
            try:
                reserved = self._hold(conn, caller, args, request_id, now)
            except KernelError as err:
                conn.rollback_to("llm_reserve")
                conn.release("llm_reserve")
                if err.retry_after is not None:
                    raise
                self.kernel._remember(conn, caller, request_id, IDEMPOTENCY_KEY, False, err.to_dict())
                return Failed(err)
            conn.release("llm_reserve")
            return reserved
        return self._hold(conn, caller, args, request_id, now)

    def _hold(self, conn, caller: str, args: dict, request_id: str, now: float) -> dict:
        """The ordinary invoke checks and compute charge, the plan, the budget hold and the
        world's tokens; fails with nothing held."""
        frame = invocation.Frame(requester=caller, payer=caller, stack=(), deadline=time.monotonic())
        _target, compute = invocation.admit(self.kernel, conn, frame, ID, METHOD, args, now)
        plan = self.artifact.plan(args)
        reservation = reservations.reserve(conn, caller, amount=plan.cost, tokens=plan.tokens, compute=compute,
                                           model=plan.model, request_id=request_id, now=now)
        # Last: the bucket is in memory, so nothing after it may fail and roll the op back
        # (on PostgreSQL the op's held-back writes are still sent after it; PostgreSQL refuses
        # one only if the writer's view is wrong, a bug: then these tokens stay taken).
        self.artifact.take_tokens(plan.tokens, now)
        return {"plan": plan, "id": reservation}

    def _settle(self, conn, caller: str, reserved: dict, answer: Completion, request_id: str,
                seconds: float) -> dict:
        now = self.kernel.clock()
        plan: Plan = reserved["plan"]
        cost = plan.actual_cost(answer.prompt_tokens, answer.completion_tokens)
        charged = reservations.settle(conn, reserved["id"], cost)
        remaining = reservations.budget(conn, caller)[0]
        seq = events.append(conn, "llm.completed", principal_id=caller, artifact_id=ID, now=now, data={
            "model": answer.model, "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens, "cost_micro_usd": charged,
            "reserved_micro_usd": plan.cost, "seconds": round(seconds, 3)})
        # A call without a request id is traced under its llm.completed event's number:
        # never reused (reservation ids are, once released), so no trace overwrites another.
        traces.record_llm_exchange(conn, caller, request_id or f"auto-{seq}", model=answer.model,
                                   messages=plan.messages, answer=answer.content,
                                   max_bytes=self.kernel.config["traces"]["max_field_bytes"], now=now)
        result = {
            "content": answer.content, "model": answer.model,
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
            "cost_micro_usd": charged, "budget_remaining_micro_usd": remaining,
        }
        if request_id:
            self.kernel._remember(conn, caller, request_id, IDEMPOTENCY_KEY, True, result)
        self.artifact.return_tokens(plan.tokens - answer.prompt_tokens - answer.completion_tokens, now)
        return result

    def _release(self, conn, reserved: dict, caller: str = "", request_id: str = "",
                 failure: KernelError | None = None) -> None:
        """Give the reservation back; with `failure` (the model failed) and a request_id,
        also remember that outcome unless it has a retry_after."""
        now = self.kernel.clock()
        released = reservations.release(conn, reserved["id"], now)
        if released:
            self.artifact.return_tokens(reserved["plan"].tokens, now)
        if released and failure is not None and request_id and failure.retry_after is None:
            self.kernel._remember(conn, caller, request_id, IDEMPOTENCY_KEY, False, failure.to_dict())

    def _release_if_reserved(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is None and "plan" in task.result():
            self._release_soon(task.result())

    def _release_soon(self, reserved: dict) -> None:
        if self._closed:  # released by aclose, or else at the next start
            return
        task = asyncio.ensure_future(self._release_cmd([reserved]))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

