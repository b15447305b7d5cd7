"""Errors from the server, with the machine-readable reason and the retry delay."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class EcologyError(Exception):
    """A failed call: `code` (gRPC), `reason` (ErrorInfo.reason), `field` (the offending
    field, for INVALID_ARGS), `retry_after` (seconds, only when waiting can help)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str,
                 field: str | None = None, retry_after: float | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        # ErrorInfo.metadata (e.g. STANDBY's "active": the active server's address).
        self.metadata = dict(metadata or {})
        self.active = self.metadata.get("active") or None
        self.code = code
        self.reason = reason
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "EcologyError":
        code = err.code()
        reason, field, retry, metadata = code.name, None, None, {}
        status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                    field = info.metadata.get("field")
                    metadata = dict(info.metadata)
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    ri = error_details_pb2.RetryInfo()
                    detail.Unpack(ri)
                    retry = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
        return cls(code, reason, err.details() or "", field, retry, metadata)
