"""Nested calls reach every genesis method (issue 8.5): artifact code's
`invoke(artifact_id, method, /, **args)` is positional-only, so an argument named
`artifact_id` (or `method`) goes to the invoked method, never clashes with invoke's own
parameters. Through a real server and the real sandbox."""

from __future__ import annotations

import uuid

import pytest

from server.config import load
from server.kernel.kernel import Kernel
from tests.conftest import ServerProcess, check_ledger
from tests.test_sandbox_hostile import BWRAP

pytestmark = pytest.mark.skipif(not BWRAP, reason="needs a working bubblewrap (apt-get install bubblewrap)")

CLASHING = {"artifact_id", "method"}

# Runs the planned calls in order and reports each outcome; a TypeError (the old clash
# with invoke's own parameters) is reported as such.
CALLER = """
def f(calls):
    out = []
    for target, name, args in calls:
        try:
            out.append({"value": invoke(target, name, **args)})
        except RemoteError as e:
            out.append({"reason": e.reason, "message": e.message})
        except TypeError as e:
            out.append({"type_error": str(e)})
    return out

def pay_by_keyword(to, amount):
    try:
        return pay(to=to, amount=amount)
    except TypeError as e:
        return {"type_error": str(e)}
"""


def genesis_methods_with_clashing_args() -> set[tuple[str, str]]:
    kernel = Kernel(load(None))
    return {(gid, m["name"]) for gid, g in kernel.genesis.items() for m in g.interface()
            if CLASHING & set(m.get("input_schema", {}).get("properties", {}))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("nested") / "world").start()
    yield s
    s.kill()


def test_every_genesis_method_taking_artifact_id_is_reachable_from_code(world):
    alice = world.agent("alice_" + uuid.uuid4().hex[:6])
    tool = "caller_" + uuid.uuid4().hex[:6]
    # An invokable principal (standing + code): it may control artifacts and pays for itself.
    with world.admin() as admin:
        admin.create_agent(tool, CALLER, interface=[{"name": "f"}, {"name": "pay_by_keyword"}])
    target = "goods_" + uuid.uuid4().hex[:6]
    alice.write(target, "for sale")
    alice.transfer_control(target, tool)  # the tool (the nested caller) controls it
    ctx = {"metadata": {}, "state": {"controller": tool}, "created_by": alice.agent_id, "kind": "", "now": 0}
    check = {"artifact_id": target, "action": "read", "requester_id": alice.agent_id, "context": ctx}
    plan = [
        ("genesis_store", "get_metadata", {"artifact_id": target}),
        *[(c, "check_permission", check) for c in ("genesis_freeware", "genesis_public", "genesis_private",
                                                     "genesis_self_owned", "genesis_debt_contract")],
        ("genesis_escrow", "list", {"artifact_id": target, "price": 5}),
        ("genesis_escrow", "purchase", {"artifact_id": target}),
        ("genesis_escrow", "cancel", {"artifact_id": target}),
        ("genesis_oracle", "bid", {"artifact_id": target, "amount": 1}),
        ("genesis_oracle", "cancel_bid", {"artifact_id": target}),
        ("genesis_rights_registry", "transfer_control", {"artifact_id": target, "to": alice.agent_id}),
        # `method` as an argument name reaches the server too (whose schema refuses it).
        ("genesis_store", "get_metadata", {"artifact_id": target, "method": "x"}),
    ]
    assert {(g, m) for g, m, _ in plan} >= genesis_methods_with_clashing_args(), "a genesis method is untested"
    out = alice.invoke(tool, "f", calls=[list(c) for c in plan])
    assert not [o for o in out if "type_error" in o], out
    result = dict(zip([f"{g}.{m}" for g, m, _ in plan], out))
    assert out[0]["value"]["id"] == target
    for o in out[1:6]:
        assert isinstance(o["value"]["allowed"], bool), o
    assert result["genesis_escrow.list"]["value"]["artifact_id"] == target
    # The tool itself listed it: the method itself answers.
    assert result["genesis_escrow.purchase"]["reason"] == "INVALID_ARGS"
    assert "seller" in result["genesis_escrow.purchase"]["message"]
    assert result["genesis_escrow.cancel"]["value"] == {"artifact_id": target, "cancelled": True}
    bid = result["genesis_oracle.bid"]
    assert "value" in bid or bid["reason"] not in ("EXECUTION_ERROR",), bid
    assert result["genesis_oracle.cancel_bid"].get("reason") in (None, "NOT_FOUND"), result
    assert result["genesis_rights_registry.transfer_control"]["value"]["controller"] == alice.agent_id
    assert out[-1]["reason"] == "INVALID_ARGS" and "method" in out[-1]["message"], out[-1]
    assert alice.get_metadata(target)["state"]["controller"] == alice.agent_id
    # pay is positional-only too: by keyword it is a TypeError in the code, nothing is paid.
    before = (alice.get_state().scrip, alice.balance(tool))
    assert "type_error" in alice.invoke(tool, "pay_by_keyword", to=alice.agent_id, amount=1)
    assert (alice.get_state().scrip, alice.balance(tool)) == before
    check_ledger(world)
