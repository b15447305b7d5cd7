"""Typed Python clients over the generated stubs.

    with WorldClient("127.0.0.1:50051", token) as world:
        world.get_state().scrip
        world.transfer("bob", 10)
        world.invoke("genesis_store", "search", query="tool")

Every failure raises EcologyError (reason, field, retry_after). Addresses are
"host:port" or "unix:PATH".

Resilience (what a long-running agent wants), opt-in with `retry=RetryPolicy()`:

* Reconnect: gRPC channels reconnect by themselves; the channel options below keep the
  reconnect backoff short (0.1 s .. 2 s) so a restarted server is found again quickly, and
  with a policy every unary call is sent `wait_for_ready` (it waits for the connection
  instead of failing while the server is away, up to the policy's `call_timeout`).
* A call that fails UNAVAILABLE (the connection broke) is retried with exponential
  backoff when that is safe: reads always; write/delete/invoke because the policy gives
  each one a request id (the server's idempotency key: a retry returns the first outcome
  and applies nothing twice).
* RetryInfo is honoured instead of hammering (`call_with_retry`): RATE_LIMITED,
  TOO_MANY_IN_FLIGHT, INSUFFICIENT_RESOURCES (compute debt) and LLM_UNAVAILABLE (the
  model said 429/503) are retried after sleeping exactly `retry_after`, a bounded number
  of times; a delay longer than `max_delay` is raised to the caller instead.
* `subscribe` resumes after a disconnect from the last event it delivered.

Without a policy (the default) every call is made once and fails fast, as a test or an
operator tool wants.

Several servers (one active, standbys on the same PostgreSQL database; server/standby.py):
give the addresses as one comma list, `WorldClient("hostA:50051,hostB:50051", token)` (and
so `ECOLOGY_SERVER=a,b`). The client talks to one at a time. A call that fails because
the server is gone (UNAVAILABLE without ErrorInfo, DEADLINE_EXCEEDED), is a standby
(STANDBY; its ErrorInfo names the active server under `active`, which is preferred), or
lost its database during COMMIT (OUTCOME_UNKNOWN) moves the client to the next server:
the hinted active one, else the next address in the list. The call is then retried there
when that is safe: STANDBY always (a standby applies nothing); the others only with a
request id (a policy gives every mutating call one, and a retry keeps it, so the new
server answers the first outcome instead of applying it again). With several addresses a
policy does not use wait_for_ready (a dead server must fail fast to be left) and keeps
trying for `failover_seconds`; without a policy each other address is tried once.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from agent_runtime.errors import EcologyError
from ecology.v1 import admin_pb2, admin_pb2_grpc, world_pb2, world_pb2_grpc

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    # Find a restarted server quickly (defaults: 1 s initial, up to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

T = TypeVar("T")


class TokenError(ValueError):
    """No usable token: the message says what is missing or which file could not be read."""


def load_token(token_file: str | os.PathLike | None = None, env: dict | None = None) -> str:
    """An agent's token: from `token_file` if given, else $ECOLOGY_TOKEN, else the file named
    by $ECOLOGY_TOKEN_FILE. A relative file name is read against the current directory and
    reported absolute. Raises TokenError naming the file when it cannot be read or is
    empty (not a vague "no token"), or saying that neither variable is set."""
    env = os.environ if env is None else env
    if token_file is None and env.get("ECOLOGY_TOKEN", "").strip():
        return env["ECOLOGY_TOKEN"].strip()
    path = token_file if token_file is not None else env.get("ECOLOGY_TOKEN_FILE")
    if not path:
        raise TokenError("no token: set ECOLOGY_TOKEN or ECOLOGY_TOKEN_FILE (or pass --token-file)")
    shown = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise TokenError(f"cannot read the token file {shown}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TokenError(f"the token file {shown} is not text") from None
    if not token:
        raise TokenError(f"the token file {shown} is empty")
    return token

# Genesis methods that change nothing: retried freely, no request id needed.
READ_ONLY_METHODS = frozenset({
    ("genesis_ledger", "balance"), ("genesis_ledger", "history"), ("genesis_escrow", "listings"),
    ("genesis_store", "list"), ("genesis_store", "search"), ("genesis_store", "get_metadata"),
    ("genesis_event_log", "read"), ("genesis_rights_registry", "quotas"), ("genesis_handbook", "pages"),
    ("genesis_handbook", "read"), ("genesis_llm", "models"), ("genesis_llm", "budget"),
    ("genesis_oracle", "status"),
    # These two may mark overdue debts defaulted - the same outcome however often repeated.
    ("genesis_debt", "status"), ("genesis_debt", "list"),
})


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries (see the module docstring)."""

    # Tries in all for a call refused with a RetryInfo (RATE_LIMITED, TOO_MANY_IN_FLIGHT,
    # INSUFFICIENT_RESOURCES with a delay, LLM_UNAVAILABLE with a delay).
    attempts: int = 6
    # A RetryInfo longer than this is raised instead of slept (the caller decides).
    max_delay: float = 30.0
    # Tries in all for a call that failed UNAVAILABLE / DEADLINE_EXCEEDED (no connection).
    unavailable_attempts: int = 8
    # Exponential backoff between those tries: initial, factor 2, cap; +-20 % jitter.
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    # Deadline of one unary call (it waits for the connection until then).
    call_timeout: float = 120.0
    # Send unary calls with wait_for_ready (queue while the server is unreachable).
    wait_for_ready: bool = True
    # Reasons retried after their RetryInfo.
    retry_reasons: frozenset = frozenset({"RATE_LIMITED", "TOO_MANY_IN_FLIGHT", "INSUFFICIENT_RESOURCES",
                                          "LLM_UNAVAILABLE"})
    # Several addresses: how long to keep looking for the active server (a takeover takes
    # a few seconds), and the longest pause between two tries meanwhile.
    failover_seconds: float = 30.0
    failover_max_delay: float = 0.5

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based) after a lost connection."""
        base = min(self.backoff_max, self.backoff_initial * (2 ** (attempt - 1)))
        return base * random.uniform(0.8, 1.2)


CONNECTION_REASONS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
# Refusals that send a client with several addresses to another server.
FAILOVER_REASONS = frozenset({"STANDBY", "OUTCOME_UNKNOWN"})


def split_targets(target: str) -> list[str]:
    """"a,b" -> ["a", "b"]: the addresses of one world's servers, in order of preference."""
    targets = [t.strip() for t in str(target).split(",") if t.strip()]
    if not targets:
        raise EcologyError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS", f"no server address in {target!r}")
    return targets


def should_fail_over(err: EcologyError) -> bool:
    """The server that answered cannot serve this call, another one may."""
    return is_connection_error(err) or err.reason in FAILOVER_REASONS


def is_connection_error(err: EcologyError) -> bool:
    """The call did not get an answer from the server (as opposed to a refusal)."""
    return err.reason in CONNECTION_REASONS and err.code in (grpc.StatusCode.UNAVAILABLE,
                                                             grpc.StatusCode.DEADLINE_EXCEEDED)


def call_with_retry(fn: Callable[..., T], *args: Any, policy: RetryPolicy | None = None,
                    idempotent: bool = True, sleep: Callable[[float], Any] | None = None,
                    on_retry: Callable[[EcologyError, float], Any] | None = None, failover: bool = False,
                    **kwargs: Any) -> T:
    """Call `fn(*args, **kwargs)`; when it raises an EcologyError that waiting can fix,
    wait and call again, a bounded number of times:

    * a reason in `policy.retry_reasons` with a `retry_after` (RetryInfo): sleep exactly
      `retry_after` (never more than `policy.max_delay`: a longer one is raised), at most
      `policy.attempts` tries in all;
    * a lost connection (UNAVAILABLE, DEADLINE_EXCEEDED without ErrorInfo), only when
      `idempotent`: exponential backoff, at most `policy.unavailable_attempts` tries.

    With `failover` (the client has several addresses and `fn` moves between them):
    STANDBY is retried (idempotent or not: a standby applied nothing), and so are a lost
    connection and OUTCOME_UNKNOWN when `idempotent`, with short pauses (at most
    `policy.failover_max_delay`) for up to `policy.failover_seconds`.

    Anything else, and the last failure, is raised. `sleep` (default time.sleep) may
    raise to abandon the wait; `on_retry(err, delay)` is told about every retry."""
    policy = policy or RetryPolicy()
    sleep = sleep or time.sleep
    refused = lost = 0
    lost_since = None
    while True:
        try:
            return fn(*args, **kwargs)
        except EcologyError as err:
            if err.retry_after is not None and err.reason in policy.retry_reasons:
                refused += 1
                if refused >= policy.attempts or err.retry_after > policy.max_delay:
                    raise
                delay = err.retry_after
            elif failover and (err.reason == "STANDBY" or idempotent and should_fail_over(err)):
                lost += 1
                now = time.monotonic()
                lost_since = now if lost_since is None else lost_since
                if now - lost_since > policy.failover_seconds:
                    raise
                delay = 0.0 if lost == 1 else min(policy.failover_max_delay, policy.backoff(lost - 1) / 2)
            elif idempotent and is_connection_error(err):
                lost += 1
                if lost >= policy.unavailable_attempts:
                    raise
                delay = policy.backoff(lost)
            else:
                raise
            if on_retry is not None:
                on_retry(err, delay)
            sleep(delay)


def _struct(d: dict | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def _methods(interface: list | None) -> list[world_pb2.MethodSpec]:
    """Interface methods as MethodSpec messages; dicts or MethodSpecs accepted."""
    return [m if isinstance(m, world_pb2.MethodSpec) else
            world_pb2.MethodSpec(name=m["name"], description=m.get("description", ""),
                                 input_schema=_struct(m.get("input_schema")))
            for m in interface or []]


def to_python(msg) -> Any:
    """A protobuf Value/Struct as plain Python; integral numbers become ints."""
    def fix(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return fix(json_format.MessageToDict(msg))


def _wrap(fn):
    """Turn grpc.RpcError into EcologyError (for code that calls stubs directly)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            raise EcologyError.from_rpc_error(err) from None
    return wrapper


@dataclass(frozen=True)
class TlsOptions:
    """How to reach a server over TLS: the CA that signed its certificate and, for mutual
    TLS, this client's certificate and key (`ecology agent create NAME --client-cert`
    prints all three). `server_name` overrides the name checked against the server's
    certificate (default: the host of the address)."""

    ca_file: str
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    @classmethod
    def from_env(cls, env=None) -> "TlsOptions | None":
        """$ECOLOGY_CA_FILE (required for TLS), $ECOLOGY_CERT_FILE, $ECOLOGY_KEY_FILE,
        $ECOLOGY_TLS_SERVER_NAME; None when no CA file is set (plaintext)."""
        import os

        env = os.environ if env is None else env
        if not env.get("ECOLOGY_CA_FILE"):
            return None
        return cls(env["ECOLOGY_CA_FILE"], env.get("ECOLOGY_CERT_FILE", ""), env.get("ECOLOGY_KEY_FILE", ""),
                   env.get("ECOLOGY_TLS_SERVER_NAME", ""))

    def channel(self, target: str, options=()) -> grpc.Channel:
        def read(path: str, what: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise EcologyError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS",
                                   f"cannot read the TLS {what} {path}: {e.strerror}") from None

        if bool(self.cert_file) != bool(self.key_file):
            raise EcologyError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGS",
                               "a client certificate needs both its certificate and its key file")
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file, "CA file"),
            private_key=read(self.key_file, "key file") if self.key_file else None,
            certificate_chain=read(self.cert_file, "certificate file") if self.cert_file else None)
        opts = list(options)
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(target, creds, options=opts)


class _FailoverStub:
    """The generated stub of the client's current server, resolved at every call, so a
    retry after a fail-over goes to the new server."""

    def __init__(self, client: "_Base", factory) -> None:
        self._client = client
        self._factory = factory
        self._stubs: dict[int, Any] = {}

    def __getattr__(self, name: str):
        return functools.partial(self._call, name)

    def _call(self, name: str, *args, **kwargs):
        channel = self._client._channel
        stub = self._stubs.get(id(channel))
        if stub is None:
            stub = self._stubs[id(channel)] = self._factory(channel)
        return getattr(stub, name)(*args, **kwargs)


class _Base:
    def __init__(self, target: str, token: str, *, channel: grpc.Channel | None = None,
                 retry: RetryPolicy | None = None, tls: TlsOptions | None = None) -> None:
        """`target`: "host:port", "unix:PATH", or several as a comma list (one world's
        active server and standbys; see the module docstring). `tls`: reach a TCP address
        over TLS (TlsOptions; `TlsOptions.from_env()` reads $ECOLOGY_CA_FILE and friends).
        Unix sockets are always plaintext."""
        self.targets = split_targets(target) if channel is None else [target]
        self.target = self.targets[0]
        self.retry = retry
        self._tls = tls
        self._switch = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        if channel is None:
            channel = self._connect(self.target)
        self._channels[self.target] = channel
        self._channel = channel
        self._md = (("authorization", f"Bearer {token}"),)
        self._closed = threading.Event()
        self.failovers = 0

    @property
    def failover(self) -> bool:
        return len(self.targets) > 1

    def _connect(self, target: str) -> grpc.Channel:
        if self._tls is not None and not target.startswith("unix:"):
            return self._tls.channel(target, CHANNEL_OPTIONS)
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)

    def _fail_over(self, err: EcologyError, failed: grpc.Channel) -> None:
        """After `err` on channel `failed`: move to the active server it names, else to the
        next address. A no-op when another thread already moved, or with one address (a
        client given one server stays with it, and sees STANDBY)."""
        if not self.failover:
            return
        with self._switch:
            if self._channel is not failed or self._closed.is_set():
                return
            hint = err.active
            if hint and hint != self.target:
                if hint not in self.targets:
                    self.targets.append(hint)
                nxt = hint
            else:
                nxt = self.targets[(self.targets.index(self.target) + 1) % len(self.targets)]
            if nxt == self.target:
                return
            channel = self._channels.get(nxt)
            if channel is None:
                channel = self._channels[nxt] = self._connect(nxt)
            self.target, self._channel = nxt, channel
            self.failovers += 1

    def _sleep(self, seconds: float) -> None:
        """A retry's wait; closing the client abandons it."""
        if self._closed.wait(seconds):
            raise EcologyError(grpc.StatusCode.CANCELLED, "CANCELLED", "the client was closed")

    def _unary(self, rpc: Callable, request, *, idempotent: bool = True, timeout: float | None = None):
        """One unary call through the policy (or once, without one)."""
        policy = self.retry

        def once():
            channel = self._channel
            try:
                if policy is None:
                    return rpc(request, metadata=self._md, timeout=timeout)
                return rpc(request, metadata=self._md, timeout=timeout or policy.call_timeout,
                           wait_for_ready=policy.wait_for_ready and not self.failover)
            except grpc.RpcError as err:
                e = EcologyError.from_rpc_error(err)
                if should_fail_over(e):
                    self._fail_over(e, channel)
                raise e from None
            except ValueError as err:  # "Cannot invoke RPC on closed channel!"
                if self._closed.is_set():
                    raise EcologyError(grpc.StatusCode.CANCELLED, "CANCELLED", str(err)) from None
                raise

        if policy is None:
            if not self.failover:
                return once()
            for _ in range(len(self.targets)):  # each other server once
                try:
                    return once()
                except EcologyError as err:
                    if not (err.reason == "STANDBY" or idempotent and should_fail_over(err)):
                        raise
            return once()
        return call_with_retry(once, policy=policy, idempotent=idempotent, sleep=self._sleep,
                               failover=self.failover)

    def _request_id(self, given: str) -> str:
        """With a policy, mutating calls carry an idempotency key so retries are safe."""
        if given or self.retry is None:
            return given
        return uuid.uuid4().hex

    def close(self) -> None:
        """Close the channels: calls in progress (on any thread) end with CANCELLED."""
        self._closed.set()
        for channel in list(self._channels.values()):
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Subscription:
    """Events of a Subscribe stream, as an iterator (see WorldClient.subscribe).

    With `resume`, a stream that breaks (server restart, lost connection) or that the
    server ends (shutdown) is opened again from the last event delivered (`last_seq`),
    after a short backoff or the RetryInfo of a RATE_LIMITED refusal, so no event is lost
    or repeated. `close()` may be called from any thread; the iteration then stops."""

    def __init__(self, client: "WorldClient", after_seq: int, types, artifact_ids, principal_ids,
                 timeout: float | None, resume: bool) -> None:
        self._client = client
        self._opener = client._open_events
        self.last_seq = after_seq
        self._filters = dict(types=list(types), artifact_ids=list(artifact_ids), principal_ids=list(principal_ids))
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.resume = resume
        self.reconnects = 0
        self._call = None
        self._channel = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._failures = 0

    def __iter__(self) -> "Subscription":
        return self

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _open(self):
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            raise EcologyError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "subscription timed out")
        self._channel = self._client._channel
        call = self._opener(
            self.last_seq, self._filters, timeout=remaining,
            wait_for_ready=self.resume and self.reconnects > 0 and not self._client.failover or None)
        with self._lock:
            if self._closed.is_set():
                call.cancel()
                raise StopIteration
            self._call = call
        return call

    def __next__(self) -> world_pb2.Event:
        while True:
            if self._closed.is_set():
                raise StopIteration
            try:
                call = self._call or self._open()
                ev = next(call)
            except StopIteration:
                self._drop()
                if self._closed.is_set() or not self.resume:
                    raise
                delay = self._backoff()          # the server ended the stream (shutting down)
            except grpc.RpcError as rpc_err:
                self._drop()
                if self._closed.is_set() or rpc_err.code() == grpc.StatusCode.CANCELLED:
                    raise StopIteration from None
                err = EcologyError.from_rpc_error(rpc_err)
                if should_fail_over(err):
                    self._client._fail_over(err, self._channel)
                if not self.resume or err.reason == "DEADLINE_EXCEEDED" and self._deadline is not None:
                    raise err from None
                if err.retry_after is not None and err.reason in ("RATE_LIMITED", "TOO_MANY_IN_FLIGHT"):
                    delay = err.retry_after
                elif should_fail_over(err) or err.reason in ("INTERNAL", "TOO_MANY_STREAMS"):
                    delay = min(0.5, self._backoff()) if self._client.failover else self._backoff()
                else:
                    raise err from None
            except ValueError:                   # the channel was closed under us
                if self._client._closed.is_set():
                    raise StopIteration from None
                raise
            else:
                self._failures = 0
                self.last_seq = ev.seq
                return ev
            self.reconnects += 1
            if self._closed.wait(delay):
                raise StopIteration

    def _backoff(self) -> float:
        self._failures += 1
        return min(2.0, 0.05 * (2 ** (self._failures - 1))) * random.uniform(0.8, 1.2)

    def _drop(self) -> None:
        with self._lock:
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Stop the iteration (thread-safe): cancels the stream."""
        self._closed.set()
        self._drop()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _Flattened:
    """A WatchEventBatches call seen as a stream of events; cancel() passes through."""

    def __init__(self, call) -> None:
        self._call = call
        self.buffer: collections.deque = collections.deque()

    def __iter__(self) -> "_Flattened":
        return self

    def __next__(self):
        while not self.buffer:
            self.buffer.extend(next(self._call).events)
        return self.buffer.popleft()

    def cancel(self) -> None:
        self._call.cancel()


class EventBatchSubscription(Subscription):
    """Admin.WatchEventBatches as an iterator of single events (see
    AdminClient.watch_event_batches): the same resume, `last_seq` and `.close()` as
    Subscription; `buffered` says how many events of the current batch are still to come
    without waiting for the server (0: the batch is done)."""

    def __init__(self, client, after_seq, types, artifact_ids, principal_ids, timeout, resume,
                 interval_ms: int, max_events: int) -> None:
        super().__init__(client, after_seq, types, artifact_ids, principal_ids, timeout, resume)
        self._opener = functools.partial(client._open_event_batches, interval_ms=interval_ms,
                                         max_events=max_events)

    @property
    def buffered(self) -> int:
        call = self._call
        return len(call.buffer) if call is not None else 0


class WorldClient(_Base):
    """An agent's connection to the world. `retry=RetryPolicy()` makes it resilient
    (reconnect, RetryInfo, idempotent retries; see the module docstring)."""

    def __init__(self, target: str, token: str, **kw) -> None:
        super().__init__(target, token, **kw)
        self._stub = _FailoverStub(self, world_pb2_grpc.WorldStub)

    def get_state(self, timeout: float | None = 30) -> world_pb2.GetStateResponse:
        return self._unary(self._stub.GetState, world_pb2.GetStateRequest(), timeout=timeout)

    def read(self, artifact_id: str) -> world_pb2.Artifact:
        return self._unary(self._stub.ReadArtifact, world_pb2.ReadArtifactRequest(artifact_id=artifact_id)).artifact

    def write(self, artifact_id: str, content: str = "", *, access_contract_id: str = "",
              can_execute: bool = False, interface: list[dict] | None = None, metadata: dict | None = None,
              state: dict | None = None, expected_version: int = 0, create_only: bool = False,
              request_id: str = "", **replace: bool) -> world_pb2.WriteArtifactResponse:
        methods = _methods(interface)
        req = world_pb2.WriteArtifactRequest(
            artifact_id=artifact_id, content=content, access_contract_id=access_contract_id,
            can_execute=can_execute, interface=methods, metadata=_struct(metadata), state=_struct(state),
            expected_version=expected_version, create_only=create_only,
            request_id=self._request_id(request_id), **replace)
        return self._unary(self._stub.WriteArtifact, req, idempotent=bool(req.request_id))

    def delete(self, artifact_id: str, *, expected_version: int = 0, request_id: str = "") -> world_pb2.Artifact:
        req = world_pb2.DeleteArtifactRequest(artifact_id=artifact_id, expected_version=expected_version,
                                               request_id=self._request_id(request_id))
        return self._unary(self._stub.DeleteArtifact, req, idempotent=bool(req.request_id)).artifact

    def invoke(self, artifact_id: str, method: str, /, *, request_id: str = "", max_spend: int = 0,
               **args: Any) -> Any:
        """Call a method with named arguments. `max_spend`: the most scrip the call may take
        from you (prices + tools' pay()); 0 is the server's default."""
        return self.invoke_args(artifact_id, method, args, request_id=request_id, max_spend=max_spend)

    def invoke_args(self, artifact_id: str, method: str, args: dict | None = None, *, request_id: str = "",
                    max_spend: int = 0) -> Any:
        """invoke() with the arguments as one dict, for methods whose argument names
        collide with invoke()'s own options (`request_id`, `max_spend`)."""
        read_only = (artifact_id, method) in READ_ONLY_METHODS
        if not read_only:
            request_id = self._request_id(request_id)
        req = world_pb2.InvokeArtifactRequest(artifact_id=artifact_id, method=method, args=_struct(args),
                                              request_id=request_id, max_spend=max_spend)
        resp = self._unary(self._stub.InvokeArtifact, req, idempotent=read_only or bool(request_id))
        return to_python(resp.result)

    def list_artifacts(self, **filters: Any) -> world_pb2.ListArtifactsResponse:
        meta = filters.pop("metadata_equals", None)
        return self._unary(self._stub.ListArtifacts, world_pb2.ListArtifactsRequest(
            metadata_equals=_struct(meta), **filters))

    def subscribe(self, after_seq: int = 0, *, types=(), artifact_ids=(), principal_ids=(),
                  timeout: float | None = None, resume: bool = True) -> Subscription:
        """Events after `after_seq`, then live ones, as an iterator; stop it with
        `.close()` (from any thread). `timeout` bounds the whole subscription (then
        DEADLINE_EXCEEDED). With `resume` (default), a broken stream is reopened from the
        last delivered event, so a server restart loses nothing."""
        return Subscription(self, after_seq, types, artifact_ids, principal_ids, timeout, resume)

    def _open_events(self, after_seq: int, filters: dict, **kw):
        return self._stub.Subscribe(world_pb2.SubscribeRequest(after_seq=after_seq, **filters),
                                    metadata=self._md, **kw)

    # -- genesis helpers ---------------------------------------------------------------

    def balance(self, principal_id: str | None = None) -> int:
        args = {"principal_id": principal_id} if principal_id else {}
        return self.invoke("genesis_ledger", "balance", **args)["scrip"]

    def transfer(self, to: str, amount: int, *, memo: str = "", request_id: str | None = None) -> dict:
        """Move scrip to `to`. Retry-safe: a request id is generated unless given."""
        return self.invoke("genesis_ledger", "transfer", to=to, amount=amount, memo=memo,
                           request_id=request_id or uuid.uuid4().hex)

    def history(self, principal_id: str | None = None, after: int = 0, limit: int = 100) -> list[dict]:
        args: dict = {"after": after, "limit": limit}
        if principal_id:
            args["principal_id"] = principal_id
        return self.invoke("genesis_ledger", "history", **args)["entries"]

    def escrow_list(self, artifact_id: str, price: int) -> dict:
        return self.invoke("genesis_escrow", "list", artifact_id=artifact_id, price=price)

    def escrow_purchase(self, artifact_id: str) -> dict:
        return self.invoke("genesis_escrow", "purchase", artifact_id=artifact_id)

    def escrow_cancel(self, artifact_id: str) -> dict:
        return self.invoke("genesis_escrow", "cancel", artifact_id=artifact_id)

    def escrow_listings(self) -> list[dict]:
        return self.invoke("genesis_escrow", "listings")["listings"]

    def search(self, query: str, limit: int = 50) -> list[dict]:
        return self.invoke("genesis_store", "search", query=query, limit=limit)["artifacts"]

    def get_metadata(self, artifact_id: str) -> dict:
        return self.invoke("genesis_store", "get_metadata", artifact_id=artifact_id)

    def events(self, after: int = 0, limit: int = 100, types=()) -> list[dict]:
        return self.invoke("genesis_event_log", "read", after=after, limit=limit, types=list(types))["events"]

    def quotas(self, principal_id: str | None = None) -> dict:
        args = {"principal_id": principal_id} if principal_id else {}
        return self.invoke("genesis_rights_registry", "quotas", **args)

    def transfer_quota(self, to: str, resource: str, amount: int | float) -> dict:
        return self.invoke("genesis_rights_registry", "transfer_quota", to=to, resource=resource, amount=amount)

    def transfer_control(self, artifact_id: str, to: str) -> dict:
        return self.invoke("genesis_rights_registry", "transfer_control", artifact_id=artifact_id, to=to)

    def create_agent(self, agent_id: str, config: str, *, contract: str = "") -> dict:
        """Spawn an agent you control (genesis_store.create_agent). It starts with nothing:
        fund it with transfer() and transfer_quota(); it is started once it has a compute rate."""
        args = {"contract": contract} if contract else {}
        return self.invoke("genesis_store", "create_agent", agent_id=agent_id, config=config, **args)

    # -- loans (genesis_debt) ------------------------------------------------------------

    def debt_offer(self, borrower: str, principal: int, repay_amount: int, due_at: float) -> dict:
        """Offer a loan; returns the debt (its `debt_id`, status "offered"). Nothing moves yet."""
        return self.invoke("genesis_debt", "offer", borrower=borrower, principal=principal,
                           repay_amount=repay_amount, due_at=due_at)

    def debt_accept(self, debt_id: str) -> dict:
        """Accept a loan offered to you: the principal moves to you now."""
        return self.invoke("genesis_debt", "accept", debt_id=debt_id)

    def debt_repay(self, debt_id: str, amount: int) -> dict:
        """Repay up to `amount` (capped at what remains) to whoever holds the debt now."""
        return self.invoke("genesis_debt", "repay", debt_id=debt_id, amount=amount)

    def debt_cancel(self, debt_id: str) -> dict:
        """Withdraw a loan offer that was not accepted yet."""
        return self.invoke("genesis_debt", "cancel", debt_id=debt_id)

    def debt_status(self, debt_id: str) -> dict:
        """Terms, status, repaid, remaining, holder and overdue of one debt."""
        return self.invoke("genesis_debt", "status", debt_id=debt_id)

    def debt_list(self, principal_id: str | None = None) -> list[dict]:
        """Debts where the principal (default: you) is lender, borrower or holder."""
        args = {"principal_id": principal_id} if principal_id else {}
        return self.invoke("genesis_debt", "list", **args)["debts"]

    # -- the mint (genesis_oracle) -------------------------------------------------------

    def bid(self, artifact_id: str, amount: int, *, request_id: str = "") -> dict:
        """Bid `amount` scrip (held by the oracle) for the mint to score `artifact_id` at its
        next round; bidding again replaces your bid and adjusts the hold. Needs the
        `transfer` right on the artifact. Returns {artifact_id, bidder, amount, placed_at,
        round_at, previous}."""
        return self.invoke("genesis_oracle", "bid", artifact_id=artifact_id, amount=amount,
                           request_id=request_id or uuid.uuid4().hex)

    def cancel_bid(self, artifact_id: str, *, request_id: str = "") -> dict:
        """Withdraw your bid before its round; returns {artifact_id, refunded, cancelled}."""
        return self.invoke("genesis_oracle", "cancel_bid", artifact_id=artifact_id,
                           request_id=request_id or uuid.uuid4().hex)

    def oracle_status(self, round: int = 0) -> dict:
        """The mint's schedule (next_resolution_at, interval_seconds, slots, minimum_bid,
        round), your bids, and the last round's results (or round `round`'s)."""
        args = {"round": round} if round else {}
        return self.invoke("genesis_oracle", "status", **args)

    def handbook(self, page: str = "rules") -> str:
        return self.invoke("genesis_handbook", "read", page=page)["text"]

    def record_decision(self, *, step: int, observed: dict, action: dict, outcome: dict,
                        llm_request_ids: list[str] = ()) -> world_pb2.RecordDecisionResponse:
        """Report one of this agent's decisions for its trace (Admin.ListDecisions)."""
        return self._unary(self._stub.RecordDecision, world_pb2.RecordDecisionRequest(
            step=step, observed=_struct(observed), action=_struct(action), outcome=_struct(outcome),
            llm_request_ids=list(llm_request_ids)), idempotent=False)

    def complete(self, messages: list[dict], model: str | None = None, max_tokens: int | None = None,
                 response_format: dict | None = None, *, request_id: str = "") -> dict:
        """An LLM completion through genesis_llm, paid from this agent's llm_budget.
        `messages`: [{"role": "system"|"user"|"assistant", "content": str}]. Returns
        {content, model, usage: {prompt_tokens, completion_tokens}, cost_micro_usd,
        budget_remaining_micro_usd}. Raises EcologyError: INSUFFICIENT_RESOURCES (budget
        too small; no retry_after), RATE_LIMITED (world tokens-per-minute; retry_after),
        LLM_UNAVAILABLE (the model failed; nothing charged)."""
        args: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        if model:
            args["model"] = model
        if max_tokens is not None:
            args["max_tokens"] = max_tokens
        if response_format is not None:
            args["response_format"] = response_format
        return self.invoke("genesis_llm", "complete", request_id=request_id, **args)

    def llm_models(self) -> dict:
        return self.invoke("genesis_llm", "models")

    def llm_budget(self) -> dict:
        return self.invoke("genesis_llm", "budget")


class AdminClient(_Base):
    """An operator's connection (admin token)."""

    def __init__(self, target: str, admin_token: str, **kw) -> None:
        super().__init__(target, admin_token, **kw)
        self._stub = _FailoverStub(self, admin_pb2_grpc.AdminStub)

    def create_agent(self, name: str, config: str = "{}", *, metadata: dict | None = None,
                     interface: list | None = None, **overrides: Any) -> admin_pb2.CreateAgentResponse:
        """`interface`: methods others may invoke (then `config` is Python source), given
        as dicts like WorldClient.write's ({"name", "description", "input_schema"}) or
        as world_pb2.MethodSpec messages."""
        return self._unary(self._stub.CreateAgent, admin_pb2.CreateAgentRequest(
            name=name, config=config, metadata=_struct(metadata), interface=_methods(interface),
            **overrides), idempotent=False)

    def list_agents(self) -> list[admin_pb2.AgentSummary]:
        out, cursor = [], ""
        while True:
            resp = self._unary(self._stub.ListAgents, admin_pb2.ListAgentsRequest(cursor=cursor))
            out.extend(resp.agents)
            cursor = resp.next_cursor
            if not cursor:
                return out

    def get_stats(self) -> admin_pb2.GetStatsResponse:
        return self._unary(self._stub.GetStats, admin_pb2.GetStatsRequest())

    def pause(self) -> admin_pb2.WorldControlResponse:
        """Pause the world: agents' writes, deletes and invokes fail WORLD_PAUSED; reads work."""
        return self._unary(self._stub.Pause, admin_pb2.PauseRequest())

    def resume(self) -> admin_pb2.WorldControlResponse:
        return self._unary(self._stub.Resume, admin_pb2.ResumeRequest())

    def step(self, calls: int) -> admin_pb2.WorldControlResponse:
        """Let the next `calls` mutating calls through a paused world."""
        return self._unary(self._stub.Step, admin_pb2.StepRequest(calls=calls))

    def grant(self, agent_id: str, *, scrip: int = 0, llm_budget_micro_usd: int = 0,
              memo: str = "") -> admin_pb2.GrantResponse:
        """Give an agent scrip (a recorded mint) and/or LLM budget (a recorded quota grant)."""
        return self._unary(self._stub.Grant, admin_pb2.GrantRequest(
            agent_id=agent_id, scrip=scrip, llm_budget_micro_usd=llm_budget_micro_usd, memo=memo),
            idempotent=False)

    def list_decisions(self, agent_id: str, *, after_seq: int = 0, limit: int = 0) -> admin_pb2.ListDecisionsResponse:
        """A page of an agent's decision traces, oldest first (next page: after_seq=next_after_seq)."""
        return self._unary(self._stub.ListDecisions, admin_pb2.ListDecisionsRequest(
            agent_id=agent_id, after_seq=after_seq, limit=limit))

    def stop_agent(self, agent_id: str, memo: str = "") -> admin_pb2.AgentControlResponse:
        """Stop one agent: its calls are refused AGENT_STOPPED until start_agent (durable)."""
        return self._unary(self._stub.StopAgent, admin_pb2.StopAgentRequest(agent_id=agent_id, memo=memo))

    def start_agent(self, agent_id: str, memo: str = "") -> admin_pb2.AgentControlResponse:
        """Start a stopped agent again."""
        return self._unary(self._stub.StartAgent, admin_pb2.StartAgentRequest(agent_id=agent_id, memo=memo))

    def list_events(self, after_seq: int = 0, *, types=(), artifact_ids=(), principal_ids=(),
                    limit: int = 0) -> admin_pb2.ListEventsResponse:
        """A page of stored events (Admin.ListEvents); go on from `scanned_to` while `more`."""
        return self._unary(self._stub.ListEvents, admin_pb2.ListEventsRequest(
            after_seq=after_seq, types=list(types), artifact_ids=list(artifact_ids),
            principal_ids=list(principal_ids), limit=limit))

    def list_artifacts(self, *, created_by: str = "", kind: str = "", include_deleted: bool = False,
                       page_size: int = 0, cursor: str = "") -> world_pb2.ListArtifactsResponse:
        """One page of artifacts as the operator (Admin.ListArtifacts: no contract check)."""
        return self._unary(self._stub.ListArtifacts, world_pb2.ListArtifactsRequest(
            created_by=created_by, kind=kind, include_deleted=include_deleted, page_size=page_size, cursor=cursor))

    def get_artifact(self, artifact_id: str) -> world_pb2.Artifact:
        """One artifact as the operator (Admin.GetArtifact: any contract, tombstones too)."""
        return self._unary(self._stub.GetArtifact, admin_pb2.GetArtifactRequest(artifact_id=artifact_id)).artifact

    def query_genesis(self, artifact_id: str, method: str, **args) -> Any:
        """A read-only genesis method as the operator (Admin.QueryGenesis), as Python data."""
        r = self._unary(self._stub.QueryGenesis, admin_pb2.QueryGenesisRequest(
            artifact_id=artifact_id, method=method, args=_struct(args)))
        return to_python(r.result)

    def watch_events(self, after_seq: int = 0, *, types=(), artifact_ids=(), principal_ids=(),
                     timeout: float | None = None, resume: bool = True) -> Subscription:
        """The world's events (Admin.WatchEvents): like WorldClient.subscribe, with the same
        filters, iterator, `.close()` and resume after a broken stream."""
        return Subscription(self, after_seq, types, artifact_ids, principal_ids, timeout, resume)

    def _open_events(self, after_seq: int, filters: dict, **kw):
        return self._stub.WatchEvents(admin_pb2.WatchEventsRequest(after_seq=after_seq, **filters),
                                      metadata=self._md, **kw)

    def watch_event_batches(self, after_seq: int = 0, *, interval: float = 0.25, max_events: int = 0,
                            types=(), artifact_ids=(), principal_ids=(), timeout: float | None = None,
                            resume: bool = True) -> EventBatchSubscription:
        """watch_events through Admin.WatchEventBatches: the server sends the events at most
        every `interval` seconds, up to `max_events` (0: 1000) a message, so a busy world
        costs it one stream message per batch rather than per event. Iterates single
        events like watch_events; `.buffered` is 0 at the end of each batch."""
        return EventBatchSubscription(self, after_seq, types, artifact_ids, principal_ids, timeout, resume,
                                      int(round(interval * 1000)), max_events)

    def _open_event_batches(self, after_seq: int, filters: dict, *, interval_ms: int, max_events: int, **kw):
        return _Flattened(self._stub.WatchEventBatches(admin_pb2.WatchEventBatchesRequest(
            after_seq=after_seq, interval_ms=interval_ms, max_events=max_events, **filters),
            metadata=self._md, **kw))
