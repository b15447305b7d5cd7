"""KernelError -> gRPC status with google.rpc details (ErrorInfo, RetryInfo)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.errors import KernelError

DOMAIN = "ecology.v1"


def to_status(err: KernelError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason.value, domain=DOMAIN)
    if err.field:
        info.metadata["field"] = err.field
    details = [info]
    if err.retry_after is not None and math.isfinite(err.retry_after):
        seconds = max(0.0, err.retry_after)
        info.metadata["retry_after_seconds"] = f"{seconds:.6f}"
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(seconds), nanos=int(round((seconds - int(seconds)) * 1e9))
            )
        )
        details.append(retry)
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return rpc_status.to_status(
        status_pb2.Status(code=err.code.value[0], message=err.message, details=packed)
    )


async def abort(context: grpc.aio.ServicerContext, err: KernelError) -> None:
    """Abort the current RPC with `err` (raises)."""
    await context.abort_with_status(to_status(err))
