"""No user code on the writer thread (DESIGN.md, Isolation): user contracts are decided
outside the writer on the inputs the transaction saw; nested invoke()/pay() run in two
phases; a call whose inputs changed before its commit fails CONFLICT with a RetryInfo;
contract CPU is charged to the requester, also on deny; a principal's sandbox work in
flight is capped.

The first tests run the server in this process (on its own event loop thread) so the
sandbox can be watched: every sandbox.call and sandbox.check records the thread it ran on.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import grpc
import pytest

from agent_runtime import AdminClient, EcologyError, WorldClient
from server.config import build
from tests.conftest import check_ledger

WRITER_THREAD = "kernel-writer"
ALLOW_LIST = """
def check_permission(artifact_id, action, requester_id, context):
    state = context["state"]
    if requester_id == state.get("controller") or requester_id in state.get("allow", []):
        return {"allowed": True, "reason": "listed"}
    return {"allowed": False, "reason": requester_id + " is not listed"}
"""


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class InProcess:
    """A WorldServer on an event loop in a background thread, with its sandbox watched."""

    def __init__(self, data_dir, overrides: dict | None = None) -> None:
        from server.app import WorldServer
        from tests.conftest import storage_overrides

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()
        self.socket = data_dir.parent / (data_dir.name + ".sock")
        self.server = WorldServer(build({**storage_overrides(), **(overrides or {})}), data_dir, [f"unix:{self.socket}"])
        self.call(self.server.start())
        self.admin_token = (data_dir / "admin.token").read_text().strip()
        self.threads: list[str] = []  # thread names of every sandbox.call / sandbox.check
        self.hooks: list = []         # called after every sandbox.call (in its thread)
        sandbox = self.server.sandbox
        real_call, real_check = sandbox.call, sandbox.check

        def call(*args, **kw):
            self.threads.append(threading.current_thread().name)
            try:
                return real_call(*args, **kw)
            finally:
                for hook in list(self.hooks):
                    hook(args)

        def check(*args, **kw):
            self.threads.append(threading.current_thread().name)
            return real_check(*args, **kw)

        sandbox.call, sandbox.check = call, check
        self.clients: list = []

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def agent(self, name: str, **kw) -> WorldClient:
        with AdminClient(f"unix:{self.socket}", self.admin_token) as admin:
            created = admin.create_agent(name, **kw)
        c = WorldClient(f"unix:{self.socket}", created.token)
        c.agent_id = created.agent_id
        self.clients.append(c)
        return c

    def commit(self, op):
        """Run one kernel operation from any thread (as another client would)."""
        return asyncio.run_coroutine_threadsafe(self.server.executor.run(op), self.loop).result(10)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.call(self.server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def inproc(tmp_path_factory):
    w = InProcess(tmp_path_factory.mktemp("writer") / "world",
                  {"sandbox": {"timeout_seconds": 2.0, "contract_timeout_seconds": 0.5}})
    yield w
    w.close()


def scrip(client) -> int:
    return client.get_state().scrip


def compute(client) -> float:
    return next(f.balance for f in client.get_state().flow if f.name == "compute")


def test_the_writer_thread_never_runs_user_code(inproc):
    alice, bob, carol = inproc.agent(uid("alice")), inproc.agent(uid("bob")), inproc.agent(uid("carol"))
    start = len(inproc.threads)
    # A user contract: reads, writes (with the proposed change), deletes - allowed and denied.
    cid = uid("contract")
    alice.write(cid, ALLOW_LIST, can_execute=True, interface=[{"name": "check_permission"}])
    doc = uid("doc")
    alice.write(doc, "v1", access_contract_id=cid, state={"allow": [bob.agent_id]})
    assert bob.read(doc).content == "v1"
    with pytest.raises(EcologyError) as e:
        carol.read(doc)
    assert e.value.reason == "ACCESS_DENIED" and "is not listed" in e.value.message
    bob.write(doc, "v2 by bob")
    with pytest.raises(EcologyError) as e:
        carol.write(doc, "graffiti")
    assert e.value.reason == "ACCESS_DENIED"
    # Nested user code and pay(): alice -> outer (tool) -> inner (tool) -> pay(carol).
    inner = uid("inner")
    alice.write(inner, f"def f(n):\n    return [pay({carol.agent_id!r}, n), "
                       "invoke('genesis_ledger', 'balance', principal_id=context['payer'])]\n",
                can_execute=True, interface=[{"name": "f"}])
    outer = uid("outer")
    alice.write(outer, f"def f():\n    return invoke({inner!r}, 'f', n=3)\n", can_execute=True,
                interface=[{"name": "f"}])
    c0, a0 = scrip(carol), scrip(alice)
    paid, balance = bob.invoke(outer, "f")
    assert paid == {"paid": 3, "to": carol.agent_id, "from": bob.agent_id}
    assert balance["principal_id"] == bob.agent_id and balance["scrip"] == scrip(bob)
    assert (scrip(carol), scrip(alice)) == (c0 + 3, a0)
    # A genesis method that asks a user contract (escrow checks `transfer`).
    alice.write(doc, "v3", state={"allow": [bob.agent_id, "genesis_escrow"]})
    alice.invoke("genesis_escrow", "list", artifact_id=doc, price=2)
    carol.invoke("genesis_escrow", "purchase", artifact_id=doc)
    assert carol.read(doc).state["controller"] == carol.agent_id
    # Deleting through the user contract.
    carol.delete(doc)

    used = inproc.threads[start:]
    assert len(used) >= 10, used  # contracts, code checks and code all went through the sandbox
    assert WRITER_THREAD not in used, used
    assert all(name.startswith("sandbox-work") for name in used), set(used)


def test_a_decision_whose_inputs_changed_before_the_commit_is_made_again(inproc):
    """The target changes between the contract's evaluation and the commit: the
    transaction sees the decision is not current, and the RPC layer evaluates again."""
    alice, bob = inproc.agent(uid("alice")), inproc.agent(uid("bob"))
    cid = uid("contract")
    alice.write(cid, ALLOW_LIST, can_execute=True, interface=[{"name": "check_permission"}])
    doc = uid("doc")
    alice.write(doc, "v1", access_contract_id=cid, state={"allow": [bob.agent_id]})
    kernel = inproc.server.kernel
    evaluator = kernel.contract_evaluator
    real = evaluator.check_with_cpu
    seen = []

    def revoke_once(state: dict):
        """After the first evaluation, alice takes bob off the list (committed)."""
        def hook(contract, artifact_id, action, requester_id, context):
            out = real(contract, artifact_id, action, requester_id, context)
            seen.append((context["state"].get("allow"), out[0].allowed))
            if artifact_id == doc and len(seen) == 1:
                inproc.commit(lambda conn: poke(conn, doc, state))
            return out
        return hook

    evaluator.check_with_cpu = revoke_once({"allow": []})
    try:
        with pytest.raises(EcologyError) as e:
            bob.read(doc)
    finally:
        evaluator.check_with_cpu = real
    # Evaluated twice: on the state it first saw (allowed), then on the changed one (denied).
    assert seen == [([bob.agent_id], True), ([], False)]
    assert e.value.reason == "ACCESS_DENIED"


def test_inputs_that_keep_changing_end_in_conflict_with_retry_info(inproc):
    alice, bob = inproc.agent(uid("alice")), inproc.agent(uid("bob"))
    cid = uid("contract")
    alice.write(cid, ALLOW_LIST, can_execute=True, interface=[{"name": "check_permission"}])
    doc = uid("doc")
    alice.write(doc, "v1", access_contract_id=cid, state={"allow": [bob.agent_id]})
    kernel = inproc.server.kernel
    evaluator = kernel.contract_evaluator
    real = evaluator.check_with_cpu
    rounds = []

    def churn(contract, artifact_id, action, requester_id, context):
        out = real(contract, artifact_id, action, requester_id, context)
        rounds.append(1)
        inproc.commit(lambda conn: poke(conn, doc, {"n": len(rounds)}))
        return out

    evaluator.check_with_cpu = churn
    try:
        with pytest.raises(EcologyError) as e:
            bob.read(doc)
    finally:
        evaluator.check_with_cpu = real
    assert e.value.reason == "CONFLICT" and e.value.code == grpc.StatusCode.ABORTED, e.value
    assert e.value.retry_after is not None and e.value.retry_after > 0
    assert len(rounds) == 4  # bounded
    assert bob.read(doc).content == "v1"  # once the target stays put, the read goes through


def poke(conn, artifact_id: str, state: dict) -> None:
    """Change an artifact's state directly (as some other committed write would)."""
    from server.kernel import artifacts

    art = artifacts.require(conn, artifact_id)
    artifacts.save(conn, artifacts.bump(art, time.time(), state={**art.state, **state}))


def test_nested_effects_whose_inputs_changed_fail_conflict_and_change_nothing(inproc):
    """Phase 1 tells the code its balance; a transfer to it commits before phase 2; the
    replay's answer differs, so the chain is run again (a bounded number of times), and
    when the input keeps changing the call fails CONFLICT, its CPU charged, nothing else."""
    alice, sink = inproc.agent(uid("alice"), compute_rate=0.001), inproc.agent(uid("sink"))
    tool = uid("tool")
    alice.write(tool, "def f():\n    b = invoke('genesis_ledger', 'balance', principal_id=context['payer'])['scrip']\n"
                      "    for i in range(300000):\n        pass\n"
                      f"    pay({sink.agent_id!r}, 1)\n    return b\n", can_execute=True, interface=[{"name": "f"}])
    kernel = inproc.server.kernel
    runs = []

    def disturb(args):  # after each run of the tool's code: someone pays alice 1 scrip
        if args[0] == tool:
            runs.append(1)
            inproc.commit(lambda conn: kernel.op_invoke(conn, sink.agent_id, "genesis_ledger", "transfer",
                                                        {"to": alice.agent_id, "amount": 1}))

    a0, s0 = scrip(alice), scrip(sink)
    cpu0 = compute(alice)
    inproc.hooks.append(disturb)
    try:
        with pytest.raises(EcologyError) as e:
            alice.invoke(tool, "f")
    finally:
        inproc.hooks.remove(disturb)
    assert e.value.reason == "CONFLICT" and e.value.retry_after, e.value
    assert len(runs) == 3  # the whole chain was tried three times
    # Only the disturbing transfers moved scrip; the tool's pay() never committed.
    assert (scrip(alice), scrip(sink)) == (a0 + 3, s0 - 3)
    assert cpu0 - compute(alice) > 1.0  # the CPU the three runs used is charged (100 units/s)
    # Disturbed once: the second run sees the new balance and commits.
    runs.clear()
    once = lambda args: (disturb(args) if not runs else None)  # noqa: E731
    inproc.hooks.append(once)
    try:
        assert alice.invoke(tool, "f") == a0 + 4
    finally:
        inproc.hooks.remove(once)
    assert (scrip(alice), scrip(sink)) == (a0 + 4 - 1, s0 - 4 + 1)


def test_a_chain_is_bounded_in_its_effects(make_server):
    server = make_server("[sandbox]\nmax_effects = 20\n")
    alice, sink = server.agent("alice"), server.agent("sink")
    tool = uid("payer")
    alice.write(tool, "def f(n):\n    for _ in range(n):\n        pay('sink', 1)\n    return n\n",
                can_execute=True, interface=[{"name": "f"}])
    assert alice.invoke(tool, "f", n=20) == 20
    a0 = scrip(alice)
    with pytest.raises(EcologyError) as e:
        alice.invoke(tool, "f", n=21)
    assert e.value.reason == "INVALID_ARGS" and "max_effects" in e.value.message, e.value
    assert scrip(alice) == a0
    # Catching the error does not help: the call fails all the same.
    catcher = uid("catcher")
    alice.write(catcher, "def f():\n    for _ in range(30):\n        try:\n            pay('sink', 1)\n"
                         "        except RemoteError:\n            pass\n    return 'done'\n",
                can_execute=True, interface=[{"name": "f"}])
    with pytest.raises(EcologyError) as e:
        alice.invoke(catcher, "f")
    assert e.value.reason == "INVALID_ARGS"
    assert scrip(alice) == a0
    check_ledger(server)


# -- contract CPU, per-principal cap (server as a child process) -------------------------------

SLOW_DENY = """
def check_permission(artifact_id, action, requester_id, context):
    s = 0
    for i in range(2_000_000):
        s += i
    return {"allowed": False, "reason": "busy, then no"}
"""


def test_contract_cpu_is_charged_to_the_requester_also_on_deny(make_server):
    server = make_server("[agents]\ncompute_rate = 0.001\ncompute_capacity = 1000.0\n")
    alice, bob = server.agent("alice"), server.agent("bob")
    cid = uid("contract")
    alice.write(cid, SLOW_DENY, can_execute=True, interface=[{"name": "check_permission"}])
    doc = uid("doc")
    alice.write(doc, "secret", access_contract_id=cid)
    a0, b0, bs0 = compute(alice), compute(bob), scrip(bob)
    with pytest.raises(EcologyError) as e:
        bob.read(doc)
    assert e.value.reason == "ACCESS_DENIED" and "busy, then no" in e.value.message
    spent = b0 - compute(bob)
    assert spent > 2.0, spent  # the contract's CPU (cpu_second = 100 units), well over rounding
    assert compute(alice) == pytest.approx(a0, abs=0.05)  # the contract's writer pays nothing
    assert scrip(bob) == bs0  # and nothing else changed


def test_a_principal_has_at_most_its_cap_of_sandbox_work_in_flight(make_server):
    server = make_server("[sandbox]\ntimeout_seconds = 3.0\nmax_in_flight_per_principal = 1\n")
    mallory, bystander = server.agent("mallory", compute_capacity=100_000), server.agent("bystander")
    spin = uid("spin")
    mallory.write(spin, "def f():\n    while True:\n        pass\n", can_execute=True, interface=[{"name": "f"}])
    quick = uid("quick")
    mallory.write(quick, "def f():\n    return 'quick'\n", can_execute=True, interface=[{"name": "f"}])
    errors = []

    def attack():
        try:
            mallory.invoke(spin, "f")
        except EcologyError as e:
            errors.append(e.reason)

    t = threading.Thread(target=attack)
    t.start()
    limited = None
    try:
        while t.is_alive() and limited is None:  # until the spin holds mallory's one slot
            try:
                mallory.invoke(quick, "f")
            except EcologyError as e:
                assert e.reason == "RATE_LIMITED", e
                limited = e
            time.sleep(0.02)
        # Another principal's sandbox work is not affected.
        assert bystander.invoke(quick, "f") == "quick"
    finally:
        t.join()
    assert limited is not None and limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.retry_after and "max_in_flight_per_principal" in limited.message
    assert errors == ["TIMEOUT"]
    assert mallory.invoke(quick, "f") == "quick"  # the slot is free again


def test_a_looping_tool_that_pays_in_a_loop_does_not_hold_up_a_bystander(make_server):
    """The tool runs outside the writer; each pay() costs the writer a short dry run."""
    server = make_server("[sandbox]\ntimeout_seconds = 3.0\nmax_effects = 100000\n")
    mallory, bystander = server.agent("mallory"), server.agent("bystander")
    server.agent("peer")
    loop = uid("loop")
    mallory.write(loop, "def f():\n    while True:\n        try:\n            pay('peer', 1)\n"
                        "        except RemoteError:\n            pass\n",
                  can_execute=True, interface=[{"name": "f"}])
    errors = []

    def attack():
        try:
            mallory.invoke(loop, "f", max_spend=10**6)
        except EcologyError as e:
            errors.append(e.reason)

    threads = [threading.Thread(target=attack) for _ in range(2)]
    for t in threads:
        t.start()
    waits = []
    try:
        time.sleep(0.3)
        while any(t.is_alive() for t in threads) and len(waits) < 50:
            t0 = time.monotonic()
            bystander.transfer("peer", 1)
            waits.append(time.monotonic() - t0)
            time.sleep(0.02)
    finally:
        for t in threads:
            t.join()
    waits.sort()
    assert len(waits) >= 20, waits
    assert waits[len(waits) // 2] < 0.1, waits  # p50 of a bystander's transfer
    assert sorted(errors) == ["TIMEOUT", "TIMEOUT"]
    check_ledger(server)
