"""The World service: thin translation between protobuf and the kernel.

Mutations go to the executor (one writer, group commit, acknowledged after COMMIT);
queries use the read connection, which sees only committed state. Sandbox work (user
contracts, code checks, user code) is done outside the writer (server/rpc/outside.py).
"""

from __future__ import annotations

import asyncio
import functools


from ecology.v1 import world_pb2, world_pb2_grpc
from server.errors import KernelError, Reason, invalid
from server.genesis.llm import ID as LLM_ID
from server.kernel import artifacts
from server.rpc import convert
from server.rpc.event_hub import EventHub
from server.rpc.guard import CALLER
from server.rpc.status import abort


def caller_id() -> str:
    caller = CALLER.get(None)
    if caller is None or caller.principal_id is None:  # the guard prevents this
        raise KernelError(Reason.UNAUTHENTICATED, "no authenticated principal")
    return caller.principal_id


def translate_errors(fn):
    """Turn KernelError into a gRPC status with ErrorInfo/RetryInfo."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except KernelError as err:
            await abort(context, err)

    return wrapper


async def event_pages(rt, request, context, limit: int = 0):
    """Validate the filters (after_seq, types, artifact_ids, principal_ids), then yield
    lists of matching events (protobuf, seq order, never empty) after `after_seq` from the
    EventHub, then live ones, until the client cancels or the server stops. `limit` > 0
    gathers up to that many events into one list while more are ready (batches); 0 yields
    what one hub read returns."""
    try:
        max_filters = rt.config.limits["max_subscribe_filters"]
        for name in ("types", "artifact_ids", "principal_ids"):
            if len(getattr(request, name)) > max_filters:
                raise invalid(name, f"at most {max_filters} entries")
        if request.after_seq < 0:
            raise invalid("after_seq", "must not be negative")
    except KernelError as err:
        await abort(context, err)
    after = request.after_seq
    hub: EventHub = rt.hub
    types = tuple(request.types)
    artifact_set, principal_set = frozenset(request.artifact_ids), frozenset(request.principal_ids)
    while True:
        wake = hub.current()
        found, after = hub.after(after, types, artifact_set, principal_set)
        while limit and found and len(found) < limit and after < hub.last_seq:
            more, after = hub.after(after, types, artifact_set, principal_set)
            found.extend(more)
        if found:
            if limit and len(found) > limit:  # the last read overshot: the rest comes next time
                found = found[:limit]
                after = found[-1].seq
            yield found
        elif after >= hub.last_seq:
            if rt.stopping:
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=5.0)
            except asyncio.TimeoutError:
                pass


async def event_stream(rt, request, context):
    """The event stream of World.Subscribe and Admin.WatchEvents: one message per event
    (see event_pages)."""
    async for page in event_pages(rt, request, context):
        for message in page:
            yield message


class WorldService(world_pb2_grpc.WorldServicer):
    def __init__(self, runtime) -> None:
        self.rt = runtime
        self.kernel = runtime.kernel
        self.limits = runtime.config.limits

    @translate_errors
    async def GetState(self, request, context):
        return convert.state(self.kernel.get_state(self.rt.reader, caller_id()))

    @translate_errors
    async def ReadArtifact(self, request, context):
        caller = caller_id()
        self.kernel.precheck_usable(self.rt.reader, caller)
        d = await self.rt.outside.run(caller, "read", {"caller": caller, "artifact_id": request.artifact_id})
        return world_pb2.ReadArtifactResponse(artifact=convert.artifact(d))

    @translate_errors
    async def WriteArtifact(self, request, context):
        caller = caller_id()
        req = {
            "artifact_id": request.artifact_id,
            "content": request.content,
            "access_contract_id": request.access_contract_id,
            "can_execute": request.can_execute,
            "interface": [convert.method_spec(m, self.limits, i) for i, m in enumerate(request.interface)]
            if len(request.interface) else None,
            "metadata": convert.plain_struct(request.metadata, "metadata", self.limits),
            "state": convert.plain_struct(request.state, "state", self.limits),
            "expected_version": request.expected_version,
            "create_only": request.create_only,
            "replace_interface": request.replace_interface,
            "replace_metadata": request.replace_metadata,
            "replace_state": request.replace_state,
        }
        if request.expected_version < 0:
            raise invalid("expected_version", "must not be negative")
        self.kernel.precheck_usable(self.rt.reader, caller, request.request_id)
        await self._precheck_code(caller, req)
        d = await self.rt.outside.run(caller, "write", {"caller": caller, "request_id": request.request_id,
                                                        "req": req})
        return world_pb2.WriteArtifactResponse(artifact=convert.artifact(d["artifact"]), created=d["created"])

    async def _precheck_code(self, caller: str, req: dict) -> None:
        """Check executable code in a worker thread before the write reaches the writer
        thread (which then only picks up the outcome). Best effort: the write re-checks
        whatever this did not cover."""
        existing = artifacts.get(self.rt.reader, req["artifact_id"])
        executable = req["can_execute"] or (existing is not None and existing.can_execute)
        if not executable:
            return
        interface = req["interface"]
        if interface is None:
            interface = existing.interface if existing is not None else []
        else:
            interface = artifacts.validate_interface(interface, self.limits)
        await self.rt.outside.off_writer(caller, self.kernel.precheck_code, req["artifact_id"], req["content"],
                                         interface)

    @translate_errors
    async def DeleteArtifact(self, request, context):
        caller = caller_id()
        if request.expected_version < 0:
            raise invalid("expected_version", "must not be negative")
        self.kernel.precheck_usable(self.rt.reader, caller, request.request_id)
        d = await self.rt.outside.run(caller, "delete", {"caller": caller, "request_id": request.request_id,
                                                         "artifact_id": request.artifact_id,
                                                         "expected_version": request.expected_version})
        return world_pb2.DeleteArtifactResponse(artifact=convert.artifact(d["artifact"]))

    @translate_errors
    async def InvokeArtifact(self, request, context):
        caller = caller_id()
        if not request.method:
            raise invalid("method", "a method name is required")
        args = convert.plain_struct(request.args, "args", self.limits)
        if request.max_spend < 0:
            raise invalid("max_spend", "must not be negative")
        if request.args.ByteSize() > self.limits["max_args_bytes"]:
            raise invalid("args", f"at most {self.limits['max_args_bytes']} bytes")
        if request.artifact_id == LLM_ID and request.method == "complete":
            # Waits on the network: reserve, call, reconcile outside the writer thread.
            result = await self.rt.llm.complete(caller, args, request.request_id)
        else:
            self.kernel.precheck_usable(self.rt.reader, caller, request.request_id)
            result = await self.rt.outside.invoke(caller, request.artifact_id, request.method, args,
                                                  request_id=request.request_id, max_spend=request.max_spend)
        return world_pb2.InvokeArtifactResponse(result=convert.value(result))

    @translate_errors
    async def ListArtifacts(self, request, context):
        caller_id()
        items, nxt = self.kernel.list_artifacts(
            self.rt.reader,
            created_by=request.created_by, kind=request.kind,
            has_standing=request.has_standing if request.HasField("has_standing") else None,
            can_execute=request.can_execute if request.HasField("can_execute") else None,
            metadata_equals=convert.plain_struct(request.metadata_equals, "metadata_equals", self.limits),
            include_deleted=request.include_deleted, page_size=request.page_size, cursor=request.cursor)
        return world_pb2.ListArtifactsResponse(artifacts=[convert.artifact(a) for a in items], next_cursor=nxt)

    async def Subscribe(self, request, context):
        try:
            caller_id()
        except KernelError as err:
            await abort(context, err)
        async for message in event_stream(self.rt, request, context):
            yield message

    @translate_errors
    async def RecordDecision(self, request, context):
        caller = caller_id()
        limits = self.limits
        fields = {name: convert.plain_struct(getattr(request, name), name, limits)
                  for name in ("observed", "action", "outcome")}
        max_bytes = self.rt.config["traces"]["max_field_bytes"]
        seq = await self.rt.outside.commands.run("decision", {
            "caller": caller, "step": request.step, "llm_request_ids": list(request.llm_request_ids),
            "max_bytes": max_bytes, **fields})
        truncated = any(len(artifacts.dumps(v).encode()) > max_bytes for v in fields.values())
        return world_pb2.RecordDecisionResponse(seq=seq, truncated=truncated)
