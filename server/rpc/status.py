"""KernelError -> gRPC status with google.rpc details (ErrorInfo, RetryInfo)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.errors import KernelError

DOMAIN = "ecology.v1"

# Messages and field names may quote client input (a 10k-character key, say). gRPC
# clients refuse trailers over 16 KiB (the message travels twice: grpc-message,
# percent-encoded, and inside grpc-status-details-bin), so both are clipped.
MAX_MESSAGE_BYTES = 1024
MAX_FIELD_BYTES = 256


def _clip(text: str, max_bytes: int) -> str:
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[: max_bytes - 3].decode(errors="ignore") + "..."


def to_status(err: KernelError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason.value, domain=DOMAIN)
    if err.field:
        info.metadata["field"] = _clip(err.field, MAX_FIELD_BYTES)
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
        status_pb2.Status(code=err.code.value[0], message=_clip(err.message, MAX_MESSAGE_BYTES), details=packed)
    )


async def abort(context: grpc.aio.ServicerContext, err: KernelError) -> None:
    """Abort the current RPC with `err` (raises)."""
    await context.abort_with_status(to_status(err))
