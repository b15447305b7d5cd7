"""RpcGuard: the grpc.aio server interceptor that authenticates and rate-limits every call.

What each call goes through (in this order, all before the servicer runs):

1. Per-connection token bucket (`GuardLimits.connection_rate/connection_burst`), taken
   before authentication so a flood of bad tokens cannot burn CPU in `authenticate`.
   See "Per-connection identity" below for what "connection" means.
2. Authentication from the metadata entry `authorization: Bearer <token>`:
   * `/grpc.health.v1.Health/*` and `/grpc.reflection.*`: open, no token needed.
   * `/ecology.v1.Admin/*`: the admin token. Missing/unknown -> UNAUTHENTICATED; a valid
     agent token -> PERMISSION_DENIED / ADMIN_ONLY. Admin calls are not principal-limited
     (the operator is trusted); they are still connection-limited.
   * everything else (`/ecology.v1.World/*`, and any other service, fail-closed): an agent
     token. Missing/unknown/malformed -> UNAUTHENTICATED. The admin token is not an agent
     credential (admin is not a principal), so it is UNAUTHENTICATED here too.
3. Per-principal limits, keyed by principal id (so reconnecting does not reset them):
   * unary calls: at most `max_in_flight` at once -> RESOURCE_EXHAUSTED /
     TOO_MANY_IN_FLIGHT with RetryInfo `busy_retry_after`;
   * streaming calls (any request- or response-streaming method): at most `max_streams`
     open at once -> RESOURCE_EXHAUSTED / TOO_MANY_STREAMS (no RetryInfo: only closing
     one of the caller's own streams helps). Streams do not count as in flight;
   * a token bucket (`principal_rate/principal_burst`, overridable per agent through
     `per_principal_rate`): a unary call costs 1 token, opening a stream `stream_cost`.
     Refusal -> RESOURCE_EXHAUSTED / RATE_LIMITED with RetryInfo = the exact wait returned
     by `TokenBucket.try_take` at the moment of the decision.
   A rejected call never reaches the servicer and changes nothing but the limiter state.
4. `CALLER` (a ContextVar holding a frozen `Caller`) is set, and the servicer runs. A
   `KernelError` escaping the servicer is turned into its status (server.rpc.status).

Flood protection. Rejecting is not free (a status with details is built and sent), so a
client that keeps calling while refused would still eat the server's CPU. Every limiter
(principal, connection, anonymous-unix) has a second bucket, the *rejection allowance*
(`free_reject_rate/free_reject_burst`): each rejection takes one unit. While the
allowance lasts, rejections are answered at once. Once it is exhausted the client is
flooding, and each further rejection is *held* (asyncio.sleep) before it is answered, for
its place in a queue drained at the limiter's own rate:
* RATE_LIMITED: until the bucket would hold a token for it behind the RATE_LIMITED
  rejections already held, (held + 1 - balance) / rate;
* other refusals (TOO_MANY_IN_FLIGHT, TOO_MANY_STREAMS, UNAUTHENTICATED, ...):
  (held + 1) / rate, counting the held non-RATE_LIMITED ones;
never less than the call's own retry delay, never more than `max_flood_delay`. For unary
calls the in-flight slot stays taken while a RATE_LIMITED rejection is held, so a
flooder's concurrency is bounded by `max_in_flight`; its further calls are
TOO_MANY_IN_FLIGHT and are held the same way. The effect: each kind of rejection to a
flooder is answered at about its rate limit, so a flooding principal costs the server a
small multiple of its rate limit in calls whatever it sends, and a closed-loop flooder is
slowed down to about its rate, while a flooder still gets about its rate limit accepted
(held rejections do not keep tokens from arriving calls). At most `max_delayed`
rejections are held per limiter at a time; beyond that they are answered at once (set the
server option `grpc.max_concurrent_streams` to bound per-connection concurrency). Held
rejections whose client gives up (deadline/cancel) are released immediately, slot
included. The allowance refills over time and is not reset by successes, so a well-behaved
agent that occasionally overshoots is never delayed. RetryInfo on a held rejection is
still the wait computed when the call arrived.

Per-connection identity (researched for grpcio 1.85). gRPC Python exposes no per-connection
identity to servicers or interceptors: the aio `ServicerContext` offers `peer()`,
`auth_context()`, `peer_identities()`, `peer_identity_key()` and `invocation_metadata()`,
nothing else (no transport/connection object; see grpc/grpc#20590 "Need connection
information in ServerContext", closed without a feature). Channelz (`grpc.enable_channelz`)
lists a server's sockets with ids, but nothing links a call to its socket. Over a unix
socket, `peer()` is the same string ("unix:") for every connection and `auth_context()` is
identical too (insecure, or "local" with local credentials; SO_PEERCRED is not exposed:
grpc/grpc#28755, open). Therefore:
* TCP: the connection key is `peer()` ("ipv4:ip:port" / "ipv6:[ip]:port"), unique per
  live connection. Note that gRPC clients share one connection between channels with
  identical arguments, which is then one connection here as well.
* unix sockets (and any other non-IP peer): there is no connection key. Authenticated
  calls are limited by their principal only (the principal bucket already covers every
  connection of that principal); anonymous calls (health, reflection, and calls whose
  authentication fails) all share one bucket with the connection limits. So over unix a
  flood of anonymous/bad-token calls can slow down other anonymous callers (e.g. health
  checks), but never authenticated agents.

Bounded state. Connection and principal records are evicted by a sweep (at most every
`sweep_interval` seconds, run on the call path) once they have been idle for
`idle_evict_after` seconds, their buckets are full again and nothing is in flight, open or
held. Such a record is indistinguishable from a fresh one, so eviction never resets a
limit. Principals are bounded by the number of valid tokens; connections by the number of
connections used recently.

Logging: one JSON line per call, as structlog would write it on logger "rpc" (event "rpc";
written by server.logs.access_writer, a pre-bound writer, not structlog's pipeline) with principal (the
agent id; "<admin>" for the operator, which no agent id can spell; None when anonymous or
refused before authentication), method, code (status code name), duration_ms, and
request_id when the request has a non-empty `request_id` field. The codes of aborts done
by servicers are learnt through a thin proxy of the context that the servicer receives (it
records abort/abort_with_status/set_code and forwards everything else).

Performance: handlers are wrapped once per method and cached; per call the guard reads the
metadata tuple directly (no regex), makes a couple of dict look-ups and bucket updates and
allocates only the small context proxy. Measured on the development box: ~5 us per call
for the guard itself plus ~3.5 us for the log line (server.logs.access_writer; ~7.5 us through
structlog's processors), against ~300 us of CPU that grpc.aio itself spends per unary call.

Servicer behaviours should be coroutines / async generators (as grpc.aio servicers are):
a synchronous behaviour is called on the event loop thread, since the wrapper is async.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import grpc
import structlog

from server import logs
from server.errors import KernelError, Reason
from server.kernel.buckets import TokenBucket
from server.rpc import status as rpc_status

__all__ = ["CALLER", "Caller", "GuardLimits", "GuardedServer", "RpcGuard"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: an agent (principal_id set), the operator (is_admin), or anonymous
    (health/reflection: both unset)."""

    principal_id: str | None
    is_admin: bool


# Set by RpcGuard inside every guarded call, before the servicer runs. No default: code
# that runs outside the guard fails loudly (LookupError) instead of acting as anonymous.
CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("CALLER")

ANONYMOUS = Caller(None, False)
ADMIN = Caller(None, True)


@dataclass(frozen=True)
class GuardLimits:
    # Per-principal token bucket (units: calls). Overridable per agent.
    principal_rate: float = 50.0
    principal_burst: float = 100.0
    # Per-connection token bucket (TCP connections; anonymous unix callers share one).
    connection_rate: float = 1000.0
    connection_burst: float = 2000.0
    # Unary calls of one principal running at once.
    max_in_flight: int = 64
    # RetryInfo sent with TOO_MANY_IN_FLIGHT.
    busy_retry_after: float = 0.05
    # Streams of one principal open at once, and the tokens opening one costs.
    max_streams: int = 8
    stream_cost: float = 1.0
    # Flood protection: rejections answered at once (rate/s, burst); beyond that they
    # are held, for at most max_flood_delay seconds, at most max_delayed at a time.
    free_reject_rate: float = 20.0
    free_reject_burst: float = 40.0
    max_flood_delay: float = 2.0
    max_delayed: int = 256
    # Eviction of idle limiter records.
    idle_evict_after: float = 60.0
    sweep_interval: float = 10.0


# Method kinds.
_OPEN = 0
_ADMIN = 1
_AGENT = 2

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_ADMIN_PREFIX = "/ecology.v1.Admin/"
_IP_PEERS = ("ipv4:", "ipv6:")


def _kind_of(method: str) -> int:
    if method.startswith(_OPEN_PREFIXES):
        return _OPEN
    if method.startswith(_ADMIN_PREFIX):
        return _ADMIN
    return _AGENT


def _bearer(value: str) -> str | None:
    """The token of an `authorization` value `Bearer <token>` (scheme case-insensitive)."""
    if len(value) > 7 and value[6] == " " and value[:6].lower() == "bearer":
        token = value[7:].strip()
        return token or None
    return None


class _Limiter:
    """A rate-limited identity: a connection, the anonymous unix callers, or a principal."""

    __slots__ = ("bucket", "allowance", "held_wait", "held_busy")

    def __init__(self, rate: float, burst: float, limits: GuardLimits, now: float) -> None:
        self.bucket = TokenBucket.full(rate, burst, now)
        self.allowance = TokenBucket.full(limits.free_reject_rate, limits.free_reject_burst, now)
        # Rejections currently held back (flood protection): RATE_LIMITED ones, which
        # queue for the bucket's tokens, and all others.
        self.held_wait = 0
        self.held_busy = 0

    def idle(self, now: float, idle_after: float) -> bool:
        b = self.bucket
        a = self.allowance
        return (
            self.held_wait == 0
            and self.held_busy == 0
            and now - b.updated_at >= idle_after
            and now - a.updated_at >= idle_after
            and b.level(now) >= b.capacity
            and a.level(now) >= a.capacity
        )


class _Principal(_Limiter):
    __slots__ = ("caller", "in_flight", "streams", "stale")

    def __init__(self, pid: str, rate: float, burst: float, limits: GuardLimits, now: float):
        super().__init__(rate, burst, limits, now)
        self.caller = Caller(pid, False)
        self.in_flight = 0
        self.streams = 0
        self.stale = False  # re-read per_principal_rate on the next call

    def idle(self, now: float, idle_after: float) -> bool:
        return self.in_flight == 0 and self.streams == 0 and _Limiter.idle(self, now, idle_after)


class _Reject(Exception):
    """Internal: an admission refusal, carrying what flood protection needs."""

    __slots__ = ("err", "limiter", "slot")

    def __init__(self, err: KernelError, limiter: _Limiter | None, slot: _Principal | None):
        self.err = err
        self.limiter = limiter  # whose allowance/queue the rejection counts against
        self.slot = slot  # principal whose in-flight slot this call holds


class _Ctx:
    """The context a guarded servicer receives: forwards everything to the real
    ServicerContext and remembers the status code of abort/abort_with_status/set_code
    for the access log."""

    __slots__ = ("_ctx", "code_name")

    def __init__(self, ctx: grpc.aio.ServicerContext) -> None:
        self._ctx = ctx
        self.code_name: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def abort(self, code, details="", trailing_metadata=()):
        self.code_name = getattr(code, "name", str(code))
        await self._ctx.abort(code, details, tuple(trailing_metadata))

    async def abort_with_status(self, status):
        self.code_name = getattr(status.code, "name", str(status.code))
        await self._ctx.abort_with_status(status)

    def set_code(self, code):
        self.code_name = getattr(code, "name", str(code))
        self._ctx.set_code(code)

    # Frequently used; spelled out to skip __getattr__.
    def invocation_metadata(self):
        return self._ctx.invocation_metadata()

    def peer(self):
        return self._ctx.peer()

    async def write(self, message):
        await self._ctx.write(message)

    async def read(self):
        return await self._ctx.read()

    def time_remaining(self):
        return self._ctx.time_remaining()


class _FastLog:
    """The access log through server.logs.access_writer()."""

    __slots__ = ("write",)

    def __init__(self, write) -> None:
        self.write = write


class _NoLog:
    """Info lines are filtered out: the access log costs nothing."""

    __slots__ = ()

    def info(self, event, **fields) -> None:
        pass


def _unauthenticated(message: str) -> KernelError:
    return KernelError(Reason.UNAUTHENTICATED, message)


def _decode(deserialize: Callable[[bytes], Any], data: bytes) -> Any:
    """Parse a request; bytes that are not a valid message are INVALID_ARGS."""
    try:
        return deserialize(data)
    except Exception:
        raise KernelError(Reason.INVALID_ARGS, "request: not a valid protobuf message for this method",
                          field="request") from None


class RpcGuard(grpc.aio.ServerInterceptor):
    """Authenticates and rate-limits every call; see the module docstring."""

    def __init__(
        self,
        *,
        authenticate: Callable[[str], str | None],
        is_admin_token: Callable[[str], bool],
        limits: GuardLimits = GuardLimits(),
        per_principal_rate: Callable[[str], tuple[float, float] | None] = lambda p: None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
        bind_client_certs: bool = False,
    ) -> None:
        """`authenticate(token)` -> principal id or None; `is_admin_token(token)`;
        `per_principal_rate(principal_id)` -> (rate, burst) overriding the defaults for
        that agent, or None; `clock` drives the buckets (monotonic seconds); `logger`
        replaces structlog's "rpc" logger (anything with `.info(event, **fields)`).
        `bind_client_certs` (mutual TLS): a call over TCP must come with a client
        certificate naming the token's principal (server/tls.py)."""
        self._authenticate = authenticate
        self.metrics = None  # server.metrics.Metrics, when the server serves /metrics
        # gate(method, request) for admitted agent calls: raises KernelError to refuse (server/rpc/pause.py)
        self.gate = None
        # While set, every World and Admin call is refused with the KernelError it returns,
        # before authentication (a standby, server/standby.py); health and reflection answer.
        self.standby: Callable[[], KernelError] | None = None
        self._bind_certs = bind_client_certs
        self._cert_principals: dict[bytes, Any] = {}
        self._is_admin_token = is_admin_token
        self.limits = limits
        self._per_principal_rate = per_principal_rate
        self._clock = clock
        self._log: Any = logger  # None: structlog logger "rpc", bound on first use
        self._handlers: dict[str, tuple[Any, Any]] = {}  # method -> (original, wrapped)
        self._principals: dict[str, _Principal] = {}
        self._connections: dict[str, _Limiter] = {}
        self._anonymous_unix: _Limiter | None = None
        self._last_sweep = clock()

    # ----------------------------------------------------------------- public helpers

    def active_principals(self, seconds: float) -> int:
        """Principals with a call or stream open, or that called in the last `seconds`."""
        now = self._clock()
        return sum(1 for p in list(self._principals.values())
                   if p.in_flight or p.streams or now - p.bucket.updated_at < seconds)

    def activity(self, principal_id: str) -> tuple[int, int, float] | None:
        """(calls open, streams open, seconds since its last call) of a principal, or None
        when the guard holds no record of it (it has not called recently)."""
        p = self._principals.get(principal_id)
        if p is None:
            return None
        return p.in_flight, p.streams, max(0.0, self._clock() - p.bucket.updated_at)

    def refresh_principal_rate(self, principal_id: str) -> None:
        """Re-read `per_principal_rate` for this principal on its next call (the balance
        is kept, clamped to the new burst)."""
        p = self._principals.get(principal_id)
        if p is not None:
            p.stale = True

    def stats(self) -> dict[str, int]:
        """Sizes of the guard's tables (for tests and diagnostics)."""
        return {"principals": len(self._principals), "connections": len(self._connections)}

    # ------------------------------------------------------------------ interceptor

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap_handler(handler_call_details.method, handler)

    def wrap_handler(self, method: str, handler):
        """The guarded version of one method handler (cached)."""
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def guarded(self, server: grpc.aio.Server) -> "GuardedServer":
        """`server` seen through the guard: services added to the returned object get every
        method handler wrapped once, at registration. Same checks as the interceptor,
        without gRPC's per-call interceptor machinery (measured ~6% of a trivial call)."""
        return GuardedServer(server, self)

    # ------------------------------------------------------------------- admission

    def _principal(self, pid: str, now: float) -> _Principal:
        p = self._principals.get(pid)
        if p is None or p.stale:
            lim = self.limits
            rate, burst = self._per_principal_rate(pid) or (lim.principal_rate, lim.principal_burst)
            if p is None:
                p = _Principal(pid, rate, burst, lim, now)
                self._principals[pid] = p
            else:
                p.bucket.refill(now)
                p.bucket.rate = rate
                p.bucket.capacity = burst
                p.bucket.balance = min(p.bucket.balance, burst)
                p.stale = False
        return p

    def _anonymous_limiter(self, now: float) -> _Limiter:
        lim = self._anonymous_unix
        if lim is None:
            lim = self._anonymous_unix = _Limiter(
                self.limits.connection_rate, self.limits.connection_burst, self.limits, now
            )
        return lim

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        after = self.limits.idle_evict_after
        for table in (self._connections, self._principals):
            dead = [k for k, v in table.items() if v.idle(now, after)]
            for k in dead:
                del table[k]

    def _admit(self, kind: int, context, streaming: bool) -> tuple[Caller, _Principal | None]:
        """Decide on a call. Returns (caller, principal record or None); on success the
        principal's in-flight slot (unary) or stream slot (streaming) is taken and must be
        released by the caller. Raises _Reject on refusal."""
        now = self._clock()
        limits = self.limits
        if now - self._last_sweep >= limits.sweep_interval:
            self._sweep(now)

        # 1. connection bucket (TCP only: unix peers carry no connection identity)
        peer = context.peer()
        conn: _Limiter | None = None
        if peer.startswith(_IP_PEERS):
            conn = self._connections.get(peer)
            if conn is None:
                conn = self._connections[peer] = _Limiter(
                    limits.connection_rate, limits.connection_burst, limits, now
                )
            wait = conn.bucket.try_take(1.0, now)
            if wait:
                raise _Reject(
                    KernelError(Reason.RATE_LIMITED, "connection rate limit exceeded", retry_after=wait),
                    conn,
                    None,
                )

        # 2. authentication
        token = None
        for key, value in context.invocation_metadata():
            if key == "authorization":
                token = _bearer(value)
                break

        if kind == _OPEN:
            if conn is None:
                self._take_anonymous(now)
            return ANONYMOUS, None

        if kind == _ADMIN:
            if token is not None and self._is_admin_token(token):
                if self._bind_certs and conn is not None:
                    self._check_cert(context, "admin", conn)
                return ADMIN, None
            if token is not None and self._authenticate(token) is not None:
                err = KernelError(Reason.ADMIN_ONLY, "this method needs the admin credential")
            else:
                err = _unauthenticated("missing or unknown admin bearer token")
            if conn is None:
                self._take_anonymous(now)
            raise _Reject(err, conn or self._anonymous_unix, None)

        pid = self._authenticate(token) if token is not None else None
        if pid is None:
            if conn is None:
                self._take_anonymous(now)
            if token is None:
                msg = "missing or malformed 'authorization: Bearer <token>' metadata"
            elif self._is_admin_token(token):
                msg = "the admin token is not an agent credential"
            else:
                msg = "unknown bearer token"
            raise _Reject(_unauthenticated(msg), conn or self._anonymous_unix, None)

        if self._bind_certs and conn is not None:
            self._check_cert(context, pid, conn)

        # 3. principal limits
        p = self._principal(pid, now)
        if streaming:
            if p.streams >= limits.max_streams:
                raise _Reject(
                    KernelError(
                        Reason.TOO_MANY_STREAMS,
                        f"at most {limits.max_streams} streams may be open at once",
                    ),
                    p,
                    None,
                )
            wait = p.bucket.try_take(limits.stream_cost, now)
            if wait:
                raise _Reject(
                    KernelError(Reason.RATE_LIMITED, "rate limit exceeded", retry_after=wait), p, None
                )
            p.streams += 1
            return p.caller, p

        if p.in_flight >= limits.max_in_flight:
            raise _Reject(
                KernelError(
                    Reason.TOO_MANY_IN_FLIGHT,
                    f"at most {limits.max_in_flight} calls may be in flight at once",
                    retry_after=limits.busy_retry_after,
                ),
                p,
                None,
            )
        p.in_flight += 1
        wait = p.bucket.try_take(1.0, now)
        if wait:
            # The slot stays taken while the rejection is (possibly) held; released later.
            raise _Reject(KernelError(Reason.RATE_LIMITED, "rate limit exceeded", retry_after=wait), p, p)
        return p.caller, p

    def _check_cert(self, context, principal: str, conn: "_Limiter") -> None:
        """Mutual TLS: the verified client certificate must name `principal`."""
        from server.tls import peer_principal

        auth = context.auth_context()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        named = self._cert_principals.get(pem)
        if named is None:
            named = peer_principal(auth)
            if len(self._cert_principals) > 10_000:
                self._cert_principals.clear()
            self._cert_principals[pem] = named
        if named != principal:
            what = "no client certificate" if named is None else (
                "a client certificate that names no principal" if named is False
                else f"a client certificate for {named!r}")
            raise _Reject(_unauthenticated("this token must be used with its own client certificate; "
                                           f"the connection presented {what}"), conn, None)

    def _take_anonymous(self, now: float) -> None:
        lim = self._anonymous_limiter(now)
        wait = lim.bucket.try_take(1.0, now)
        if wait:
            raise _Reject(
                KernelError(Reason.RATE_LIMITED, "anonymous rate limit exceeded", retry_after=wait),
                lim,
                None,
            )

    async def _refuse(self, context, rej: _Reject) -> None:
        """Answer a refusal: at once, or held back when the limiter is flooding. Always
        releases the in-flight slot the refused call holds. Raises (abort)."""
        try:
            lim = rej.limiter
            if lim is not None:
                limits = self.limits
                now = self._clock()
                if (
                    lim.allowance.try_take(1.0, now)
                    and lim.held_wait + lim.held_busy < limits.max_delayed
                ):
                    # Flooding: hold the rejection until its place in the queue of held
                    # rejections comes up at the limiter's rate.
                    b = lim.bucket
                    waiting = rej.err.reason is Reason.RATE_LIMITED
                    if b.rate <= 0:
                        delay = limits.max_flood_delay
                    elif waiting:
                        delay = (lim.held_wait + 1 - b.level(now)) / b.rate
                    else:
                        delay = (lim.held_busy + 1) / b.rate
                    own = rej.err.retry_after
                    if own is not None and math.isfinite(own) and own > delay:
                        delay = own
                    if delay > limits.max_flood_delay:
                        delay = limits.max_flood_delay
                    if delay > 0:
                        if waiting:
                            lim.held_wait += 1
                        else:
                            lim.held_busy += 1
                        try:
                            await asyncio.sleep(delay)
                        finally:
                            if waiting:
                                lim.held_wait -= 1
                            else:
                                lim.held_busy -= 1
        finally:
            if rej.slot is not None:
                rej.slot.in_flight -= 1
        await rpc_status.abort(context, rej.err)

    # ------------------------------------------------------------------- wrapping

    def _log_call(self, caller: Caller | None, method: str, code: str, t0: float, request) -> None:
        ms = round((time.perf_counter() - t0) * 1000.0, 3)
        if caller is None:
            principal = None
        elif caller is ADMIN:
            principal = "<admin>"
        else:
            principal = caller.principal_id
        rid = getattr(request, "request_id", None) or None
        log = self._log
        if log is None:
            # Bound on first use (after the server configured logging): server.logs's
            # pre-bound line writer (the same JSON line as structlog's, at half the
            # cost), or nothing at all when info lines are filtered out.
            if not logs.configured():
                log = self._log = structlog.get_logger("rpc").bind()  # structlog's defaults (tests in-process)
            else:
                writer = logs.access_writer()
                log = self._log = _FastLog(writer) if writer is not None else _NoLog()
        if isinstance(log, _FastLog):
            log.write(principal, method, code, ms, rid)
        elif rid:
            log.info("rpc", principal=principal, method=method, code=code, duration_ms=ms, request_id=rid)
        else:
            log.info("rpc", principal=principal, method=method, code=code, duration_ms=ms)

    def _wrap(self, method: str, handler):
        kind = _kind_of(method)
        streaming = bool(handler.request_streaming or handler.response_streaming)
        if handler.request_streaming:
            orig = handler.stream_stream if handler.response_streaming else handler.stream_unary
        else:
            orig = handler.unary_stream if handler.response_streaming else handler.unary_unary
        guard = self
        admit = self._admit
        refuse = self._refuse
        log_call = self._log_call
        metrics = self.metrics
        gate = self.gate if kind == _AGENT else None
        abort = rpc_status.abort
        perf = time.perf_counter
        # Unary requests are parsed here, after admission, not by gRPC: bytes that are not
        # a valid message then fail INVALID_ARGUMENT / INVALID_ARGS (gRPC itself answers
        # UNKNOWN without details), and nothing is parsed before the caller is admitted.
        decode = None if handler.request_streaming else handler.request_deserializer
        request_deserializer = handler.request_deserializer if handler.request_streaming else None

        is_agen = inspect.isasyncgenfunction(orig)
        is_coro = inspect.iscoroutinefunction(orig)

        async def guarded(request, context, body):
            """Admission, CALLER, error mapping, slot release and the access-log line
            around `body` (the servicer's behaviour), for every kind of method."""
            t0 = perf()
            caller = None
            code = "OK"
            try:
                standby = guard.standby
                if standby is not None and kind != _OPEN:
                    err = standby()
                    code = err.code.name
                    await abort(context, err)
                try:
                    caller, p = admit(kind, context, streaming)
                except _Reject as rej:
                    code = rej.err.code.name
                    if metrics is not None:
                        metrics.observe_rejection(rej.err.reason.value)
                    caller = getattr(rej.limiter, "caller", None)  # principal, if known
                    try:
                        await refuse(context, rej)
                    except asyncio.CancelledError:
                        code = "CANCELLED"
                        raise
                ctx = _Ctx(context)
                token = CALLER.set(caller)
                try:
                    if decode is not None:
                        request = _decode(decode, request)
                    if gate is not None:
                        gate(method, request)
                    return await body(request, ctx, context)
                except KernelError as err:
                    code = err.code.name
                    await abort(context, err)
                except grpc.aio.AbortError:
                    code = ctx.code_name or "UNKNOWN"
                    raise
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except Exception:
                    code = ctx.code_name or "UNKNOWN"
                    raise
                finally:
                    try:
                        CALLER.reset(token)
                    except ValueError:
                        pass
                    if p is not None:
                        if streaming:
                            p.streams -= 1
                        else:
                            p.in_flight -= 1
                    if code == "OK" and ctx.code_name is not None:
                        code = ctx.code_name
            finally:
                log_call(caller, method, code, t0, request)
                if metrics is not None:
                    metrics.observe_rpc(method, code, perf() - t0, streaming)

        async def run_unary(request, ctx, context):
            if is_coro:
                return await orig(request, ctx)
            result = orig(request, ctx)
            if inspect.isawaitable(result):
                result = await result
            return result

        async def run_streaming(request, ctx, context):
            if is_agen:
                agen = orig(request, ctx)
                try:
                    async for message in agen:
                        await context.write(message)
                finally:
                    await agen.aclose()
            elif is_coro:
                await orig(request, ctx)
            else:
                result = orig(request, ctx)
                if inspect.isawaitable(result):
                    await result
                elif result is not None:
                    for message in result:
                        await context.write(message)

        if not handler.response_streaming:
            async def unary_response(request, context):
                return await guarded(request, context, run_unary)

            if handler.request_streaming:
                return grpc.stream_unary_rpc_method_handler(
                    unary_response,
                    request_deserializer=request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            return grpc.unary_unary_rpc_method_handler(
                unary_response,
                request_deserializer=request_deserializer,
                response_serializer=handler.response_serializer,
            )

        async def stream_response(request, context):
            await guarded(request, context, run_streaming)

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                stream_response,
                request_deserializer=request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            stream_response,
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner, guard: RpcGuard) -> None:
        self._inner = inner
        self._guard = guard

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._guard.wrap_handler(handler_call_details.method, handler)


class GuardedServer:
    """A grpc.aio server proxy for the generated `add_*_to_server` functions: every
    handler they register goes through the guard. Everything else is the server's."""

    def __init__(self, server: grpc.aio.Server, guard: RpcGuard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGenericHandler(h, self._guard) for h in handlers))

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None:
        self._server.add_registered_method_handlers(service, {
            name: self._guard.wrap_handler(f"/{service}/{name}", h) for name, h in method_handlers.items()})

    def __getattr__(self, name: str):
        return getattr(self._server, name)
