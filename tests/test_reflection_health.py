"""Generic gRPC tooling works against the real server: server reflection lists and
describes everything (no .proto files or generated stubs needed on the client), a call
built only from reflected descriptors succeeds, and the standard health service answers
without authentication."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

WORLD = "ecology.v1.World"
ADMIN = "ecology.v1.Admin"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

WORLD_METHODS = {
    "GetState": ("GetStateRequest", "GetStateResponse", False),
    "ReadArtifact": ("ReadArtifactRequest", "ReadArtifactResponse", False),
    "WriteArtifact": ("WriteArtifactRequest", "WriteArtifactResponse", False),
    "DeleteArtifact": ("DeleteArtifactRequest", "DeleteArtifactResponse", False),
    "InvokeArtifact": ("InvokeArtifactRequest", "InvokeArtifactResponse", False),
    "ListArtifacts": ("ListArtifactsRequest", "ListArtifactsResponse", False),
    "Subscribe": ("SubscribeRequest", "Event", True),
}


@pytest.fixture(params=["unix", "tcp"])
def channel(request, server):
    target = server.socket if request.param == "unix" else server.tcp
    ch = grpc.insecure_channel(target)
    yield ch
    ch.close()


def _reflected_pool(ch: grpc.Channel) -> tuple[ProtoReflectionDescriptorDatabase, descriptor_pool.DescriptorPool]:
    """A descriptor pool fed only by the server's reflection service (a fresh pool, not
    the default one the generated stubs registered into)."""
    db = ProtoReflectionDescriptorDatabase(ch)
    return db, descriptor_pool.DescriptorPool(db)


def test_reflection_lists_services(channel):
    db, _ = _reflected_pool(channel)
    services = set(db.get_services())
    assert {WORLD, ADMIN, HEALTH, REFLECTION} <= services


def test_reflection_resolves_world_methods_and_messages(channel):
    _, pool = _reflected_pool(channel)
    world = pool.FindServiceByName(WORLD)
    assert world.full_name == WORLD
    methods = {m.name: m for m in world.methods}
    assert set(WORLD_METHODS) <= set(methods)
    for name, (req, resp, server_streaming) in WORLD_METHODS.items():
        m = methods[name]
        assert m.input_type.full_name == f"ecology.v1.{req}"
        assert m.output_type.full_name == f"ecology.v1.{resp}"
        assert m.server_streaming is server_streaming
        assert m.client_streaming is False

    artifact = pool.FindMessageTypeByName("ecology.v1.Artifact")
    fields = {f.name: f for f in artifact.fields}
    assert {"id", "content", "access_contract_id", "has_standing", "can_execute", "interface",
            "metadata", "state", "version", "deleted"} <= set(fields)
    # Dependencies (well-known types) were fetched through reflection too.
    assert fields["metadata"].message_type.full_name == "google.protobuf.Struct"
    assert fields["created_at"].message_type.full_name == "google.protobuf.Timestamp"
    assert fields["interface"].message_type.full_name == "ecology.v1.MethodSpec"
    invoke = pool.FindMessageTypeByName("ecology.v1.InvokeArtifactRequest")
    assert invoke.fields_by_name["args"].message_type.full_name == "google.protobuf.Struct"
    resp = pool.FindMessageTypeByName("ecology.v1.InvokeArtifactResponse")
    assert resp.fields_by_name["result"].message_type.full_name == "google.protobuf.Value"

    admin = pool.FindServiceByName(ADMIN)
    assert {"CreateAgent", "ListAgents", "GetStats"} <= {m.name for m in admin.methods}


def _dynamic_unary(ch, pool, service: str, method: str):
    """A unary callable and its request class, built from reflected descriptors only."""
    m = pool.FindServiceByName(service).methods_by_name[method]
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    call = ch.unary_unary(f"/{service}/{method}", request_serializer=req_cls.SerializeToString,
                          response_deserializer=resp_cls.FromString)
    return call, req_cls, resp_cls


def test_dynamic_calls_built_from_reflection(channel, server):
    alice = server.agent("alice")
    _, pool = _reflected_pool(channel)
    get_state, req_cls, resp_cls = _dynamic_unary(channel, pool, WORLD, "GetState")
    from ecology.v1 import world_pb2

    assert req_cls is not world_pb2.GetStateRequest  # truly dynamic, not the stub class

    md = (("authorization", f"Bearer {alice.token}"),)
    state = get_state(req_cls(), metadata=md, timeout=10)
    assert isinstance(state, resp_cls)
    assert state.principal_id == "alice"
    assert state.scrip == 1000
    assert state.now.seconds > 0
    assert "compute" in {f.name for f in state.flow}

    # A mutating call with a Struct argument, all dynamic: a transfer via genesis_ledger.
    server.agent("bob")
    invoke, inv_cls, _ = _dynamic_unary(channel, pool, WORLD, "InvokeArtifact")
    req = inv_cls(artifact_id="genesis_ledger", method="transfer")
    req.args.update({"to": "bob", "amount": 7})
    out = invoke(req, metadata=md, timeout=10)
    assert out.result.struct_value.fields["amount"].number_value == 7
    assert get_state(req_cls(), metadata=md, timeout=10).scrip == 993

    # Without a token the same dynamic call is refused with a proper status.
    with pytest.raises(grpc.RpcError) as e:
        get_state(req_cls(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rpc_status.from_call(e.value) is not None


def test_health_serving_without_auth(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", WORLD, ADMIN):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=WORLD), timeout=10)
    try:
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


def test_health_unavailable_after_graceful_stop(server):
    """SIGTERM: the server drains and exits 0; afterwards nothing answers (the socket is
    gone), so a health checker sees the server down."""
    ch = grpc.insecure_channel(server.socket)
    stub = health_pb2_grpc.HealthStub(ch)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    assert server.stop() == 0
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    ch.close()
