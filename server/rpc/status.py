"""KernelError -> gRPC status with google.rpc details (ErrorInfo, RetryInfo, summary).

The details (protos/ecology/v1/errors.proto, ErrorModel): an ErrorInfo, a RetryInfo
exactly when waiting can help, and last a google.protobuf.Struct repeating both in their
JSON form, `{"google.rpc.ErrorInfo": {...}, "google.rpc.RetryInfo": {"retryDelay": "0.5s"}}`.
The Struct is for generic tools: buf curl (connect-go's error writer) decodes a detail only
if its type is compiled into the tool, which ErrorInfo and RetryInfo are not (reflection
does not help there; grpcurl and the like do decode them through reflection), while the
well-known Struct always is. Clients pick details by type and ignore the Struct.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2, struct_pb2
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


def _duration_json(d: duration_pb2.Duration) -> str:
    """A Duration in its proto3 JSON form ("1.500s": 0, 3, 6 or 9 fraction digits)."""
    if d.nanos == 0:
        return f"{d.seconds}s"
    digits = 3 if d.nanos % 1_000_000 == 0 else 6 if d.nanos % 1000 == 0 else 9
    frac = f"{d.nanos:09d}"[:digits]
    return f"{d.seconds}.{frac}s"


def to_status(err: KernelError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason.value, domain=DOMAIN)
    if err.field:
        info.metadata["field"] = _clip(err.field, MAX_FIELD_BYTES)
    for key, value in err.metadata.items():
        info.metadata[key] = _clip(value, MAX_FIELD_BYTES)
    details = [info]
    retry = None
    if err.retry_after is not None and math.isfinite(err.retry_after):
        seconds = max(0.0, err.retry_after)
        info.metadata["retry_after_seconds"] = f"{seconds:.6f}"
        whole = int(seconds)
        nanos = int(round((seconds - whole) * 1e9))
        if nanos >= 1_000_000_000:
            whole, nanos = whole + 1, nanos - 1_000_000_000
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=whole, nanos=nanos))
        details.append(retry)
    summary = struct_pb2.Struct()
    summary.update({"google.rpc.ErrorInfo": {
        "reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}})
    if retry is not None:
        summary.update({"google.rpc.RetryInfo": {"retryDelay": _duration_json(retry.retry_delay)}})
    details.append(summary)
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
