"""Typed Python clients over the generated stubs.

    with WorldClient("127.0.0.1:50051", token) as world:
        world.get_state().scrip
        world.transfer("bob", 10)
        world.invoke("genesis_store", "search", query="tool")

Every failure raises EcologyError (reason, field, retry_after). Addresses are
"host:port" or "unix:PATH".
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from agent_runtime.errors import EcologyError
from ecology.v1 import admin_pb2, admin_pb2_grpc, world_pb2, world_pb2_grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]


def _struct(d: dict | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def _methods(interface: list | None) -> list[world_pb2.MethodSpec]:
    """Interface methods as MethodSpec messages; dicts or MethodSpecs accepted."""
    return [m if isinstance(m, world_pb2.MethodSpec) else
            world_pb2.MethodSpec(name=m["name"], description=m.get("description", ""),
                                 input_schema=_struct(m.get("input_schema")))
            for m in interface or []]


def to_python(msg) -> Any:
    """A protobuf Value/Struct as plain Python; integral numbers become ints."""
    def fix(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return fix(json_format.MessageToDict(msg))


def _wrap(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            raise EcologyError.from_rpc_error(err) from None
    return wrapper


class _Base:
    def __init__(self, target: str, token: str, *, channel: grpc.Channel | None = None) -> None:
        self.target = target
        self._channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._md = (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WorldClient(_Base):
    """An agent's connection to the world."""

    def __init__(self, target: str, token: str, **kw) -> None:
        super().__init__(target, token, **kw)
        self._stub = world_pb2_grpc.WorldStub(self._channel)

    @_wrap
    def get_state(self, timeout: float | None = 30) -> world_pb2.GetStateResponse:
        return self._stub.GetState(world_pb2.GetStateRequest(), metadata=self._md, timeout=timeout)

    @_wrap
    def read(self, artifact_id: str) -> world_pb2.Artifact:
        return self._stub.ReadArtifact(world_pb2.ReadArtifactRequest(artifact_id=artifact_id),
                                       metadata=self._md).artifact

    @_wrap
    def write(self, artifact_id: str, content: str = "", *, access_contract_id: str = "",
              can_execute: bool = False, interface: list[dict] | None = None, metadata: dict | None = None,
              state: dict | None = None, expected_version: int = 0, create_only: bool = False,
              request_id: str = "", **replace: bool) -> world_pb2.WriteArtifactResponse:
        methods = _methods(interface)
        req = world_pb2.WriteArtifactRequest(
            artifact_id=artifact_id, content=content, access_contract_id=access_contract_id,
            can_execute=can_execute, interface=methods, metadata=_struct(metadata), state=_struct(state),
            expected_version=expected_version, create_only=create_only, request_id=request_id, **replace)
        return self._stub.WriteArtifact(req, metadata=self._md)

    @_wrap
    def delete(self, artifact_id: str, *, expected_version: int = 0, request_id: str = "") -> world_pb2.Artifact:
        return self._stub.DeleteArtifact(world_pb2.DeleteArtifactRequest(
            artifact_id=artifact_id, expected_version=expected_version, request_id=request_id),
            metadata=self._md).artifact

    @_wrap
    def invoke(self, artifact_id: str, method: str, /, *, request_id: str = "", **args: Any) -> Any:
        resp = self._stub.InvokeArtifact(world_pb2.InvokeArtifactRequest(
            artifact_id=artifact_id, method=method, args=_struct(args), request_id=request_id),
            metadata=self._md)
        return to_python(resp.result)

    @_wrap
    def list_artifacts(self, **filters: Any) -> world_pb2.ListArtifactsResponse:
        meta = filters.pop("metadata_equals", None)
        return self._stub.ListArtifacts(world_pb2.ListArtifactsRequest(
            metadata_equals=_struct(meta), **filters), metadata=self._md)

    def subscribe(self, after_seq: int = 0, *, types=(), artifact_ids=(), principal_ids=(),
                  timeout: float | None = None) -> Iterator[world_pb2.Event]:
        """Events after `after_seq`, then live ones. Cancel by closing the iterator."""
        call = self._stub.Subscribe(world_pb2.SubscribeRequest(
            after_seq=after_seq, types=list(types), artifact_ids=list(artifact_ids),
            principal_ids=list(principal_ids)), metadata=self._md, timeout=timeout)
        try:
            for ev in call:
                yield ev
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise EcologyError.from_rpc_error(err) from None
        finally:
            call.cancel()

    # -- genesis helpers ---------------------------------------------------------------

    def balance(self, principal_id: str | None = None) -> int:
        args = {"principal_id": principal_id} if principal_id else {}
        return self.invoke("genesis_ledger", "balance", **args)["scrip"]

    def transfer(self, to: str, amount: int, *, memo: str = "", request_id: str | None = None) -> dict:
        """Move scrip to `to`. Retry-safe: a request id is generated unless given."""
        return self.invoke("genesis_ledger", "transfer", to=to, amount=amount, memo=memo,
                           request_id=request_id or uuid.uuid4().hex)

    def history(self, principal_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict]:
        args: dict = {"after": after, "limit": limit}
        if principal_id:
            args["principal_id"] = principal_id
        return self.invoke("genesis_ledger", "history", **args)["entries"]

    def escrow_list(self, artifact_id: str, price: int) -> dict:
        return self.invoke("genesis_escrow", "list", artifact_id=artifact_id, price=price)

    def escrow_purchase(self, artifact_id: str) -> dict:
        return self.invoke("genesis_escrow", "purchase", artifact_id=artifact_id)

    def escrow_cancel(self, artifact_id: str) -> dict:
        return self.invoke("genesis_escrow", "cancel", artifact_id=artifact_id)

    def escrow_listings(self) -> list[dict]:
        return self.invoke("genesis_escrow", "listings")["listings"]

    def search(self, query: str, limit: int = 50) -> list[dict]:
        return self.invoke("genesis_store", "search", query=query, limit=limit)["artifacts"]

    def get_metadata(self, artifact_id: str) -> dict:
        return self.invoke("genesis_store", "get_metadata", artifact_id=artifact_id)

    def events(self, after: int = 0, limit: int = 100, types=()) -> list[dict]:
        return self.invoke("genesis_event_log", "read", after=after, limit=limit, types=list(types))["events"]

    def quotas(self, principal_id: str | None = None) -> dict:
        args = {"principal_id": principal_id} if principal_id else {}
        return self.invoke("genesis_rights_registry", "quotas", **args)

    def transfer_quota(self, to: str, resource: str, amount: int | float) -> dict:
        return self.invoke("genesis_rights_registry", "transfer_quota", to=to, resource=resource, amount=amount)

    def transfer_control(self, artifact_id: str, to: str) -> dict:
        return self.invoke("genesis_rights_registry", "transfer_control", artifact_id=artifact_id, to=to)

    def handbook(self, page: str = "rules") -> str:
        return self.invoke("genesis_handbook", "read", page=page)["text"]

    def complete(self, messages: list[dict], model: str | None = None, max_tokens: int | None = None,
                 response_format: dict | None = None, *, request_id: str = "") -> dict:
        """An LLM completion through genesis_llm, paid from this agent's llm_budget.
        `messages`: [{"role": "system"|"user"|"assistant", "content": str}]. Returns
        {content, model, usage: {prompt_tokens, completion_tokens}, cost_micro_usd,
        budget_remaining_micro_usd}. Raises EcologyError: INSUFFICIENT_RESOURCES (budget
        too small; no retry_after), RATE_LIMITED (world tokens-per-minute; retry_after),
        LLM_UNAVAILABLE (the model failed; nothing charged)."""
        args: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        if model:
            args["model"] = model
        if max_tokens is not None:
            args["max_tokens"] = max_tokens
        if response_format is not None:
            args["response_format"] = response_format
        return self.invoke("genesis_llm", "complete", request_id=request_id, **args)

    def llm_models(self) -> dict:
        return self.invoke("genesis_llm", "models")

    def llm_budget(self) -> dict:
        return self.invoke("genesis_llm", "budget")


class AdminClient(_Base):
    """An operator's connection (admin token)."""

    def __init__(self, target: str, admin_token: str, **kw) -> None:
        super().__init__(target, admin_token, **kw)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    @_wrap
    def create_agent(self, name: str, config: str = "{}", *, metadata: dict | None = None,
                     interface: list | None = None, **overrides: Any) -> admin_pb2.CreateAgentResponse:
        """`interface`: methods others may invoke (then `config` is Python source), given
        as dicts like WorldClient.write's ({"name", "description", "input_schema"}) or
        as world_pb2.MethodSpec messages."""
        return self._stub.CreateAgent(admin_pb2.CreateAgentRequest(
            name=name, config=config, metadata=_struct(metadata), interface=_methods(interface),
            **overrides), metadata=self._md)

    @_wrap
    def list_agents(self) -> list[admin_pb2.AgentSummary]:
        out, cursor = [], ""
        while True:
            resp = self._stub.ListAgents(admin_pb2.ListAgentsRequest(cursor=cursor), metadata=self._md)
            out.extend(resp.agents)
            cursor = resp.next_cursor
            if not cursor:
                return out

    @_wrap
    def get_stats(self) -> admin_pb2.GetStatsResponse:
        return self._stub.GetStats(admin_pb2.GetStatsRequest(), metadata=self._md)
