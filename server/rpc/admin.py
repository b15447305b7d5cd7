"""The Admin service (operators)."""

from __future__ import annotations

import time

from ecology.v1 import admin_pb2, admin_pb2_grpc
from server.kernel import traces
from server.rpc import convert
from server.rpc.world import event_stream, translate_errors
from server.storage.db import SCHEMA_VERSION


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
        return admin_pb2.ListAgentsResponse(agents=[convert.agent_summary(a) for a in items], next_cursor=nxt)

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
            agent_backend=self.rt.agent_backend, paused=self.rt.gate.paused, steps_left=self.rt.gate.steps_left)

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
