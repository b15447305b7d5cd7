"""A principal's money moves only by its own decisions (DESIGN.md "Money and resources"):
whoever controls an agent's artifact - a buyer through genesis_escrow, the creator of a
spawned agent - changes its configuration, never its code or interface, so it cannot
make code run as the agent and paid by it. Real server, real sandbox."""

from __future__ import annotations

import json

import pytest

from agent_runtime import EcologyError
from tests.conftest import check_ledger

DRAIN = "def work():\n    pay({to!r}, 2500)\n    return 'drained'\n"
IFACE = [{"name": "work", "input_schema": {}}]


def reason(fn, *args, **kw) -> str:
    with pytest.raises(EcologyError) as e:
        fn(*args, **kw)
    return e.value.reason


def snapshot(client, *ids):
    return ([client.balance(i) for i in ids], [client.get_metadata(i)["version"] for i in ids[:1]])


def test_buyer_of_a_code_bearing_agent_cannot_rewrite_its_code_or_interface(make_server):
    server = make_server()
    svc = server.agent("svc", config="def work():\n    return 'honest'\n", interface=IFACE, endowment=3001)
    buyer = server.agent("buyer")
    svc.escrow_list("svc", 0)                                   # the agent sells control of itself
    buyer.escrow_purchase("svc")
    assert buyer.get_metadata("svc")["state"]["controller"] == "buyer"
    before = snapshot(buyer, "svc", "buyer")

    # Code, interface, or both: refused, nothing changes.
    assert reason(buyer.write, "svc", DRAIN.format(to="buyer")) == "ACCESS_DENIED"
    assert reason(buyer.write, "svc", DRAIN.format(to="buyer"), interface=IFACE) == "ACCESS_DENIED"
    same = buyer.read("svc").content
    assert reason(buyer.write, "svc", same, interface=[*IFACE, {"name": "more", "input_schema": {}}]) \
        == "ACCESS_DENIED"
    assert reason(buyer.write, "svc", same, interface=[], replace_interface=True) == "ACCESS_DENIED"
    assert buyer.invoke("svc", "work") == "honest"
    after = snapshot(buyer, "svc", "buyer")
    assert after[0] == [3001, before[0][1]] and after[1] == before[1]

    # The controller still changes metadata and state (content unchanged).
    w = buyer.write("svc", same, metadata={"note": "mine"}, state={"tier": 2})
    assert w.artifact.metadata["note"] == "mine" and buyer.read("svc").content == same
    check_ledger(server)


def test_controller_of_a_configuration_agent_cannot_give_it_code(make_server):
    server = make_server()
    creator = server.agent("creator")
    creator.create_agent("kid", json.dumps({"brain": "plan", "plan": []}))
    creator.transfer("kid", 500)
    version = creator.get_metadata("kid")["version"]
    # Turning a configuration agent into code that runs as it (and pays from its account).
    assert reason(creator.write, "kid", DRAIN.format(to="creator"), interface=IFACE) == "ACCESS_DENIED"
    assert reason(creator.invoke, "kid", "work") == "INVALID_ARGS"   # still no method to call
    assert creator.balance("kid") == 500 and creator.get_metadata("kid")["version"] == version

    # The same through escrow: an operator's plain agent, sold.
    pawn = server.agent("pawn")
    buyer = server.agent("buyer")
    pawn.escrow_list("pawn", 1)
    buyer.escrow_purchase("pawn")
    assert reason(buyer.write, "pawn", DRAIN.format(to="buyer"), interface=IFACE) == "ACCESS_DENIED"
    assert pawn.balance() == 1001

    # The configuration itself stays the controller's to write (the agent follows it:
    # tests/test_control.py runs a real agent through this).
    creator.write("kid", json.dumps({"brain": "plan", "plan": [{"action": "note", "text": "hi"}]}))
    buyer.write("pawn", json.dumps({"prompt": "work for buyer"}))
    assert json.loads(pawn.read("pawn").content)["prompt"] == "work for buyer"
    check_ledger(server)


def test_an_agent_may_still_rewrite_its_own_code(make_server):
    server = make_server()
    svc = server.agent("svc", config="def work():\n    return 1\n", interface=IFACE)
    svc.write("svc", "def work():\n    return 2\n")
    assert svc.invoke("svc", "work") == 2
    svc.write("svc", "def work():\n    return 3\ndef other():\n    return 4\n",
              interface=[*IFACE, {"name": "other", "input_schema": {}}])
    assert svc.invoke("svc", "other") == 4
