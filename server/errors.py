"""The one list of failure reasons, and the exception that carries them.

Every failure a client can see is a KernelError: a reason from `Reason`, a message for
humans, the field at fault (for INVALID_ARGS), and `retry_after` (seconds) exactly when
waiting can make the same call succeed. The RPC layer (server/rpc/status.py) turns it into
a gRPC status with google.rpc ErrorInfo and RetryInfo details.
"""

from __future__ import annotations

import enum

import grpc


class Reason(str, enum.Enum):
    """ErrorInfo.reason values, with the gRPC status code each maps to."""

    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    ACCESS_DENIED = "ACCESS_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    ADMIN_ONLY = "ADMIN_ONLY"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INSUFFICIENT_RESOURCES = "INSUFFICIENT_RESOURCES"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_IN_FLIGHT = "TOO_MANY_IN_FLIGHT"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    INVALID_ARGS = "INVALID_ARGS"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    SANDBOX_UNAVAILABLE = "SANDBOX_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    DELETED = "DELETED"
    CONFLICT = "CONFLICT"
    NOT_LISTED = "NOT_LISTED"
    CALL_DEPTH_EXCEEDED = "CALL_DEPTH_EXCEEDED"
    CALL_CYCLE = "CALL_CYCLE"
    SPEND_LIMIT_EXCEEDED = "SPEND_LIMIT_EXCEEDED"
    NOT_NESTABLE = "NOT_NESTABLE"
    LLM_UNAVAILABLE = "LLM_UNAVAILABLE"
    MINT_DISABLED = "MINT_DISABLED"
    WORLD_PAUSED = "WORLD_PAUSED"
    AGENT_STOPPED = "AGENT_STOPPED"
    STANDBY = "STANDBY"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    INTERNAL = "INTERNAL"

    @property
    def code(self) -> grpc.StatusCode:
        return _CODES[self]


_CODES = {
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Reason.ACCESS_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.ADMIN_ONLY: grpc.StatusCode.PERMISSION_DENIED,
    Reason.INSUFFICIENT_FUNDS: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.INSUFFICIENT_RESOURCES: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TOO_MANY_IN_FLIGHT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TOO_MANY_STREAMS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.INVALID_ARGS: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.EXECUTION_ERROR: grpc.StatusCode.ABORTED,
    Reason.SANDBOX_UNAVAILABLE: grpc.StatusCode.UNIMPLEMENTED,
    Reason.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.DELETED: grpc.StatusCode.NOT_FOUND,
    Reason.CONFLICT: grpc.StatusCode.ABORTED,
    Reason.NOT_LISTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.CALL_DEPTH_EXCEEDED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.CALL_CYCLE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.SPEND_LIMIT_EXCEEDED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.NOT_NESTABLE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.LLM_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.MINT_DISABLED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.WORLD_PAUSED: grpc.StatusCode.UNAVAILABLE,
    Reason.AGENT_STOPPED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.STANDBY: grpc.StatusCode.UNAVAILABLE,
    Reason.OUTCOME_UNKNOWN: grpc.StatusCode.UNAVAILABLE,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}


class KernelError(Exception):
    """A failure with a documented reason. Raising it inside a kernel operation rolls
    that operation back completely (server/storage/executor.py)."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        code: grpc.StatusCode | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        # Extra ErrorInfo.metadata entries (STANDBY: "active", the active server's address).
        self.metadata = metadata or {}
        self.reason = reason
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.code = code or reason.code

    def to_dict(self) -> dict:
        """JSON form, used to remember failed outcomes for idempotent retries."""
        return {
            "reason": self.reason.value,
            "message": self.message,
            "field": self.field,
            "retry_after": self.retry_after,
            "code": self.code.name,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "KernelError":
        return cls(
            Reason(d["reason"]),
            d["message"],
            field=d.get("field"),
            retry_after=d.get("retry_after"),
            code=grpc.StatusCode[d["code"]],
        )

    def __repr__(self) -> str:
        return f"KernelError({self.reason.value}, {self.message!r})"


def invalid(field: str, message: str) -> KernelError:
    return KernelError(Reason.INVALID_ARGS, f"{field}: {message}", field=field)


# When each reason happens; the handbook and the README's error table come from here.
REASON_HELP: dict[Reason, str] = {
    Reason.NOT_FOUND: "No artifact or principal with that id.",
    Reason.ALREADY_EXISTS: "The id is taken (create_only, CreateAgent).",
    Reason.ACCESS_DENIED: "The artifact's access contract said no; the message carries its reason.",
    Reason.UNAUTHENTICATED: "No token, or a token the server does not know.",
    Reason.ADMIN_ONLY: "An agent token was used on the Admin service.",
    Reason.INSUFFICIENT_FUNDS: "Not enough scrip for a transfer or purchase.",
    Reason.INSUFFICIENT_RESOURCES: "In debt on a flow resource (RetryInfo says until when), not enough quota to give away, "
                                   "or an llm_budget too small for the call's worst-case cost (no RetryInfo: waiting does not help).",
    Reason.QUOTA_EXCEEDED: "A write would exceed the disk quota. Waiting does not help: delete, shrink, or get quota.",
    Reason.RATE_LIMITED: "Too many calls for this principal or connection, too much sandbox work in flight for it (sandbox.max_in_flight_per_principal), or the world's LLM tokens-per-minute limit is reached; RetryInfo says when to retry.",
    Reason.TOO_MANY_IN_FLIGHT: "Too many concurrent calls from this principal; RetryInfo says when to retry.",
    Reason.TOO_MANY_STREAMS: "Too many open Subscribe streams for this principal.",
    Reason.INVALID_ARGS: "Malformed input; ErrorInfo.metadata['field'] names the field. Nothing changed.",
    Reason.EXECUTION_ERROR: "The invoked code raised an error.",
    Reason.SANDBOX_UNAVAILABLE: "The artifact is user code and this server runs no sandbox for it.",
    Reason.TIMEOUT: "The invoked code ran out of time.",
    Reason.DELETED: "The artifact is a tombstone.",
    Reason.CONFLICT: "expected_version did not match, or the artifact is already listed in escrow, or a debt is not in the status the call needs; or (with a RetryInfo) what a contract decision or a call's code depended on changed before the commit.",
    Reason.NOT_LISTED: "genesis_escrow: the artifact is not for sale.",
    Reason.CALL_DEPTH_EXCEEDED: "Nested invoke() calls went deeper than sandbox.max_depth.",
    Reason.CALL_CYCLE: "A nested invoke() would re-enter an artifact already on the call stack.",
    Reason.SPEND_LIMIT_EXCEEDED: "The call would take more of the caller's scrip (prices, pay()) than its max_spend.",
    Reason.NOT_NESTABLE: "The method cannot be invoked from artifact code (genesis_llm.complete waits on the network); call it directly.",
    Reason.LLM_UNAVAILABLE: "The LLM backend failed or answered malformed; nothing was charged. RetryInfo only when it said 429/503.",
    Reason.MINT_DISABLED: "genesis_oracle: the mint is disabled in this world (oracle.enabled = false); bids are refused, held bids can still be cancelled.",
    Reason.WORLD_PAUSED: "The operator paused the world (ecology pause): writes, deletes and invokes wait; reads work. RetryInfo says when to try again.",
    Reason.AGENT_STOPPED: "The operator stopped this agent (ecology agent stop): every call it makes is refused until `ecology agent start`; the agent runtime exits 0 on it.",
    Reason.STANDBY: "This server is a standby (another server holds the database's writer lock): every World and Admin call is refused; ErrorInfo.metadata['active'] is the active server's advertised address. Nothing was applied; call the active server.",
    Reason.OUTCOME_UNKNOWN: "The database connection broke while the call's transaction was committing: it may or may not have been applied. Retry with the same request_id (on this server once it is back, or on the one that took over) to learn the real outcome.",
    Reason.INTERNAL: "A server fault; nothing was applied.",
}
