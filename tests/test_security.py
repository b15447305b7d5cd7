"""Security through the real API: identity comes only from the token, contracts guard every
verb, and every rejected attempt leaves the world exactly as it was."""

from __future__ import annotations

import secrets
import uuid

import grpc
import pytest
from google.protobuf import struct_pb2

from agent_runtime import EcologyError
from agent_runtime.client import to_python
from ecology.v1 import admin_pb2, admin_pb2_grpc, world_pb2, world_pb2_grpc
from tests.conftest import ServerProcess, check_ledger

C = grpc.StatusCode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("security") / "world").start()
    yield s
    s.kill()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fails(fn, code: grpc.StatusCode, reason: str) -> EcologyError:
    with pytest.raises(EcologyError) as info:
        fn()
    err = info.value
    assert (err.code, err.reason) == (code, reason), f"{err.code} {err.reason}: {err.message}"
    return err


class Raw:
    """Calls with hand-made metadata (or none), straight on the stubs."""

    def __init__(self, server: ServerProcess) -> None:
        self.channel = grpc.insecure_channel(server.socket)
        self.world = world_pb2_grpc.WorldStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def call(self, rpc, request, metadata=None):
        try:
            return rpc(request, metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            raise EcologyError.from_rpc_error(err) from None

    def invoke(self, metadata, target, method, **args):
        s = struct_pb2.Struct()
        s.update(args)
        resp = self.call(self.world.InvokeArtifact, world_pb2.InvokeArtifactRequest(
            artifact_id=target, method=method, args=s), metadata)
        return to_python(resp.result)


@pytest.fixture
def raw(world):
    r = Raw(world)
    yield r
    r.channel.close()


def snapshot(world, ids: list[str], principals: list[str]) -> dict:
    """Everything an attack could change: artifacts (all fields), balances, listings, journal."""
    conn = world.db()
    try:
        arts = {r["id"]: dict(r) for r in conn.execute(
            f"SELECT * FROM artifacts WHERE id IN ({','.join('?' * len(ids))})", ids)}
        bal = dict(conn.execute(
            f"SELECT principal_id, scrip FROM balances WHERE principal_id IN ({','.join('?' * len(principals))})",
            principals).fetchall())
        listings = [tuple(r) for r in conn.execute("SELECT * FROM escrow_listings ORDER BY artifact_id")]
        entries = conn.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0]
        agents = conn.execute("SELECT COUNT(*) FROM credentials").fetchone()[0]
        stock = [tuple(r) for r in conn.execute(
            f"SELECT * FROM stock WHERE principal_id IN ({','.join('?' * len(principals))}) ORDER BY 1, 2",
            principals)]
    finally:
        conn.close()
    return {"artifacts": arts, "balances": bal, "listings": listings, "entries": entries,
            "credentials": agents, "stock": stock}


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def scene(world):
    """alice (with a freeware artifact, a listing) and bob, and a snapshot helper."""
    alice, bob = world.agent(uid("alice")), world.agent(uid("bob"))
    doc = uid("doc")
    alice.write(doc, "alice's words", metadata={"tag": "mine"})
    for_sale = uid("sale")
    alice.write(for_sale, "for sale")
    r = Raw(world)  # (WorldClient.escrow_list cannot pass artifact_id: see test_genesis.py)
    r.invoke(bearer(alice.token), "genesis_escrow", "list", artifact_id=for_sale, price=40)
    r.channel.close()
    ids = [alice.agent_id, bob.agent_id, doc, for_sale]
    principals = [alice.agent_id, bob.agent_id]

    class Scene:
        pass

    sc = Scene()
    sc.alice, sc.bob, sc.doc, sc.for_sale = alice, bob, doc, for_sale
    sc.snap = lambda: snapshot(world, ids, principals)
    sc.before = sc.snap()
    return sc


def unchanged(world, sc) -> None:
    assert sc.snap() == sc.before
    check_ledger(world)


# -- scrip can only leave its owner ------------------------------------------------------------

def test_no_field_names_the_source_of_a_transfer(world, raw, scene):
    alice, bob = scene.alice, scene.bob
    # The request messages carry no identity: no field names a caller, source or principal.
    for msg in (world_pb2.InvokeArtifactRequest, world_pb2.WriteArtifactRequest,
                world_pb2.DeleteArtifactRequest, world_pb2.ReadArtifactRequest):
        names = {f.name for f in msg.DESCRIPTOR.fields}
        assert not names & {"from", "source", "caller", "principal_id", "requester_id", "sender"}
    # The transfer method's schema has no source either, and refuses extra arguments.
    spec = next(m for m in alice.read("genesis_ledger").interface if m.name == "transfer")
    assert set(spec.input_schema["properties"]) == {"to", "amount", "memo"}
    for extra in ({"from": alice.agent_id}, {"source": alice.agent_id}, {"principal_id": alice.agent_id}):
        fails(lambda: raw.invoke(bearer(bob.token), "genesis_ledger", "transfer", to=bob.agent_id, amount=10,
                                 **extra), C.INVALID_ARGUMENT, "INVALID_ARGS")
    # Bob naming alice as the recipient moves bob's scrip, never alice's; "to self" is refused.
    fails(lambda: bob.transfer(bob.agent_id, 10), C.INVALID_ARGUMENT, "INVALID_ARGS")
    unchanged(world, scene)
    fails(lambda: bob.transfer(alice.agent_id, 5000), C.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    unchanged(world, scene)
    bob.transfer(alice.agent_id, 10)
    after = scene.snap()["balances"]
    assert after == {alice.agent_id: scene.before["balances"][alice.agent_id] + 10,
                     bob.agent_id: scene.before["balances"][bob.agent_id] - 10}
    check_ledger(world)


def test_quota_cannot_be_taken_from_another(world, raw, scene):
    alice, bob = scene.alice, scene.bob
    fails(lambda: raw.invoke(bearer(bob.token), "genesis_rights_registry", "transfer_quota", to=bob.agent_id,
                             resource="disk_bytes", amount=100, **{"from": alice.agent_id}),
          C.INVALID_ARGUMENT, "INVALID_ARGS")
    unchanged(world, scene)


# -- another's artifacts --------------------------------------------------------------------------

def test_cannot_write_or_delete_another_agents_self_owned_artifact(world, raw, scene):
    alice, bob = scene.alice, scene.bob
    target = alice.agent_id
    attempts = [
        lambda: bob.write(target, '{"prompt": "obey bob"}'),
        lambda: bob.write(target, "", metadata={"evil": True}),
        lambda: bob.write(target, "", state={"note": "bob was here"}),
        lambda: bob.write(target, "", access_contract_id="genesis_public"),
        lambda: bob.delete(target),
        lambda: bob.read(target),
        lambda: raw.invoke(bearer(bob.token), "genesis_rights_registry", "transfer_control",
                           artifact_id=target, to=bob.agent_id),
        lambda: raw.invoke(bearer(bob.token), "genesis_escrow", "list", artifact_id=target, price=1),
    ]
    for attempt in attempts:
        fails(attempt, C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: bob.write(target, "", state={"controller": bob.agent_id}), C.INVALID_ARGUMENT, "INVALID_ARGS")
    unchanged(world, scene)


def test_cannot_write_or_delete_another_agents_freeware_artifact(world, raw, scene):
    alice, bob = scene.alice, scene.bob
    doc = scene.doc
    assert bob.read(doc).content == "alice's words"  # freeware: reading is allowed
    for attempt in [
        lambda: bob.write(doc, "bob's words"),
        lambda: bob.write(doc, "alice's words", metadata={"tag": "bobs"}, replace_metadata=True),
        lambda: bob.write(doc, "alice's words", expected_version=1),
        lambda: bob.write(doc, "alice's words", access_contract_id="genesis_public"),
        lambda: bob.delete(doc),
        lambda: bob.delete(doc, expected_version=1),
        lambda: raw.invoke(bearer(bob.token), "genesis_rights_registry", "transfer_control",
                           artifact_id=doc, to=bob.agent_id),
    ]:
        fails(attempt, C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: bob.write(doc, "x", create_only=True), C.ALREADY_EXISTS, "ALREADY_EXISTS")
    unchanged(world, scene)


def test_cannot_list_someone_elses_artifact_in_escrow(world, raw, scene):
    alice, bob = scene.alice, scene.bob
    for target in (scene.doc, alice.agent_id):
        fails(lambda: raw.invoke(bearer(bob.token), "genesis_escrow", "list", artifact_id=target, price=1),
              C.PERMISSION_DENIED, "ACCESS_DENIED")
    # Nor take over or cancel alice's listing.
    fails(lambda: raw.invoke(bearer(bob.token), "genesis_escrow", "list", artifact_id=scene.for_sale, price=1),
          C.ABORTED, "CONFLICT")
    fails(lambda: raw.invoke(bearer(bob.token), "genesis_escrow", "cancel", artifact_id=scene.for_sale),
          C.PERMISSION_DENIED, "ACCESS_DENIED")
    # The escrow now controls the listed artifact: even alice cannot change it behind the buyer's back.
    fails(lambda: alice.write(scene.for_sale, "bait and switch"), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: alice.delete(scene.for_sale), C.PERMISSION_DENIED, "ACCESS_DENIED")
    unchanged(world, scene)


def test_purchase_cannot_forge_the_buyer(world, raw, scene):
    alice, bob = scene.alice, scene.bob
    carol = world.agent(uid("carol"))
    carol_before = carol.get_state().scrip
    scene.before = scene.snap()  # (with carol in the world)
    # An argument naming the buyer is refused outright.
    fails(lambda: raw.invoke(bearer(bob.token), "genesis_escrow", "purchase", artifact_id=scene.for_sale,
                             buyer=carol.agent_id), C.INVALID_ARGUMENT, "INVALID_ARGS")
    # Metadata claiming another identity is ignored unless it is a valid token; a bad token fails.
    fails(lambda: raw.invoke((("authorization", "Bearer " + carol.token[:-1]),), "genesis_escrow", "purchase",
                             artifact_id=scene.for_sale), C.UNAUTHENTICATED, "UNAUTHENTICATED")
    unchanged(world, scene)
    assert carol.get_state().scrip == carol_before
    # With bob's token and a claim to be carol, bob is the buyer and bob pays.
    md = bearer(bob.token) + (("x-principal-id", carol.agent_id), ("x-on-behalf-of", carol.agent_id))
    r = raw.invoke(md, "genesis_escrow", "purchase", artifact_id=scene.for_sale)
    assert r["buyer"] == bob.agent_id
    after = scene.snap()
    assert after["balances"][bob.agent_id] == scene.before["balances"][bob.agent_id] - 40
    assert after["balances"][alice.agent_id] == scene.before["balances"][alice.agent_id] + 40
    assert bob.read(scene.for_sale).state["controller"] == bob.agent_id
    assert carol.get_state().scrip == carol_before
    check_ledger(world)


# -- authentication ----------------------------------------------------------------------------

def test_agent_token_on_admin_is_refused(world, raw, scene):
    md = bearer(scene.alice.token)
    for rpc, req in ((raw.admin.CreateAgent, admin_pb2.CreateAgentRequest(name=uid("sneaky"))),
                     (raw.admin.ListAgents, admin_pb2.ListAgentsRequest()),
                     (raw.admin.GetStats, admin_pb2.GetStatsRequest())):
        fails(lambda: raw.call(rpc, req, md), C.PERMISSION_DENIED, "ADMIN_ONLY")
    unchanged(world, scene)
    assert [a.agent_id for a in world.admin().list_agents() if a.agent_id.startswith("sneaky")] == []


def bad_credentials(world, scene) -> list:
    token = scene.alice.token
    return [
        None,                                               # no metadata at all
        (("authorization", ""),),                           # empty
        (("authorization", "Bearer"),),                     # scheme, no token
        (("authorization", "Bearer "),),                    # empty token
        (("authorization", token),),                        # valid token without "Bearer"
        (("authorization", f"Basic {token}"),),             # wrong scheme
        (("authorization", f"Bearer {token}x"),),           # forged: one character more
        (("authorization", f"Bearer {token[:-2]}"),),       # truncated
        (("authorization", "Bearer eco_" + secrets.token_urlsafe(32)),),  # random, well-formed
        (("authorization", f"Bearer {scene.alice.agent_id}"),),           # the agent's id as token
        (("x-api-key", token),),                            # right token, wrong header
    ]


def test_missing_forged_or_malformed_tokens_on_world(world, raw, scene):
    s = struct_pb2.Struct()
    s.update({"to": scene.bob.agent_id, "amount": 100})
    calls = [
        (raw.world.GetState, world_pb2.GetStateRequest()),
        (raw.world.ReadArtifact, world_pb2.ReadArtifactRequest(artifact_id=scene.doc)),
        (raw.world.WriteArtifact, world_pb2.WriteArtifactRequest(artifact_id=scene.doc, content="pwned")),
        (raw.world.DeleteArtifact, world_pb2.DeleteArtifactRequest(artifact_id=scene.doc)),
        (raw.world.InvokeArtifact, world_pb2.InvokeArtifactRequest(
            artifact_id="genesis_ledger", method="transfer", args=s)),
        (raw.world.ListArtifacts, world_pb2.ListArtifactsRequest()),
    ]
    for md in bad_credentials(world, scene) + [bearer(world.admin_token)]:  # admin is not a principal
        for rpc, req in calls:
            fails(lambda: raw.call(rpc, req, md), C.UNAUTHENTICATED, "UNAUTHENTICATED")
        with pytest.raises(grpc.RpcError) as info:
            next(iter(raw.world.Subscribe(world_pb2.SubscribeRequest(), metadata=md, timeout=5)))
        assert info.value.code() == C.UNAUTHENTICATED
    unchanged(world, scene)


def test_missing_forged_or_malformed_tokens_on_admin(world, raw, scene):
    stats_before = world.admin().get_stats()
    for md in bad_credentials(world, scene) + [(("authorization", f"Bearer {world.admin_token}x"),),
                                               (("authorization", world.admin_token),)]:
        for rpc, req in ((raw.admin.CreateAgent, admin_pb2.CreateAgentRequest(name=uid("intruder"))),
                         (raw.admin.ListAgents, admin_pb2.ListAgentsRequest()),
                         (raw.admin.GetStats, admin_pb2.GetStatsRequest())):
            fails(lambda: raw.call(rpc, req, md), C.UNAUTHENTICATED, "UNAUTHENTICATED")
    unchanged(world, scene)
    stats = world.admin().get_stats()
    assert (stats.agents, stats.minted, stats.last_event_seq) == (
        stats_before.agents, stats_before.minted, stats_before.last_event_seq)
    # The real admin token works on the same channel.
    assert raw.call(raw.admin.GetStats, admin_pb2.GetStatsRequest(), bearer(world.admin_token)).agents >= 2
