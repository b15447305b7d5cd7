"""Server reflection on both protocol versions, and the health service with List.

Reflection. Generic tools speak `grpc.reflection.v1.ServerReflection` (buf curl tries it
first, then v1alpha; grpcurl and Postman likewise); grpcio-reflection 1.85 ships only
`grpc.reflection.v1alpha`. The two protocols are the same messages under another package
name (grpc/reflection/v1/reflection.proto is v1alpha's file with `package
grpc.reflection.v1`), so they are wire-identical: v1 is served by the same servicer,
registered a second time under the v1 service name, and so that reflection can describe
itself on v1 too, the v1 file descriptor is derived from v1alpha's (renamed package and
type references) and added to the default descriptor pool.

What reflection describes: the default descriptor pool, so every file the generated
stubs registered. ecology/v1/world.proto imports errors.proto publicly, which imports
google/rpc/status.proto and error_details.proto: the file set a tool downloads for World
or Admin therefore holds ErrorInfo and RetryInfo, and tools decode error details.

Health. grpcio-health-checking's aio servicer does not implement `List` (added to
health.proto in 2024; the stub's default answers UNIMPLEMENTED after raising). Our
subclass answers it: the status of every registered service ("" is the whole server).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc/reflection/v1/reflection.proto to `pool`, derived from v1alpha's file."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = _V1_FILE
    fdp.package = "grpc.reflection.v1"
    fdp.options.Clear()
    fdp.options.java_package = "io.grpc.reflection.v1"
    fdp.options.java_outer_classname = "ServerReflectionProto"
    fdp.options.java_multiple_files = True
    fdp.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."

    def retype(fields):
        for f in fields:
            if f.type_name.startswith(old):
                f.type_name = new + f.type_name[len(old):]

    for m in fdp.message_type:
        retype(m.field)
        for nested in m.nested_type:
            retype(nested.field)
    for s in fdp.service:
        for meth in s.method:
            meth.input_type = new + meth.input_type[len(old):]
            meth.output_type = new + meth.output_type[len(old):]
    pool.Add(fdp)


def add_reflection(server, service_names: tuple[str, ...]) -> None:
    """Serve reflection v1 and v1alpha on `server` (a grpc.aio server or a proxy with
    add_generic_rpc_handlers / add_registered_method_handlers, e.g. the guard's).
    Both list `service_names` plus the two reflection services."""
    _register_v1_descriptor(descriptor_pool.Default())
    names = tuple(service_names) + (V1, V1ALPHA)
    servicer = reflection.aio.ReflectionServicer(names)
    # What reflection.enable_server_reflection does for an aio server (it cannot tell that
    # a proxy stands for one), once per protocol version.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, handlers),))
    server.add_registered_method_handlers(V1, handlers)


class HealthServicer(health.aio.HealthServicer):
    """grpc.health.v1.Health with List: every registered service and its status."""

    async def List(self, request, context):
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        })


def add_health(server) -> HealthServicer:
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
