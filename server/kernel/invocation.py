"""Invocation: calling a method of an executable artifact, genesis or user code, with
nested calls, who-pays rules, prices and CPU accounting.

Who pays (DESIGN.md):
  * the top-level caller pays for what it starts;
  * code of a tool (no standing) runs on its invoker's account: its CPU, its nested
    calls and its pay() come from the payer of the call into it;
  * code of an artifact with standing pays for its own work: its CPU, its nested calls
    and its pay() come from the artifact itself.
The requester seen by contracts and genesis methods for a nested call is the artifact
whose code makes it - never a value the code supplies.

Price: `metadata.price` (integer scrip) of the invoked artifact, paid by the payer of
the call into it to the artifact's controller when - and only when - the call succeeds.

Atomicity: the whole invocation runs inside the executor's savepoint. A nested call
that fails is rolled back to its own savepoint (the calling code may catch the error
and go on); any failure that reaches the top undoes everything - except the CPU time
the code in the chain used (failed or not), which is charged again after the rollback
(Frame.cpu_log).

Not nestable: genesis_llm.complete waits on the network, which this transaction cannot;
a nested invoke of it fails NOT_NESTABLE (server/genesis/llm.py). Agents call it
through the RPC layer, which runs `admit` below and the LLM steps outside the writer.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.errors import KernelError, Reason
from server.kernel import artifacts, contracts, events, ledger, resources
from server.kernel.artifacts import Artifact

if TYPE_CHECKING:
    from server.kernel.kernel import Kernel


@dataclass(frozen=True)
class Frame:
    requester: str          # identity for permission checks of the call being made
    payer: str              # account that pays for it
    stack: tuple[str, ...]  # user-code artifacts currently running
    deadline: float         # time.monotonic() deadline shared by the whole chain
    # Every CPU charge made in this chain, (payer, seconds), shared by all its frames.
    # A rollback (of a failed nested call or of the whole invocation) undoes the charges
    # made inside it; they are re-applied from here, so CPU that code used is always
    # paid for, however the chain ends.
    cpu_log: list = field(default_factory=list, compare=False)
    # Every user-code call that ran in this chain, (artifact_id, method, requester, payer,
    # ok, reason), shared by all its frames. Recorded as `artifact.invoked` events by
    # `record_outcomes` once the chain ends (also when it failed and was rolled back):
    # evidence for the mint's offline scorer (server/oracle/scoring.py).
    outcomes: list = field(default_factory=list, compare=False)
    # The top-level call's code, already run outside the writer thread (`speculate`).
    speculation: "Speculation | None" = field(default=None, compare=False)
    # The top-level caller and what is left of its max_spend ([n], shared by the chain):
    # prices and pay()s taken from the caller count against it.
    spender: str = ""
    spend_left: list = field(default_factory=lambda: [0], compare=False)


def take_spend(frame: Frame, payer: str, amount: int) -> None:
    """Count `amount` of the top-level caller's scrip against the call's max_spend."""
    if payer != frame.spender or not isinstance(amount, int) or amount <= 0:
        return
    if amount > frame.spend_left[0]:
        raise KernelError(Reason.SPEND_LIMIT_EXCEEDED,
                          f"taking {amount} more scrip from {payer} exceeds this call's max_spend "
                          f"({frame.spend_left[0]} left)", field="max_spend")
    frame.spend_left[0] -= amount


@dataclass(frozen=True)
class Speculation:
    """The top-level call's code run ahead of the transaction, off the writer thread, so
    slow or hostile code never holds up other writes. Valid only if the code made no
    nested invoke()/pay() (those need the transaction) and the artifact did not change
    in between; the transaction then applies this outcome instead of running the code.
    Its CPU is charged either way."""

    artifact_id: str
    version: int
    method: str
    args: dict
    payer: str
    cpu_seconds: float
    usable: bool                 # False: the code asked for invoke()/pay(); run it again inside
    value: Any = None
    error: tuple[str, str] | None = None  # (reason, message) when the code failed


def speculate(kernel: "Kernel", reader: sqlite3.Connection, caller: str, artifact_id: str, method: str,
              args: dict) -> Speculation | None:
    """Run a top-level call's user code ahead of its transaction, when every check the
    transaction will make passes on the committed state (so a caller cannot make the
    server run code it may not call or cannot pay for). None: nothing was run."""
    from server.sandbox import CodeError

    if kernel.sandbox is None or artifact_id in kernel.genesis:
        return None
    target = artifacts.get(reader, artifact_id)
    if target is None or target.deleted or not target.can_execute or target.access_contract_id not in contracts.BUILTIN:
        return None
    now = kernel.clock()
    try:
        artifacts.validate_args(target, method, args)
        if not contracts.evaluate(reader, kernel.runner, target, "invoke", caller, now).allowed:
            return None
        kernel.precheck_usable(reader, caller)
    except KernelError:
        return None
    price = price_of(target)
    if price and target.controller not in (None, caller) and (ledger.balance(reader, caller) or 0) < price:
        return None
    nested: list[str] = []

    def refuse(msg: dict) -> dict:
        nested.append(str(msg.get("type")))
        return {"type": "error", "reason": "EXECUTION_ERROR", "message": "retried inside the transaction"}

    code_payer = target.id if target.has_standing else caller
    context = {"artifact_id": target.id, "caller": caller, "payer": caller, "now": now, "depth": 1}
    deadline = time.monotonic() + kernel.config["sandbox"]["timeout_seconds"]
    common = {"artifact_id": target.id, "version": target.version, "method": method, "args": args,
              "payer": code_payer}
    try:
        result = kernel.sandbox.call(target.id, target.content, [m["name"] for m in target.interface],
                                     method, args, context, deadline, refuse)
    except CodeError as e:
        return Speculation(**common, cpu_seconds=e.cpu_seconds, usable=not nested, error=(e.reason, e.message))
    return Speculation(**common, cpu_seconds=result.cpu_seconds, usable=not nested, value=result.value)


def price_of(art: Artifact) -> int:
    p = art.metadata.get("price", 0)
    return p if isinstance(p, int) and not isinstance(p, bool) and p > 0 else 0


def invoke(kernel: "Kernel", conn: sqlite3.Connection, frame: Frame, artifact_id: str, method: str,
           args: dict, now: float) -> Any:
    target, _cost = admit(kernel, conn, frame, artifact_id, method, args, now)
    g = kernel.genesis.get(artifact_id)
    if g is not None:
        return g.call(conn, frame.requester, method, args, now)
    return run_code(kernel, conn, frame, target, method, args, now)


def admit(kernel: "Kernel", conn: sqlite3.Connection, frame: Frame, artifact_id: str, method: str,
          args: dict, now: float) -> tuple[Artifact, float]:
    """Everything before a method runs: the target, its interface and JSON Schema, the
    access contract, and the compute charge. Returns the target and the compute charged.
    (genesis_llm.complete runs only this part in the writer thread; server/llm/gateway.py.)"""
    artifacts.check_id(artifact_id)
    target = kernel.load(conn, artifact_id)
    if not target.can_execute:
        raise KernelError(Reason.INVALID_ARGS, f"{artifact_id} is not executable", field="artifact_id")
    artifacts.validate_args(target, method, args)
    kernel.authorize(conn, target, "invoke", frame.requester, now)
    g = kernel.genesis.get(artifact_id)
    # One spend for the whole call (verb + genesis method): charged in two parts, the
    # first could put the payer into debt and make the call fail on its own second part.
    cost = kernel.config.cost("invoke") + (kernel.config.cost(f"{artifact_id}.{method}") if g is not None else 0.0)
    resources.charge(conn, frame.payer, "compute", cost, now)
    return target, cost


def run_code(kernel: "Kernel", conn: sqlite3.Connection, frame: Frame, target: Artifact, method: str,
             args: dict, now: float) -> Any:
    from server.sandbox import CallResult, CodeError

    if kernel.sandbox is None:
        raise KernelError(Reason.SANDBOX_UNAVAILABLE,
                          f"{target.id} is user code; this server has no sandbox configured to run it")
    max_depth = kernel.config["sandbox"]["max_depth"]
    if target.id in frame.stack:
        raise KernelError(Reason.CALL_CYCLE, f"call cycle: {' -> '.join(frame.stack + (target.id,))}")
    if len(frame.stack) >= max_depth:
        raise KernelError(Reason.CALL_DEPTH_EXCEEDED, f"nested calls deeper than {max_depth}")
    price = price_of(target)
    controller = target.controller
    if price and controller and controller != frame.payer:
        have = ledger.balance(conn, frame.payer) or 0
        if have < price:
            raise KernelError(Reason.INSUFFICIENT_FUNDS, f"{target.id} costs {price} scrip; {frame.payer} has {have}")
    code_payer = target.id if target.has_standing else frame.payer
    inner = Frame(requester=target.id, payer=code_payer, stack=frame.stack + (target.id,), deadline=frame.deadline,
                  cpu_log=frame.cpu_log, outcomes=frame.outcomes, spender=frame.spender,
                  spend_left=frame.spend_left)

    def on_request(msg: dict) -> dict:
        return _serve_nested(kernel, conn, inner, msg)

    context = {"artifact_id": target.id, "caller": frame.requester, "payer": frame.payer,
               "now": now, "depth": len(inner.stack)}
    spec = frame.speculation if not frame.stack else None
    if spec is not None and (spec.artifact_id, spec.version, spec.method, spec.payer) == (
            target.id, target.version, method, code_payer) and spec.args == args:
        if not spec.usable:  # it needed the transaction: pay for the first run, run again
            use_cpu(kernel, conn, frame, code_payer, spec.cpu_seconds, now)
            spec = None
    else:
        spec = None
    try:
        if spec is None:
            result = kernel.sandbox.call(target.id, target.content, [m["name"] for m in target.interface],
                                         method, args, context, frame.deadline, on_request)
        elif spec.error is not None:
            raise CodeError(spec.error[0], spec.error[1], spec.cpu_seconds)
        else:
            result = CallResult(spec.value, spec.cpu_seconds)
    except CodeError as e:
        reason = {"TIMEOUT": Reason.TIMEOUT, "INVALID_ARGS": Reason.INVALID_ARGS,
                  "CALL_DEPTH_EXCEEDED": Reason.CALL_DEPTH_EXCEEDED,
                  "CALL_CYCLE": Reason.CALL_CYCLE,
                  "SANDBOX_UNAVAILABLE": Reason.SANDBOX_UNAVAILABLE}.get(e.reason, Reason.EXECUTION_ERROR)
        use_cpu(kernel, conn, frame, code_payer, e.cpu_seconds, now)  # re-applied after the rollback
        frame.outcomes.append((target.id, method, frame.requester, frame.payer, False, e.reason))
        raise KernelError(reason, f"{target.id}.{method}: {e.message}") from None
    use_cpu(kernel, conn, frame, code_payer, result.cpu_seconds, now)
    frame.outcomes.append((target.id, method, frame.requester, frame.payer, True, None))
    if price and controller and controller != frame.payer:
        ledger.transfer(conn, frame.payer, controller, price, now=now, memo=f"price of {target.id}.{method}")
        take_spend(frame, frame.payer, price)  # after the transfer's own checks; a failure rolls it back
        events.append(conn, "ledger.transfer", principal_id=frame.payer, artifact_id=target.id, now=now,
                      related=[controller], data={"from": frame.payer, "to": controller, "amount": price,
                                                  "memo": "price"})
    return result.value


def record_outcomes(conn, outcomes: list, now: float) -> None:
    """One `artifact.invoked` event per user-code call that ran: {method, ok, reason, payer}."""
    for artifact_id, method, requester, payer, ok, reason in outcomes:
        events.append(conn, "artifact.invoked", principal_id=requester, artifact_id=artifact_id, now=now,
                      related=[payer] if payer != requester else [],
                      data={"method": method, "ok": ok, "reason": reason, "payer": payer})


def use_cpu(kernel: "Kernel", conn, frame: Frame, payer: str, cpu_seconds: float, now: float) -> None:
    """Charge CPU that code used, and log it so a rollback cannot erase it."""
    frame.cpu_log.append((payer, cpu_seconds))
    charge_cpu(kernel, conn, payer, cpu_seconds, now)


def recharge_cpu(kernel: "Kernel", conn, entries: list, now: float) -> None:
    """After a rollback: charge again the CPU charges the rollback undid."""
    for payer, cpu_seconds in entries:
        charge_cpu(kernel, conn, payer, cpu_seconds, now)


def charge_cpu(kernel: "Kernel", conn, payer: str, cpu_seconds: float, now: float) -> None:
    units = cpu_seconds * kernel.config.cost("cpu_second")
    if units > 0 and math.isfinite(units):
        resources.charge(conn, payer, "compute", units, now, force=True)


def _serve_nested(kernel: "Kernel", conn: sqlite3.Connection, frame: Frame, msg: dict) -> dict:
    """Answer one request from running code. Identity and payer come from `frame`."""
    now = kernel.clock()
    mark = len(frame.cpu_log)
    conn.execute("SAVEPOINT nested")
    try:
        if time.monotonic() >= frame.deadline:
            raise KernelError(Reason.TIMEOUT, "time limit exceeded")
        if msg.get("type") == "invoke":
            artifact_id, method, args = msg.get("artifact_id"), msg.get("method"), msg.get("args")
            if not isinstance(method, str) or not isinstance(args, dict):
                raise KernelError(Reason.INVALID_ARGS, "invoke(artifact_id, method, **args)")
            value = invoke(kernel, conn, frame, artifact_id, method, args, now)
        else:
            to, amount = msg.get("to"), msg.get("amount")
            artifacts.check_id(to, "to")
            ledger.transfer(conn, frame.payer, to, amount, now=now, memo=f"pay from {frame.stack[-1]}")
            take_spend(frame, frame.payer, amount)  # after the transfer's own checks; a failure rolls it back
            events.append(conn, "ledger.transfer", principal_id=frame.payer, artifact_id=frame.stack[-1], now=now,
                          related=[to], data={"from": frame.payer, "to": to, "amount": amount, "memo": "pay"})
            value = {"paid": amount, "to": to, "from": frame.payer}
    except KernelError as err:
        conn.execute("ROLLBACK TO nested")
        conn.execute("RELEASE nested")
        recharge_cpu(kernel, conn, frame.cpu_log[mark:], now)
        return {"type": "error", "reason": err.reason.value, "message": err.message}
    conn.execute("RELEASE nested")
    return {"type": "result", "value": value}
