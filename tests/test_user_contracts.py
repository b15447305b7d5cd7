"""User-written access contracts through the real API: the shipped examples
(examples/contracts/*.py) allow and deny the right requesters; a contract that raises,
loops or answers nonsense denies; a cacheable contract's answers are cached and the
cache follows changes of the target and of the contract."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from agent_runtime import EcologyError
from tests.conftest import ROOT, ServerProcess, check_ledger

EXAMPLES = ROOT / "examples" / "contracts"
CONTRACT_TIMEOUT = 0.5
CONFIG = f"""
[sandbox]
contract_timeout_seconds = {CONTRACT_TIMEOUT}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("contracts") / "world", CONFIG).start()
    yield s
    s.kill()


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def agents(world, *names):
    return [world.agent(uid(n)) for n in names]


def publish_contract(client, source: str, **kw) -> str:
    cid = uid("contract")
    client.write(cid, source, can_execute=True, interface=[{"name": "check_permission"}], **kw)
    return cid


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.py").read_text()


def denied(fn, *args, **kw) -> EcologyError:
    with pytest.raises(EcologyError) as e:
        fn(*args, **kw)
    assert e.value.reason == "ACCESS_DENIED" and e.value.code == grpc.StatusCode.PERMISSION_DENIED, e.value
    return e.value


def paid_to(controller, payer_id: str) -> int:
    """What the controller sees in its ledger history: scrip `payer_id` sent it."""
    return sum(e["amount"] for e in controller.history(limit=500)
               if e["kind"] == "transfer" and e["debit"] == payer_id and e["credit"] == controller.agent_id)


# -- the examples -----------------------------------------------------------------------------


def test_pay_per_read(world):
    alice, bob, carol, dave = agents(world, "alice", "bob", "carol", "dave")
    cid = publish_contract(alice, example("pay_per_read"))
    report = uid("report")
    alice.write(report, "the secret sauce", access_contract_id=cid, metadata={"read_price": 5},
                state={"paid": {}})

    assert alice.read(report).content == "the secret sauce"  # the controller may do anything
    alice.write(report, "the secret sauce, v2")
    e = denied(bob.read, report)
    assert "pay 5 scrip to " + alice.agent_id in e.message

    bob.transfer(alice.agent_id, 5)
    carol.transfer(alice.agent_id, 3)  # not enough
    # The controller sees the payments and records them.
    seen = {p.agent_id: paid_to(alice, p.agent_id) for p in (bob, carol, dave)}
    assert seen == {bob.agent_id: 5, carol.agent_id: 3, dave.agent_id: 0}
    alice.write(report, "the secret sauce, v2", state={"paid": {k: v for k, v in seen.items() if v}})

    assert bob.read(report).content == "the secret sauce, v2"
    denied(carol.read, report)
    denied(dave.read, report)
    # Paying grants reading only: no writing, deleting or taking control.
    denied(bob.write, report, "mine now")
    denied(bob.write, report, "the secret sauce, v2", state={"paid": {dave.agent_id: 100}})
    denied(bob.delete, report)
    denied(bob.transfer_control, report, bob.agent_id)
    # A price rise applies to everyone who has not paid it.
    alice.write(report, "the secret sauce, v2", metadata={"read_price": 6})
    denied(bob.read, report)
    check_ledger(world)


def test_allow_list(world):
    alice, bob, carol = agents(world, "alice", "bob", "carol")
    cid = publish_contract(alice, example("allow_list"))
    club = uid("club")
    alice.write(club, "members only", access_contract_id=cid, state={"allow": [bob.agent_id]})

    assert bob.read(club).content == "members only"
    bob.write(club, "members only (edited by bob)")
    e = denied(carol.read, club)
    assert "not on the list" in e.message
    denied(carol.write, club, "graffiti")
    denied(carol.delete, club)

    alice.write(club, "members only (edited by bob)", state={"allow": [bob.agent_id, carol.agent_id]})
    assert carol.read(club).content == "members only (edited by bob)"

    # Per-action lists: carol may read only, bob may read and write.
    alice.write(club, "v3", state={"allow": {"read": [bob.agent_id, carol.agent_id], "write": [bob.agent_id]}})
    assert carol.read(club).content == "v3"
    denied(carol.write, club, "v4")
    bob.write(club, "v4")
    denied(bob.delete, club)
    # The controller keeps every right even when the list forgets it.
    alice.write(club, "v5", state={"allow": []})
    denied(bob.read, club)
    assert alice.read(club).content == "v5"
    alice.delete(club)


def test_two_of_three(world):
    a, b, c, outsider, founder = agents(world, "appr_a", "appr_b", "appr_c", "outsider", "founder")
    cid = publish_contract(founder, example("two_of_three"))
    vault = uid("vault")
    approvers = [a.agent_id, b.agent_id, c.agent_id]
    founder.write(vault, "plan v1", access_contract_id=cid, metadata={"topic": "treasury"},
                  state={"approvers": approvers, "approvals": []})

    def approvals() -> list:
        return list(outsider.read(vault).state["approvals"])

    # Anyone reads; nobody writes without approvals - not even the controller.
    assert outsider.read(vault).content == "plan v1"
    denied(founder.write, vault, "plan v2")
    e = denied(a.write, vault, "plan v2")
    assert "needs 2 of 3 approvals, has 0" in e.message

    # An approver may add only its own id, and change nothing else.
    denied(outsider.write, vault, "plan v1", state={"approvals": [outsider.agent_id]})
    denied(a.write, vault, "plan v1", state={"approvals": [b.agent_id]})
    denied(a.write, vault, "plan v2", state={"approvals": [a.agent_id]})  # content changed too
    denied(a.write, vault, "plan v1", state={"approvals": [a.agent_id], "approvers": [a.agent_id] * 3})
    denied(a.write, vault, "plan v1", state={"approvals": [a.agent_id]}, metadata={"topic": "mine"})
    a.write(vault, "plan v1", state={"approvals": [a.agent_id]})
    assert approvals() == [a.agent_id]
    denied(a.write, vault, "plan v1", state={"approvals": [a.agent_id, a.agent_id]})  # twice is still one
    e = denied(a.write, vault, "plan v2")
    assert "has 1" in e.message

    b.write(vault, "plan v1", state={"approvals": [a.agent_id, b.agent_id]})
    # Two approvals: any approver may change it; an outsider still may not.
    denied(outsider.write, vault, "plan by outsider")
    c.write(vault, "plan v2", state={"approvals": []})  # the approved change uses the approvals up
    assert outsider.read(vault).content == "plan v2" and approvals() == []
    denied(c.delete, vault)
    denied(c.transfer_control, vault, c.agent_id)

    # Transfer and delete need two approvals too.
    b.write(vault, "plan v2", state={"approvals": [b.agent_id]})
    c.write(vault, "plan v2", state={"approvals": [b.agent_id, c.agent_id]})
    a.transfer_control(vault, outsider.agent_id)
    assert outsider.read(vault).state["controller"] == outsider.agent_id
    denied(outsider.delete, vault)  # control grants nothing: the outsider is no approver
    a.delete(vault)
    with pytest.raises(EcologyError) as e:
        outsider.read(vault)
    assert e.value.reason == "DELETED"


# -- contracts that misbehave -------------------------------------------------------------------


def test_a_contract_that_raises_denies(world):
    alice, bob = agents(world, "alice", "bob")
    cid = publish_contract(alice, "def check_permission(artifact_id, action, requester_id, context):\n"
                                  "    raise RuntimeError('contract bug')\n")
    target = uid("target")
    alice.write(target, "data", access_contract_id=cid)
    for client in (alice, bob):  # no owner bypass: the controller is denied too
        e = denied(client.read, target)
        assert "RuntimeError: contract bug" in e.message and "denied" in e.message


def test_a_contract_that_loops_denies_within_its_timeout(world):
    alice, bob = agents(world, "alice", "bob")
    cid = publish_contract(alice, "def check_permission(artifact_id, action, requester_id, context):\n"
                                  "    while True:\n        pass\n")
    target = uid("target")
    alice.write(target, "data", access_contract_id=cid)
    t0 = time.monotonic()
    e = denied(bob.read, target)
    assert time.monotonic() - t0 < CONTRACT_TIMEOUT + 1.5
    assert "TIMEOUT" in e.message
    # The server goes on serving (the looping worker was killed and replaced).
    bob.transfer(alice.agent_id, 1)
    check_ledger(world)


@pytest.mark.parametrize("answer", ["True", "{'allowed': 'yes'}", "{'reason': 'no allowed key'}", "None"])
def test_a_contract_that_answers_nonsense_denies(world, answer):
    alice, bob = agents(world, "alice", "bob")
    cid = publish_contract(alice, f"def check_permission(artifact_id, action, requester_id, context):\n"
                                  f"    return {answer}\n")
    target = uid("target")
    alice.write(target, "data", access_contract_id=cid)
    e = denied(bob.read, target)
    assert "no boolean 'allowed'" in e.message


def test_a_deleted_contract_denies(world):
    alice, bob = agents(world, "alice", "bob")
    cid = publish_contract(alice, example("allow_list"))
    target = uid("target")
    alice.write(target, "data", access_contract_id=cid, state={"allow": [bob.agent_id]})
    assert bob.read(target).content == "data"
    alice.delete(cid)
    e = denied(bob.read, target)
    assert "no longer exists" in e.message
    denied(alice.read, target)


# -- caching ------------------------------------------------------------------------------------

COUNTING_ALLOW_LIST = """
CALLS = [0]

def check_permission(artifact_id, action, requester_id, context):
    CALLS[0] += 1  # not pure on purpose: shows whether an answer came from the cache
    state = context["state"]
    if requester_id == state.get("controller") or requester_id in state.get("allow", []):
        return {"allowed": True, "reason": "listed"}
    return {"allowed": False, "reason": "%s: not listed (evaluation %d)" % (VERSION, CALLS[0])}
"""


def test_an_uncacheable_contract_is_evaluated_every_time(world):
    alice, carol = agents(world, "alice", "carol")
    cid = publish_contract(alice, "VERSION = 'v1'\n" + COUNTING_ALLOW_LIST)
    target = uid("target")
    alice.write(target, "data", access_contract_id=cid, state={"allow": []})
    first, second = denied(carol.read, target).message, denied(carol.read, target).message
    assert first != second  # evaluated twice (the counter moved)


def test_a_cacheable_contract_cache_follows_the_target_and_the_contract(world):
    alice, bob, carol = agents(world, "alice", "bob", "carol")
    cid = publish_contract(alice, "VERSION = 'v1'\n" + COUNTING_ALLOW_LIST, metadata={"cacheable": True})
    target = uid("target")
    alice.write(target, "data", access_contract_id=cid, state={"allow": [bob.agent_id]})
    first = denied(carol.read, target).message
    assert "v1: not listed" in first
    assert denied(carol.read, target).message == first  # answered from the cache
    assert bob.read(target).content == "data"

    # The target's state changes: the cached answer is dropped.
    alice.write(target, "data", state={"allow": [bob.agent_id, carol.agent_id]})
    assert carol.read(target).content == "data"
    alice.write(target, "data", state={"allow": [bob.agent_id], "round": 2})
    again = denied(carol.read, target).message
    assert "v1: not listed" in again and again != first  # evaluated afresh
    assert denied(carol.read, target).message == again

    # The contract is rewritten: its old answers are dropped too.
    alice.write(cid, "VERSION = 'v2'\n" + COUNTING_ALLOW_LIST)
    rewritten = denied(carol.read, target).message
    assert "v2: not listed" in rewritten
    assert denied(carol.read, target).message == rewritten
