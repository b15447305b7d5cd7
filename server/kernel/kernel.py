"""The verbs: read, write, delete, invoke - and the operator's create_agent.

Each `op_*` method is one atomic operation, run by the executor inside a savepoint: it
checks everything first (ids, contract, resources), then changes state, and any
KernelError on the way undoes all of it. Read-only queries (`get_state`,
`list_artifacts`, `stats`) take a read connection and never see uncommitted state.

Charging: the caller pays `costs.<verb>` compute (plus `costs.<genesis>.<method>` for a
genesis method). A call that fails changes nothing - it is not charged either; the RPC
rate limits bound how often one can fail. Exception: CPU that user code or a user
contract used is charged however the call ends.

No user code runs here (the writer thread): user contracts are answered from decisions
made outside (`with_work`, contracts.DecisionTable), user code from its recorded run
(`op_invoke`, invocation.Replay), code checks from their outcome computed ahead
(`check_code`). What is missing raises contracts.NeedWork for the RPC layer to do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from server.config import Config
from server.errors import KernelError, Reason, invalid
from server.kernel import artifacts, contracts, events, invocation, ledger, resources, tape
from server.kernel.artifacts import Artifact, SYSTEM_ACCOUNT, dumps
from server.storage.executor import Failed
from server.storage.store import RequestSeen

DEFAULT_CONTRACT = "genesis_freeware"
AGENT_CONTRACT = "genesis_self_owned"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Kernel:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time, sandbox=None) -> None:
        """`sandbox` (server.sandbox.Sandbox) runs user code and user contracts; without
        one, invoking user code fails SANDBOX_UNAVAILABLE and user contracts deny."""
        self.config = config
        # Every clock reading and outside answer an operation uses goes through the tape,
        # so it is recorded with the operation (exact replay: server/kernel/tape.py).
        self.tape = tape.Tape(clock)
        self.clock = self.tape.clock
        self.sandbox = sandbox
        self._genesis_artifacts: dict[str, Artifact] = {}
        # Code-check outcomes computed ahead of their write: key -> (failure or None, cpu).
        self._prechecked: dict[tuple, tuple[str | None, float]] = {}
        # Signs listing cursors (see `list_artifacts`): a cursor is one this server issued.
        self._cursor_key = secrets.token_bytes(32)
        # Inside operations user contracts are answered from decisions made outside
        # (contracts.DecisionTable); `contract_evaluator` makes them, off the writer thread.
        self.contract_evaluator = (
            contracts.SandboxedContracts(sandbox, config["sandbox"]["contract_timeout_seconds"])
            if sandbox is not None else None)
        self.runner: contracts.ContractRunner = (
            contracts.DecisionTable() if sandbox is not None else contracts.NoSandboxRunner())
        from server.genesis import build_genesis  # genesis artifacts call back into the kernel

        self.genesis = build_genesis(self)

    # -- bootstrap -----------------------------------------------------------------

    def bootstrap(self, conn) -> None:
        """Create (or refresh) the genesis artifacts. Idempotent; run at every start."""
        now = self.clock()
        self._genesis_artifacts = {}
        for g in self.genesis.values():
            existing = artifacts.get(conn, g.id)
            content = g.content()
            interface = g.interface()
            if existing is None:
                artifacts.insert(conn, Artifact(
                    id=g.id, content=content, created_by=SYSTEM_ACCOUNT,
                    access_contract_id=DEFAULT_CONTRACT, has_standing=g.has_standing,
                    can_execute=True, interface=interface,
                    metadata={"kind": "genesis", "description": g.description},
                    state={"controller": SYSTEM_ACCOUNT}, version=1, created_at=now,
                    updated_at=now, size_bytes=len(content.encode()), billed_to=SYSTEM_ACCOUNT,
                ))
                if g.has_standing:
                    ledger.open_account(conn, g.id)
            elif existing.content != content or existing.interface != interface:
                artifacts.save(conn, artifacts.bump(
                    existing, now, content=content, interface=interface,
                    size_bytes=len(content.encode())))
            self._genesis_artifacts[g.id] = artifacts.require(conn, g.id)
            g.setup(conn, now)

    # -- helpers ---------------------------------------------------------------------

    def load(self, conn, artifact_id: str) -> Artifact:
        """An existing, live artifact. Genesis artifacts come from memory: nobody can
        write, delete or transfer them after bootstrap (their controller is
        genesis_system, which no caller can be)."""
        cached = self._genesis_artifacts.get(artifact_id)
        return cached if cached is not None else artifacts.require(conn, artifact_id)

    def authorize(self, conn, target: Artifact, action: str, requester: str, now: float,
                  proposed: dict | None = None) -> None:
        contracts.authorize(conn, self.runner, target, action, requester, now, proposed, loader=self.load)

    def charge(self, conn, payer: str, cost_key: str, now: float) -> None:
        resources.charge(conn, payer, "compute", self.config.cost(cost_key), now)

    def _limit_json(self, value: Any, field: str, max_bytes: int) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise invalid(field, "must be an object")
        try:
            text = dumps(value)
        except ValueError:
            raise invalid(field, "numbers must be finite")
        if len(text.encode()) > max_bytes:
            raise invalid(field, f"at most {max_bytes} bytes as JSON")
        return value

    def precheck_usable(self, reader, caller: str, request_id: str = "") -> None:
        """Fail fast, on the read connection, a call whose payer is in compute debt, so
        a flooding agent in debt costs no writer time. The writer re-checks anyway; a
        retry of a remembered request id still gets its first outcome."""
        b = resources.load_bucket(reader, caller, "compute")
        if b is None:
            return
        wait = b.seconds_until_usable(self.clock())
        if wait > 0 and not (request_id and reader.idem_exists(caller, request_id)):
            raise KernelError(Reason.INSUFFICIENT_RESOURCES,
                              f"{caller} is in compute debt; usable again in {wait:.3f}s", retry_after=wait)

    # -- idempotency -------------------------------------------------------------------

    def idempotent(self, conn, caller: str, request_id: str, method: str,
                   op: Callable[[], Any]) -> Any:
        """Run `op` once per (caller, request_id): a retry returns the first outcome.
        Failures that waiting could fix (retry_after set) are not remembered.

        The lookup comes last, not first: `op` runs as if the request id were new, inside a
        savepoint, and its outcome is remembered; a request id remembered already makes that
        insert fail (RequestSeen), and then everything `op` did is undone and the first
        outcome returned. A new request (nearly every call) so costs no lookup: on
        PostgreSQL, one round trip fewer.
        Retrying a remembered call runs `op` once more and throws it away; `op` is a command
        on the writer, which never calls out (untrusted code and the LLM run outside it and
        come back as a DryRun, below), so nothing of that run escapes."""
        if not request_id:
            return op()
        if len(request_id) > 128:
            raise invalid("request_id", "at most 128 characters")
        conn.savepoint("idem")
        try:
            result = op()
        except KernelError as err:
            conn.rollback_to("idem")
            if err.retry_after is not None:  # not an outcome: the first one, if any, stands
                conn.release("idem")
                if (first := self.first_outcome(conn, caller, request_id, method)) is not None:
                    return first()
                raise
            result, ok, outcome = Failed(err), False, err.to_dict()
        else:
            if isinstance(result, invocation.DryRun) or (
                    isinstance(result, Failed) and result.error.retry_after is not None):
                # Not an outcome (a dry run is rolled back; a failure that waiting could
                # fix is not remembered): the first one, if any, stands.
                conn.release("idem")
                first = self.first_outcome(conn, caller, request_id, method)
                return result if first is None else first()
            if isinstance(result, Failed):  # failed, but with charges that stand (CPU used)
                ok, outcome = False, result.error.to_dict()
            else:
                ok, outcome = True, result
        try:
            self._remember(conn, caller, request_id, method, ok, outcome)
        except RequestSeen:
            conn.rollback_to("idem")
            conn.release("idem")
            first = self.first_outcome(conn, caller, request_id, method)
            if first is None:
                raise RuntimeError(f"request {request_id!r} of {caller} was refused as seen, and is not remembered")
            return first()
        conn.release("idem")
        return result

    @staticmethod
    def first_outcome(conn, caller: str, request_id: str, method: str) -> Callable[[], Any] | None:
        """The first outcome of (caller, request_id), as a call that returns or raises it;
        None if there is none."""
        row = conn.idem_get(caller, request_id)
        if row is None:
            return None
        used_for, ok, outcome = row
        if used_for != method:
            raise invalid("request_id", f"already used for {used_for}")
        if ok:
            return lambda: outcome

        def fail():
            raise KernelError.from_dict(outcome)
        return fail

    def _remember(self, conn, caller, request_id, method, ok, outcome) -> None:
        conn.idem_put(caller, request_id, method, ok, outcome, self.clock())

    def purge_idempotency(self, conn) -> int:
        cutoff = self.clock() - self.config.server["idempotency_window_seconds"]
        return conn.idem_purge(cutoff)

    # -- verbs ---------------------------------------------------------------------

    def op_read(self, conn, caller: str, artifact_id: str) -> dict:
        now = self.clock()
        artifacts.check_id(artifact_id)
        target = artifacts.require(conn, artifact_id)
        self.authorize(conn, target, "read", caller, now)
        self.charge(conn, caller, "read", now)
        return target.to_dict()

    def op_write(self, conn, caller: str, req: dict) -> dict:
        return self.charged_even_if_failed(conn, lambda: self._write(conn, caller, req))

    def _write(self, conn, caller: str, req: dict) -> dict:
        """req: artifact_id, content, access_contract_id, can_execute, interface, metadata,
        state, expected_version, create_only, replace_interface/metadata/state."""
        now = self.clock()
        limits = self.config.limits
        artifact_id = artifacts.check_id(req.get("artifact_id"))
        content = req.get("content", "")
        size = len(content.encode())
        if size > limits["max_content_bytes"]:
            raise invalid("content", f"at most {limits['max_content_bytes']} bytes")
        metadata = self._limit_json(req.get("metadata"), "metadata", limits["max_metadata_bytes"])
        price = metadata.get("price", 0)
        if not isinstance(price, int) or isinstance(price, bool) or price < 0:
            raise invalid("metadata.price", "a price is a non-negative integer of scrip")
        state = self._limit_json(req.get("state"), "state", limits["max_state_bytes"])
        if "controller" in state:
            raise invalid("state.controller", "control changes only through a transfer")
        interface_given = req.get("interface") is not None
        interface = artifacts.validate_interface(req.get("interface") or [], limits)
        contract_id = req.get("access_contract_id") or ""
        if contract_id:
            artifacts.check_id(contract_id, "access_contract_id")
        expected = int(req.get("expected_version") or 0)

        existing = artifacts.get(conn, artifact_id)
        resources.require_usable(conn, caller, "compute", now)

        if existing is None:
            if artifact_id.startswith(artifacts.RESERVED_PREFIX):
                raise invalid("artifact_id", "ids starting with 'genesis_' are reserved")
            if expected > 0:
                raise KernelError(Reason.CONFLICT, f"{artifact_id} does not exist (expected version {expected})",
                                  field="expected_version")
            contract_id = contract_id or DEFAULT_CONTRACT
            self._require_contract(conn, contract_id)
            can_execute = bool(req.get("can_execute"))
            if can_execute and not interface:
                raise invalid("interface", "an executable artifact needs at least one method")
            if not can_execute and interface:
                raise invalid("interface", "only executable artifacts have an interface")
            self.charge(conn, caller, "write", now)
            resources.adjust_disk(conn, caller, size)
            if can_execute:
                self.check_code(conn, caller, artifact_id, content, interface)
            art = Artifact(
                id=artifact_id, content=content, created_by=caller, access_contract_id=contract_id,
                has_standing=False, can_execute=can_execute, interface=interface, metadata=metadata,
                state={**state, "controller": caller}, version=1, created_at=now, updated_at=now,
                size_bytes=size, billed_to=caller,
            )
            artifacts.insert(conn, art)
            events.append(conn, "artifact.written", principal_id=caller, artifact_id=artifact_id,
                          now=now, data={"version": 1, "created": True})
            return {"artifact": art.to_dict(), "created": True}

        # A tombstone keeps its id taken: create_only answers ALREADY_EXISTS for it too;
        # a plain write to it answers DELETED.
        if req.get("create_only"):
            raise KernelError(Reason.ALREADY_EXISTS,
                              f"artifact {artifact_id!r} was deleted; its id stays taken" if existing.deleted
                              else f"artifact {artifact_id!r} already exists", field="artifact_id")
        if existing.deleted:
            raise KernelError(Reason.DELETED, f"artifact {artifact_id!r} was deleted; its id stays taken",
                              field="artifact_id")
        if expected > 0 and expected != existing.version:
            raise KernelError(Reason.CONFLICT,
                              f"{artifact_id} is at version {existing.version}, not {expected}",
                              field="expected_version")
        if req.get("can_execute") and not existing.can_execute:
            raise invalid("can_execute", "cannot change after creation")
        new_contract = existing.access_contract_id
        if contract_id and contract_id != existing.access_contract_id:
            self.authorize(conn, existing, "transfer", caller, now)
            self._require_contract(conn, contract_id)
            new_contract = contract_id
        new_interface = existing.interface
        if req.get("replace_interface") or interface_given and interface:
            if not existing.can_execute and interface:
                raise invalid("interface", "only executable artifacts have an interface")
            if existing.can_execute and not interface and not existing.has_standing:
                raise invalid("interface", "an executable artifact needs at least one method")
            new_interface = interface
        self._require_own_code(existing, caller, content, new_interface)
        new_metadata = metadata if req.get("replace_metadata") else {**existing.metadata, **metadata}
        new_state = ({**state, "controller": existing.state.get("controller")}
                     if req.get("replace_state") else {**existing.state, **state})
        # The contract sees the proposed change too, so it can allow partial writes
        # (e.g. an approver adding only its own approval).
        proposed = {"metadata": new_metadata, "state": new_state, "content_changed": content != existing.content,
                    "interface_changed": new_interface != existing.interface}
        self.authorize(conn, existing, "write", caller, now, proposed=proposed)
        self.charge(conn, caller, "write", now)
        # The bytes are billed to the last writer: nobody can fill another's quota.
        resources.adjust_disk(conn, existing.billed_to, -existing.size_bytes)
        resources.adjust_disk(conn, caller, size)
        art = artifacts.bump(existing, now, content=content, access_contract_id=new_contract,
                             interface=new_interface, metadata=new_metadata, state=new_state,
                             size_bytes=size, billed_to=caller)
        if art.can_execute and (content != existing.content or new_interface != existing.interface):
            self.check_code(conn, caller, artifact_id, content, new_interface)
        artifacts.save(conn, art)
        events.append(conn, "artifact.written", principal_id=caller, artifact_id=artifact_id,
                      now=now, data={"version": art.version, "created": False})
        return {"artifact": art.to_dict(), "created": False}

    @staticmethod
    def _require_own_code(existing: Artifact, caller: str, content: str, new_interface: list[dict]) -> None:
        """A principal's money moves only by its own decisions (DESIGN.md "Money and
        resources"): the code and interface of an artifact with standing are changed only
        by that artifact itself, whatever its contract allows - else whoever controls it
        (a buyer through genesis_escrow, the creator of a spawned agent) could make code
        run as it and be paid by it. Its controller changes its configuration: the content
        of an agent without an interface (prompt, brain, plan, which the running agent
        re-reads and follows), its metadata and state, its contract. The content of an
        agent with an interface is Python source, i.e. code."""
        if not existing.has_standing or caller == existing.id:
            return
        if new_interface != existing.interface:
            raise KernelError(Reason.ACCESS_DENIED,
                              f"the interface of {existing.id} (it has standing) is changed only by {existing.id} "
                              "itself: its code would run on its account", field="interface")
        if existing.interface and content != existing.content:
            raise KernelError(Reason.ACCESS_DENIED,
                              f"the content of {existing.id} is its code (it has standing and an interface); only "
                              f"{existing.id} itself changes it", field="content")

    def _require_contract(self, conn, contract_id: str) -> None:
        if not contracts.is_contract(artifacts.get(conn, contract_id)):
            raise invalid("access_contract_id",
                          f"{contract_id} is not an existing contract (an executable artifact with check_permission)")

    def op_delete(self, conn, caller: str, artifact_id: str, expected_version: int = 0) -> dict:
        now = self.clock()
        artifacts.check_id(artifact_id)
        target = artifacts.require(conn, artifact_id)
        self.authorize(conn, target, "delete", caller, now)
        if expected_version > 0 and expected_version != target.version:
            raise KernelError(Reason.CONFLICT, f"{artifact_id} is at version {target.version}",
                              field="expected_version")
        if artifact_id.startswith(artifacts.RESERVED_PREFIX):
            raise KernelError(Reason.ACCESS_DENIED, "genesis artifacts cannot be deleted")
        self.charge(conn, caller, "delete", now)
        resources.adjust_disk(conn, target.billed_to, -target.size_bytes)
        conn.escrow_delete(artifact_id)
        tomb = artifacts.bump(target, now, content="", size_bytes=0, deleted=True)
        artifacts.save(conn, tomb)
        events.append(conn, "artifact.deleted", principal_id=caller, artifact_id=artifact_id, now=now,
                      data={"version": tomb.version})
        return {"artifact": tomb.to_dict()}

    def op_invoke(self, conn, caller: str, artifact_id: str, method: str, args: dict,
                  chain: "invocation.Chain | None" = None, max_spend: int = 0) -> Any:
        """Invoke a method (server/kernel/invocation.py). User code never runs here: its
        recorded run (`chain`, phase 1) is replayed. While something in the chain is
        still pending this is a dry run: everything is rolled back and the DryRun (what
        must run outside next, or the reply to the pending request) is returned. With
        nothing pending it is phase 2: it commits, or - if user code ran - fails with
        everything undone but the CPU charges (Failed)."""
        chain = chain or invocation.Chain(now=self.clock())
        final = chain.final
        now = chain.now
        if chain.abort is not None:  # phase 1 gave up: the CPU used stands, nothing else
            for payer, cpu in chain.cpu_charges():
                invocation.charge_cpu(self, conn, payer, cpu, now)
            return Failed(chain.abort)
        if chain.root is not None and chain.root.outcome is not None and chain.root.outcome[0] == "err":
            # The top-level code failed: all its effects would be undone, so they are not
            # replayed (however many there were); the CPU used stands.
            root = chain.root
            for payer, cpu in chain.cpu_charges():
                invocation.charge_cpu(self, conn, payer, cpu, now)
            invocation.record_outcomes(conn, chain.outcomes(), now)
            return Failed(KernelError(invocation.code_error_reason(root.outcome[1]),
                                      f"{root.artifact_id}.{root.method}: {root.outcome[2]}"))
        frame = invocation.Frame(requester=caller, payer=caller, stack=(), deadline=float("inf"),
                                 code=invocation.Replay(chain), spender=caller, now=now,
                                 spend_left=[max_spend or self.config["sandbox"]["default_max_spend"]])
        conn.savepoint("invoke")
        try:
            value = invocation.invoke(self, conn, frame, artifact_id, method, args, now)
            if not final:
                raise invocation.Mismatch("the call took a different path than its code did")
            if frame.cpu_log:  # user code ran: its result must fit in a reply
                limit = self.config.server["max_message_bytes"] - 4096
                if len(dumps(value)) > limit:
                    raise KernelError(Reason.INVALID_ARGS, f"result too large: more than {limit} bytes as JSON",
                                      field="result")
        except invocation.DryRun as dry:
            conn.rollback_to("invoke")
            conn.release("invoke")
            if not final or not isinstance(dry, invocation.Mismatch):
                return dry
            for payer, cpu in chain.cpu_charges():
                invocation.charge_cpu(self, conn, payer, cpu, now)
            err = KernelError(Reason.CONFLICT, f"{dry.message}; retry", retry_after=0.05)
            err.chain_mismatch = True
            return Failed(err)
        except KernelError as err:
            conn.rollback_to("invoke")
            conn.release("invoke")
            if not final or isinstance(err, contracts.NeedWork) or chain.root is None:
                raise
            # Every run of code in the chain used its CPU, also those the failure kept
            # the replay from reaching.
            for payer, cpu in chain.cpu_charges():
                invocation.charge_cpu(self, conn, payer, cpu, now)
            invocation.record_outcomes(conn, frame.outcomes, now)
            return Failed(err)
        invocation.record_outcomes(conn, frame.outcomes, now)
        conn.release("invoke")
        return value

    def with_work(self, conn, caller: str, work: "invocation.Work", op: Callable[[], Any]) -> Any:
        """Run `op` with the contract decisions made outside for it (contracts.DECISIONS).
        The CPU those contracts used is charged to `caller` when the operation ends -
        also when it fails (a denied call changes nothing else, but that charge stands).
        A NeedWork or a dry run charges nothing: the operation will run again."""
        token = contracts.DECISIONS.set(work.decisions)
        conn.savepoint("work")
        try:
            try:
                result = op()
            except KernelError as err:
                conn.rollback_to("work")
                conn.release("work")
                if isinstance(err, contracts.NeedWork) or work.cpu_seconds <= 0:
                    raise
                invocation.charge_cpu(self, conn, caller, work.cpu_seconds, self.clock())
                return Failed(err)
            conn.release("work")
            if work.cpu_seconds > 0 and not isinstance(result, invocation.DryRun):
                invocation.charge_cpu(self, conn, caller, work.cpu_seconds, self.clock())
            return result
        finally:
            contracts.DECISIONS.reset(token)

    def check_code(self, conn, payer: str, artifact_id: str, content: str, interface: list[dict]) -> None:
        """Executable content must compile and define every interface method (checked
        in the sandbox: the server never runs user code). The CPU the check used is
        charged to `payer` - also when the check fails (see `charged_even_if_failed`)."""
        if not interface or self.sandbox is None:
            return
        methods = [m["name"] for m in interface]
        key = self.sandbox.key(artifact_id, content, methods)
        outcome = self.tape.answer("code_check", lambda: self._prechecked.pop(key, None))
        if outcome is None:  # not checked ahead (or another write used it up): never here
            raise contracts.NeedWork(contracts.CodeCheck(artifact_id, content, interface),
                                     f"the code of {artifact_id} must be checked first; retry")
        failure, cpu = outcome
        if failure is not None:
            err = invalid("content", failure)
            err.cpu_used = (payer, cpu)
            raise err
        invocation.charge_cpu(self, conn, payer, cpu, self.clock())

    def precheck_code(self, artifact_id: str, content: str, interface: list[dict]) -> None:
        """Run the code check ahead of the write, outside the writer thread (the RPC layer
        calls this in a worker thread), so slow or hostile top-level code never holds up
        other writes. The outcome is picked up by `check_code` inside the write."""
        if not interface or self.sandbox is None:
            return
        from server.sandbox import CodeError

        methods = [m["name"] for m in interface]
        key = self.sandbox.key(artifact_id, content, methods)
        try:
            outcome = (None, self.sandbox.check(artifact_id, content, methods,
                                                self.config["sandbox"]["timeout_seconds"]))
        except CodeError as e:
            outcome = (e.message, e.cpu_seconds)
        if len(self._prechecked) > 10_000:
            self._prechecked.clear()
        self._prechecked[key] = outcome

    def charged_even_if_failed(self, conn, op: Callable[[], Any]) -> Any:
        """Run `op` in a savepoint. If it fails after running user code (the error has
        `cpu_used`), undo everything but that CPU charge and return Failed(err)."""
        conn.savepoint("charged")
        try:
            result = op()
        except KernelError as err:
            conn.rollback_to("charged")
            conn.release("charged")
            used = getattr(err, "cpu_used", None)
            if used is None:
                raise
            invocation.charge_cpu(self, conn, *used, self.clock())
            return Failed(err)
        conn.release("charged")
        return result

    # -- operators -------------------------------------------------------------------

    def op_create_agent(self, conn, name: str, config_text: str, *, metadata: dict | None = None,
                        overrides: dict | None = None, access_contract_id: str = "",
                        interface: list[dict] | None = None) -> dict:
        """An agent: standing + code. With an `interface`, `config_text` is Python source
        implementing it (an invokable principal that pays for its own work)."""
        now = self.clock()
        o = {k: v for k, v in (overrides or {}).items() if v}
        d = self.config.agents
        agent_id = artifacts.check_id(name, "name")
        if agent_id.startswith(artifacts.RESERVED_PREFIX):
            raise invalid("name", "ids starting with 'genesis_' are reserved")
        if artifacts.get(conn, agent_id) is not None:
            raise KernelError(Reason.ALREADY_EXISTS, f"id {agent_id!r} is taken", field="name")
        size = len(config_text.encode())
        if size > self.config.limits["max_content_bytes"]:
            raise invalid("config", "too large")
        metadata = self._limit_json(metadata, "metadata", self.config.limits["max_metadata_bytes"])
        contract_id = access_contract_id or (DEFAULT_CONTRACT if interface else AGENT_CONTRACT)
        self._require_contract(conn, contract_id)
        for key in ("endowment", "disk_quota_bytes", "llm_budget_micro_usd"):
            if key in o and (not isinstance(o[key], int) or o[key] < 0):
                raise invalid(key, "must be a non-negative integer")
        for key in ("rpc_rate", "rpc_burst", "compute_rate", "compute_capacity"):
            if key in o and not (isinstance(o[key], (int, float)) and 0 < o[key] < 1e9):
                raise invalid(key, "must be a positive finite number")
        interface = artifacts.validate_interface(interface or [], self.config.limits)
        art = Artifact(
            id=agent_id, content=config_text, created_by=SYSTEM_ACCOUNT,
            access_contract_id=contract_id, has_standing=True, can_execute=True, interface=interface,
            metadata={"kind": "agent", **metadata}, state={"controller": agent_id}, version=1,
            created_at=now, updated_at=now, size_bytes=size, billed_to=agent_id,
        )
        self.check_code(conn, SYSTEM_ACCOUNT, agent_id, config_text, interface)
        artifacts.insert(conn, art)
        ledger.open_account(conn, agent_id)
        resources.create_principal(
            conn, agent_id, now=now,
            compute_rate=float(o.get("compute_rate", d["compute_rate"])),
            compute_capacity=float(o.get("compute_capacity", d["compute_capacity"])),
            disk_quota=int(o.get("disk_quota_bytes", d["disk_quota_bytes"])),
            llm_budget=int(o.get("llm_budget_micro_usd", d["llm_budget_micro_usd"])),
        )
        resources.adjust_disk(conn, agent_id, size)
        endowment = int(o.get("endowment", d["endowment"]))
        if "rpc_rate" in o or "rpc_burst" in o:
            conn.rpc_limits_set(agent_id, o.get("rpc_rate"), o.get("rpc_burst"))
        token, token_hash = self._new_token()
        conn.credential_add(token_hash, agent_id, now)
        events.append(conn, "agent.created", principal_id=SYSTEM_ACCOUNT, artifact_id=agent_id, now=now,
                      related=[agent_id], data={"endowment": endowment})
        if endowment > 0:  # after agent.created, as before; with its ledger.mint event (ledger.py)
            ledger.mint(conn, agent_id, endowment, now=now, memo="endowment")
        return {"agent_id": agent_id, "token": token, "agent": art.to_dict(),
                "rpc_rate": o.get("rpc_rate"), "rpc_burst": o.get("rpc_burst")}

    def op_issue_token(self, conn, agent_id: str) -> str:
        """A new bearer token for an existing, live, non-genesis agent (standing + code),
        e.g. one spawned by another agent (genesis_store.create_agent), so the operator's
        launcher can start it. Only its hash is stored; register the token with the
        server's Credentials too."""
        art = artifacts.require(conn, agent_id)
        if agent_id.startswith(artifacts.RESERVED_PREFIX) or not (art.has_standing and art.can_execute):
            raise invalid("agent_id", f"{agent_id} is not an agent")
        token, token_hash = self._new_token()
        conn.credential_add(token_hash, agent_id, self.clock())
        return token

    def _new_token(self) -> tuple[str, str]:
        """A new bearer token and its hash. Only the hash is state, so only the hash is on
        the tape (the oplog never holds a usable token; a replayed world's token is a dud)."""
        token = "eco_" + secrets.token_urlsafe(32)
        return token, self.tape.answer("token_hash", lambda: hash_token(token))

    # -- read-only queries (read connection) -------------------------------------------

    def get_state(self, conn, caller: str) -> dict:
        now = self.clock()
        flow_rows, stock_rows, scrip, last_seq = conn.principal_state(caller)
        return {
            "now": now,
            "principal_id": caller,
            "scrip": scrip or 0,
            **resources.snapshot(conn, caller, now, (flow_rows, stock_rows)),
            "last_event_seq": last_seq,
            "next_mint_at": self._next_mint_at(now),
        }

    def _next_mint_at(self, now: float) -> float | None:
        oracle = self.genesis.get("genesis_oracle")
        return oracle.next_resolution_at(now) if oracle is not None else None

    # -- listing cursors: base64url(HMAC-SHA256(key, id)[:12] + id), key per server process --

    _CURSOR_MAC_BYTES = 12

    def _cursor_mac(self, last_id: bytes) -> bytes:
        return hmac.new(self._cursor_key, b"list-cursor:" + last_id, hashlib.sha256).digest()[:self._CURSOR_MAC_BYTES]

    def issue_cursor(self, last_id: str) -> str:
        raw = last_id.encode()
        return base64.urlsafe_b64encode(self._cursor_mac(raw) + raw).decode().rstrip("=")

    def open_cursor(self, cursor: str) -> str:
        """The last id of the page a cursor was issued after; INVALID_ARGS (field cursor)
        for anything this server process did not issue."""
        if not cursor:
            return ""
        refused = invalid("cursor", "not a cursor this server issued (cursors are opaque and last until the "
                                    "server restarts); start again with an empty cursor")
        if len(cursor) > 256:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, binascii.Error):
            raise refused from None
        last_id = raw[self._CURSOR_MAC_BYTES:]
        # Compared in canonical form: also refuses variants that decode to the same bytes.
        if not last_id or not hmac.compare_digest(self.issue_cursor(last_id.decode(errors="replace")), cursor):
            raise refused
        return last_id.decode()

    def list_artifacts(self, conn, *, created_by: str = "", kind: str = "",
                       has_standing: bool | None = None, can_execute: bool | None = None,
                       metadata_equals: dict | None = None, include_deleted: bool = False,
                       page_size: int = 100, cursor: str = "", query: str = "") -> tuple[list[dict], str]:
        """One page of artifacts in id order, as discovery views (Artifact.summary: no
        content, of state only the controller). page_size 0 means 100; negative, or above
        limits.max_page_size, is INVALID_ARGS. `cursor`: "" for the first page, else a
        next_cursor this server issued (opaque, signed; see `open_cursor`)."""
        max_page = self.config.limits["max_page_size"]
        if isinstance(page_size, float) and page_size.is_integer():  # JSON 2.0 is an integer
            page_size = int(page_size)
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 0:
            raise invalid("page_size", "must not be negative (0 means the default, 100)")
        if page_size == 0:
            page_size = 100
        if page_size > max_page:
            raise invalid("page_size", f"at most {max_page}")
        after = self.open_cursor(cursor)
        if kind and kind not in ("agent", "tool", "account", "data"):
            raise invalid("kind", "one of agent, tool, account, data")
        if kind:
            has_standing = kind in ("agent", "account")
            can_execute = kind in ("agent", "tool")
        rows = conn.artifacts_page(after=after, limit=page_size + 1, created_by=created_by,
                                   has_standing=has_standing, can_execute=can_execute,
                                   include_deleted=include_deleted, metadata_equals=metadata_equals, query=query)
        items = [r.summary() for r in rows[:page_size]]
        next_cursor = self.issue_cursor(items[-1]["id"]) if len(rows) > page_size else ""
        return items, next_cursor

    def stats(self, conn) -> dict:
        t = ledger.totals(conn)
        counts = conn.artifact_counts()
        return {
            "now": self.clock(), "artifacts": counts[0], "tombstones": counts[1],
            "agents": counts[2], "minted": t["minted"], "burned": t["burned"],
            "total_balances": t["total_balances"], "ledger_entries": t["entries"],
            "last_event_seq": events.last_seq(conn),
        }

    def list_agents(self, conn, page_size: int, cursor: str) -> tuple[list[dict], str]:
        page_size = min(max(page_size or 100, 1), self.config.limits["max_page_size"])
        rows = conn.agents_page(cursor, page_size + 1)
        now = self.clock()
        out = []
        ids = [agent_id for agent_id, _ in rows[:page_size]]
        scrip = conn.balances_of(ids)  # three queries per page, not per agent
        flow, stock = conn.resources_of(ids)
        for agent_id, deleted in rows[:page_size]:
            snap = resources.snapshot(conn, agent_id, now, (flow.get(agent_id, []), stock.get(agent_id, [])))
            out.append({"agent_id": agent_id, "scrip": scrip.get(agent_id) or 0, "deleted": deleted, **snap})
        return out, (out[-1]["agent_id"] if len(rows) > page_size else "")
