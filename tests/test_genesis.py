"""Every genesis artifact method through InvokeArtifact on a real server: the happy path and
the main failures, checked by gRPC status code and ErrorInfo reason."""

from __future__ import annotations

import grpc
import pytest

from agent_runtime import EcologyError
from agent_runtime.client import _struct, _wrap, to_python
from ecology.v1 import world_pb2
from tests.conftest import ServerProcess, check_ledger, fails, uid

C = grpc.StatusCode

GENESIS = ["genesis_debt", "genesis_debt_contract", "genesis_escrow", "genesis_event_log", "genesis_freeware", "genesis_handbook", "genesis_ledger",
           "genesis_llm", "genesis_oracle", "genesis_private", "genesis_public", "genesis_rights_registry", "genesis_self_owned",
           "genesis_store"]
CONTRACTS = ["genesis_freeware", "genesis_self_owned", "genesis_private", "genesis_public"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("genesis") / "world").start()
    yield s
    s.kill()


def agents(world, *names, **overrides):
    return [world.agent(uid(n), **overrides) for n in names]


def scrip(world, *clients) -> list[int]:
    return [c.get_state().scrip for c in clients]


# WorldClient.invoke(artifact_id, method, **args) cannot pass a method argument that is
# itself named `artifact_id` (TypeError: multiple values), which breaks the SDK's
# escrow_*/get_metadata/transfer_control helpers; these call the stub directly instead.
# test_sdk_helpers_with_an_artifact_id_argument records the SDK bug.
@_wrap
def inv(client, target: str, method: str, **args):
    resp = client._stub.InvokeArtifact(world_pb2.InvokeArtifactRequest(
        artifact_id=target, method=method, args=_struct(args)), metadata=client._md)
    return to_python(resp.result)


def escrow_list(c, artifact_id, price):
    return inv(c, "genesis_escrow", "list", artifact_id=artifact_id, price=price)


def escrow_purchase(c, artifact_id):
    return inv(c, "genesis_escrow", "purchase", artifact_id=artifact_id)


def escrow_cancel(c, artifact_id):
    return inv(c, "genesis_escrow", "cancel", artifact_id=artifact_id)


def get_metadata(c, artifact_id):
    return inv(c, "genesis_store", "get_metadata", artifact_id=artifact_id)


def transfer_control(c, artifact_id, to):
    return inv(c, "genesis_rights_registry", "transfer_control", artifact_id=artifact_id, to=to)


def test_sdk_helpers_with_an_artifact_id_argument(world):
    a, = agents(world, "sdk")
    item = uid("sdk")
    a.write(item, "x")
    assert a.get_metadata(item)["id"] == item
    assert a.escrow_list(item, 3)["price"] == 3


# -- genesis_ledger ---------------------------------------------------------------------------

def test_ledger_balance(world):
    a, b = agents(world, "alice", "bob")
    assert a.invoke("genesis_ledger", "balance") == {"principal_id": a.agent_id, "scrip": 1000}
    assert a.balance(b.agent_id) == 1000
    assert a.balance("genesis_escrow") >= 0  # accounts are principals too
    data = uid("data")
    a.write(data, "x")
    fails(lambda: a.balance(data), C.NOT_FOUND, "NOT_FOUND", "principal_id")
    fails(lambda: a.balance(uid("nobody")), C.NOT_FOUND, "NOT_FOUND", "principal_id")


def test_ledger_transfer_and_history(world):
    a, b = agents(world, "alice", "bob")
    r = a.transfer(b.agent_id, 30, memo="for lunch")
    assert (r["from"], r["to"], r["amount"], r["balance"]) == (a.agent_id, b.agent_id, 30, 970)
    assert scrip(world, a, b) == [970, 1030]
    hist = a.history()
    assert [(h["kind"], h["debit"], h["credit"], h["amount"]) for h in hist] == [
        ("mint", "genesis_system", a.agent_id, 1000), ("transfer", a.agent_id, b.agent_id, 30)]
    assert hist[1]["seq"] == r["entry"] and hist[1]["memo"] == "for lunch"
    assert [h["seq"] for h in b.history()] == [h["seq"] for h in a.history(b.agent_id)]
    assert a.history(after=hist[0]["seq"]) == hist[1:]
    assert a.history(limit=1) == hist[:1]
    b.transfer(a.agent_id, 5)
    assert scrip(world, a, b) == [975, 1025]
    assert len(a.history()) == 3
    check_ledger(world)


def test_ledger_transfer_failures_change_nothing(world):
    a, b = agents(world, "alice", "bob")
    data = uid("data")
    a.write(data, "x")
    fails(lambda: a.transfer(b.agent_id, 1001), C.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    fails(lambda: a.transfer(data, 5), C.NOT_FOUND, "NOT_FOUND", "to")
    fails(lambda: a.transfer(uid("ghost"), 5), C.NOT_FOUND, "NOT_FOUND", "to")
    fails(lambda: a.transfer("genesis_system", 5), C.INVALID_ARGUMENT, "INVALID_ARGS")
    fails(lambda: a.transfer(a.agent_id, 5), C.INVALID_ARGUMENT, "INVALID_ARGS", "to")
    for bad in (2.5, 0, -5, "5", 2**60, True, None):
        fails(lambda: a.invoke("genesis_ledger", "transfer", to=b.agent_id, amount=bad),
              C.INVALID_ARGUMENT, "INVALID_ARGS", "args.amount")
    fails(lambda: a.invoke("genesis_ledger", "transfer", to=b.agent_id), C.INVALID_ARGUMENT, "INVALID_ARGS")
    assert scrip(world, a, b) == [1000, 1000]
    assert len(a.history()) == 1  # only the endowment
    check_ledger(world)


# -- genesis_escrow ---------------------------------------------------------------------------

def test_escrow_list_and_purchase(world):
    seller, buyer = agents(world, "seller", "buyer")
    item = uid("widget")
    seller.write(item, "a fine widget")
    listed = escrow_list(seller, item, 100)
    assert listed == {"artifact_id": item, "seller": seller.agent_id, "price": 100}
    art = seller.read(item)
    assert art.state["controller"] == "genesis_escrow" and art.version == 2
    # Control went to the escrow: the seller can no longer change, delete or re-sell it.
    fails(lambda: seller.write(item, "swapped"), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: seller.delete(item), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: transfer_control(seller, item, buyer.agent_id), C.ABORTED, "CONFLICT")
    fails(lambda: escrow_list(seller, item, 1), C.ABORTED, "CONFLICT", "artifact_id")
    fails(lambda: escrow_list(buyer, item, 1), C.ABORTED, "CONFLICT", "artifact_id")
    assert {"artifact_id": item, "seller": seller.agent_id, "price": 100} in [
        {k: x[k] for k in ("artifact_id", "seller", "price")} for x in buyer.escrow_listings()]
    fails(lambda: escrow_purchase(seller, item), C.INVALID_ARGUMENT, "INVALID_ARGS")

    bought = escrow_purchase(buyer, item)
    assert bought == {"artifact_id": item, "seller": seller.agent_id, "buyer": buyer.agent_id, "price": 100}
    assert scrip(world, seller, buyer) == [1100, 900]
    art = buyer.read(item)
    assert art.state["controller"] == buyer.agent_id and art.content == "a fine widget"
    assert item not in [x["artifact_id"] for x in buyer.escrow_listings()]
    buyer.write(item, "mine now")
    fails(lambda: seller.write(item, "still mine?"), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: escrow_purchase(buyer, item), C.FAILED_PRECONDITION, "NOT_LISTED", "artifact_id")
    ev = buyer.events(types=["escrow.purchased"], limit=500)
    assert any(e["artifact_id"] == item and e["data"]["price"] == 100 for e in ev)
    check_ledger(world)


def test_escrow_purchase_without_funds_changes_nothing(world):
    seller, = agents(world, "seller")
    poor, = agents(world, "poor", endowment=10)
    item = uid("gem")
    seller.write(item, "shiny")
    escrow_list(seller, item, 50)
    version = seller.read(item).version
    fails(lambda: escrow_purchase(poor, item), C.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert scrip(world, seller, poor) == [1000, 10]
    art = poor.read(item)
    assert art.state["controller"] == "genesis_escrow" and art.version == version
    assert item in [x["artifact_id"] for x in poor.escrow_listings()]
    check_ledger(world)


def test_escrow_cancel(world):
    seller, other = agents(world, "seller", "other")
    item = uid("lamp")
    seller.write(item, "lamp")
    escrow_list(seller, item, 5)
    fails(lambda: escrow_cancel(other, item), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert seller.read(item).state["controller"] == "genesis_escrow"
    assert escrow_cancel(seller, item) == {"artifact_id": item, "cancelled": True}
    assert seller.read(item).state["controller"] == seller.agent_id
    assert item not in [x["artifact_id"] for x in seller.escrow_listings()]
    seller.write(item, "lamp v2")  # control is back
    fails(lambda: escrow_cancel(seller, item), C.FAILED_PRECONDITION, "NOT_LISTED")
    fails(lambda: escrow_purchase(other, item), C.FAILED_PRECONDITION, "NOT_LISTED")
    assert scrip(world, seller, other) == [1000, 1000]


def test_escrow_list_failures(world):
    a, b = agents(world, "alice", "bob")
    fails(lambda: escrow_list(a, uid("nothing"), 5), C.NOT_FOUND, "NOT_FOUND")
    fails(lambda: escrow_list(a, "genesis_ledger", 5), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: escrow_list(a, b.agent_id, 5), C.PERMISSION_DENIED, "ACCESS_DENIED")
    item = uid("thing")
    a.write(item, "t")
    fails(lambda: escrow_list(a, item, -1), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.price")
    fails(lambda: escrow_list(a, item, 1.5), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.price")
    # A free listing hands over control without a ledger entry.
    escrow_list(a, item, 0)
    escrow_purchase(b, item)
    assert b.read(item).state["controller"] == b.agent_id
    assert scrip(world, a, b) == [1000, 1000]


# -- genesis_store ----------------------------------------------------------------------------

def test_store_list_search_get_metadata(world):
    a, = agents(world, "alice")
    word = uid("zebra").replace("-", "")
    a.write(uid("doc"), "SECRET CONTENT", metadata={"description": f"about {word.upper()}", "tag": word})
    tool = uid("tool")
    a.write(tool, "def go():\n    return 'SECRET CODE'\n", can_execute=True,
            interface=[{"name": "go", "description": f"runs the {word} engine", "input_schema": {}}])
    named = a.write(f"{word}-named", "SECRET", metadata={"tag": "other"}).artifact.id

    listed = a.invoke("genesis_store", "list", created_by=a.agent_id)
    assert len(listed["artifacts"]) == 3 and listed["next_cursor"] == ""
    assert all(x["content"] == "" for x in listed["artifacts"])
    assert [x["id"] for x in a.invoke("genesis_store", "list", created_by=a.agent_id, kind="tool")["artifacts"]] == [tool]
    assert len(a.invoke("genesis_store", "list", metadata={"tag": word})["artifacts"]) == 1
    page = a.invoke("genesis_store", "list", created_by=a.agent_id, limit=2)
    assert len(page["artifacts"]) == 2 and page["next_cursor"]
    rest = a.invoke("genesis_store", "list", created_by=a.agent_id, limit=2, cursor=page["next_cursor"])
    assert len(rest["artifacts"]) == 1 and rest["next_cursor"] == ""

    found = a.search(word)  # metadata (case-insensitive), interface description, id
    assert len(found) == 3 and {tool, named} <= {x["id"] for x in found}
    assert all(x["content"] == "" for x in found)
    assert a.search("no-such-thing-" + word) == []
    assert "genesis_ledger" in [x["id"] for x in a.search("LEDGER")]
    fails(lambda: a.invoke("genesis_store", "search", query=""), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.query")

    meta = get_metadata(a, tool)
    assert meta["id"] == tool and meta["content"] == "" and meta["kind"] == "tool"
    assert meta["interface"][0]["name"] == "go" and meta["created_by"] == a.agent_id
    a.delete(named)
    assert get_metadata(a, named)["deleted"] is True  # tombstones included
    fails(lambda: get_metadata(a, uid("nope")), C.NOT_FOUND, "NOT_FOUND")
    # Agents are discoverable too.
    assert get_metadata(a, a.agent_id)["kind"] == "agent"


# -- genesis_event_log ------------------------------------------------------------------------

def test_event_log_read(world):
    a, b = agents(world, "alice", "bob")
    start = a.get_state().last_event_seq
    item = uid("evt")
    a.write(item, "x")
    a.transfer(b.agent_id, 3)
    escrow_list(a, item, 1)
    escrow_cancel(a, item)
    out = a.invoke("genesis_event_log", "read", after=start)
    evs = out["events"]
    assert [e["type"] for e in evs] == ["artifact.written", "ledger.transfer", "escrow.listed", "escrow.cancelled"]
    assert [e["seq"] for e in evs] == list(range(start + 1, start + 5)) and out["last_seq"] == start + 4
    assert evs[1]["data"]["amount"] == 3 and evs[1]["related_ids"] == [b.agent_id]
    assert [e["type"] for e in a.events(after=start, types=["escrow.*"])] == ["escrow.listed", "escrow.cancelled"]
    assert [e["type"] for e in a.events(after=start, types=["ledger.transfer", "artifact.written"])] == [
        "artifact.written", "ledger.transfer"]
    assert len(a.events(after=start, limit=2)) == 2
    fails(lambda: a.events(limit=0), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.limit")
    fails(lambda: a.events(after=-1), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.after")


# -- genesis_rights_registry ------------------------------------------------------------------

def quotas_of(client, pid=None) -> dict:
    q = client.quotas(pid)
    out = {f"flow.{f['name']}.{k}": f[k] for f in q["flow"] for k in ("rate", "capacity")}
    out.update({f"stock.{s['name']}.{k}": s.get(k, 0) for s in q["stock"] for k in ("quota", "used")})
    return out


def test_rights_registry_quotas(world):
    a, b = agents(world, "alice", "bob")
    q = quotas_of(a)
    assert q["flow.compute.rate"] == 10 and q["flow.compute.capacity"] == 100
    assert q["stock.disk_bytes.quota"] == 10 * 1024 * 1024 and q["stock.disk_bytes.used"] == 2
    assert q["stock.llm_budget.quota"] == 1_000_000
    assert a.quotas(b.agent_id)["principal_id"] == b.agent_id
    data = uid("data")
    a.write(data, "x")
    fails(lambda: a.quotas(data), C.NOT_FOUND, "NOT_FOUND", "principal_id")


def test_rights_registry_transfer_quota(world):
    a, b = agents(world, "alice", "bob")
    assert a.transfer_quota(b.agent_id, "disk_bytes", 1000) == {
        "from": a.agent_id, "to": b.agent_id, "resource": "disk_bytes", "amount": 1000}
    a.transfer_quota(b.agent_id, "llm_budget", 250_000)
    a.transfer_quota(b.agent_id, "compute_rate", 2.5)
    a.transfer_quota(b.agent_id, "compute_capacity", 40)
    qa, qb = quotas_of(a), quotas_of(b)
    assert (qa["stock.disk_bytes.quota"], qb["stock.disk_bytes.quota"]) == (10 * 1024 * 1024 - 1000,
                                                                           10 * 1024 * 1024 + 1000)
    assert (qa["stock.llm_budget.quota"], qb["stock.llm_budget.quota"]) == (750_000, 1_250_000)
    assert (qa["flow.compute.rate"], qb["flow.compute.rate"]) == (7.5, 12.5)
    assert (qa["flow.compute.capacity"], qb["flow.compute.capacity"]) == (60, 140)
    assert a.get_state().flow[0].balance <= 60  # the balance follows the smaller capacity
    ev = a.events(types=["quota.transferred"], limit=500)
    assert sum(1 for e in ev if e["principal_id"] == a.agent_id) == 4

    data = uid("data")
    a.write(data, "x")
    before = quotas_of(a), quotas_of(b)
    fails(lambda: a.transfer_quota(b.agent_id, "disk_bytes", 10**9), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    fails(lambda: a.transfer_quota(b.agent_id, "compute_rate", 100), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    fails(lambda: a.transfer_quota(b.agent_id, "disk_bytes", 1.5), C.INVALID_ARGUMENT, "INVALID_ARGS", "amount")
    fails(lambda: a.transfer_quota(b.agent_id, "disk_bytes", 0), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.amount")
    fails(lambda: a.transfer_quota(b.agent_id, "disk_bytes", -5), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.amount")
    fails(lambda: a.transfer_quota(b.agent_id, "scrip", 5), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.resource")
    fails(lambda: a.transfer_quota(a.agent_id, "disk_bytes", 5), C.INVALID_ARGUMENT, "INVALID_ARGS", "to")
    fails(lambda: a.transfer_quota(data, "disk_bytes", 5), C.NOT_FOUND, "NOT_FOUND", "to")
    fails(lambda: a.transfer_quota(data, "compute_rate", 1), C.NOT_FOUND, "NOT_FOUND", "to")
    assert (quotas_of(a), quotas_of(b)) == before


def test_rights_registry_transfer_control(world):
    a, b = agents(world, "alice", "bob")
    item = uid("deed")
    a.write(item, "deed")
    fails(lambda: transfer_control(b, item, b.agent_id), C.PERMISSION_DENIED, "ACCESS_DENIED")
    r = transfer_control(a, item, b.agent_id)
    assert r == {"artifact_id": item, "controller": b.agent_id, "version": 2}
    fails(lambda: a.write(item, "back?"), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert b.write(item, "bob's deed").artifact.version == 3
    data = uid("data")
    b.write(data, "x")
    fails(lambda: transfer_control(b, item, data), C.NOT_FOUND, "NOT_FOUND", "to")
    fails(lambda: transfer_control(b, item, uid("ghost")), C.NOT_FOUND, "NOT_FOUND", "to")
    fails(lambda: transfer_control(b, "genesis_store", a.agent_id), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: transfer_control(b, uid("none"), a.agent_id), C.NOT_FOUND, "NOT_FOUND")
    assert b.read(item).state["controller"] == b.agent_id


# -- genesis_handbook -------------------------------------------------------------------------

def test_handbook_has_a_page_per_genesis_artifact_listing_every_method(world):
    a, = agents(world, "reader")
    pages = a.invoke("genesis_handbook", "pages")["pages"]
    assert {"rules", "costs", "errors"} <= set(pages)
    listed = a.list_artifacts(metadata_equals={"kind": "genesis"}, page_size=500).artifacts
    assert sorted(x.id for x in listed) == GENESIS
    for art in listed:
        assert art.id in pages, f"no handbook page for {art.id}"
        text = a.handbook(art.id)
        assert text.startswith(f"# {art.id}")
        assert art.interface, art.id
        for m in art.interface:
            assert f"- {m.name}(" in text, f"{art.id}.{m.name} missing from its handbook page"
            assert m.description in text
            for arg in m.input_schema["properties"]:
                assert arg in text
    assert "no owner bypass" in a.handbook("rules")
    assert "- write: 2" in a.handbook("costs")
    errors = a.handbook("errors")
    for reason in ("NOT_FOUND", "ACCESS_DENIED", "INSUFFICIENT_FUNDS", "QUOTA_EXCEEDED", "CONFLICT", "DELETED"):
        assert f"- {reason} (gRPC" in errors
    fails(lambda: a.handbook("no_such_page"), C.NOT_FOUND, "NOT_FOUND", "page")
    # Read-only: nobody may change it.
    fails(lambda: a.write("genesis_handbook", "lies"), C.PERMISSION_DENIED, "ACCESS_DENIED")


# -- the four built-in contracts ----------------------------------------------------------------

ACTIONS = ("read", "write", "invoke", "delete", "transfer")
# contract -> (controller may, another principal may, the artifact itself may) per action
EXPECTED = {
    "genesis_freeware": ({*ACTIONS}, {"read", "invoke"}, {"read", "invoke"}),
    "genesis_self_owned": ({*ACTIONS}, set(), {"read", "invoke"}),
    "genesis_private": ({*ACTIONS}, set(), set()),
    "genesis_public": ({*ACTIONS}, {*ACTIONS}, {*ACTIONS}),
}


@pytest.mark.parametrize("contract", CONTRACTS)
def test_check_permission_invoked_directly(world, contract):
    a, = agents(world, "judge")
    ctx = {"state": {"controller": "ctrl"}, "metadata": {}, "created_by": "someone"}
    ctrl_ok, other_ok, self_ok = EXPECTED[contract]
    for action in ACTIONS:
        for requester, allowed in (("ctrl", ctrl_ok), ("stranger", other_ok), ("thing", self_ok)):
            d = inv(a, contract, "check_permission", artifact_id="thing", action=action,
                         requester_id=requester, context=ctx)
            assert d["allowed"] is (action in allowed), (contract, action, requester, d)
            assert d["reason"]
    fails(lambda: inv(a, contract, "check_permission", artifact_id="x", action="steal", requester_id="y",
                           context={}), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.action")
    fails(lambda: inv(a, contract, "check_permission", artifact_id="x", action="read"),
          C.INVALID_ARGUMENT, "INVALID_ARGS")


TOOL = [{"name": "run", "description": "runs", "input_schema": {}}]
TOOL_CODE = "def run():\n    return 'ran'\n"


def can(fn) -> bool:
    """True if the call got past the access contract."""
    try:
        fn()
        return True
    except EcologyError as e:
        assert (e.code, e.reason) == (C.PERMISSION_DENIED, "ACCESS_DENIED"), e
        return False


@pytest.mark.parametrize("contract", CONTRACTS)
def test_contracts_govern_the_verbs(world, contract):
    owner, other = agents(world, "owner", "other")
    ctrl_ok, other_ok, _ = EXPECTED[contract]
    verbs = {
        "read": lambda who, item: who.read(item),
        "invoke": lambda who, item: who.invoke(item, "run"),
        "write": lambda who, item: who.write(item, TOOL_CODE + "# changed\n"),
        "delete": lambda who, item: who.delete(item),
        "transfer": lambda who, item: transfer_control(who, 
            item, other.agent_id if who is owner else who.agent_id),
    }
    for who, allowed in ((other, other_ok), (owner, ctrl_ok)):
        got = set()
        for action, verb in verbs.items():
            item = uid(action)  # a fresh artifact per verb: each starts controlled by the owner
            owner.write(item, TOOL_CODE, access_contract_id=contract, can_execute=True, interface=TOOL)
            version = get_metadata(owner, item)["version"]
            if can(lambda: verb(who, item)):
                got.add(action)
            elif action != "read":
                assert get_metadata(owner, item)["version"] == version  # a denied verb changed nothing
        assert got == allowed, (contract, who.agent_id, got)


def test_agent_artifacts_are_self_owned(world):
    a, b = agents(world, "alice", "bob")
    me = a.read(a.agent_id)
    assert me.access_contract_id == "genesis_self_owned" and me.kind == "agent"
    assert me.state["controller"] == a.agent_id
    fails(lambda: b.read(a.agent_id), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert a.write(a.agent_id, '{"prompt": "be kind"}').artifact.version == 2


CONTRACT_IFACE = [{"name": "check_permission", "input_schema": {}}]


def test_user_contracts_decide_and_fail_closed(world):
    a, b = agents(world, "alice", "bob")
    # A user-written contract: anyone reads, nobody does anything else.
    judge = uid("judge")
    a.write(judge, "def check_permission(artifact_id, action, requester_id, context):\n"
                   "    return {'allowed': action == 'read', 'reason': 'read-only by ' + artifact_id}\n",
            can_execute=True, interface=CONTRACT_IFACE)
    assert inv(b, judge, "check_permission", artifact_id="x", action="read", requester_id="y",
               context={}) == {"allowed": True, "reason": "read-only by x"}
    guarded = uid("guarded")
    a.write(guarded, "words", access_contract_id=judge)
    assert b.read(guarded).content == "words"
    err = fails(lambda: a.write(guarded, "new words"), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert "read-only" in err.message  # the contract's reason is passed on; no owner bypass
    fails(lambda: a.delete(guarded), C.PERMISSION_DENIED, "ACCESS_DENIED")
    # A contract that errors denies.
    crashing = uid("crashing")
    a.write(crashing, "def check_permission(artifact_id, action, requester_id, context):\n"
                      "    raise RuntimeError('boom')\n", can_execute=True, interface=CONTRACT_IFACE)
    boxed = uid("boxed")
    a.write(boxed, "x", access_contract_id=crashing)
    err = fails(lambda: a.read(boxed), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert "boom" in err.message or "failed" in err.message
    # A contract that no longer exists denies, and says so.
    plain = uid("plain")
    a.write(plain, "x", access_contract_id="genesis_public")
    a.write(plain, "x", access_contract_id=judge)
    a.delete(judge)
    err = fails(lambda: b.read(plain), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert "no longer exists" in err.message
    fails(lambda: a.write(uid("new"), "x", access_contract_id=judge),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "access_contract_id")
