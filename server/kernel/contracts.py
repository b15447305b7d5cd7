"""Access control: the one code path every verb goes through.

`authorize()` asks the target's access contract `check_permission(artifact_id, action,
requester_id, context)` and raises ACCESS_DENIED unless it answers allowed. There is no
owner bypass: the kernel has no notion of an owner; the built-in contracts read
`state.controller`, which changes only through the `transfer` action.

Contracts are pure functions of their inputs. The four built-ins run in-process (they are
kernel code, not user code). A user-written contract (any executable artifact with a
`check_permission` method) is evaluated by a `ContractRunner`.

No user code on the writer thread: inside a kernel operation the runner is a
`DecisionTable`. It never runs code; it looks the answer up in the decisions handed to
the operation (the `DECISIONS` context variable, keyed by every input of the check: the
contract's id and version, the target, the action, the requester and a digest of the
context - state, metadata, proposed change). A missing decision raises `NeedWork`
(CONFLICT with a RetryInfo) carrying what to evaluate; the RPC layer
(server/rpc/outside.py) evaluates it with `SandboxedContracts` in a worker thread, on the
inputs the transaction saw, and runs the operation again with the decision. So a
decision is used only if the inputs it was computed from are still current; anything
that changed makes the key differ and the check is asked for again.

Fail closed: a contract that does not exist, was deleted, errors or times out denies,
and the reason says so.
"""

from __future__ import annotations

import contextvars
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from server.errors import KernelError, Reason
from server.kernel import artifacts
from server.kernel.artifacts import Artifact
from server.storage.store import Store

ACTIONS = ("read", "write", "invoke", "delete", "transfer")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _controller(ctx: dict) -> str | None:
    c = ctx["state"].get("controller")
    return c if isinstance(c, str) else None


def freeware(artifact_id: str, action: str, requester_id: str, ctx: dict) -> Decision:
    if action in ("read", "invoke"):
        return Decision(True, "freeware: anyone may read and invoke")
    if requester_id == _controller(ctx):
        return Decision(True, "freeware: the controller may " + action)
    return Decision(False, f"freeware: only the controller may {action}")


def self_owned(artifact_id: str, action: str, requester_id: str, ctx: dict) -> Decision:
    # Control starts with the artifact itself (controller = its own id). The artifact
    # may always read and invoke itself - an agent whose configuration was sold keeps
    # reading the configuration its new controller writes.
    controller = _controller(ctx)
    if action in ("read", "invoke") and requester_id in (artifact_id, controller):
        return Decision(True, "self_owned: the artifact itself or its controller")
    if requester_id == controller:
        return Decision(True, "self_owned: the controller may " + action)
    return Decision(False, f"self_owned: only {controller or artifact_id} may {action}")


def private(artifact_id: str, action: str, requester_id: str, ctx: dict) -> Decision:
    if requester_id == _controller(ctx):
        return Decision(True, "private: the controller")
    return Decision(False, "private: only the controller may do anything")


def public(artifact_id: str, action: str, requester_id: str, ctx: dict) -> Decision:
    return Decision(True, "public: anyone may do anything")


DEBT_SERVICE = "genesis_debt"


def debt(artifact_id: str, action: str, requester_id: str, ctx: dict) -> Decision:
    # Debt artifacts (server/genesis/debt.py): anyone reads them; only genesis_debt writes
    # or deletes them, so nobody can forge the terms or the repayments; the controller
    # (the current creditor) transfers them - sells them through escrow - once accepted.
    if action == "read":
        return Decision(True, "debt: anyone may read a debt")
    if action in ("write", "delete"):
        if requester_id == DEBT_SERVICE:
            return Decision(True, "debt: genesis_debt keeps the record")
        return Decision(False, f"debt: only {DEBT_SERVICE} may {action} a debt")
    if action == "transfer":
        status = ctx["state"].get("status")
        if requester_id != _controller(ctx):
            return Decision(False, "debt: only the holder (controller) may transfer a debt")
        if status in ("offered", "cancelled"):
            return Decision(False, f"debt: a debt that is {status} cannot change hands")
        return Decision(True, "debt: the holder may transfer it")
    return Decision(False, f"debt: a debt cannot be {action}d")


BUILTIN = {
    "genesis_freeware": freeware,
    "genesis_self_owned": self_owned,
    "genesis_private": private,
    "genesis_public": public,
    "genesis_debt_contract": debt,
}

CONTRACT_METHOD = "check_permission"
CONTRACT_INTERFACE = [{
    "name": CONTRACT_METHOD,
    "description": "Answer whether requester_id may perform action on artifact_id. Pure.",
    "input_schema": {
        "type": "object",
        "properties": {
            "artifact_id": {"type": "string"},
            "action": {"enum": list(ACTIONS)},
            "requester_id": {"type": "string"},
            "context": {"type": "object"},
        },
        "required": ["artifact_id", "action", "requester_id", "context"],
        "additionalProperties": False,
    },
}]


class ContractRunner(Protocol):
    """Evaluates user-written contracts (in the sandbox). Must be pure and bounded:
    errors and timeouts come back as a denying Decision, never as an exception."""

    def check(self, contract: Artifact, artifact_id: str, action: str,
              requester_id: str, context: dict) -> Decision: ...


class NoSandboxRunner:
    """Until the sandbox is configured, user-written contracts deny (fail closed)."""

    def check(self, contract, artifact_id, action, requester_id, context) -> Decision:
        return Decision(False, f"contract {contract.id} is user code and no sandbox is configured")


class SandboxedContracts:
    """Runs user-written contracts in the sandbox: no invoke, no pay, a short timeout.
    Errors, timeouts, impure attempts and malformed answers deny. Contracts whose
    metadata says `cacheable: true` have their answers cached per (contract version,
    target, action, requester, metadata, state) - so a change to the contract or to the
    target's state invalidates the entry."""

    TIMEOUT_PENALTY_SECONDS = 60.0

    def __init__(self, sandbox, timeout: float, cache_size: int = 10_000) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self.cache_size = cache_size
        self._cache: dict[tuple, Decision] = {}
        # Contract versions that timed out recently deny at once (fail closed) for a
        # while, so a looping contract cannot make every check burn a full timeout.
        self._timed_out: dict[tuple[str, int], float] = {}

    def check(self, contract, artifact_id, action, requester_id, context) -> Decision:
        return self.check_with_cpu(contract, artifact_id, action, requester_id, context)[0]

    def check_with_cpu(self, contract, artifact_id, action, requester_id, context) -> tuple[Decision, float]:
        """The decision and the CPU seconds the contract used (0 for a cached answer).
        Never call this on the writer thread."""
        import time

        from server.kernel.artifacts import dumps
        from server.sandbox import CodeError

        key = None
        if contract.metadata.get("cacheable") is True:
            key = (contract.id, contract.version, artifact_id, action, requester_id,
                   dumps(context.get("metadata", {})), dumps(context.get("state", {})),
                   dumps(context.get("proposed")), context.get("created_by"))
            hit = self._cache.get(key)
            if hit is not None:
                return hit, 0.0
        version = (contract.id, contract.version)
        until = self._timed_out.get(version)
        if until is not None:
            if time.monotonic() < until:
                return Decision(False, f"contract {contract.id} timed out recently; denied"), 0.0
            self._timed_out.pop(version, None)
        impure = []

        def refuse(msg: dict) -> dict:
            impure.append(msg.get("type"))
            return {"type": "error", "reason": "ACCESS_DENIED", "message": "contracts are pure: no invoke or pay"}

        try:
            result = self.sandbox.call(
                contract.id, contract.content, [m["name"] for m in contract.interface], CONTRACT_METHOD,
                {"artifact_id": artifact_id, "action": action, "requester_id": requester_id, "context": context},
                {"artifact_id": contract.id, "caller": "kernel", "contract": True},
                time.monotonic() + self.timeout, refuse)
        except CodeError as e:
            if e.reason == "SANDBOX_UNAVAILABLE":  # fail closed, and say why (not a generic deny)
                raise KernelError(Reason.SANDBOX_UNAVAILABLE, f"{action} on {artifact_id}: its access contract "
                                  f"{e.message}", field="artifact_id") from None
            if e.reason == "TIMEOUT":
                if len(self._timed_out) > self.cache_size:
                    self._timed_out.clear()
                self._timed_out[version] = time.monotonic() + self.TIMEOUT_PENALTY_SECONDS
            return Decision(False, f"contract {contract.id} failed ({e.reason}: {e.message}); denied"), e.cpu_seconds
        cpu = result.cpu_seconds
        if impure:
            return Decision(False, f"contract {contract.id} tried to {impure[0]}; contracts are pure; denied"), cpu
        value = result.value
        if not isinstance(value, dict) or not isinstance(value.get("allowed"), bool):
            return Decision(False, f"contract {contract.id} returned no boolean 'allowed'; denied"), cpu
        decision = Decision(value["allowed"], str(value.get("reason", ""))[:500] or contract.id)
        if key is not None:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key] = decision
        return decision, cpu


# -- decisions made outside the writer ------------------------------------------------------

# The decisions handed to the running kernel operation: key -> Decision. Set by
# Kernel.with_work around an operation; unset (None) means no decisions at all.
DECISIONS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("contract_decisions", default=None)


def decision_key(contract: Artifact, artifact_id: str, action: str, requester_id: str, context: dict) -> tuple:
    """Every input of one check. `now` is left out: a contract sees the time at which it
    was evaluated."""
    from server.kernel.artifacts import dumps

    digest = hashlib.sha256(dumps({k: v for k, v in context.items() if k != "now"}).encode()).hexdigest()
    return (contract.id, contract.version, artifact_id, action, requester_id, digest)


@dataclass(frozen=True)
class Evaluation:
    """One contract check to run outside the writer: the contract as the transaction saw
    it and the exact inputs."""

    key: tuple
    contract: Artifact = field(compare=False)
    artifact_id: str
    action: str
    requester_id: str
    context: dict = field(compare=False)


@dataclass(frozen=True)
class CodeCheck:
    """A code check (compile + every interface method exists) to run outside the writer."""

    artifact_id: str
    content: str = field(compare=False)
    interface: list = field(compare=False)


class NeedWork(KernelError):
    """Raised inside a kernel operation that needs sandbox work it may not do on the
    writer thread (a user contract's decision, a code check). The operation is rolled
    back; the RPC layer does the work outside and runs the operation again. A caller that
    gets it anyway (too many rounds) sees CONFLICT with a RetryInfo."""

    def __init__(self, item, message: str) -> None:
        super().__init__(Reason.CONFLICT, message, retry_after=0.05)
        self.item = item


class DecisionTable:
    """The runner inside kernel operations: answers user contracts from DECISIONS only."""

    def check(self, contract, artifact_id, action, requester_id, context) -> Decision:
        key = decision_key(contract, artifact_id, action, requester_id, context)
        table = DECISIONS.get()
        decision = table.get(key) if table is not None else None
        if decision is None:
            raise NeedWork(Evaluation(key, contract, artifact_id, action, requester_id, context),
                           f"the decision of contract {contract.id} on {action} of {artifact_id} is not current; "
                           "evaluate it and retry")
        return decision


def context_for(target: Artifact, now: float, proposed: dict | None = None) -> dict:
    """What a contract sees: the target's metadata, state, created_by, kind, the time,
    and for `write` the proposed change (metadata, state, content_changed,
    interface_changed)."""
    ctx = {
        "metadata": target.metadata,
        "state": target.state,
        "created_by": target.created_by,
        "kind": target.kind,
        "now": now,
    }
    if proposed is not None:
        ctx["proposed"] = proposed
    return ctx


def is_contract(art: Artifact | None) -> bool:
    return bool(art and not art.deleted and art.can_execute and art.method(CONTRACT_METHOD))


def evaluate(conn: Store, runner: ContractRunner, target: Artifact, action: str,
             requester_id: str, now: float, proposed: dict | None = None, loader=None) -> Decision:
    contract_id = target.access_contract_id
    try:
        contract = (loader or artifacts.require)(conn, contract_id)
    except KernelError:
        contract = None
    if contract is None or contract.deleted:
        return Decision(False, f"contract {contract_id} no longer exists; access denied (fail closed)")
    ctx = context_for(target, now, proposed)
    builtin = BUILTIN.get(contract_id)
    if builtin is not None:
        return builtin(target.id, action, requester_id, ctx)
    if not is_contract(contract):
        return Decision(False, f"{contract_id} is not a contract; access denied (fail closed)")
    return runner.check(contract, target.id, action, requester_id, ctx)


def authorize(conn: Store, runner: ContractRunner, target: Artifact, action: str,
              requester_id: str, now: float, proposed: dict | None = None, loader=None) -> None:
    """The single permission gate. Raises ACCESS_DENIED with the contract's reason.
    `loader(conn, id)` fetches the contract artifact (the kernel's, which keeps genesis
    contracts in memory)."""
    decision = evaluate(conn, runner, target, action, requester_id, now, proposed, loader)
    if not decision.allowed:
        raise KernelError(
            Reason.ACCESS_DENIED, f"{action} on {target.id} denied: {decision.reason}", field="artifact_id"
        )
