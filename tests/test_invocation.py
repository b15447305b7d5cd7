"""Invocation of user code through the real API: nested calls and who pays, prices,
atomicity of a failed chain, depth and cycle limits, timeouts, crashed workers, code
checks at write time, result types and error messages.

Agents here regain compute very slowly (compute_rate 0.001/s), so a compute balance
moves only by what is charged and the charges can be compared exactly.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from agent_runtime import EcologyError
from tests.conftest import ServerProcess, check_ledger

TIMEOUT = 2.0
CONFIG = f"""
[agents]
compute_rate = 0.001
compute_capacity = 1000.0

[sandbox]
timeout_seconds = {TIMEOUT}
"""
INVOKE_COST = 1.0  # costs.invoke
CPU_SECOND = 100.0  # costs.cpu_second


def compute(client) -> float:
    return next(f.balance for f in client.get_state().flow if f.name == "compute")


def scrip(client) -> int:
    return client.get_state().scrip


def schema(**props) -> dict:
    return {"type": "object", "properties": props, "required": sorted(props), "additionalProperties": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("invocation") / "world", CONFIG).start()
    yield s
    s.kill()


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def tool(client, source: str, method: str = "f", input_schema: dict | None = None, **kw) -> str:
    aid = uid("tool")
    client.write(aid, source, can_execute=True, interface=[{"name": method, "input_schema": input_schema or {}}], **kw)
    return aid


# -- the nested chain A -> B (tool, price 3) -> C (standing, price 2) -> D (tool, price 1) ----

B_SRC = """
def run(mode, n):
    return {"b": dict(context), "c": invoke(C_ID, "work", mode=mode, n=n)}
"""
C_SRC = """
def work(mode, n):
    d = invoke(D_ID, "leaf", mode=mode, n=n)
    if mode == "c_overpays":
        pay(SINK, 10**9)  # more than C has
    return {"c": dict(context), "d": d}
"""
D_SRC = """
def leaf(mode, n):
    if mode == "d_raises":
        raise ValueError("D refuses")
    if mode == "d_spins":
        while True:
            pass
    s = 0
    for i in range(n):  # real work, paid for by whoever pays for D's code
        s += i
    return {"d": dict(context), "sum": s}
"""
ARGS = schema(mode={"type": "string"}, n={"type": "integer", "minimum": 0})
WORK = 3_000_000  # D's loop: well over 0.05 s of CPU


@pytest.fixture(scope="module")
def chain(world):
    """alice -> tool_b (bob's, price 3) -> svc_c (a principal, price 2) -> tool_d (dave's, price 1)."""
    ns = type("Chain", (), {})()
    ns.alice, ns.bob, ns.dave, ns.sink = (world.agent(uid(n)) for n in ("alice", "bob", "dave", "sink"))
    ns.b, ns.c, ns.d = uid("tool_b"), uid("svc_c"), uid("tool_d")
    ns.dave.write(ns.d, D_SRC, can_execute=True, metadata={"price": 1},
                  interface=[{"name": "leaf", "input_schema": ARGS}])
    ns.svc = world.agent(ns.c, config=f"D_ID = {ns.d!r}\nSINK = {ns.sink.agent_id!r}\n" + C_SRC,
                         interface=[{"name": "work", "input_schema": ARGS}], metadata={"price": 2})
    ns.bob.write(ns.b, f"C_ID = {ns.c!r}\n" + B_SRC, can_execute=True, metadata={"price": 3},
                 interface=[{"name": "run", "input_schema": ARGS}])
    ns.principals = [ns.alice, ns.bob, ns.svc, ns.dave, ns.sink]
    return ns


def balances(ns) -> dict:
    return {c.agent_id: scrip(c) for c in ns.principals}


def computes(ns) -> dict:
    return {c.agent_id: compute(c) for c in ns.principals}


def test_the_principal_with_an_interface_is_an_invokable_agent(world, chain):
    art = chain.svc.read(chain.c)
    assert art.has_standing and art.can_execute
    assert [m.name for m in art.interface] == ["work"]
    assert art.access_contract_id == "genesis_freeware"


def test_nested_chain_pays_exactly_by_the_who_pays_rules(world, chain):
    a, c = chain.alice.agent_id, chain.c
    money0, cpu0 = balances(chain), computes(chain)
    result = chain.alice.invoke(chain.b, "run", mode="ok", n=WORK)
    money1, cpu1 = balances(chain), computes(chain)

    # What each piece of code was told about its call.
    assert {k: result["b"][k] for k in ("artifact_id", "caller", "payer", "depth")} == \
        {"artifact_id": chain.b, "caller": a, "payer": a, "depth": 1}
    assert {k: result["c"]["c"][k] for k in ("artifact_id", "caller", "payer", "depth")} == \
        {"artifact_id": c, "caller": chain.b, "payer": a, "depth": 2}
    assert {k: result["c"]["d"]["d"][k] for k in ("artifact_id", "caller", "payer", "depth")} == \
        {"artifact_id": chain.d, "caller": c, "payer": c, "depth": 3}
    assert result["c"]["d"]["sum"] == WORK * (WORK - 1) // 2

    # Scrip: alice pays B's price to bob and C's price to C (its own controller);
    # C pays D's price to dave out of its own account.
    assert {k: money1[k] - money0[k] for k in money0} == {
        a: -5, chain.bob.agent_id: +3, c: +2 - 1, chain.dave.agent_id: +1, chain.sink.agent_id: 0}

    # Compute: alice pays the verb for B and for C (the calls she started) plus B's own
    # CPU (a tool runs on its invoker's account); C pays the verb for D plus its own CPU
    # and D's CPU (a principal pays for its own nested work). Writers pay nothing.
    spent = {k: cpu0[k] - cpu1[k] for k in cpu0}
    assert 2 * INVOKE_COST <= spent[a] < 2 * INVOKE_COST + 5, spent
    assert spent[c] > INVOKE_COST + 5, spent  # D's loop: several units of CPU
    assert spent[c] > spent[a]
    for other in (chain.bob.agent_id, chain.dave.agent_id, chain.sink.agent_id):
        assert abs(spent[other]) < 0.05, (other, spent)
    check_ledger(world)


@pytest.mark.parametrize("mode, reason", [
    ("d_raises", "EXECUTION_ERROR"),
    ("c_overpays", "EXECUTION_ERROR"),
    ("d_spins", "TIMEOUT"),
])
def test_any_failure_in_the_chain_leaves_every_balance_unchanged(world, chain, mode, reason):
    money0, cpu0 = balances(chain), computes(chain)
    t0 = time.monotonic()
    with pytest.raises(EcologyError) as e:
        chain.alice.invoke(chain.b, "run", mode=mode, n=10)
    assert e.value.reason == reason, e.value
    assert balances(chain) == money0
    if mode == "d_raises":
        assert "ValueError: D refuses" in e.value.message
    if mode == "c_overpays":
        assert "INSUFFICIENT_FUNDS" in e.value.message
    if mode == "d_spins":
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < TIMEOUT + 3
        # The CPU D burned is charged even though the chain failed - to C, who pays for
        # D's code - and not to alice.
        spent = {k: cpu0[k] - v for k, v in computes(chain).items()}
        assert spent[chain.c] > 10, spent
        assert spent[chain.alice.agent_id] < 5, spent
    check_ledger(world)


def test_cpu_of_nested_code_is_charged_when_the_outer_call_fails(world):
    """A caller cannot get nested work for free by failing afterwards (the nested
    result would still leak out through the error message)."""
    alice = world.agent(uid("alice"))
    busy = tool(alice, f"def f():\n    s = 0\n    for i in range({WORK}):\n        s += i\n    return s\n")
    leak = tool(alice, f"def f():\n    raise ValueError(invoke({busy!r}, 'f'))\n")
    before = compute(alice)
    alice.invoke(busy, "f")
    direct = before - compute(alice)
    before = compute(alice)
    with pytest.raises(EcologyError) as e:
        alice.invoke(leak, "f")
    assert str(WORK * (WORK - 1) // 2) in e.value.message
    failed = before - compute(alice)
    assert failed > 0.5 * direct, (failed, direct)
    assert direct > INVOKE_COST + 5


# -- prices -------------------------------------------------------------------------------


def test_price_is_charged_only_on_success(world):
    seller, buyer = world.agent(uid("seller")), world.agent(uid("buyer"))
    aid = tool(seller, "def f(fail):\n    if fail:\n        raise RuntimeError('no sale')\n    return 'sold'\n",
               input_schema=schema(fail={"type": "boolean"}), metadata={"price": 4})
    s0, b0 = scrip(seller), scrip(buyer)
    with pytest.raises(EcologyError) as e:
        buyer.invoke(aid, "f", fail=True)
    assert e.value.reason == "EXECUTION_ERROR"
    assert (scrip(seller), scrip(buyer)) == (s0, b0)
    assert buyer.invoke(aid, "f", fail=False) == "sold"
    assert (scrip(seller), scrip(buyer)) == (s0 + 4, b0 - 4)
    # The controller invoking its own priced tool pays nobody.
    assert seller.invoke(aid, "f", fail=False) == "sold"
    assert scrip(seller) == s0 + 4
    check_ledger(world)


def test_a_payer_who_cannot_afford_the_price_is_refused_before_anything_runs(world):
    seller, poor = world.agent(uid("seller")), world.agent(uid("poor"), endowment=2)
    aid = tool(seller, "def f():\n    while True:\n        pass\n", metadata={"price": 3})
    c0, s0 = compute(poor), scrip(seller)
    with pytest.raises(EcologyError) as e:
        poor.invoke(aid, "f")
    assert e.value.reason == "INSUFFICIENT_FUNDS" and e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (scrip(poor), scrip(seller)) == (2, s0)
    assert compute(poor) == pytest.approx(c0, abs=0.05)  # nothing ran, nothing charged


def test_args_that_do_not_match_the_schema_are_refused_before_anything_runs(world):
    alice, sink = world.agent(uid("alice")), world.agent(uid("sink"))
    aid = tool(alice, f"def f(n):\n    pay({sink.agent_id!r}, 1)\n    return n\n",
               input_schema=schema(n={"type": "integer", "maximum": 10}))
    c0, a0, s0 = compute(alice), scrip(alice), scrip(sink)
    for bad in ({"n": "ten"}, {"n": 11}, {}, {"n": 1, "extra": True}):
        with pytest.raises(EcologyError) as e:
            alice.invoke(aid, "f", **bad)
        assert e.value.reason == "INVALID_ARGS" and e.value.code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert e.value.field.startswith("args"), e.value.field
    with pytest.raises(EcologyError) as e:
        alice.invoke(aid, "g", n=1)
    assert e.value.reason == "INVALID_ARGS" and e.value.field == "method"
    assert (scrip(alice), scrip(sink)) == (a0, s0)
    assert compute(alice) == pytest.approx(c0, abs=0.05)
    assert alice.invoke(aid, "f", n=3) == 3  # the right args run, and pay
    assert scrip(sink) == s0 + 1


# -- depth and cycles -----------------------------------------------------------------------


def make_chain(client, length: int, price: int = 0) -> list[str]:
    """t0 -> t1 -> ... -> t{length-1}; each returns the ids it went through."""
    ids = [uid(f"link{i}") for i in range(length)]
    for i in reversed(range(length)):
        body = (f"    return [{ids[i]!r}] + invoke({ids[i + 1]!r}, 'f')\n" if i + 1 < length
                else f"    return [{ids[i]!r}]\n")
        client.write(ids[i], "def f():\n" + body, can_execute=True, interface=[{"name": "f"}],
                     metadata={"price": price} if price else None)
    return ids


def test_depth_limit_default_is_five(world):
    bob, alice = world.agent(uid("bob")), world.agent(uid("alice"))
    ids = make_chain(bob, 7, price=1)
    a0, b0 = scrip(alice), scrip(bob)
    assert alice.invoke(ids[2], "f") == ids[2:]  # five levels of user code: allowed
    assert (scrip(alice), scrip(bob)) == (a0 - 5, b0 + 5)
    for start in (0, 1):  # seven and six levels
        with pytest.raises(EcologyError) as e:
            alice.invoke(ids[start], "f")
        assert e.value.reason == "CALL_DEPTH_EXCEEDED" and e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "deeper than 5" in e.value.message
    assert (scrip(alice), scrip(bob)) == (a0 - 5, b0 + 5)  # the failed chains charged no price
    check_ledger(world)


def test_depth_limit_follows_the_config(make_server):
    server = make_server(CONFIG + "max_depth = 2\n")
    alice = server.agent("alice")
    ids = make_chain(alice, 3)
    assert alice.invoke(ids[1], "f") == ids[1:]
    with pytest.raises(EcologyError) as e:
        alice.invoke(ids[0], "f")
    assert e.value.reason == "CALL_DEPTH_EXCEEDED" and "deeper than 2" in e.value.message


def test_a_cycle_ends_with_call_cycle(world):
    alice = world.agent(uid("alice"))
    x, y = uid("x"), uid("y")
    alice.write(x, f"def f():\n    return invoke({y!r}, 'f')\n", can_execute=True, interface=[{"name": "f"}])
    alice.write(y, f"def f():\n    return invoke({x!r}, 'f')\n", can_execute=True, interface=[{"name": "f"}])
    t0 = time.monotonic()
    with pytest.raises(EcologyError) as e:
        alice.invoke(x, "f")
    assert e.value.reason == "CALL_CYCLE" and e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{x} -> {y} -> {x}" in e.value.message
    assert time.monotonic() - t0 < TIMEOUT  # detected, not timed out
    # Code may catch the error and go on.
    z = uid("z")
    alice.write(z, f"def f():\n    try:\n        return invoke({z!r}, 'f')\n"
                   "    except RemoteError as e:\n        return [e.reason, e.message]\n",
                can_execute=True, interface=[{"name": "f"}])
    assert alice.invoke(z, "f") == ["CALL_CYCLE", f"call cycle: {z} -> {z}"]


# -- timeouts and crashes ---------------------------------------------------------------------


@pytest.mark.parametrize("body", ["while True:\n        pass", "import time\n    time.sleep(60)"])
def test_timeout(world, body):
    alice = world.agent(uid("alice"))
    aid = tool(alice, f"def f():\n    {body}\n")
    a0 = scrip(alice)
    t0 = time.monotonic()
    with pytest.raises(EcologyError) as e:
        alice.invoke(aid, "f")
    assert e.value.reason == "TIMEOUT" and e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert TIMEOUT - 0.1 <= time.monotonic() - t0 < TIMEOUT + 3
    assert scrip(alice) == a0
    assert alice.invoke(tool(alice, "def f():\n    return 'next'\n"), "f") == "next"


def test_a_crashed_worker_is_replaced_and_the_next_call_succeeds(world):
    alice = world.agent(uid("alice"))
    aid = tool(alice, "import os\nCALLS = []\ndef f(crash):\n    CALLS.append(1)\n"
                      "    if crash:\n        os._exit(1)\n    return len(CALLS)\n",
               input_schema=schema(crash={"type": "boolean"}))
    assert alice.invoke(aid, "f", crash=False) == 1
    assert alice.invoke(aid, "f", crash=False) == 2  # the same warm worker
    with pytest.raises(EcologyError) as e:
        alice.invoke(aid, "f", crash=True)
    assert e.value.reason == "EXECUTION_ERROR" and "died" in e.value.message, e.value
    assert alice.invoke(aid, "f", crash=False) == 1  # a fresh worker: the module ran again
    assert alice.invoke(aid, "f", crash=False) == 2


# -- code checks at write time ----------------------------------------------------------------


@pytest.mark.parametrize("source, expected", [
    ("def f(:\n    pass\n", "does not compile"),
    ("def f():\n  return 1\n   return 2\n", "line 3"),
    ("def g():\n    return 1\n", "no function for method(s): f"),
    ("f = 3\n", "no function for method(s): f"),
    ("import os\nx = 1 / 0\ndef f():\n    return 1\n", "ZeroDivisionError"),
])
def test_code_that_does_not_compile_or_lacks_a_method_is_rejected_at_write(world, source, expected):
    alice = world.agent(uid("alice"))
    aid = uid("broken")
    with pytest.raises(EcologyError) as e:
        alice.write(aid, source, can_execute=True, interface=[{"name": "f"}])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.field == "content"
    assert expected in e.value.message, e.value.message
    with pytest.raises(EcologyError) as e:
        alice.read(aid)
    assert e.value.reason == "NOT_FOUND"


def test_a_broken_update_is_rejected_and_the_old_code_keeps_working(world):
    alice = world.agent(uid("alice"))
    aid = tool(alice, "def f():\n    return 'v1'\n")
    with pytest.raises(EcologyError) as e:
        alice.write(aid, "def f(:\n", can_execute=True)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "does not compile" in e.value.message
    with pytest.raises(EcologyError) as e:  # a new interface method the code lacks
        alice.write(aid, "def f():\n    return 'v2'\n", interface=[{"name": "f"}, {"name": "g"}])
    assert "no function for method(s): g" in e.value.message
    assert alice.invoke(aid, "f") == "v1"
    assert alice.read(aid).version == 1


def test_an_interface_only_update_is_checked_against_the_code(world):
    """The code already runs warm; a new interface method it lacks is still refused."""
    alice = world.agent(uid("alice"))
    aid = tool(alice, "def f():\n    return 'v1'\n")
    assert alice.invoke(aid, "f") == "v1"
    with pytest.raises(EcologyError) as e:
        alice.write(aid, "def f():\n    return 'v1'\n", interface=[{"name": "f"}, {"name": "g"}])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "no function for method(s): g" in e.value.message
    assert [m.name for m in alice.read(aid).interface] == ["f"]
    alice.write(aid, "def f():\n    return 'v1'\n\ndef g():\n    return 'v2'\n",
                interface=[{"name": "f"}, {"name": "g"}])
    assert (alice.invoke(aid, "f"), alice.invoke(aid, "g")) == ("v1", "v2")


# -- results and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["{1, 2}", "float('nan')", "float('inf')", "b'bytes'", "object()",
                                  "[1, {2, 3}]", "{'k': 1j}"])
def test_a_result_that_is_not_plain_json_is_invalid_args(world, expr):
    alice = world.agent(uid("alice"))
    aid = tool(alice, f"def f():\n    return {expr}\n")
    with pytest.raises(EcologyError) as e:
        alice.invoke(aid, "f")
    assert e.value.reason == "INVALID_ARGS" and e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not plain JSON" in e.value.message


def test_an_exception_reports_its_type_and_message_without_server_internals(world):
    alice = world.agent(uid("alice"))
    aid = tool(alice, "def helper(x):\n    return {}[x]\n\ndef f():\n    return helper('missing key')\n")
    with pytest.raises(EcologyError) as e:
        alice.invoke(aid, "f")
    msg = e.value.message
    assert e.value.reason == "EXECUTION_ERROR" and e.value.code == grpc.StatusCode.ABORTED
    assert "KeyError" in msg and "missing key" in msg and "line 2" in msg
    for internal in ("server/", "worker.py", "/sandbox", "Traceback", "site-packages", "/work/"):
        assert internal not in msg, (internal, msg)
    aid = tool(alice, "class Custom(Exception):\n    pass\n\ndef f():\n    raise Custom('own error type')\n")
    with pytest.raises(EcologyError) as e:
        alice.invoke(aid, "f")
    assert "Custom: own error type" in e.value.message and "server/" not in e.value.message


def test_a_result_too_large_to_send_charges_nothing(world):
    seller, buyer = world.agent(uid("seller")), world.agent(uid("buyer"))
    aid = tool(seller, "def f():\n    return 'x' * (5 * 2**20)\n", metadata={"price": 2})
    b0 = scrip(buyer)
    with pytest.raises(EcologyError) as e:
        buyer.invoke(aid, "f")
    assert scrip(buyer) == b0, "charged the price for a result that was never delivered"
    assert e.value.reason in ("INVALID_ARGS", "EXECUTION_ERROR"), e.value


def test_max_spend_caps_what_a_call_takes_from_the_caller(world):
    """A hostile free tool cannot drain its invoker: pay() and prices count against the
    call's max_spend (default sandbox.default_max_spend); over it, nothing changes."""
    owner, victim = world.agent(uid("owner")), world.agent(uid("victim"))
    drain = tool(owner, f"def f():\n    for _ in range(50):\n        pay('{owner.agent_id}', 10)\n    return 'ok'\n")
    before_v, before_o = scrip(victim), scrip(owner)
    with pytest.raises(EcologyError) as e:
        victim.invoke(drain, "f")
    assert e.value.reason == "EXECUTION_ERROR" and "SPEND_LIMIT_EXCEEDED" in e.value.message, e.value
    assert (scrip(victim), scrip(owner)) == (before_v, before_o)
    # Raising the cap lets a caller knowingly pay more.
    assert victim.invoke(drain, "f", max_spend=500) == "ok"
    assert (scrip(victim), scrip(owner)) == (before_v - 500, before_o + 500)
    # A price counts too.
    priced = tool(owner, "def f():\n    return 1\n", metadata={"price": 7})
    with pytest.raises(EcologyError) as e:
        victim.invoke(priced, "f", max_spend=5)
    assert e.value.reason == "SPEND_LIMIT_EXCEEDED"
    assert victim.invoke(priced, "f", max_spend=7) == 1
