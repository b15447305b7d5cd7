"""Generic gRPC tooling works against the real server: server reflection lists and
describes everything (no .proto files or generated stubs needed on the client), a call
built only from reflected descriptors succeeds, and the standard health service answers
without authentication."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


# ---------------------------------------------------------------- reflection v1

V1 = "grpc.reflection.v1.ServerReflection"


def _v1_reflect(ch, *requests):
    """Raw calls of grpc.reflection.v1 (wire-identical to v1alpha, so v1alpha's message
    classes encode them; the service path is v1's)."""
    from grpc_reflection.v1alpha import reflection_pb2 as r

    call = ch.stream_stream(f"/{V1}/ServerReflectionInfo",
                            request_serializer=r.ServerReflectionRequest.SerializeToString,
                            response_deserializer=r.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=10))


def test_reflection_v1_lists_and_describes(channel):
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as r

    listed, world, itself = _v1_reflect(
        channel, r.ServerReflectionRequest(list_services=""),
        r.ServerReflectionRequest(file_containing_symbol=WORLD),
        r.ServerReflectionRequest(file_containing_symbol=V1))
    assert {s.name for s in listed.list_services_response.service} == {WORLD, ADMIN, HEALTH, REFLECTION, V1}
    files = {}
    for raw in world.file_descriptor_response.file_descriptor_proto:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[fdp.name] = fdp
    # World's file set carries the error model and the google.rpc types it names.
    assert {"ecology/v1/world.proto", "ecology/v1/errors.proto", "google/rpc/error_details.proto",
            "google/rpc/status.proto"} <= set(files)
    assert {"ErrorInfo", "RetryInfo"} <= {m.name for m in files["google/rpc/error_details.proto"].message_type}
    own = [descriptor_pb2.FileDescriptorProto.FromString(raw)
           for raw in itself.file_descriptor_response.file_descriptor_proto]
    assert own[0].name == "grpc/reflection/v1/reflection.proto" and own[0].package == "grpc.reflection.v1"
    assert own[0].service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"


def test_error_details_decode_with_reflected_types_only(channel, server):
    """A client that has only what reflection gave it resolves the Any details of an error."""
    alice = server.agent("alice")
    _, pool = _reflected_pool(channel)
    invoke, req_cls, _ = _dynamic_unary(channel, pool, WORLD, "InvokeArtifact")
    req = req_cls(artifact_id="genesis_ledger", method="transfer")
    req.args.update({"to": "nobody-here", "amount": 10**6})
    with pytest.raises(grpc.RpcError) as e:
        invoke(req, metadata=(("authorization", f"Bearer {alice.token}"),), timeout=10)
    st = rpc_status.from_call(e.value)
    info_desc = pool.FindMessageTypeByName("google.rpc.ErrorInfo")  # fetched through reflection
    info_cls = message_factory.GetMessageClass(info_desc)
    infos = []
    for d in st.details:
        if d.type_url.endswith("/" + info_desc.full_name):
            infos.append(info_cls.FromString(d.value))
    assert len(infos) == 1 and infos[0].domain == "ecology.v1" and infos[0].reason


def test_health_list(channel):
    resp = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    assert {k: v.status for k, v in resp.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        WORLD: health_pb2.HealthCheckResponse.SERVING,
        ADMIN: health_pb2.HealthCheckResponse.SERVING,
    }


# ------------------------------------------------------------------------ logs

def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}\n--- whole log ---\n{text}") from None
    return parsed


def test_every_server_log_line_is_json(tmp_path):
    """`ecology serve --log-level info`: its stderr over calls of every kind (health List,
    reflection, an undecodable request, a wrong token, an unknown method, a stream, a
    graceful stop) holds only JSON lines, one per call at least."""
    import subprocess
    import sys

    from agent_runtime import AdminClient, WorldClient
    from tests.conftest import ROOT, database_args, wait_until

    data, sock = tmp_path / "data", f"unix:{tmp_path / 's.sock'}"
    env = {**os.environ, "ECOLOGY_ADMIN_TOKEN": "adm_logs", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data), "--listen", sock,
                             "--listen", "127.0.0.1:0", "--log-level", "info", *database_args()],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (data / "server.json").exists() or proc.poll() is not None, 30, "server start")
        tcp = json.loads((data / "server.json").read_text())["listen"][1]
        with AdminClient(sock, "adm_logs") as admin:
            token = admin.create_agent("alice").token
        ch = grpc.insecure_channel(tcp)
        health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=10)
        _reflected_pool(ch)[0].get_services()
        raw = ch.unary_unary("/ecology.v1.World/GetState")
        for payload, tok in ((b"\xff\xff\xff", token), (b"", "wrong")):
            with pytest.raises(grpc.RpcError):
                raw(payload, metadata=(("authorization", f"Bearer {tok}"),), timeout=10)
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/no.such.Service/Method")(b"", timeout=10)
        with WorldClient(tcp, token) as alice:
            alice.write("notes.alice", "x")
            sub = alice.subscribe(after_seq=0, resume=False)
            assert next(sub).seq >= 1
            sub.close()
        ch.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = _json_lines(err)
    methods = {line.get("method") for line in lines if line.get("event") == "rpc"}
    assert {"/grpc.health.v1.Health/List", "/ecology.v1.World/GetState", "/ecology.v1.World/WriteArtifact",
            "/ecology.v1.World/Subscribe"} <= methods, methods
    assert {"server_started", "server_stopped"} <= {line["event"] for line in lines}


SCRIPT = r'''
import asyncio, logging, sys, threading, warnings
import grpc, structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server import logs
from server.rpc.guard import RpcGuard
from server.rpc.reflection import HealthServicer, add_health

logs.configure("info")

class Broken(HealthServicer):
    async def Check(self, request, context):
        raise RuntimeError("a bug in a handler")

async def main():
    server = grpc.aio.server()
    guard = RpcGuard(authenticate=lambda t: None, is_admin_token=lambda t: False)
    health_pb2_grpc.add_HealthServicer_to_server(Broken(), guard.guarded(server))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as e:
            print("client got", e.code().name, file=sys.stdout)
    try:
        1 / 0
    except ZeroDivisionError:
        structlog.get_logger("app").exception("structlog_exception")
        logging.getLogger("stdlib").exception("stdlib exception")
    t = threading.Thread(target=lambda: {}["missing"], name="worker")
    t.start(); t.join()
    warnings.warn("a warning")
    await server.stop(0)

asyncio.run(main())
raise ValueError("uncaught in main")
'''


def test_tracebacks_are_rendered_into_json(tmp_path):
    """A handler that raises (grpc's own 'Unexpected error' log with its traceback), a
    structlog and a stdlib exception log, an uncaught exception in a thread and a warning:
    all of them JSON lines with the traceback in `exception`."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "client got UNKNOWN" in r.stdout, (r.stdout, r.stderr)
    assert r.returncode == 1
    lines = _json_lines(r.stderr)
    with_tb = {line.get("logger") or line["event"]: line["exception"] for line in lines if "exception" in line}
    grpc_lines = [tb for name, tb in with_tb.items() if name.startswith("grpc")]
    assert grpc_lines and "RuntimeError: a bug in a handler" in grpc_lines[0], lines
    assert "ZeroDivisionError" in with_tb["structlog_exception"]
    assert "ZeroDivisionError" in with_tb["stdlib"]
    uncaught = [line for line in lines if line.get("logger") == "uncaught"]
    assert any("KeyError" in line["exception"] and "worker" in line["event"] for line in uncaught), uncaught
    assert any("ValueError: uncaught in main" in line["exception"] for line in uncaught), uncaught
    assert any(line.get("logger") == "py.warnings" and "a warning" in line["event"] for line in lines)
