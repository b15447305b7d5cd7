"""Translation between protobuf messages and the kernel's plain JSON values.

Incoming Struct arguments are checked here (depth, item count, finite numbers) and
integral numbers become ints: JSON has one number type, protobuf's Struct carries
doubles, and the ledger takes integers.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from ecology.v1 import admin_pb2, world_pb2
from server.errors import invalid


def timestamp(t: float | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    seconds = math.floor(t)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((t - seconds) * 1e9))


def struct(d: dict | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def value(v: Any) -> struct_pb2.Value:
    """A JSON value as a protobuf Value (faster than json_format.ParseDict)."""
    out = struct_pb2.Value()
    if isinstance(v, dict):
        out.struct_value.update(v)
    elif isinstance(v, list):
        out.list_value.extend(v)
    elif v is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, (int, float)):
        out.number_value = v
    elif isinstance(v, str):
        out.string_value = v
    else:
        json_format.ParseDict(v, out)
    return out


class _Budget:
    __slots__ = ("items",)

    def __init__(self, items: int) -> None:
        self.items = items


def _plain(v: struct_pb2.Value, field: str, depth: int, max_depth: int, budget: _Budget) -> Any:
    budget.items -= 1
    if budget.items < 0:
        raise invalid(field, "too many values")
    if depth > max_depth:
        raise invalid(field, f"nested deeper than {max_depth}")
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        n = v.number_value
        if not math.isfinite(n):
            raise invalid(field, "numbers must be finite")
        # Integral values become ints only within SQLite's int64 range (2**63 itself is
        # not): larger ones stay floats, which SQLite can bind.
        return int(n) if n.is_integer() and -(2**63) <= n < 2**63 else n
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return {k: _plain(x, f"{field}.{k}", depth + 1, max_depth, budget)
                for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(x, f"{field}[{i}]", depth + 1, max_depth, budget)
                for i, x in enumerate(v.list_value.values)]
    return None  # null_value or unset


def plain_struct(s: struct_pb2.Struct, field: str, limits: dict) -> dict:
    budget = _Budget(limits["max_args_items"])
    return {k: _plain(x, f"{field}.{k}", 1, limits["max_args_depth"], budget) for k, x in s.fields.items()}


def method_spec(m: world_pb2.MethodSpec, limits: dict, i: int) -> dict:
    return {"name": m.name, "description": m.description,
            "input_schema": plain_struct(m.input_schema, f"interface[{i}].input_schema", limits)}


def artifact(d: dict) -> world_pb2.Artifact:
    return world_pb2.Artifact(
        id=d["id"], content=d["content"], created_by=d["created_by"],
        access_contract_id=d["access_contract_id"], has_standing=d["has_standing"],
        can_execute=d["can_execute"],
        interface=[world_pb2.MethodSpec(name=m["name"], description=m["description"],
                                        input_schema=struct(m["input_schema"])) for m in d["interface"]],
        metadata=struct(d["metadata"]), state=struct(d["state"]), kind=d["kind"], version=d["version"],
        created_at=timestamp(d["created_at"]), updated_at=timestamp(d["updated_at"]),
        size_bytes=d["size_bytes"], deleted=d["deleted"], billed_to=d["billed_to"],
    )


def flow(items: list[dict]) -> list[world_pb2.FlowResource]:
    return [world_pb2.FlowResource(
        name=f["name"], balance=f["balance"], rate=f["rate"], capacity=f["capacity"],
        usable_at=timestamp(f["usable_at"]), seconds_until_usable=f["seconds_until_usable"]) for f in items]


def stock(items: list[dict]) -> list[world_pb2.StockResource]:
    return [world_pb2.StockResource(name=s["name"], used=s["used"], quota=s["quota"]) for s in items]


def state(d: dict) -> world_pb2.GetStateResponse:
    return world_pb2.GetStateResponse(
        now=timestamp(d["now"]), principal_id=d["principal_id"], scrip=d["scrip"],
        flow=flow(d["flow"]), stock=stock(d["stock"]), last_event_seq=d["last_event_seq"],
        next_mint_at=timestamp(d.get("next_mint_at")))


def event(d: dict) -> world_pb2.Event:
    return world_pb2.Event(seq=d["seq"], at=timestamp(d["at"]), type=d["type"],
                           principal_id=d["principal_id"], artifact_id=d["artifact_id"],
                           related_ids=d["related_ids"], data=struct(d["data"]))


def agent_summary(d: dict) -> admin_pb2.AgentSummary:
    return admin_pb2.AgentSummary(agent_id=d["agent_id"], scrip=d["scrip"], flow=flow(d["flow"]),
                                  stock=stock(d["stock"]), deleted=d["deleted"])
