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

Two phases - no user code on the writer thread:
  * Phase 1 (`Planner`, in a worker thread): the code runs in the sandbox. Each nested
    request it makes (invoke, pay) is appended to the chain's record (`CodeRun`) and
    answered by a short writer operation - a *dry run* - that replays the whole record so
    far plus this request inside a savepoint, captures the reply and rolls back: kernel
    code only, so the writer is held for microseconds. A nested call of user code is
    admitted by a dry run (contract, compute, price, depth, cycle), run outside the same
    way, recursively, and its return (CPU, price) is another dry run.
  * Phase 2 (one writer operation): the record is replayed in order through the very
    same kernel code (`invoke`, `run_code`, `_serve_nested`) with `Replay` standing in for
    the sandbox: each nested call in its own savepoint, as before, so a failed nested call
    that the code caught is undone alone. Every reply is compared with the one the code
    was told; all equal -> the effects commit, with the CPU charges. A difference means
    something the code depended on changed meanwhile: everything is rolled back but the
    CPU charges and the call fails CONFLICT with a RetryInfo (the RPC layer retries a
    whole chain a bounded number of times first).
The whole chain uses one clock reading (`Chain.now`): what the code was told about time
is what its effects are recorded with. A chain makes at most `sandbox.max_effects` nested
requests; the next one ends the call with INVALID_ARGS.

Atomicity: the whole invocation runs inside one savepoint; any failure that reaches the
top undoes everything - except the CPU time the code in the chain used (failed or not),
which is charged again after the rollback (Frame.cpu_log).

Not nestable: genesis_llm.complete waits on the network, which a transaction cannot;
a nested invoke of it fails NOT_NESTABLE (server/genesis/llm.py). Agents call it
through the RPC layer, which runs `admit` below and the LLM steps outside the writer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.errors import KernelError, Reason
from server.kernel import artifacts, contracts, events, ledger, resources
from server.kernel.artifacts import Artifact
from server.storage.store import Store

if TYPE_CHECKING:
    from server.kernel.kernel import Kernel


@dataclass
class Request:
    """One nested request (invoke or pay) that running code made, and the reply it got."""

    msg: dict
    reply: dict | None = None        # None while it is being answered
    child: "CodeRun | None" = None   # the user code the request invoked, if any
    local: bool = False              # answered outside without the writer (deadline passed)


@dataclass
class CodeRun:
    """One run of user code in phase 1: what ran, on whose account, what it asked and
    was told, and how it ended."""

    artifact_id: str
    source: str
    method: str
    args: dict
    context: dict
    payer: str                        # who pays for its CPU
    requests: list = field(default_factory=list)
    outcome: tuple | None = None      # ("ok", value) | ("err", reason, message); None: running
    cpu_seconds: float = 0.0

    def all_runs(self):
        yield self
        for r in self.requests:
            if r.child is not None:
                yield from r.child.all_runs()


@dataclass
class Work:
    """Sandbox work done outside the writer for one operation: contract decisions (key ->
    Decision) and the CPU seconds those contracts used, which the requester owes."""

    decisions: dict = field(default_factory=dict)
    cpu_seconds: float = 0.0


@dataclass
class Chain:
    """One top-level invocation across its phases."""

    now: float
    work: Work = field(default_factory=Work)
    root: CodeRun | None = None
    started: bool = False            # the first operation was submitted (root may still be None)
    effects: int = 0
    abort: KernelError | None = None  # the chain is over: charge its CPU and fail with this

    @property
    def final(self) -> bool:
        """Nothing is pending: the next operation commits (phase 2)."""
        return self.abort is not None or self.root is None or self.root.outcome is not None

    def cpu_charges(self) -> list:
        return [(run.payer, run.cpu_seconds) for run in self.root.all_runs()] if self.root else []

    def outcomes(self) -> list:
        """Frame.outcomes entries for every run that ended, innermost first."""
        out: list = []

        def walk(run: CodeRun) -> None:
            for r in run.requests:
                if r.child is not None:
                    walk(r.child)
            if run.outcome is not None:
                ok = run.outcome[0] == "ok"
                out.append((run.artifact_id, run.method, run.context.get("caller"), run.context.get("payer"),
                            ok, None if ok else run.outcome[1]))

        if self.root is not None:
            walk(self.root)
        return out


class DryRun(Exception):
    """A dry run's answer (rolled back, never committed). Raised through the kernel code,
    returned as the operation's result by Kernel.op_invoke."""


class Pending(DryRun):
    """User code must run (outside) before the chain can go on."""

    def __init__(self, target: Artifact, payer: str, method: str, args: dict, context: dict) -> None:
        super().__init__(target.id)
        # (not `args`: Exception has an attribute of that name)
        self.target, self.payer, self.method, self.call_args, self.context = target, payer, method, args, context


class Answered(DryRun):
    """The reply to the request being answered."""

    def __init__(self, reply: dict) -> None:
        super().__init__("answered")
        self.reply = reply


class Mismatch(DryRun):
    """Replaying the record gave a different outcome than the code was told."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Replay:
    """Stands in for the sandbox inside the writer: the code's recorded run, replayed.
    Never runs code."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.serving: list[Request] = []  # the request being replayed at each level

    def run(self, target: Artifact, payer: str, method: str, args: dict, context: dict, on_request):
        from server.sandbox import CallResult, CodeError

        run = self.serving[-1].child if self.serving else self.chain.root
        if run is None:
            raise Pending(target, payer, method, args, context)
        if (run.artifact_id, run.source, run.method, run.args, run.context, run.payer) != (
                target.id, target.content, method, args, context, payer):
            raise Mismatch(f"{target.id} or its call changed since its code ran")
        for req in run.requests:
            if req.local:
                continue
            self.serving.append(req)
            try:
                reply = on_request(req.msg)
            finally:
                self.serving.pop()
            if req.reply is None:
                raise Answered(reply)
            if reply != req.reply:
                raise Mismatch(f"{run.artifact_id}: a nested {req.msg.get('type')} now gets a different answer "
                               "than the code was told")
        if run.outcome is None:
            raise Mismatch(f"{run.artifact_id}: the recorded run is incomplete")
        if run.outcome[0] == "ok":
            return CallResult(run.outcome[1], run.cpu_seconds)
        raise CodeError(run.outcome[1], run.outcome[2], run.cpu_seconds)


@dataclass(frozen=True)
class Frame:
    requester: str          # identity for permission checks of the call being made
    payer: str              # account that pays for it
    stack: tuple[str, ...]  # user-code artifacts currently running
    deadline: float         # unused inside the writer (phase 1 enforces the deadline)
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
    # The recorded code runs (phase 1), replayed instead of running code.
    code: Replay | None = field(default=None, compare=False)
    # The top-level caller and what is left of its max_spend ([n], shared by the chain):
    # prices and pay()s taken from the caller count against it.
    spender: str = ""
    spend_left: list = field(default_factory=lambda: [0], compare=False)
    now: float = 0.0        # the chain's clock reading


def take_spend(frame: Frame, payer: str, amount: int) -> None:
    """Count `amount` of the top-level caller's scrip against the call's max_spend."""
    if payer != frame.spender or not isinstance(amount, int) or amount <= 0:
        return
    if amount > frame.spend_left[0]:
        raise KernelError(Reason.SPEND_LIMIT_EXCEEDED,
                          f"taking {amount} more scrip from {payer} exceeds this call's max_spend "
                          f"({frame.spend_left[0]} left)", field="max_spend")
    frame.spend_left[0] -= amount


def price_of(art: Artifact) -> int:
    p = art.metadata.get("price", 0)
    return p if isinstance(p, int) and not isinstance(p, bool) and p > 0 else 0


def invoke(kernel: "Kernel", conn: Store, frame: Frame, artifact_id: str, method: str,
           args: dict, now: float) -> Any:
    target, _cost = admit(kernel, conn, frame, artifact_id, method, args, now)
    g = kernel.genesis.get(artifact_id)
    if g is not None:
        return g.call(conn, frame.requester, method, args, now)
    return run_code(kernel, conn, frame, target, method, args, now)


def admit(kernel: "Kernel", conn: Store, frame: Frame, artifact_id: str, method: str,
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


def run_code(kernel: "Kernel", conn: Store, frame: Frame, target: Artifact, method: str,
             args: dict, now: float) -> Any:
    """A call of user code inside the writer: every check before it runs, then its
    recorded run (frame.code, never the sandbox), its CPU and its price."""
    from server.sandbox import CodeError

    if kernel.sandbox is None or frame.code is None:
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
                  cpu_log=frame.cpu_log, outcomes=frame.outcomes, code=frame.code, spender=frame.spender,
                  spend_left=frame.spend_left, now=frame.now)

    def on_request(msg: dict) -> dict:
        return _serve_nested(kernel, conn, inner, msg)

    context = {"artifact_id": target.id, "caller": frame.requester, "payer": frame.payer,
               "now": now, "depth": len(inner.stack)}
    try:
        result = frame.code.run(target, code_payer, method, args, context, on_request)
    except CodeError as e:
        use_cpu(kernel, conn, frame, code_payer, e.cpu_seconds, now)  # re-applied after the rollback
        frame.outcomes.append((target.id, method, frame.requester, frame.payer, False, e.reason))
        raise KernelError(code_error_reason(e.reason), f"{target.id}.{method}: {e.message}") from None
    use_cpu(kernel, conn, frame, code_payer, result.cpu_seconds, now)
    frame.outcomes.append((target.id, method, frame.requester, frame.payer, True, None))
    if price and controller and controller != frame.payer:
        # the ledger emits the move's ledger.transfer event itself
        ledger.transfer(conn, frame.payer, controller, price, now=now, memo="price", artifact_id=target.id)
        take_spend(frame, frame.payer, price)  # after the transfer's own checks; a failure rolls it back
    return result.value


def code_error_reason(reason: str) -> Reason:
    """The Reason a failed run of code (CodeError.reason) reaches its caller with."""
    return {"TIMEOUT": Reason.TIMEOUT, "INVALID_ARGS": Reason.INVALID_ARGS,
            "CALL_DEPTH_EXCEEDED": Reason.CALL_DEPTH_EXCEEDED, "CALL_CYCLE": Reason.CALL_CYCLE,
            "SANDBOX_UNAVAILABLE": Reason.SANDBOX_UNAVAILABLE}.get(reason, Reason.EXECUTION_ERROR)


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


def _serve_nested(kernel: "Kernel", conn: Store, frame: Frame, msg: dict) -> dict:
    """Answer one request from running code. Identity and payer come from `frame`."""
    from server.kernel.contracts import NeedWork

    now = frame.now
    mark = len(frame.cpu_log)
    conn.savepoint("nested")
    try:
        if msg.get("type") == "invoke":
            artifact_id, method, args = msg.get("artifact_id"), msg.get("method"), msg.get("args")
            if not isinstance(method, str) or not isinstance(args, dict):
                raise KernelError(Reason.INVALID_ARGS, "invoke(artifact_id, method, **args)")
            value = invoke(kernel, conn, frame, artifact_id, method, args, now)
        else:
            to, amount = msg.get("to"), msg.get("amount")
            artifacts.check_id(to, "to")
            # the ledger emits the move's ledger.transfer event itself (artifact: the paying code)
            ledger.transfer(conn, frame.payer, to, amount, now=now, memo=f"pay from {frame.stack[-1]}",
                            artifact_id=frame.stack[-1])
            take_spend(frame, frame.payer, amount)  # after the transfer's own checks; a failure rolls it back
            value = {"paid": amount, "to": to, "from": frame.payer}
    except NeedWork:
        conn.rollback_to("nested")
        conn.release("nested")
        raise
    except KernelError as err:
        conn.rollback_to("nested")
        conn.release("nested")
        recharge_cpu(kernel, conn, frame.cpu_log[mark:], now)
        return {"type": "error", "reason": err.reason.value, "message": err.message}
    conn.release("nested")
    return {"type": "result", "value": value}


# -- phase 1: outside the writer ---------------------------------------------------------------


class Planner:
    """Phase 1 of one top-level invocation, in a worker thread (never the writer).

    `submit(chain)` runs the chain's writer operation (Kernel.op_invoke, wrapped by the
    RPC layer) and blocks for its result: a DryRun, the final value, or a raised
    KernelError. `do_work(item, work)` does the sandbox work a NeedWork asks for (a
    contract decision, a code check), outside the writer, into `work`."""

    MAX_ROUNDS = 4       # NeedWork rounds per operation
    CHAIN_ATTEMPTS = 3   # whole chains run again when a reply changed before the commit

    def __init__(self, kernel: "Kernel", submit, do_work, caller: str = "", max_spend: int = 0) -> None:
        self.kernel = kernel
        self.submit = submit
        self.do_work = do_work
        sb = kernel.config["sandbox"]
        self.timeout = sb["timeout_seconds"]
        self.max_effects = sb["max_effects"]
        self.caller = caller
        self.max_spend = max_spend or sb["default_max_spend"]
        self.chain = Chain(now=kernel.clock())
        self.deadline = 0.0
        self.predict = True
        self.spend_left = 0

    def run(self) -> Any:
        for attempt in range(self.CHAIN_ATTEMPTS):
            self.chain = Chain(now=self.kernel.clock())
            self.deadline = time.monotonic() + self.timeout
            self.spend_left = self.max_spend
            try:
                return self._once()
            except KernelError as err:
                if not getattr(err, "chain_mismatch", False) or attempt + 1 == self.CHAIN_ATTEMPTS:
                    raise
                self.predict = False  # answer every request exactly from now on
        raise AssertionError("unreachable")

    def _predicted_pay(self, run: CodeRun, msg: dict) -> dict | None:
        """The reply a plain pay() gets when it succeeds - given without a dry run, so a
        loop of pay()s costs the writer nothing until phase 2, which checks it. None: ask
        the writer. A wrong guess (not enough scrip, no such principal) is a mismatch in
        phase 2, and the chain runs again without guesses."""
        to, amount = msg.get("to"), msg.get("amount")
        if not (isinstance(amount, int) and not isinstance(amount, bool) and 0 < amount <= 2**53):
            return None
        if not isinstance(to, str) or not to or len(to) > 128 or to in (run.payer, artifacts.SYSTEM_ACCOUNT):
            return None
        try:
            artifacts.check_id(to, "to")
        except KernelError:
            return None
        if run.payer == self.caller:
            if amount > self.spend_left:
                return None
            self.spend_left -= amount
        return {"type": "result", "value": {"paid": amount, "to": to, "from": run.payer}}

    def _once(self) -> Any:
        from server.sandbox import CodeError

        res = self._submit()
        if isinstance(res, Pending):
            try:
                self._run_outside(res, None)
            except CodeError:
                pass  # the chain was aborted; the final operation charges its CPU and fails
            res = self._submit()
        if isinstance(res, DryRun):  # a final operation cannot be a dry run
            raise KernelError(Reason.CONFLICT, "the call changed while it ran; retry", retry_after=0.05)
        return res

    def _submit(self) -> Any:
        from server.kernel.contracts import NeedWork

        chain = self.chain
        for _ in range(self.MAX_ROUNDS):
            try:
                res = self.submit(chain)
                chain.started = True
                return res
            except NeedWork as need:
                self.do_work(need.item, chain.work)
        raise KernelError(Reason.CONFLICT, "what this call depends on kept changing; retry", retry_after=0.1)

    def _run_outside(self, p: Pending, parent: Request | None) -> None:
        """Run user code in the sandbox (this thread), recording what it asks and is told.
        Raises CodeError when the chain was aborted meanwhile."""
        from server.sandbox import CodeError

        t = p.target
        run = CodeRun(t.id, t.content, p.method, p.call_args, p.context, p.payer)
        if parent is None:
            self.chain.root = run
        else:
            parent.child = run
        try:
            result = self.kernel.sandbox.call(t.id, t.content, [m["name"] for m in t.interface], p.method,
                                              p.call_args, p.context, self.deadline, lambda msg: self._serve(run, msg))
        except CodeError as e:
            run.cpu_seconds = e.cpu_seconds
            run.outcome = ("err", e.reason, e.message)
            if self.chain.abort is not None:
                raise CodeError("ABORTED", self.chain.abort.message, 0.0) from None
            return
        run.cpu_seconds = result.cpu_seconds
        run.outcome = ("ok", result.value)

    def _abort(self, err: KernelError):
        from server.sandbox import CodeError

        if self.chain.abort is None:
            self.chain.abort = err
        return CodeError("ABORTED", self.chain.abort.message)

    def _serve(self, run: CodeRun, msg: dict) -> dict:
        """Answer one nested request of running code: a dry run in the writer."""
        chain = self.chain
        if chain.abort is not None:
            raise self._abort(chain.abort)
        if time.monotonic() >= self.deadline:
            req = Request(msg, {"type": "error", "reason": "TIMEOUT", "message": "time limit exceeded"}, local=True)
            run.requests.append(req)
            return req.reply
        chain.effects += 1
        if chain.effects > self.max_effects:
            raise self._abort(KernelError(
                Reason.INVALID_ARGS, f"the call made more than {self.max_effects} nested invoke()/pay() requests "
                                     "(sandbox.max_effects)", field="artifact_id"))
        if self.predict and msg.get("type") == "pay":
            reply = self._predicted_pay(run, msg)
            if reply is not None:
                run.requests.append(Request(msg, reply))
                return reply
        req = Request(msg)
        run.requests.append(req)
        try:
            res = self._submit()
            if isinstance(res, Pending):
                self._run_outside(res, req)
                res = self._submit()
        except KernelError as err:
            raise self._abort(err) from None
        if isinstance(res, Answered):
            req.reply = res.reply
            return res.reply
        message = res.message if isinstance(res, Mismatch) else "the call changed while it ran"
        err = KernelError(Reason.CONFLICT, f"{message}; retry", retry_after=0.05)
        err.chain_mismatch = True
        raise self._abort(err)
