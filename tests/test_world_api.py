"""Every World RPC through a real server: happy paths and main failures, checked by gRPC
status code and ErrorInfo reason (and the field named for INVALID_ARGS)."""

from __future__ import annotations

import itertools
import threading
import time

import grpc
import pytest

from tests.conftest import ServerProcess, check_ledger, fails, uid

C = grpc.StatusCode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server for the read-mostly tests of this module (each test uses fresh ids)."""
    # The mint is off: its scheduled rounds write events on their own, and some tests here
    # check that a rejected call wrote none.
    s = ServerProcess(tmp_path_factory.mktemp("world_api") / "world", "[oracle]\nenabled = false\n").start()
    yield s
    s.kill()


def flow(state, name="compute"):
    return next(f for f in state.flow if f.name == name)


def stock(state, name):
    return next(s for s in state.stock if s.name == name)


TOOL_CODE = "def run(n):\n    return {'doubled': n * 2, 'caller': context['caller']}\n"
TOOL_IFACE = [{"name": "run", "description": "does a thing",
               "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                "required": ["n"]}}]


# -- GetState -------------------------------------------------------------------------------

def test_get_state_injects_time_identity_and_resources(world):
    name = uid("gs")
    a = world.agent(name)
    before = time.time()
    st = a.get_state()
    after = time.time()
    assert before - 2 <= st.now.ToNanoseconds() / 1e9 <= after + 2
    assert st.principal_id == name
    assert st.scrip == 1000
    comp = flow(st)
    assert (comp.rate, comp.capacity) == (10.0, 100.0)
    assert 99.0 <= comp.balance <= 100.0
    assert comp.seconds_until_usable == 0 and not comp.HasField("usable_at")
    disk = stock(st, "disk_bytes")
    assert disk.used == len("{}") and disk.quota == 10 * 1024 * 1024
    assert stock(st, "llm_budget").quota == 1_000_000
    # last_event_seq is the head of the log, and moves with every change.
    assert st.last_event_seq == a.events(after=st.last_event_seq - 1, limit=5)[0]["seq"]
    a.write(uid("gsd"), "hello")
    st2 = a.get_state()
    assert st2.last_event_seq >= st.last_event_seq + 1
    assert stock(st2, "disk_bytes").used == 2 + 5
    assert flow(st2).balance < comp.balance  # the write cost compute


# -- ReadArtifact ---------------------------------------------------------------------------

def test_read_artifact(world):
    a, b = world.agent(uid("ra")), world.agent(uid("rb"))
    aid = uid("doc")
    a.write(aid, "some content", metadata={"tag": "x"})
    art = b.read(aid)  # freeware: anyone reads
    assert (art.id, art.content, art.created_by, art.kind) == (aid, "some content", a.agent_id, "data")
    assert art.version == 1 and art.size_bytes == len("some content") and not art.deleted
    assert art.access_contract_id == "genesis_freeware"
    assert art.state["controller"] == a.agent_id and art.metadata["tag"] == "x"
    assert abs(art.created_at.ToNanoseconds() / 1e9 - time.time()) < 5
    assert b.read("genesis_ledger").can_execute
    fails(lambda: b.read(uid("missing")), C.NOT_FOUND, "NOT_FOUND", "artifact_id")
    fails(lambda: b.read(a.agent_id), C.PERMISSION_DENIED, "ACCESS_DENIED")  # self_owned agent
    fails(lambda: b.read("bad id!"), C.INVALID_ARGUMENT, "INVALID_ARGS", "artifact_id")
    fails(lambda: b.read(""), C.INVALID_ARGUMENT, "INVALID_ARGS", "artifact_id")


# -- WriteArtifact --------------------------------------------------------------------------

def test_write_creates_then_updates(world):
    a = world.agent(uid("w"))
    aid = uid("art")
    r = a.write(aid, "v1", metadata={"k": 1, "keep": "yes"}, state={"color": "red"})
    assert r.created and r.artifact.version == 1 and r.artifact.content == "v1"
    assert r.artifact.billed_to == a.agent_id
    r2 = a.write(aid, "version two", metadata={"k": 2})
    assert not r2.created and r2.artifact.version == 2 and r2.artifact.content == "version two"
    # Metadata and state merge unless replaced; the controller is kept.
    assert dict(r2.artifact.metadata) == {"k": 2, "keep": "yes"}
    assert r2.artifact.state["color"] == "red" and r2.artifact.state["controller"] == a.agent_id
    r3 = a.write(aid, "v3", metadata={"only": "this"}, replace_metadata=True)
    assert dict(r3.artifact.metadata) == {"only": "this"} and r3.artifact.version == 3
    assert a.read(aid).content == "v3"
    assert r3.artifact.updated_at.ToNanoseconds() >= r.artifact.updated_at.ToNanoseconds()


def test_write_expected_version_and_create_only(world):
    a = world.agent(uid("wv"))
    aid = uid("art")
    a.write(aid, "one")
    fails(lambda: a.write(aid, "two", expected_version=5), C.ABORTED, "CONFLICT", "expected_version")
    assert a.read(aid).content == "one"
    assert a.write(aid, "two", expected_version=1).artifact.version == 2
    fails(lambda: a.write(aid, "three", expected_version=1), C.ABORTED, "CONFLICT", "expected_version")
    fails(lambda: a.write(aid, "again", create_only=True), C.ALREADY_EXISTS, "ALREADY_EXISTS", "artifact_id")
    art = a.read(aid)
    assert (art.content, art.version) == ("two", 2)
    # expected_version on an id that does not exist yet is a conflict too (nothing is created).
    ghost = uid("ghost")
    fails(lambda: a.write(ghost, "x", expected_version=1), C.ABORTED, "CONFLICT")
    fails(lambda: a.read(ghost), C.NOT_FOUND, "NOT_FOUND")
    assert a.write(uid("new"), "x", create_only=True).created


@pytest.mark.parametrize("bad_id", [
    "a" * 129, "has space", "slash/no", "-leading-dash", ".dot", "ünïcode", "semi;colon", "",
])
def test_write_invalid_ids(world, bad_id):
    a = world.agent(uid("wid"))
    before = a.get_state().last_event_seq
    fails(lambda: a.write(bad_id, "x"), C.INVALID_ARGUMENT, "INVALID_ARGS", "artifact_id")
    assert a.get_state().last_event_seq == before  # nothing happened


def test_write_id_limits_and_reserved_prefix(world):
    a = world.agent(uid("wr"))
    longest = "A1._:-" + "z" * 122
    assert len(longest) == 128 and a.write(longest, "ok").created
    fails(lambda: a.write("genesis_mine", "x"), C.INVALID_ARGUMENT, "INVALID_ARGS", "artifact_id")
    fails(lambda: a.read("genesis_mine"), C.NOT_FOUND, "NOT_FOUND")
    # Existing genesis artifacts are controlled by the system: updating them is denied.
    fails(lambda: a.write("genesis_ledger", "mine now"), C.PERMISSION_DENIED, "ACCESS_DENIED")
    assert a.read("genesis_ledger").content != "mine now"


def test_write_rejects_bad_executables_and_fields(world):
    a = world.agent(uid("wx"))
    fails(lambda: a.write(uid("t"), "code", can_execute=True), C.INVALID_ARGUMENT, "INVALID_ARGS", "interface")
    fails(lambda: a.write(uid("t"), "data", interface=TOOL_IFACE), C.INVALID_ARGUMENT, "INVALID_ARGS", "interface")
    bad_schema = [{"name": "run", "input_schema": {"type": 5}}]
    fails(lambda: a.write(uid("t"), "code", can_execute=True, interface=bad_schema),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "interface[0].input_schema")
    bad_name = [{"name": "no spaces", "input_schema": {}}]
    fails(lambda: a.write(uid("t"), "code", can_execute=True, interface=bad_name),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "interface[0].name")
    dup = [{"name": "m"}, {"name": "m"}]
    fails(lambda: a.write(uid("t"), "code", can_execute=True, interface=dup),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "interface[1].name")
    fails(lambda: a.write(uid("t"), "x", state={"controller": a.agent_id}),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "state.controller")
    fails(lambda: a.write(uid("t"), "x", access_contract_id="no_such_contract"),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "access_contract_id")
    fails(lambda: a.write(uid("t"), "x" * (1024 * 1024 + 1)), C.INVALID_ARGUMENT, "INVALID_ARGS", "content")
    fails(lambda: a.write(uid("t"), "x", metadata={"big": "y" * 20000}),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "metadata")
    # Nothing above was created; an executable with an interface is fine.
    assert len(a.list_artifacts(created_by=a.agent_id).artifacts) == 0
    fails(lambda: a.write(uid("t"), "def run(:", can_execute=True, interface=TOOL_IFACE),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "content")
    fails(lambda: a.write(uid("t"), "def other(n): pass", can_execute=True, interface=TOOL_IFACE),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "content")
    tool = a.write(uid("tool"), TOOL_CODE, can_execute=True, interface=TOOL_IFACE).artifact
    assert tool.kind == "tool" and [m.name for m in tool.interface] == ["run"]
    # The controller cannot be changed by a write to an existing artifact either.
    fails(lambda: a.write(tool.id, TOOL_CODE, state={"controller": "someone"}),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "state.controller")
    assert a.read(tool.id).state["controller"] == a.agent_id


def test_write_over_disk_quota(make_server):
    s = make_server("[agents]\ndisk_quota_bytes = 100\n")
    a = s.agent("alice")  # its configuration "{}" uses 2 bytes
    a.write("fits", "x" * 98)
    st = a.get_state()
    assert stock(st, "disk_bytes").used == 100
    err = fails(lambda: a.write("over", "y"), C.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    assert err.retry_after is None  # waiting does not help
    fails(lambda: a.read("over"), C.NOT_FOUND, "NOT_FOUND")
    # Growing an existing artifact over the quota fails too and keeps the old content.
    fails(lambda: a.write("fits", "x" * 99), C.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    assert a.read("fits").content == "x" * 98
    # Shrinking frees bytes.
    a.write("fits", "x" * 48)
    assert a.write("over", "y" * 50).created
    assert stock(a.get_state(), "disk_bytes").used == 100


# -- DeleteArtifact -------------------------------------------------------------------------

def test_delete_leaves_tombstone_and_frees_quota(world):
    a, b = world.agent(uid("d")), world.agent(uid("db"))
    aid = uid("doomed")
    a.write(aid, "z" * 1000, metadata={"tag": "tomb"})
    used = stock(a.get_state(), "disk_bytes").used
    fails(lambda: b.delete(aid), C.PERMISSION_DENIED, "ACCESS_DENIED")
    fails(lambda: a.delete(aid, expected_version=7), C.ABORTED, "CONFLICT", "expected_version")
    tomb = a.delete(aid, expected_version=1)
    assert tomb.deleted and tomb.version == 2 and tomb.content == "" and tomb.size_bytes == 0
    assert stock(a.get_state(), "disk_bytes").used == used - 1000
    fails(lambda: a.read(aid), C.NOT_FOUND, "DELETED")
    fails(lambda: b.read(aid), C.NOT_FOUND, "DELETED")
    fails(lambda: a.delete(aid), C.NOT_FOUND, "DELETED")
    # The id stays taken.
    fails(lambda: a.write(aid, "reborn"), C.NOT_FOUND, "DELETED")
    fails(lambda: b.write(aid, "squatter"), C.NOT_FOUND, "DELETED")
    # Listings hide it unless asked.
    assert len(a.list_artifacts(created_by=a.agent_id).artifacts) == 0
    shown = a.list_artifacts(created_by=a.agent_id, include_deleted=True).artifacts
    assert [(x.id, x.deleted) for x in shown] == [(aid, True)]
    fails(lambda: a.delete(uid("never")), C.NOT_FOUND, "NOT_FOUND")
    fails(lambda: a.delete("genesis_store"), C.PERMISSION_DENIED, "ACCESS_DENIED")


# -- InvokeArtifact -------------------------------------------------------------------------

def test_invoke_failures(world):
    a = world.agent(uid("inv"))
    fails(lambda: a.invoke("genesis_ledger", "steal"), C.INVALID_ARGUMENT, "INVALID_ARGS", "method")
    fails(lambda: a.invoke("genesis_ledger", "transfer", to="x", amount="ten"),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "args.amount")
    err = fails(lambda: a.invoke("genesis_ledger", "transfer", amount=3), C.INVALID_ARGUMENT, "INVALID_ARGS")
    assert "'to'" in err.message
    fails(lambda: a.invoke("genesis_ledger", "transfer", to="x", amount=1, surprise=True),
          C.INVALID_ARGUMENT, "INVALID_ARGS", "args")
    data = uid("data")
    a.write(data, "plain")
    fails(lambda: a.invoke(data, "run"), C.INVALID_ARGUMENT, "INVALID_ARGS", "artifact_id")
    fails(lambda: a.invoke(uid("nothing"), "run"), C.NOT_FOUND, "NOT_FOUND", "artifact_id")
    tool = uid("tool")
    a.write(tool, TOOL_CODE, can_execute=True, interface=TOOL_IFACE)
    fails(lambda: a.invoke(tool, "run", n="x"), C.INVALID_ARGUMENT, "INVALID_ARGS", "args.n")
    # This server runs a sandbox: user code runs (SANDBOX_UNAVAILABLE is only for servers
    # without one), and code that raises is an EXECUTION_ERROR.
    assert a.invoke(tool, "run", n=21) == {"doubled": 42, "caller": a.agent_id}
    broken = uid("broken")
    a.write(broken, "def run(n):\n    return 1 / 0\n", can_execute=True, interface=TOOL_IFACE)
    err = fails(lambda: a.invoke(broken, "run", n=1), C.ABORTED, "EXECUTION_ERROR")
    assert "ZeroDivisionError" in err.message
    a.delete(tool)
    fails(lambda: a.invoke(tool, "run", n=1), C.NOT_FOUND, "DELETED")
    fails(lambda: a.invoke("genesis_ledger", ""), C.INVALID_ARGUMENT, "INVALID_ARGS", "method")
    assert a.get_state().scrip == 1000  # nothing was spent


def test_invoke_genesis_happy_path(world):
    a = world.agent(uid("ih"))
    assert a.invoke("genesis_ledger", "balance") == {"principal_id": a.agent_id, "scrip": 1000}


# -- ListArtifacts --------------------------------------------------------------------------

def test_list_artifacts_filters(world):
    a, b = world.agent(uid("la")), world.agent(uid("lb"))
    tag = uid("tag")
    a.write(uid("red1"), "1", metadata={"tag": tag, "color": "red", "n": 3, "flag": True})
    a.write(uid("red2"), "2", metadata={"tag": tag, "color": "red", "n": 4, "flag": 1})
    a.write(uid("blue"), "3", metadata={"tag": tag, "color": "blue", "n": 3, "nested": {"x": [1, 2]}})
    tool = a.write(uid("tool"), TOOL_CODE, can_execute=True, interface=TOOL_IFACE,
                   metadata={"tag": tag}).artifact.id
    b.write(uid("bdata"), "4", metadata={"tag": tag, "color": "red"})

    def ids(**f):
        return sorted(x.id for x in a.list_artifacts(**f).artifacts)

    mine = ids(created_by=a.agent_id)
    assert len(mine) == 4 and all(x.content == "" for x in a.list_artifacts(created_by=a.agent_id).artifacts)
    assert ids(created_by=b.agent_id) == [x for x in ids(metadata_equals={"tag": tag}) if x not in mine]
    assert ids(created_by=a.agent_id, kind="tool") == [tool]
    assert len(ids(created_by=a.agent_id, kind="data")) == 3
    assert ids(created_by=a.agent_id, can_execute=True) == [tool]
    assert len(ids(created_by=a.agent_id, can_execute=False)) == 3
    assert ids(created_by=a.agent_id, has_standing=True) == []
    agents = ids(kind="agent")
    assert a.agent_id in agents and b.agent_id in agents and tool not in agents
    assert set(agents) <= set(ids(has_standing=True))
    assert len(ids(metadata_equals={"tag": tag, "color": "red"})) == 3
    assert len(ids(metadata_equals={"tag": tag, "color": "red"}, created_by=a.agent_id)) == 2
    assert len(ids(metadata_equals={"tag": tag, "n": 3})) == 2
    assert len(ids(metadata_equals={"tag": tag, "nested": {"x": [1, 2]}})) == 1
    # Equality is as JSON: true is not the number 1.
    assert len(ids(metadata_equals={"tag": tag, "flag": True})) == 1
    assert len(ids(metadata_equals={"tag": tag, "flag": 1})) == 1
    assert ids(metadata_equals={"tag": tag, "color": "green"}) == []
    fails(lambda: a.list_artifacts(kind="monster"), C.INVALID_ARGUMENT, "INVALID_ARGS", "kind")
    fails(lambda: a.list_artifacts(page_size=501), C.INVALID_ARGUMENT, "INVALID_ARGS", "page_size")


def test_list_artifacts_paging(world):
    a = world.agent(uid("lp"))
    tag = uid("page")
    made = sorted(a.write(f"{tag}-{i}", str(i), metadata={"tag": tag}).artifact.id for i in range(7))
    a.delete(made[3])
    seen, cursor, pages = [], "", 0
    while True:
        resp = a.list_artifacts(metadata_equals={"tag": tag}, page_size=2, cursor=cursor)
        assert len(resp.artifacts) <= 2
        seen += [x.id for x in resp.artifacts]
        pages += 1
        cursor = resp.next_cursor
        if not cursor:
            break
    assert seen == [m for m in made if m != made[3]] and pages == 3
    all_ids = []
    cursor = ""
    for _ in range(10):
        resp = a.list_artifacts(metadata_equals={"tag": tag}, include_deleted=True, page_size=3, cursor=cursor)
        all_ids += [x.id for x in resp.artifacts]
        cursor = resp.next_cursor
        if not cursor:
            break
    assert all_ids == made


# -- Subscribe ------------------------------------------------------------------------------

def take(client, n: int, **kw) -> list:
    """The first n events of a subscription (fails on a 10 s deadline)."""
    return list(itertools.islice(client.subscribe(timeout=10, **kw), n))


def test_subscribe_replay_filters_and_resume(world):
    a, b = world.agent(uid("sa")), world.agent(uid("sb"))
    aid = uid("watched")
    a.write(aid, "1")
    a.transfer(b.agent_id, 7)
    a.write(aid, "2")
    a.delete(aid)
    last = a.get_state().last_event_seq

    replay = take(a, last)
    assert [e.seq for e in replay] == list(range(1, last + 1))  # dense, from 1
    assert replay[-1].type == "artifact.deleted" and replay[-1].artifact_id == aid

    ledger_events = [e for e in replay if e.type.startswith("ledger.")]
    got = take(a, len(ledger_events), types=["ledger.*"])
    assert [e.seq for e in got] == [e.seq for e in ledger_events]
    assert {e.type for e in got} <= {"ledger.mint", "ledger.transfer"} and "ledger.transfer" in {e.type for e in got}
    exact = take(a, 1, types=["ledger.transfer"], principal_ids=[b.agent_id])
    assert exact[0].data["amount"] == 7 and exact[0].principal_id == a.agent_id
    assert list(exact[0].related_ids) == [b.agent_id]

    about = take(a, 3, artifact_ids=[aid])
    assert [e.type for e in about] == ["artifact.written", "artifact.written", "artifact.deleted"]
    assert all(e.artifact_id == aid for e in about)

    for_b = [e for e in replay if e.principal_id == b.agent_id or b.agent_id in e.related_ids]
    got_b = take(b, len(for_b), principal_ids=[b.agent_id])
    assert [e.seq for e in got_b] == [e.seq for e in for_b]
    assert {"agent.created", "ledger.mint", "ledger.transfer"} <= {e.type for e in got_b}

    resumed = take(a, 2, after_seq=last - 2)
    assert [e.seq for e in resumed] == [last - 1, last]

    fails(lambda: take(a, 1, after_seq=-1), C.INVALID_ARGUMENT, "INVALID_ARGS", "after_seq")


def test_subscribe_delivers_live_events_quickly(world):
    a = world.agent(uid("live"))
    start_seq = a.get_state().last_event_seq
    aid = uid("fresh")
    stream = a.subscribe(after_seq=start_seq - 1, timeout=15)
    got: list = []
    arrived = threading.Event()

    def consume():
        for ev in stream:
            got.append((ev, time.monotonic()))
            if ev.artifact_id == aid:
                arrived.set()
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:  # the replayed event: the stream is live
        time.sleep(0.01)
    assert got and got[0][0].seq == start_seq
    time.sleep(0.2)  # let the server go idle, waiting for new commits
    a.write(aid, "news")
    written_at = time.monotonic()  # acknowledged: committed
    assert arrived.wait(3)
    ev, seen_at = got[-1]
    assert ev.type == "artifact.written" and ev.principal_id == a.agent_id
    assert seen_at - written_at < 1.0
    t.join(2)
    stream.close()


# -- compute debt through the real server -----------------------------------------------------

DEBT_CONFIG = "[agents]\ncompute_rate = 1.0\ncompute_capacity = 3.0\n[costs]\nwrite = 5.0\n"


def test_compute_debt_retry_info_and_recovery(make_server):
    s = make_server(DEBT_CONFIG)
    a = s.agent("alice")
    t0 = time.monotonic()
    a.write("first", "goes into debt")  # 3 - 5 = -2, charged between t0 and t1
    t1 = time.monotonic()
    comp = flow(a.get_state())
    t2 = time.monotonic()
    assert -2.0 <= comp.balance < 0 and comp.HasField("usable_at")
    assert 2.0 - (t2 - t0) - 0.05 <= comp.seconds_until_usable <= 2.0 + 1e-6
    assert abs(comp.seconds_until_usable + comp.balance / 1.0) < 1e-6
    t3 = time.monotonic()
    err = fails(lambda: a.write("second", "x"), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    t4 = time.monotonic()
    # RetryInfo = the exact time until the balance is back at zero: 2 units at 1/s, less
    # the time that passed between the charge (in [t0, t1]) and the refusal (in [t3, t4]).
    assert err.retry_after is not None
    assert 2.0 - (t4 - t0) - 0.05 <= err.retry_after <= 2.0 - (t3 - t1) + 0.05
    fails(lambda: a.read("first"), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    fails(lambda: a.transfer("genesis_escrow", 1), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    assert a.get_state().scrip == 1000  # GetState is free and nothing was spent
    time.sleep(err.retry_after * 0.5)
    early = fails(lambda: a.read("first"), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    assert early.retry_after < err.retry_after * 0.6
    time.sleep(early.retry_after + 0.05)
    assert a.write("second", "x").created  # usable again exactly when told
    fails(lambda: a.read("second"), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    check_ledger(s)


def test_genesis_call_may_go_into_debt_once(make_server):
    """invoke (1) + genesis_ledger.transfer (1) from a balance of 0.5: allowed once, into debt."""
    s = make_server("[agents]\ncompute_rate = 0.01\ncompute_capacity = 0.5\n")
    a, b = s.agent("alice"), s.agent("bob")
    assert a.transfer("bob", 5)["balance"] == 995
    comp = flow(a.get_state())
    assert comp.balance < -1.4 and comp.seconds_until_usable > 100
    err = fails(lambda: a.transfer("bob", 5), C.RESOURCE_EXHAUSTED, "INSUFFICIENT_RESOURCES")
    assert abs(err.retry_after - (-comp.balance / 0.01)) < 5
    assert b.get_state().scrip == 1005
    check_ledger(s)
