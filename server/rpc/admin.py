"""The Admin service (operators)."""

from __future__ import annotations

import asyncio
import time

from ecology.v1 import admin_pb2, admin_pb2_grpc, world_pb2
from server.errors import KernelError, Reason, invalid
from server.kernel import artifacts, events, traces
from server.rpc import convert
from server.rpc.pause import READ_ONLY_GENESIS
from server.rpc.status import abort
from server.rpc.world import event_pages, event_stream, translate_errors
from server.storage.db import SCHEMA_VERSION

ACTIVE_SECONDS = 60.0


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, runtime) -> None:
        self.rt = runtime
        self.kernel = runtime.kernel

    @translate_errors
    async def CreateAgent(self, request, context):
        overrides = {
            "endowment": request.endowment, "rpc_rate": request.rpc_rate, "rpc_burst": request.rpc_burst,
            "compute_rate": request.compute_rate, "compute_capacity": request.compute_capacity,
            "disk_quota_bytes": request.disk_quota_bytes, "llm_budget_micro_usd": request.llm_budget_micro_usd,
        }
        limits = self.rt.config.limits
        metadata = convert.plain_struct(request.metadata, "metadata", limits)
        interface = [convert.method_spec(m, limits, i) for i, m in enumerate(request.interface)]
        # Executable agent code is checked outside the writer first (server/rpc/outside.py).
        d = await self.rt.outside.run("admin", "create_agent", {
            "name": request.name, "config": request.config, "metadata": metadata, "overrides": overrides,
            "access_contract_id": request.access_contract_id, "interface": interface})
        self.rt.credentials.add(d["token"], d["agent_id"], d["rpc_rate"], d["rpc_burst"])
        return admin_pb2.CreateAgentResponse(agent_id=d["agent_id"], token=d["token"],
                                             agent=convert.artifact(d["agent"]))

    @translate_errors
    async def ListAgents(self, request, context):
        items, nxt = self.kernel.list_agents(self.rt.reader, request.page_size, request.cursor)
        stopped = self.rt.gate.stopped
        out = []
        for a in items:
            summary = convert.agent_summary(a)
            summary.stopped = a["agent_id"] in stopped
            summary.state, summary.idle_seconds = self._state(a, summary.stopped)
            out.append(summary)
        return admin_pb2.ListAgentsResponse(agents=out, next_cursor=nxt)

    @translate_errors
    async def GetStats(self, request, context):
        s = self.kernel.stats(self.rt.reader)
        return admin_pb2.GetStatsResponse(
            now=convert.timestamp(s["now"]), agents=s["agents"], artifacts=s["artifacts"],
            tombstones=s["tombstones"], minted=s["minted"], burned=s["burned"],
            total_balances=s["total_balances"], last_event_seq=s["last_event_seq"],
            ledger_entries=s["ledger_entries"], uptime_seconds=time.monotonic() - self.rt.started,
            schema_version=SCHEMA_VERSION, listen=self.rt.addresses,
            sandbox_isolation=self.rt.sandbox.isolation if self.rt.sandbox else "none",
            agent_backend=self.rt.agent_backend, paused=self.rt.gate.paused, steps_left=self.rt.gate.steps_left,
            agents_active=self.rt.guard.active_principals(ACTIVE_SECONDS), agents_stopped=len(self.rt.gate.stopped),
            **self._sandbox_workers())

    def _state(self, a: dict, stopped: bool) -> tuple[str, float]:
        """See AgentSummary.state."""
        act = self.rt.guard.activity(a["agent_id"])
        idle = -1.0 if act is None else round(act[2], 3)
        if stopped:
            return "stopped", idle
        if a["deleted"] or act is None:
            return "dead", idle
        in_flight, streams, ago = act
        if in_flight or ago < 2.0:
            return "acting", idle
        if streams or ago < ACTIVE_SECONDS:
            return "sleeping", idle
        return "dead", idle

    def _sandbox_workers(self) -> dict:
        pool = self.rt.sandbox.pool if self.rt.sandbox is not None else None
        st = pool.stats() if pool is not None else {"warm": 0, "idle": 0, "started": 0}
        return {"sandbox_workers_warm": st["warm"], "sandbox_workers_idle": st["idle"],
                "sandbox_workers_started": st["started"]}

    # -- run control and grants (server/rpc/pause.py, server/kernel/grants.py) -------------

    async def _control(self, type_: str, change) -> admin_pb2.WorldControlResponse:
        gate = self.rt.gate
        change()
        data = {"paused": gate.paused, "steps_left": gate.steps_left}
        await self.rt.outside.commands.run("control", {"type": type_, "data": data})
        return admin_pb2.WorldControlResponse(paused=gate.paused, steps_left=gate.steps_left)

    @translate_errors
    async def Pause(self, request, context):
        return await self._control("world.paused", self.rt.gate.pause)

    @translate_errors
    async def Resume(self, request, context):
        return await self._control("world.resumed", self.rt.gate.resume)

    @translate_errors
    async def Step(self, request, context):
        return await self._control("world.stepped", lambda: self.rt.gate.step(request.calls))

    @translate_errors
    async def Grant(self, request, context):
        d = await self.rt.outside.commands.run("grant", {
            "agent_id": request.agent_id, "scrip": request.scrip, "llm_budget": request.llm_budget_micro_usd,
            "memo": request.memo})
        return admin_pb2.GrantResponse(**d)

    @translate_errors
    async def ListDecisions(self, request, context):
        items, nxt = traces.list_decisions(self.rt.reader, request.agent_id, after=request.after_seq,
                                           limit=request.limit)
        return admin_pb2.ListDecisionsResponse(decisions=[admin_pb2.Decision(
            seq=d["seq"], at=convert.timestamp(d["at"]), step=d["step"], observed=convert.value(d["observed"]),
            action=convert.value(d["action"]), outcome=convert.value(d["outcome"]),
            llm_request_ids=d["llm_request_ids"], truncated=d["truncated"],
            llm=[admin_pb2.LlmExchange(request_id=x["request_id"], model=x["model"], prompt=convert.value(x["prompt"]),
                                       answer=x["answer"], truncated=x["truncated"], at=convert.timestamp(x["at"]))
                 for x in d["llm"]]) for d in items], next_after_seq=nxt)

    async def WatchEvents(self, request, context):
        """World.Subscribe's stream for the operator (server/rpc/world.py event_stream)."""
        async for message in event_stream(self.rt, request, context):
            yield message

    async def WatchEventBatches(self, request, context):
        """WatchEvents' events, up to max_events per message, at most one message per
        interval_ms while the stream is live (server/rpc/world.py event_pages)."""
        try:
            if not 0 <= request.interval_ms <= 10_000:
                raise invalid("interval_ms", "must be 0..10000")
            if not 0 <= request.max_events <= 1000:
                raise invalid("max_events", "must be 0..1000 (0 means 1000)")
        except KernelError as err:
            await abort(context, err)
        limit, pause = request.max_events or 1000, request.interval_ms / 1000
        async for page in event_pages(self.rt, request, context, limit=limit):
            yield admin_pb2.EventBatch(events=page)
            if pause and len(page) < limit:  # a full batch: a backlog, the next goes at once
                await asyncio.sleep(pause)

    # -- stopping one agent (server/rpc/pause.py WorldGate.stopped, server/storage/stopped.py) --

    def _agent(self, agent_id: str) -> None:
        artifacts.check_id(agent_id, "agent_id")
        art = artifacts.get(self.rt.reader, agent_id)
        if art is None or not (art.has_standing and art.can_execute) or agent_id.startswith(artifacts.RESERVED_PREFIX):
            raise KernelError(Reason.NOT_FOUND, f"no agent {agent_id!r}", field="agent_id")

    async def _set_stopped(self, agent_id: str, memo: str, stop: bool) -> admin_pb2.AgentControlResponse:
        self._agent(agent_id)
        if len(memo) > 200:
            raise invalid("memo", "at most 200 characters")
        changed = await self.rt.outside.commands.run("agent_control", {
            "agent_id": agent_id, "memo": memo, "stop": stop})
        (self.rt.gate.stopped.add if stop else self.rt.gate.stopped.discard)(agent_id)
        return admin_pb2.AgentControlResponse(agent_id=agent_id, stopped=stop, changed=changed)

    @translate_errors
    async def StopAgent(self, request, context):
        return await self._set_stopped(request.agent_id, request.memo, True)

    @translate_errors
    async def StartAgent(self, request, context):
        return await self._set_stopped(request.agent_id, request.memo, False)

    # -- the operator's reads (the dashboard's: server/dashboard) ---------------------------

    @translate_errors
    async def ListEvents(self, request, context):
        limit = request.limit or 100
        if not 1 <= limit <= 1000:
            raise invalid("limit", "must be 1..1000 (0 means 100)")
        if request.after_seq < 0:
            raise invalid("after_seq", "must not be negative")
        max_filters = self.rt.config.limits["max_subscribe_filters"]
        for name in ("types", "artifact_ids", "principal_ids"):
            if len(getattr(request, name)) > max_filters:
                raise invalid(name, f"at most {max_filters} entries")
        found, cursor = events.scan(self.rt.reader, after=request.after_seq, limit=limit, types=tuple(request.types),
                                    artifact_ids=request.artifact_ids, principal_ids=request.principal_ids)
        last = events.last_seq(self.rt.reader)
        return admin_pb2.ListEventsResponse(events=[convert.event(e) for e in found], scanned_to=cursor,
                                            more=cursor < last)

    @translate_errors
    async def ListArtifacts(self, request, context):
        limits = self.rt.config.limits
        items, nxt = self.kernel.list_artifacts(
            self.rt.reader, created_by=request.created_by, kind=request.kind,
            has_standing=request.has_standing if request.HasField("has_standing") else None,
            can_execute=request.can_execute if request.HasField("can_execute") else None,
            metadata_equals=convert.plain_struct(request.metadata_equals, "metadata_equals", limits),
            include_deleted=request.include_deleted, page_size=request.page_size, cursor=request.cursor)
        return world_pb2.ListArtifactsResponse(artifacts=[convert.artifact(a) for a in items], next_cursor=nxt)

    @translate_errors
    async def GetArtifact(self, request, context):
        artifacts.check_id(request.artifact_id)
        art = artifacts.get(self.rt.reader, request.artifact_id)
        if art is None:
            raise KernelError(Reason.NOT_FOUND, f"no artifact {request.artifact_id!r}", field="artifact_id")
        return admin_pb2.GetArtifactResponse(artifact=convert.artifact(art.to_dict()))

    @translate_errors
    async def QueryGenesis(self, request, context):
        key = (request.artifact_id, request.method)
        if key not in READ_ONLY_GENESIS:
            raise invalid("method", "only the read-only genesis methods: " + ", ".join(
                f"{a}.{m}" for a, m in sorted(READ_ONLY_GENESIS)))
        args = convert.plain_struct(request.args, "args", self.rt.config.limits)
        art = artifacts.require(self.rt.reader, request.artifact_id)
        artifacts.validate_args(art, request.method, args)
        # On the writer, as an agent's invocation of it runs (genesis_debt.status settles
        # overdue debts first); the system account is the caller, nothing is charged.
        result = await self.rt.outside.commands.run("query_genesis", {
            "artifact_id": request.artifact_id, "method": request.method, "args": args})
        return admin_pb2.QueryGenesisResponse(result=convert.value(result))
